"""The benchmark scripts run in smoke mode and write the fields their tables are read from."""

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip


def _results_text() -> str:
    return (ROOT / "benchmarks" / "RESULTS.md").read_text()


def _table_rows(text: str, header: str) -> list[str]:
    """The rows of the markdown table that starts with ``header`` (up to its blank line)."""
    return text.split(header)[1].split("\n\n")[0].splitlines()[2:]


def _signed(x: float, digits: int = 1, thousands: bool = False) -> str:
    """A number as RESULTS.md prints it (a true minus sign; thousands commas if asked)."""
    return f"{x:{',' if thousands else ''}.{digits}f}".replace("-", "−")


def _load(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def _cells(line: str) -> list[str]:
    """A markdown table row's cells, stripped, bold marks dropped (an escaped ``\\|`` stays)."""
    return [cell.strip().replace("**", "") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _assert_keyed_table(header: str, expected: dict[str, list[str]], key_columns: int = 1,
                        notes: dict[str, str] | None = None) -> None:  # fmt: skip
    """The table that starts with ``header`` has the rows of ``expected``, in that order, and
    each row prints exactly the cells listed for it. A row's key is its first ``key_columns``
    cells joined by " | "; the other cells are compared whole, so one changed digit fails.
    ``notes`` (by key) is shown when a row differs: why the row has no JSON, say."""
    text = _results_text()
    assert text.count(header) == 1, header
    rows = [_cells(line) for line in _table_rows(text, header)]
    assert [" | ".join(row[:key_columns]) for row in rows] == list(expected), header
    for row in rows:
        key = " | ".join(row[:key_columns])
        assert row[key_columns:] == expected[key], (key, (notes or {}).get(key, ""))


def test_speed_smoke_writes_interleaved_rounds(tmp_path):
    out = tmp_path / "speed.json"
    proc = _run("speed.py", "--device", "cpu", "--smoke", "--jobs", "VAE gaussian b128",
                "VMoNF K=1 b128", "--setup-rounds", "2", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["info"]["commit"] and result["info"]["device"] == "cpu"
    assert set(result["rows"]) == {"VAE gaussian b128", "VMoNF K=1 b128"}
    for row in result["rows"].values():
        for runner in ("torch", "ours", "pyro"):
            cell = row[runner]
            assert len(cell["rounds"]) == 2 and cell["min"] <= cell["median"] <= cell["max"]
        ratio = row["ours_over_torch"]
        pairs = [o / t for o, t in zip(row["ours"]["rounds"], row["torch"]["rounds"], strict=True)]
        assert ratio["median"] == pytest.approx(sorted(pairs)[0] / 2 + sorted(pairs)[1] / 2)
        assert len(row["ours_setup_seconds"]["rounds"]) == 2
        assert row["ours_setup_share_of_round"] == pytest.approx(
            row["ours_setup_seconds"]["median"]
            / (row["ours"]["median"] / math.ceil(60_000 / row["batch"]) * 2))  # fmt: skip
    assert "fit's set-up per call" in proc.stdout


def test_setup_seconds_recovers_a_known_set_up(monkeypatch):
    """2 T(n) - T(2n) is the per-call set-up of a runner that costs S + n t."""
    import time

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import speed

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def run(steps):  # a set-up of 0.25 s and 0.125 s a step, on a fake clock
        clock[0] += 0.25 + 0.125 * steps

    assert speed.setup_seconds(run, 10, torch.device("cpu")) == pytest.approx(0.25)


def test_speed_refuses_an_unknown_job(tmp_path):
    proc = _run("speed.py", "--device", "cpu", "--smoke", "--jobs", "nope", "--out",
                str(tmp_path / "s.json"))  # fmt: skip
    assert proc.returncode == 2 and "--jobs: unknown ['nope']" in proc.stderr
    assert not (tmp_path / "s.json").exists()


@pytest.mark.slow
def test_device_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "device_check.json"
    proc = _run("device_check.py", "--device", "cpu", "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert {k: s["status"] for k, s in sections.items()} == dict.fromkeys(
        ("tests", "speed", "vmonf_k", "vae_epoch"), "ok"
    )
    tests = sections["tests"]["result"]
    assert tests["returncode"] == 0 and tests["counts"]["passed"] >= 14
    assert len(sections["speed"]["result"]) == 9
    assert sections["vmonf_k"]["result"]["K=1"]["over_K1"] == 1.0
    assert set(sections["vae_epoch"]["result"]) == {"gaussian", "iaf", "pcp"}
    assert "== device_check: cpu" in proc.stdout  # the table is printed last


def test_device_check_budget_skips_sections(tmp_path):
    out = tmp_path / "device_check.json"
    proc = _run("device_check.py", "--device", "cpu", "--smoke", "--budget", "0",
                "--sections", "vae_epoch", "vmonf_k", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sections = json.loads(out.read_text())["sections"]
    assert sections["vmonf_k"]["status"] == "skipped" and "budget" in sections["vmonf_k"]["error"]


@pytest.mark.parametrize(
    "job",
    ["VAE gaussian b128", "VAE iaf b1024", "MAF(5) 784-d b256", "NIF 784->64 b256",
     "VMoNF K=1 b128", "VMoNF K=10 b128", "VQ-Flow 784->64 b256"],
)  # fmt: skip
def test_hand_written_loss_is_the_pyro_programs_elbo(job, monkeypatch):
    """speed.py compares like with like: its hand-written loss is fit's loss, per point."""
    import pyro
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import speed

    from pyro_manifold.infer.elbo import fast_elbo

    torch.manual_seed(0)
    spec = speed.jobs(torch.device("cpu"), smoke=True)[job]
    module = spec.build().double()
    x = spec.data[:16].double()
    with pyro.validation_enabled(False):
        torch.manual_seed(1)  # the same reparameterised draws in both
        hand = spec.loss(module, x)
        torch.manual_seed(1)
        elbo = fast_elbo(spec.elbo).differentiable_loss(module.model, module.guide, x)
    torch.testing.assert_close(hand, elbo / x.shape[0], rtol=1e-9, atol=1e-9)


def test_streaming_memory_smoke_writes_peaks(tmp_path):
    out = tmp_path / "streaming_memory.json"
    proc = _run("streaming_memory.py", "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    info = result["info"]
    assert info["commit"] and info["cpu_count"] and "--smoke" in info["command"]
    rows = {(row["case"], row["n"]): row for row in result["rows"]}
    cases = ["cli-flow", "cli-nif", "model-flow", "model-flow-oneshot", "model-nif",
             "model-nif-oneshot"]  # fmt: skip
    assert set(rows) == {("cli-import", 0), *((case, 200) for case in cases)}
    baseline = rows["cli-import", 0]["peak_after_mib"]
    for case in cases:
        row = rows[case, 200]
        assert row["peak_after_mib"] >= row["peak_before_mib"] > 0
        assert row["extra_mib"] == pytest.approx(row["peak_after_mib"] - row["peak_before_mib"])
        assert row["seconds"] > 0 and math.isfinite(row["mean_value"])
        if case.startswith("cli"):
            assert row["peak_before_mib"] == baseline


SPEED_LABELS = {  # RESULTS.md's job labels, by speed.py's job names
    "VAE gaussian b128": "VAE 784-400-50, Gaussian encoder, batch 128",
    "VAE gaussian b1024": "VAE, Gaussian encoder, batch 1024",
    "VAE iaf b1024": "VAE, 2 IAF layers, batch 1024",
    "VAE pcp b1024": "VAE, PCP-Map encoder, batch 1024",
    "MAF(5) 784-d b256": "MAF(5), 1024 hidden, 784-d, batch 256",
    "NIF 784->64 b256": "NIF 784→64 (top MAF(2)), batch 256",
    "VMoNF K=1 b128": "VMoNF K = 1, RealNVP(4), pinwheel, batch 128",
    "VMoNF K=10 b128": "VMoNF K = 10, batch 128",
    "VQ-Flow 784->64 b256": "VQ-Flow 784→64, K = 10 charts, stage 2, batch 256",
}


def test_results_cpu_speed_table_is_the_committed_json():
    """RESULTS.md's CPU speed table prints speed_cpu.json: its commit, times and ratios."""
    text = _results_text()
    section = text.split("### CPU: the 2-core machine, one thread, idle")[1].split("\n### ")[0]
    result = _load("speed_cpu.json")
    assert f"commit {result['info']['commit'][:7]}," in section
    assert result["info"]["threads"] == 1 and not result["info"]["dirty"]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and
            line[2:4] in ("VA", "MA", "NI", "VM", "VQ")]  # fmt: skip
    assert len(rows) == len(result["rows"]) == 9
    for cells, (name, row) in zip(rows, result["rows"].items(), strict=True):
        assert cells[0] == f"| {SPEED_LABELS[name]}", name
        spread = row["ours_over_torch"]
        assert cells[1:5] == [
            str(row["steps_per_round"]),
            f"{row['torch']['median']:.3f}",
            f"{row['ours']['median']:.3f}",
            f"{row['pyro']['median']:.3f}",
        ], name
        assert cells[5] == f"{spread['median']:.2f} [{spread['min']:.2f}–{spread['max']:.2f}]"
        pyro = row["pyro_over_ours"]
        assert cells[6] == f"{pyro['median']:.2f} [{pyro['min']:.2f}–{pyro['max']:.2f}]", name
        assert (cells[7] == "yes") == (spread["median"] <= 1.05), name
        small = row["batch"] <= 128
        met = pyro["median"] >= 1.2
        assert cells[8].rstrip(" |") == (("yes" if met else "**no**") if small else "—"), name


def test_results_gpu_speed_table_is_the_device_runs_json():
    """RESULTS.md's GPU speed table prints the device run's speed_cuda.json, as it came back."""
    text = _results_text()
    section = text.split("### GPU: one NVIDIA H200 (session 12)")[1].split("\n### ")[0]
    folder = ROOT / "benchmarks" / "results" / "device_check_h200"
    result = json.loads((folder / "speed_cuda.json").read_text())
    assert f"commit {result['info']['commit'][:7]}" in section
    assert result["info"]["device"] == "NVIDIA H200" and not result["info"]["dirty"]
    table = _table_rows(section, "| job | hand-written |")
    rows = [line.split(" | ") for line in table]
    assert len(rows) == len(result["rows"]) == 9
    for cells, (name, row) in zip(rows, result["rows"].items(), strict=True):
        assert cells[0] == f"| {SPEED_LABELS[name]}", name
        ratios = [row[k] for k in ("ours_over_torch", "pyro_over_ours")]
        expected = [f"{row[r]['median']:.3f}" for r in ("torch", "ours", "pyro")]
        expected += [f"{d['median']:.2f} [{d['min']:.2f}–{d['max']:.2f}]" for d in ratios]
        expected.append(f"{row['ours']['peak_extra_mib']:,.0f} |")
        assert cells[1:] == expected, name


def test_results_maf_ablation_table_is_the_runs_json():
    """RESULTS.md's MAF ablation table prints mnist_maf_*.json and the outliers' JSON."""
    text = _results_text()
    header = "| run (`benchmarks/results/NAME.json`) | differs from ours in |"
    table = _table_rows(text, header)
    outliers = _load("mnist_test_outliers_maf_ablation.json")["runs"]
    assert len(table) == len(outliers) == 5
    for line in table:
        cells = [c.strip().strip("*") for c in line.strip("| ").split(" | ")]
        name = cells[0].strip("`")
        run = _load(f"{name}.json")
        out = outliers[f"runs/{name}"]
        assert cells[2].split()[0] == f"{run['epochs_run']:.0f}", name
        assert cells[3].split()[0] == f"{run['best_validation_nll_logit']:.1f}", name
        mean, se = run["test_log_likelihood_logit"], run["test_log_likelihood_logit_stderr"]
        assert out["log_likelihood_logit_mean"] == pytest.approx(mean, abs=0.05), name
        assert cells[4] == f"{_signed(mean)} ± {se:.1f}", name
        assert cells[5] == _signed(out["log_likelihood_logit_mean_without_worst"]), name
        assert cells[6] == _signed(out["log_likelihood_logit_median"]), name
        bits = f"{out['bits_per_dim_mean']:.3f} ({out['bits_per_dim_median']:.3f})"
        assert cells[7] == bits, name


def test_results_maf_seed_rows_are_the_seeds_json():
    """RESULTS.md's MAF rows per seed print mnist_maf_seed{0,1,2}.json (one commit)."""
    text = _results_text()
    commits = set()
    for seed in (0, 1, 2):
        run = _load(f"mnist_maf_seed{seed}.json")
        commits.add(run["commit"])
        line = next(x for x in text.splitlines() if x.startswith(f"| MAF(5), ours, seed {seed} |"))
        cells = [c.strip().strip("*") for c in line.strip("| ").split(" | ")]
        mean, se = run["test_log_likelihood_logit"], run["test_log_likelihood_logit_stderr"]
        assert cells[1] == f"{_signed(mean)} ± {se:.1f}", seed
        bits, bits_se = run["test_bits_per_dim"], run["test_bits_per_dim_stderr"]
        assert cells[2] == f"{bits:.3f} ± {bits_se:.3f}", seed
        assert f"seed {seed} {_signed(mean)} ± {se:.1f}" in text.replace(",", ""), seed
    assert len(commits) == 1 and f"(all at commit {commits.pop()[:7]})" in text


def test_results_vq_toy_table_is_the_toy_json():
    """RESULTS.md's VQ-Flows 3D toy table prints vq_flows_toy.json's test scores."""
    text = _results_text()
    header = "| manifold | model (chosen on validation) | parameters | test MMD² ↓ |"
    table = _table_rows(text, header)
    toy = _load("vq_flows_toy.json")["toy"]
    names = {"sphere": "sphere", "torus": "torus", "Swiss roll": "swiss_roll",
             "linked rings": "linked_rings"}  # fmt: skip
    families = {"RealNVP": "realnvp", "VQ-RealNVP": "vq_realnvp"}
    assert len(table) == 2 * len(names)
    for line in table:
        manifold, model, parameters, mmd2, distance = line.strip("| ").split(" | ")
        family, configuration = model.rstrip(")").split(" (")
        test = toy[names[manifold]]["test"][families[family]]
        assert configuration == test["configuration"] == toy[names[manifold]]["selected"][
            families[family]], line  # fmt: skip
        assert parameters == str(test["parameters"]), line
        assert mmd2 == f"{test['mmd2']['mean']:.2e} ± {test['mmd2']['std']:.2e}", line
        assert distance == f"{test['distance']['mean']:.4f} ± {test['distance']['std']:.4f}", line


def _check_stats_cell(cell: str, stats: dict, label: str) -> None:
    """A 'mean ± std (per seed, ...)' cell of RESULTS.md against the JSON's statistics."""
    cell = cell.replace("**", "")
    assert cell.startswith(f"{_signed(stats['mean'], 3)} ± {stats['std']:.3f}"), label
    inside = cell.partition("(")[2].rstrip(")")
    if inside and inside[0] in "−0123456789":  # the seeds' values, in order
        assert inside == ", ".join(_signed(v, 3) for v in stats["per_seed"]), label


def test_results_vmonf_pinwheel_test_table_is_the_json():
    """RESULTS.md's pinwheel test table prints vmonf_pinwheel.json's test scores."""
    text = _results_text()
    header = "| pinwheel, 5 wings | parameters | clustering accuracy | test log-likelihood (nats) |"
    table = _table_rows(text, header)
    test = _load("vmonf_pinwheel.json")
    test = test["pinwheel"]["test"]
    rows = {"VMoNF, k-means start": "VMoNF (kmeans)", "single RealNVP": "single flow (8 layers)",
            "k-means alone": "k-means", "Gaussian mixture": "Gaussian mixture (EM)"}  # fmt: skip
    assert len(table) == len(rows) == len(test)
    for line in table:
        label, parameters, accuracy, log_likelihood = line.strip("| ").split(" | ")
        entry = test[next(v for k, v in rows.items() if label.startswith(k))]
        assert parameters.replace(",", "") == str(entry.get("parameters", "—")), label
        for cell, key in ((accuracy, "accuracy"), (log_likelihood, "test_log_likelihood")):
            if key in entry:
                _check_stats_cell(cell, entry[key], f"{label}: {key}")
            else:
                assert cell == "—", label


def test_results_vmonf_circles_test_table_is_the_json():
    """RESULTS.md's two-circles test table prints vmonf_circles.json's test scores."""
    text = _results_text()
    header = "| two circles | parameters | clustering accuracy | test log-likelihood (nats) |"
    table = _table_rows(text, header)
    circles = _load("vmonf_circles.json")
    circles = circles["circles"]
    semi = "semi-supervised (64 labels)"
    rows = {
        "unsupervised: VMoNF `paper`": ("unsupervised", "VMoNF (paper)"),
        "unsupervised: k-means": ("unsupervised", "k-means"),
        "unsupervised: Gaussian mixture": ("unsupervised", "Gaussian mixture (EM)"),
        "64 labels: VMoNF `paper+anneal`": (semi, "VMoNF (paper+anneal)"),
        "64 labels: k-means": (semi, "k-means seeded by the labels"),
        "64 labels: Gaussian mixture": (semi, "Gaussian mixture (EM), labels fixed"),
        "64 labels: nearest labelled point": (semi, "1-NN on the 64 labels"),
    }
    assert len(table) == len(rows)
    assert (
        sum(len(circles[s]["test"]) for s in ("unsupervised", "semi-supervised (64 labels)")) == 7
    )
    for line in table:
        label, parameters, accuracy, log_likelihood = line.strip("| ").split(" | ")
        setting, name = next(v for k, v in rows.items() if label.startswith(k))
        entry = circles[setting]["test"][name]
        assert parameters.replace(",", "") == str(entry.get("parameters", "—")), label
        if not entry["seeds"]:  # deterministic: one value, no spread
            assert accuracy.replace("**", "") == f"{entry['accuracy']['mean']:.3f}", label
        else:
            _check_stats_cell(accuracy, entry["accuracy"], label)
        if "test_log_likelihood" in entry:
            _check_stats_cell(log_likelihood, entry["test_log_likelihood"], label)
        else:
            assert log_likelihood == "—", label


def test_results_classifier_figures_are_the_json():
    """RESULTS.md's classifier figures (claims row and section) print mnist_classifier.json."""
    text = " ".join(_results_text().split())
    result = _load("mnist_classifier.json")
    seeds = [f"{100 * result['runs'][str(s)]['test_accuracy']:.2f}%" for s in (0, 1, 2)]
    mean, std = 100 * result["test_accuracy"]["mean"], 100 * result["test_accuracy"]["std"]
    assert result["seeds"] == [0, 1, 2] and result["met"] and not result["uncommitted_changes"]
    assert f"{mean:.2f}% ± {std:.2f} (seeds: {', '.join(seeds)})" in text
    assert (
        f"seeds 0, 1, 2 give {', '.join(seeds[:2])}, {seeds[2]}, mean {mean:.2f}% ± {std:.2f}"
        in text
    )


def _protocol_state(claim: str) -> str:
    """The state cell (the last) of the "Protocol runs" row of ``claim``."""
    text = _results_text()
    (line,) = [x for x in text.splitlines() if x.startswith(f"| {claim} |")]
    return _cells(line)[-1]


def test_results_protocol_runs_figures_are_the_runs_json():
    """The figures of finished protocol jobs in RESULTS.md's "Protocol runs" table, each
    against its own run: the NIF candidates listed by A map and initial noise, figure i of
    each list from the run (that A, latent 64, seed 0) of noise i; each VMoNF candidate's
    figures from the run of its configuration. The state's wording around them is free;
    every finished run is listed."""
    state = _protocol_state("NIF claims 1, 2, 4")
    folder = ROOT / "benchmarks" / "results" / "nif_protocol_runs"
    runs = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    listed = re.findall(r"(image|dense) NIF-64 at initial noise ([\d., ]+): validation (.+?) "
                        r"nats \((.+?) bits/dim\)", state)  # fmt: skip
    assert sum(len(group[1].split(", ")) for group in listed) == len(runs) > 0, (
        "every finished NIF run is listed"
    )
    for nif_map, *columns in listed:
        noises, log_likelihoods, bits = (column.split(", ") for column in columns)
        for noise, log_likelihood, bits_per_dim in zip(noises, log_likelihoods, bits, strict=True):
            (run,) = [r for r in runs if (r["args"]["nif_map"], r["args"]["init_noise"]) == (
                nif_map, float(noise))]  # fmt: skip
            args = run["args"]
            assert (args["latent"], args["seed"]) == (64, 0), noise
            assert args["evaluate"] == "validation" and "test_log_likelihood_logit" not in run
            assert f"(commit {run['commit'][:7]};" in state, noise
            assert log_likelihood == (
                f"{_signed(run['validation_log_likelihood_logit'])} ± "
                f"{run['validation_log_likelihood_logit_stderr']:.1f}"
            ), noise
            assert bits_per_dim == f"{run['validation_bits_per_dim']:.3f}", noise
    state = _protocol_state("VMoNF MNIST 0–4")
    folder = ROOT / "benchmarks" / "results" / "vmonf_mnist_runs"
    runs = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    listed = re.findall(r"`(\w+)`[^:`]*: validation log-likelihood (\S+) nats, clustering "
                        r"accuracy (\S+) with NMI ([\d.]+)", state)  # fmt: skip
    assert len(listed) == len(runs) > 0, "every finished VMoNF run is listed"
    for config, log_likelihood, accuracy, nmi in listed:
        (run,) = [r for r in runs if r["mnist"]["job"]["configuration"] == config]
        mnist = run["mnist"]
        validation, job = mnist["validation"], mnist["job"]
        assert mnist["split"] == "validation" and f"(commit {run['commit'][:7]};" in state
        assert f"{job['setting']}, seed {job['seed']}, all {mnist['steps']} steps" in state
        assert mnist["best_step"] == mnist["steps"], config  # "best ... at the last step"
        assert (log_likelihood, accuracy, nmi) == (
            _signed(validation["log_likelihood"]),
            f"{validation['accuracy']:.3f}",
            f"{validation['nmi']:.3f}",
        ), config


VQ_MNIST_PARAMETERS = {"RealNVP": "2,598,192", "VQ-RealNVP": "6,807,691", "MAF": "7,233,120",
                       "VQ-MAF": "11,467,195"}  # fmt: skip
"""Parameter counts of the VQ-Flows MNIST models, as RESULTS.md prints them: vq_flows.py
prints them as it trains, and no JSON records them."""


def _pm(stats: dict, digits: int = 3) -> str:
    """A JSON's {"mean", "std"} as RESULTS.md prints it: 'mean ± std'."""
    return f"{_signed(stats['mean'], digits)} ± {stats['std']:.{digits}f}"


def _claims_maf_nif() -> dict[str, tuple[str, str]]:
    """The MAF and NIF claims: "our figure" and "baseline figure" cells from their JSONs."""
    maf = {s: _load(f"mnist_maf_seed{s}.json") for s in (0, 1, 2)}
    outlier = _load("mnist_test_outliers_maf_ablation.json")["runs"]["runs/mnist_maf_seed2"]
    nif = _load("nif_mnist_eval_nif64_dense_noise04_gmm10.json")
    nf, nf_run = _load("nif_mnist_eval.json"), _load("mnist_maf.json")
    nf_mixture = _load("nf_mixture_base.json")

    def seed(s: int) -> str:  # a MAF seed's test log-likelihood (nats) and bits/dim
        run = maf[s]
        return (f"seed {s} {_signed(run['test_log_likelihood_logit'])} ± "
                f"{run['test_log_likelihood_logit_stderr']:.1f}")  # fmt: skip

    bits = {s: f"{run['test_bits_per_dim']:.3f}" for s, run in maf.items()}
    nif_bits, nf_bits = nif["bits_per_dim"]["NIF-64"], nf_run["test_bits_per_dim"]
    nif_s0, nf_t1 = nif["frechet"]["NIF-64 s=0"], nf["frechet"]["NF t=1"]
    nif_probe, nf_probe = nif["embedding"]["NIF-64"], nf["embedding"]["NF"]
    return {
        "MAF(5) on MNIST": (
            f"{seed(0)} nats, {bits[0]} ± {maf[0]['test_bits_per_dim_stderr']:.3f} bits/dim; "
            f"{seed(1)}, {bits[1]}; {seed(2)}, {bits[2]} (one test image, "
            f"{_signed(outlier['worst_log_likelihood_logit'], 0, thousands=True)} nats, sets "
            f"its mean: {_signed(outlier['log_likelihood_logit_mean_without_worst'])} without "
            f"it; its validation NLL, {maf[2]['best_validation_nll_logit']:.1f}, is the others')",
            "— (this is the NF baseline of the NIF and VQ rows)",
        ),
        "NIF claim 1": (
            f"{nif_bits:.4f} ± {nif['prior_flow']['NIF-64']['iwae_bits_per_dim_stderr']:.3f} "
            "(dense NIF-64, initial noise 0.4, 10-component mixture prior fitted by EM): "
            f"Δ = {nif_bits - nf_bits:+.3f}",
            f"NF {nf_bits:.3f} ± {nf_run['test_bits_per_dim_stderr']:.3f} (`mnist_maf.json`, "
            "the first run of seed 0; same data, top flow and epochs)",
        ),
        "NIF claim 2": (
            f"{nif_s0:.1f} ({100 * (1 - nif_s0 / nf_t1):.0f}% below the NF's {nf_t1:.1f})",
            f"NF at t = 1: {nf_t1:.1f} (another draw of {nf['num_samples']}: "
            f"{nf_mixture['unit normal']['frechet_t1']:.1f}); the NF at its best validation "
            "temperature t ≤ 1 (issue 21 item 2) not run; NF with a 10-component "
            "full-covariance mixture base: "
            f"{nf_mixture['10-component mixture']['frechet_t1']:.1f} (fits validation worse "
            "than its unit base)",
        ),
        "NIF claim 4": (
            f"{nif_probe['knn10_accuracy']:.3f} (linear probe "
            f"{nif_probe['linear_probe_accuracy']:.3f})",
            f"NF {nf_probe['knn10_accuracy']:.3f} (linear probe "
            f"{nf_probe['linear_probe_accuracy']:.3f})",
        ),
    }


def _claims_vmonf() -> dict[str, tuple[str, str]]:
    """The VMoNF claims: "our figure" and "baseline figure" cells from their JSONs."""
    pinwheel = _load("vmonf_pinwheel.json")["pinwheel"]["test"]
    vmonf, flow = pinwheel["VMoNF (kmeans)"], pinwheel["single flow (8 layers)"]
    em = pinwheel["Gaussian mixture (EM)"]
    circles = _load("vmonf_circles.json")["circles"]
    unsupervised = circles["unsupervised"]["test"]
    semi = circles["semi-supervised (64 labels)"]["test"]
    spread = unsupervised["VMoNF (paper)"]["accuracy"]["per_seed"]
    mnist = _load("vmonf_mnist_cpu_kmeans_encoder.json")["mnist"]["unsupervised"]
    mnist_semi = _load("vmonf_mnist_cpu_semi_6000.json")["mnist"]["semi-supervised (100 labels)"]
    return {
        "VMoNF pinwheel": (
            f"{_pm(vmonf['accuracy'])}; {_pm(vmonf['test_log_likelihood'])} nats (k-means "
            f"start, {vmonf['parameters']:,} parameters)",
            f"single RealNVP (8 layers, {flow['parameters']:,} parameters) "
            f"{_pm(flow['test_log_likelihood'])}; k-means alone "
            f"{_pm(pinwheel['k-means']['accuracy'])}; Gaussian mixture by EM "
            f"{_pm(em['accuracy'])}, {_pm(em['test_log_likelihood'])}",
        ),
        "VMoNF two circles, unsupervised": (
            f"{_pm(unsupervised['VMoNF (paper)']['accuracy'])} (seeds from {min(spread):.3f} "
            f"to {max(spread):.3f})",
            f"k-means alone {_pm(unsupervised['k-means']['accuracy'])}; Gaussian mixture by EM "
            f"{_pm(unsupervised['Gaussian mixture (EM)']['accuracy'])}",
        ),
        "VMoNF two circles, 64 labels": (
            _pm(semi["VMoNF (paper+anneal)"]["accuracy"]),
            "nearest labelled point (1-NN on the 64 labels) "
            f"{semi['1-NN on the 64 labels']['accuracy']['mean']:.3f}; k-means seeded by the "
            f"labels {_pm(semi['k-means seeded by the labels']['accuracy'])}; EM with the "
            f"labels fixed {_pm(semi['Gaussian mixture (EM), labels fixed']['accuracy'])}",
        ),
        "VMoNF MNIST 0–4, unsupervised": (
            f"{mnist['accuracy']:.3f} by q(k\\|x) (exact posterior "
            f"{mnist['exact_posterior_accuracy']:.3f}; NMI {mnist['nmi']:.3f})",
            f"k-means alone {mnist['kmeans_train_accuracy']:.3f} (on the training images; not "
            "scored on the test images); a Gaussian mixture by EM and the paper's random start: "
            "not run",
        ),
        "VMoNF MNIST 0–4, 100 labels": (
            f"{mnist_semi['accuracy']:.3f} by q(k\\|x), "
            f"{mnist_semi['exact_posterior_accuracy']:.3f} by the exact posterior (6000 steps)",
            f"k-means seeded by the labels {mnist_semi['kmeans_train_accuracy']:.3f} (training "
            "images; `kmeans_train_accuracy` in the JSON)",
        ),
    }


def _claims_vq() -> dict[str, tuple[str, str]]:
    """The VQ-Flows claims: "our figure" and "baseline figure" cells from their JSONs (the
    MNIST models' parameter counts from VQ_MNIST_PARAMETERS)."""
    toy = _load("vq_flows_toy.json")["toy"]
    manifolds = {"sphere": "sphere", "torus": "torus", "Swiss roll": "swiss_roll",
                 "linked rings": "linked_rings"}  # fmt: skip
    vq_parameters = [toy[m]["test"]["vq_realnvp"]["parameters"] for m in manifolds.values()]
    ((configuration, nf_parameters),) = {
        (toy[m]["test"]["realnvp"]["configuration"], toy[m]["test"]["realnvp"]["parameters"])
        for m in manifolds.values()
    }
    assert configuration == "realnvp8"  # RealNVP(8) on every manifold

    def toy_scores(family: str, named: bool) -> str:  # test MMD² / distance, per manifold
        scores = {name: toy[m]["test"][family] for name, m in manifolds.items()}
        return ", ".join(f"{name + ' ' if named else ''}{s['mmd2']['mean']:.2e} / "
                         f"{s['distance']['mean']:.4f}" for name, s in scores.items())  # fmt: skip

    mnist = _load("vq_flows_mnist_cpu.json")["mnist"]

    def end(name: str) -> str:  # the Fréchet distance after the last step, mean ± std
        return _pm(mnist[name]["frechet"][-1], 1)

    assert mnist["maf"]["seeds"] == mnist["vq_maf"]["seeds"]
    maf_end, vq_maf_end = (mnist[k]["frechet"][-1]["values"] for k in ("maf", "vq_maf"))
    wins = sum(vq < plain for vq, plain in zip(vq_maf_end, maf_end, strict=True))
    parameters = VQ_MNIST_PARAMETERS
    return {
        "VQ-RealNVP vs RealNVP on 3D toy manifolds": (
            f"test MMD² / distance: {toy_scores('vq_realnvp', named=True)} "
            f"({min(vq_parameters)}–{max(vq_parameters)} parameters)",
            f"RealNVP(8), {nf_parameters} parameters, the same "
            f"{toy['budget']['steps_total']} steps: {toy_scores('realnvp', named=False)}",
        ),
        "VQ-RealNVP vs RealNVP on MNIST": (
            f"β = 1.0: {end('vq_realnvp_beta1')}; default β = 0.25: {end('vq_realnvp')} "
            f"({parameters['VQ-RealNVP']} parameters; 2000 atlas steps, then 3000)",
            f"RealNVP {end('realnvp')} ({parameters['RealNVP']} parameters, 3000 steps): fewer "
            "parameters and steps, so not the same budget",
        ),
        "VQ-MAF vs MAF on MNIST": (
            f"β = 1.0: {end('vq_maf_beta1')}; default β = 0.25: {end('vq_maf')}, lower on "
            f"{wins} of {len(maf_end)} seeds ({parameters['VQ-MAF']} parameters)",
            f"MAF {end('maf')} ({parameters['MAF']} parameters, 3000 steps): fewer parameters "
            "and steps",
        ),
    }


def _claims_vae_classifier() -> dict[str, tuple[str, str]]:
    """The VAE and classifier claims: "our figure" and "baseline figure" cells from their
    JSONs (the paired difference from the per-image bounds of both runs)."""
    runs = ("gaussian1200", "iaf1200", "gaussian120", "pcp120")
    vae = {run: _load(f"flow_vae_mnist_cpu_{run}/results.json")["runs"][run.rstrip("0123456789")]
           for run in runs}  # fmt: skip

    def nll(run: str) -> str:  # the test IWAE NLL ± its standard error
        return f"{vae[run]['test_nll_iwae']:.2f} ± {vae[run]['test_nll_iwae_stderr']:.2f}"

    pcp, gaussian = vae["pcp120"], vae["gaussian120"]
    paired = [p - g for p, g in zip(pcp["test_iwae_bound"], gaussian["test_iwae_bound"],
                                    strict=True)]  # per image; > 0: PCP-Map better  # fmt: skip
    paired_se = statistics.stdev(paired) / math.sqrt(len(paired))
    gain = vae["gaussian1200"]["test_nll_iwae"] - vae["iaf1200"]["test_nll_iwae"]
    classifier = _load("mnist_classifier.json")
    accuracy = classifier["test_accuracy"]
    seeds = ", ".join(f"{100 * classifier['runs'][str(s)]['test_accuracy']:.2f}%"
                      for s in classifier["seeds"])  # fmt: skip
    return {
        "VAE, Gaussian encoder": (
            f"{nll('gaussian1200')} ({vae['gaussian1200']['epochs']:.0f} epochs)",
            "— (the baseline of the IAF and PCP-Map rows)",
        ),
        "VAE, IAF encoder": (
            f"{nll('iaf1200')} (2 IAF layers, {vae['iaf1200']['epochs']:.0f} epochs): "
            f"{gain:.2f} nats better",
            f"Gaussian {nll('gaussian1200')} (the same epochs, schedule and test images)",
        ),
        "VAE, PCP-Map encoder": (
            f"{nll('pcp120')} on the first {pcp['iwae_points']} test images (2 layers, PICNN "
            f"64-64, {pcp['epochs']:.0f} epochs); paired difference "
            f"{statistics.mean(paired):.3f} ± {paired_se:.3f} nats better",
            f"Gaussian {nll('gaussian120')} ({gaussian['epochs']:.0f} epochs, the same "
            f"{gaussian['iwae_points']} images)",
        ),
        "MNIST classifier": (
            f"{100 * accuracy['mean']:.2f}% ± {100 * accuracy['std']:.2f} (seeds: {seeds})",
            "—",
        ),
    }


def test_results_claims_figures_are_their_json():
    """Every row of RESULTS.md's claims table prints, in its "our figure" and "baseline
    figure" cells, exactly the text the _claims_* helpers build: each figure from its own
    JSON key, or derived from such figures (a difference, a share, a count of seeds); the
    VQ MNIST parameter counts, which no JSON holds, from VQ_MNIST_PARAMETERS."""
    expected = {**_claims_maf_nif(), **_claims_vmonf(), **_claims_vq(),
                **_claims_vae_classifier()}  # fmt: skip
    header = "| claim (issue) | our figure | seeds | baseline figure (same protocol) |"
    rows = [_cells(line) for line in _table_rows(_results_text(), header)]
    claims = [[k for k in expected if row[0].startswith(k)] for row in rows]
    assert claims == [[k] for k in expected]  # every claim, one row each, in this order
    for [claim], row in zip(claims, rows, strict=True):
        assert (row[1], row[3]) == expected[claim], claim


def _mean_sd(values: list[float], digits: int = 3) -> str:
    """'mean ± sample std' as RESULTS.md prints the seeds of a configuration."""
    return f"{_signed(statistics.mean(values), digits)} ± {statistics.stdev(values):.{digits}f}"


def test_results_vmonf_validation_tables_are_the_json():
    """The pinwheel and circles tables of every configuration tried, on validation."""
    text = _results_text()
    pinwheel = _load("vmonf_pinwheel.json")["pinwheel"]["validation"]
    header = "| pinwheel configuration | validation log-likelihood (the rule) |"
    table = _table_rows(text, header)
    names = {"VMoNF `paper`": "paper", "VMoNF `paper+anneal`": "paper+anneal",
             "VMoNF `kmeans`": "kmeans", "single flow, 4 layers": "flow (4 layers)",
             "single flow, 8 layers": "flow (8 layers)"}  # fmt: skip
    assert len(table) == len(names) == len(pinwheel)
    for line in table:
        label, log_likelihood, accuracy, steps = line.strip("| ").split(" | ")
        entry = pinwheel[next(v for k, v in names.items() if label.startswith(k))]
        assert log_likelihood.strip("*") == _mean_sd(entry["val_log_likelihood"]), label
        want = _mean_sd(entry["val_accuracy"]) if entry["val_accuracy"] else "—"
        assert accuracy == want, label
        assert steps == f"{min(entry['best_step'])}–{max(entry['best_step'])}", label
    circles = _load("vmonf_circles.json")["circles"]
    header = "| circles configuration | validation log-likelihood (the rule) |"
    table = _table_rows(text, header)
    assert len(table) == 6
    for line in table:
        label, log_likelihood, accuracy = line.strip("| ").split(" | ")
        setting, config = label.split(" `")
        setting = {"unsupervised": "unsupervised", "64 labels": "semi-supervised (64 labels)"}[
            setting]  # fmt: skip
        entry = circles[setting]["validation"][config.strip("`")]
        assert log_likelihood.strip("*") == _mean_sd(entry["val_log_likelihood"]), label
        assert accuracy == _mean_sd(entry["val_accuracy"]), label


def test_results_vae_table_is_the_runs_json():
    """RESULTS.md's Flow-VAE table prints each run's results.json (epochs, IWAE NLL)."""
    text = _results_text()
    header = "| encoder | epochs | test NLL (nats) | target |"
    table = _table_rows(text, header)
    folders = {("Gaussian", "500"): "gaussian", ("Gaussian", "1200"): "gaussian1200",
               ("IAF (2 layers)", "350"): "iaf", ("IAF (2 layers)", "1200"): "iaf1200",
               ("Gaussian", "120"): "gaussian120",
               ("PCP-Map (2 layers, PICNN 64-64)", "120"): "pcp120"}  # fmt: skip
    assert len(table) == len(folders)
    for line in table:
        encoder, epochs, nll = line.strip("| ").split(" | ")[:3]
        runs = _load(f"flow_vae_mnist_cpu_{folders[encoder, epochs]}/results.json")["runs"]
        (run,) = runs.values()
        assert f"{run['epochs']:.0f}" == epochs, line
        assert nll.replace("**", "").startswith(
            f"{run['test_nll_iwae']:.2f} ± {run['test_nll_iwae_stderr']:.2f}"), line  # fmt: skip


def test_results_vq_mnist_table_is_the_json():
    """RESULTS.md's VQ-Flows MNIST table prints vq_flows_mnist_cpu.json's Fréchet distances."""
    text = _results_text()
    header = (
        "| model | commitment β | parameters | seeds | step 1000 | step 2000 | step 3000 (end) |"
    )
    table = _table_rows(text, header)
    runs = _load("vq_flows_mnist_cpu.json")["mnist"]
    names = {("RealNVP", ""): "realnvp", ("VQ-RealNVP", "0.25"): "vq_realnvp",
             ("VQ-RealNVP", "1.0"): "vq_realnvp_beta1", ("MAF", ""): "maf",
             ("VQ-MAF", "0.25"): "vq_maf", ("VQ-MAF", "1.0"): "vq_maf_beta1"}  # fmt: skip
    assert len(table) == len(names)
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        run = runs[names[cells[0], cells[1]]]
        assert run["steps"] == [1000, 2000, 3000] and cells[3] == str(len(run["seeds"])), line
        for cell, at in zip(cells[4:7], run["frechet"], strict=True):
            assert cell.strip("*") == f"{at['mean']:.1f} ± {at['std']:.1f}", line
        assert cells[7] == ", ".join(f"{v:.1f}" for v in run["frechet"][-1]["values"]), line


def test_results_nif_headline_table_is_the_json():
    """RESULTS.md's NIF headline table prints the evaluation JSONs of the NIF and the NF."""
    text = _results_text()
    header = (
        "| | bits/dim (exact) | Fréchet s = 0 | s = 0.5 | s = 1 | 10-NN on latents | linear probe |"
    )
    nif_row, nf_row = _table_rows(text, header)[:2]
    nif = _load("nif_mnist_eval_nif64_dense_noise04_gmm10.json")
    se = nif["prior_flow"]["NIF-64"]["iwae_bits_per_dim_stderr"]
    embedding = nif["embedding"]["NIF-64"]
    want = [f"{nif['bits_per_dim']['NIF-64']:.4f} ± {se:.3f}",
            *(f"{nif['frechet'][f'NIF-64 s={s}']:.1f}" for s in ("0", "0.5", "1")),
            f"{embedding['knn10_accuracy']:.3f}",
            f"{embedding['linear_probe_accuracy']:.3f}"]  # fmt: skip
    assert [c.strip("* ") for c in nif_row.strip("| ").split(" | ")[1:]] == want
    nf, maf = _load("nif_mnist_eval.json"), _load("mnist_maf.json")
    cells = [c.strip() for c in nf_row.strip("|").split("|")]
    assert cells[1] == f"{maf['test_bits_per_dim']:.3f} ± {maf['test_bits_per_dim_stderr']:.3f}"
    assert cells[2] == f"{nf['frechet']['NF t=1']:.1f} (t = 1)"
    assert cells[5:] == [f"{nf['embedding']['NF'][k]:.3f}"
                         for k in ("knn10_accuracy", "linear_probe_accuracy")]  # fmt: skip


def _nif_configuration_cells(
    evaluation: str,
    trained: str | None = None,
    *,
    latent: int = 64,
    frechet: tuple[str, ...] = ("0", "0.5", "1"),
) -> list[str]:
    """The cells after the key of an "Every NIF configuration tried" row, from its JSONs.

    bits/dim: the trained run's ``test_bits_per_dim`` where the row names that run, else the
    evaluation's ``bits_per_dim``, marked "(IWAE)" where its prior is a fitted MAF (the
    bound); Fréchet s = 0, 0.5, 1: the evaluation's ``frechet["NIF-<latent> s=<s>"]`` for
    each s of ``frechet``, blank for the others; 10-NN and linear probe: the evaluation's
    ``embedding`` (scored for the NIF-64 only: "—" for the NIF-32); JSON: the files read.
    """
    model = f"NIF-{latent}"
    scores = _load(evaluation)
    if trained:
        bits = f"{_load(trained)['test_bits_per_dim']:.3f}"
    else:
        prior = scores.get("prior_flow", {}).get(model, {})
        iwae = " (IWAE)" if prior.get("prior_flow") == "maf" else ""
        bits = f"{scores['bits_per_dim'][model]:.3f}{iwae}"
    distances = [f"{scores['frechet'][f'{model} s={s}']:.1f}" if s in frechet else ""
                 for s in ("0", "0.5", "1")]  # fmt: skip
    embedding = scores["embedding"].get(model) if latent == 64 else None
    probes = [f"{embedding[k]:.3f}" if embedding else "—"
              for k in ("knn10_accuracy", "linear_probe_accuracy")]  # fmt: skip
    names = ", ".join(f"`{name}`" for name in (trained, evaluation) if name)
    return [bits, *distances, *probes, names]


def test_results_nif_configurations_table_is_the_json():
    """The table "Every NIF configuration tried", cell by cell, from the JSONs each row names
    (see _nif_configuration_cells); the rows printing a figure that no JSON holds say why
    (``no_json``), and their text is pinned as printed."""
    no_json = {
        "64, image, 0.3 | MAF prior trained jointly": "stopped after 10 epochs, history not kept",
        "32, dense, 0.3 | unit normal": "stopped after 9 epochs, no JSON kept",
        "32, dense, 0.5 | unit normal": "its median bits/dim is mnist_test_outliers.py's "
        "printout (the script writes a file only with --out; none was kept)",
    }

    def nif(name: str, trained: str = "", latent: int = 64, s0_only: bool = False) -> list[str]:
        """A row from nif_mnist_eval<name>.json and, if named, the trained run's <trained>.json."""
        frechet = ("0",) if s0_only else ("0", "0.5", "1")
        run = f"{trained}.json" if trained else None
        evaluation = f"nif_mnist_eval{name}.json"
        return _nif_configuration_cells(evaluation, run, latent=latent, frechet=frechet)

    dense32_05 = nif("_nif32_dense_noise05", "mnist_nif32_dense_noise05", 32, s0_only=True)
    dense32_05[0] += " (median 1.710)"  # no JSON: see no_json
    reference = _load("nif_mnist_eval.json")
    expected = {
        "32, image, 1 | unit normal": nif("", "mnist_nif32", 32, s0_only=True),
        "64, image, 1 | unit normal": nif("", "mnist_nif64"),
        "64, image, 1 | fitted MAF (3000 steps)": nif("_noise1_prior"),
        "64, image, 0.3 | unit normal": nif("_noise03", "mnist_nif64_noise03"),
        "64, image, 0.3 | fitted MAF (best of 10000 steps, at 1500)": nif("_noise03_prior"),
        "64, image, 0.3 | MAF prior trained jointly": [
            "stopped after 10 of 30 epochs, its validation bound within ±3 nats of the "
            "unit-prior run's", "", "", "", "", "", "none (history not kept)"],
        "64, image, 0.1 | unit normal": nif("_noise01", "mnist_nif64_noise01"),
        "64, image, 0.1 | fitted MAF (3000 steps)": nif("_noise01_prior"),
        "32, image, 0.3 | unit normal": nif("_nif32_noise03", "mnist_nif32_noise03", 32,
                                            s0_only=True),
        "64, dense, 0.3 | unit normal": nif("_nif64_dense_noise03", "mnist_nif64_dense_noise03"),
        "32, dense, 0.3 | unit normal": [
            "stopped after 9 epochs, its validation gap to the NF at 22 nats", "", "", "", "",
            "", "none"],
        "32, dense, 0.5 | unit normal": dense32_05,
        "64, dense, 0.5 | unit normal": nif("_nif64_dense_noise05", "mnist_nif64_dense_noise05",
                                            s0_only=True),
        "64, dense, 0.5 | fitted MAF": nif("_nif64_dense_noise05_prior", s0_only=True),
        "64, dense, 0.5 | 10-component mixture": nif("_nif64_dense_noise05_gmm10", s0_only=True),
        "64, dense, 0.4 | unit normal": nif("_nif64_dense_noise04", "mnist_nif64_dense_noise04"),
        "64, dense, 0.4 | fitted MAF": nif("_nif64_dense_noise04_prior", s0_only=True),
        "64, dense, 0.4 | 10-component mixture": nif("_nif64_dense_noise04_gmm10"),
        "32, dense, 0.4 | unit normal": [  # trained, not evaluated: bits/dim from training only
            f"{_load('mnist_nif32_dense_noise04.json')['test_bits_per_dim']:.3f}",
            "not evaluated", "", "", "—", "—", "`mnist_nif32_dense_noise04.json`"],
        "32, dense, 0.4 | 10-component mixture": nif("_nif32_dense_noise04_gmm10", latent=32,
                                                     s0_only=True),
        "NF (reference) | unit normal": [
            f"{_load('mnist_maf.json')['test_bits_per_dim']:.3f}",
            f"{reference['frechet']['NF t=1']:.1f} (t = 1)", "", "",
            *(f"{reference['embedding']['NF'][k]:.3f}"
              for k in ("knn10_accuracy", "linear_probe_accuracy")),
            "`mnist_maf.json`, `nif_mnist_eval.json`"],
    }  # fmt: skip
    assert set(no_json) <= set(expected)
    header = "| latent, A, initial noise | prior | bits/dim | Fréchet s = 0 |"
    _assert_keyed_table(header, expected, key_columns=2, notes=no_json)


def test_results_nf_controls_table_is_the_json():
    """The NF controls table, cell by cell, from nf_mixture_base.json: per base, the test
    bits/dim ± its standard error, the Fréchet distance at t = 1 and the validation
    −log q(u)."""
    result = _load("nf_mixture_base.json")

    def cells(base: str, validation: str) -> list[str]:
        scores = result[base]
        return [f"{scores['bits_per_dim']:.3f} ± {scores['bits_per_dim_stderr']:.3f}",
                f"{scores['frechet_t1']:.1f}", f"{result[validation]:.1f}"]  # fmt: skip

    _assert_keyed_table("| NF (MAF(5), the run above) | test bits/dim (exact) |", {
        "unit-normal base": cells("unit normal", "val_nll_unit_base"),
        "10-component mixture base, EM": cells("10-component mixture", "val_nll_mixture_base"),
    })  # fmt: skip


def test_results_nif_prior_gap_table_is_the_json():
    """The prior-gap table, cell by cell, from nif_prior_gap.json's run of each initial noise:
    the Fréchet distances at s = 0 with z from N(0, I), from the Gaussian fit to Q and from Q,
    then the validation bits/dim with the N(0, I) prior and with Q."""
    runs = _load("nif_prior_gap.json")  # keyed by each model's run folder

    def cells(run: str) -> list[str]:
        frechet, bits = runs[run]["frechet_s0"], runs[run]["validation_bits_per_dim"]
        return [*(f"{frechet[z]:.1f}" for z in ("unit normal", "Gaussian fit to Q", "Q")),
                *(f"{bits[z]:.3f}" for z in ("unit normal", "Q"))]  # fmt: skip

    expected = {noise: cells(f"runs/mnist_nif64_dense_noise{code}")
                for noise, code in (("0.3", "03"), ("0.4", "04"), ("0.5", "05"))}  # fmt: skip
    _assert_keyed_table("| dense NIF-64, initial noise | Fréchet s = 0, z ~ N(0, I) |", expected)


def test_results_vmonf_mnist_pre_protocol_table_is_the_json():
    """The MNIST 0–4 table of VMoNF, cell by cell: each row's accuracies and NMI from the
    setting it names in its output JSON (blank or "—" where the row prints none), the issue's
    bar, and the output's name."""

    def cells(name: str, setting: str, exact: bool = True, nmi: bool = True) -> list[str]:
        scores = _load(name)["mnist"][setting]
        bar = "≥ 0.80" if setting == "unsupervised" else "≥ 0.95"  # issue 4's bars
        return [f"{scores['accuracy']:.3f}",
                f"{scores['exact_posterior_accuracy']:.3f}" if exact else "—",
                f"{scores['nmi']:.3f}" if nmi else "", bar, f"`{name}`"]  # fmt: skip

    semi, encoder = "semi-supervised (100 labels)", "vmonf_mnist_cpu_kmeans_encoder.json"
    kmeans = _load(encoder)["mnist"]["unsupervised"]["kmeans_train_accuracy"]
    _assert_keyed_table("| MNIST 0–4 | start | accuracy, q(k\\|x) |", {
        "unsupervised | k-means alone": cells("vmonf_mnist_cpu_unsupervised.json",
                                              "unsupervised", exact=False),
        "unsupervised | k-means + encoder fitted to it": cells(encoder, "unsupervised"),
        "semi-supervised, 100 labels | seeded k-means + encoder fitted to it":
            cells(encoder, semi),
        "semi-supervised, 100 labels, 6000 steps | seeded k-means + encoder fitted to it":
            cells("vmonf_mnist_cpu_semi_6000.json", semi, nmi=False),
        "(reference) k-means alone, training images | ":
            [f"{kmeans:.3f}", "", "", "", f"`{encoder}`"],
    }, key_columns=2)  # fmt: skip


def test_results_vq_dimension_table_is_the_json():
    """The VQ-RealNVP chart-dimension table, cell by cell: d < 784 from
    vq_flows_dimension_cpu.json (Fréchet distance, reconstruction MSE); d = 784 is seed 0 of
    the VQ-RealNVP (β = 0.25) in vq_flows_mnist_cpu.json, whose reconstruction error no JSON
    holds: its charts are bijective, so it is 0 by construction."""
    result = _load("vq_flows_dimension_cpu.json")
    dimension = result["dimension"]
    assert [int(d) for d in dimension] == result["config"]["latent_dims"]
    vq = _load("vq_flows_mnist_cpu.json")["mnist"]["vq_realnvp"]
    seed0 = vq["frechet"][-1]["values"][vq["seeds"].index("0")]
    expected = {d: [f"{r['frechet']:.1f}", f"{r['reconstruction_mse']:.4f}"]
                for d, r in dimension.items()}  # fmt: skip
    expected["784 (the table above, seed 0)"] = [f"{seed0:.1f}", "0 (bijective charts)"]
    _assert_keyed_table("| d | Fréchet distance (1000 samples) |", expected)


def test_results_robustness_table_is_the_json():
    """The reliability table, cell by cell, from robustness.json's row of each model: data,
    steps, final loss, test log-likelihood and seconds; and every run finished clean."""
    rows = _load("robustness.json")["rows"]
    labels = {"NoisyInjectiveFlow": "NoisyInjectiveFlow (latent 2)"}  # RESULTS' longer names
    data = {"two_moons": "two moons", "swiss_roll": "Swiss roll"}
    expected = {}
    for name, row in rows.items():
        assert row["all_losses_finite"] and row["parameters_finite"], name
        expected[labels.get(name, name)] = [
            data.get(row["data"], row["data"]), str(row["steps"]), _signed(row["final_loss"], 3),
            _signed(row["test_log_likelihood"], 3), f"{row['seconds']:.0f}"]  # fmt: skip
    _assert_keyed_table("| model | data (5,000 points) | steps | final loss |", expected)


def test_results_vq_in_regions_table_is_the_json():
    """The draws kept in their regions at step 3000, per row from vq_flows_mnist_cpu.json: the
    Fréchet distance (mean ± std, per seed) of the row's in-region curve and each seed's share
    of draws inside their chart's region (``acceptance``, under the row's curve label)."""
    text = _results_text()
    header = "| model | Fréchet, draws inside their region | per seed |"
    table = _table_rows(text, header)
    runs = _load("vq_flows_mnist_cpu.json")["mnist"]
    names = {"VQ-MAF, β = 0.25": "vq_maf", "VQ-MAF, β = 1.0": "vq_maf_beta1",
             "VQ-RealNVP, β = 1.0": "vq_realnvp_beta1"}  # fmt: skip
    assert [line.split(" | ")[0] for line in table] == [f"| {label}" for label in names]
    for line in table:
        label, frechet, per_seed, shares = [c.strip() for c in line.strip("|").split("|")]
        run = runs[f"{names[label]}_in_regions"]
        end = run["frechet"][-1]
        assert run["steps"][-1] == 3000
        assert frechet == f"{end['mean']:.1f} ± {end['std']:.1f}", label
        assert per_seed == ", ".join(f"{v:.1f}" for v in end["values"]), label
        accepted = runs["acceptance"][names[label]]
        assert list(accepted) == run["seeds"], label
        assert all(curve[-1][0] == 3000 for curve in accepted.values()), label
        assert shares == ", ".join(f"{curve[-1][1]:.3f}" for curve in accepted.values()), label


def test_results_gpu_vmonf_k_table_is_the_device_runs_json():
    """The GPU table of VMoNF against K prints device_check.json's vmonf_k section."""
    text = _results_text()
    header = "| K | ours | hand-written | ours / hand-written | ours / ours at K = 1 | peak MiB |"
    table = _table_rows(text, header)
    section = _load("device_check_h200/device_check.json")["sections"]["vmonf_k"]
    assert section["status"] == "ok" and len(table) == len(section["result"]) == 5
    for line in table:
        k, ours, torch_, ratio, over_k1, peak = [c.strip() for c in line.strip("|").split("|")]
        row = section["result"][f"K={k}"]
        assert ours == f"{1000 * row['seconds_per_step_ours']:.2f}", k
        assert torch_ == f"{1000 * row['seconds_per_step_torch']:.2f}", k
        assert (ratio, over_k1) == (f"{row['ours_over_torch']:.2f}", f"{row['over_K1']:.2f}"), k
        assert peak == f"{row['peak_mib']:,.0f}", k


def test_results_setup_figures_are_the_setup_json():
    """The per-call set-up figures of RESULTS.md's speed section print speed_cpu_setup.json."""
    text = " ".join(_results_text().split())
    result = _load("speed_cpu_setup.json")
    args = result["args"]
    assert not result["info"]["dirty"]
    assert f"(commit {result['info']['commit'][:7]}, the trainings paused;" in text
    assert (f"(median [min–max] of {args['setup_rounds']}, on the warm module, after "
            f"{args['rounds']} interleaved rounds)") in text  # fmt: skip

    def figure(job: str) -> str:
        setup = result["rows"][job]["ours_setup_seconds"]
        low, high = _signed(setup["min"], 2), _signed(setup["max"], 2)
        return f"{setup['median']:.2f} s [{low}, {high}]"

    shares = [row["ours_setup_share_of_round"] for row in result["rows"].values()]
    assert list(result["rows"]) == ["VAE gaussian b1024", "VAE iaf b1024", "MAF(5) 784-d b256",
                                    "NIF 784->64 b256"]  # fmt: skip
    share = f"{100 * min(shares):.1f}–{100 * max(shares):.1f}% of a round of ours"
    assert (f"the batch-1024 VAEs {figure('VAE gaussian b1024')} and {figure('VAE iaf b1024')}, "
            f"the MAF {figure('MAF(5) 784-d b256')}, the NIF {figure('NIF 784->64 b256')}: "
            f"{share}") in text  # fmt: skip
