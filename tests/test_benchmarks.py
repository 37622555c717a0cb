"""The benchmark scripts run in smoke mode and write the fields their tables are read from."""

import json
import math
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


def _signed(x: float, digits: int = 1) -> str:
    """A number as RESULTS.md prints it (a true minus sign)."""
    return f"{x:.{digits}f}".replace("-", "−")


def _load(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def _numbers(obj) -> list[float]:
    """Every number in a JSON document (nested dicts and lists)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


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


def test_results_protocol_runs_figures_are_the_runs_json():
    """The figures of finished protocol jobs in RESULTS.md's "Protocol runs" table."""
    text = _results_text()
    row = next(x for x in text.splitlines() if x.startswith("| NIF claims 1, 2, 4 |"))
    for noise in ("1", "04", "01"):
        run = _load(f"nif_protocol_runs/nif64_image_noise{noise}_seed0.json")
        assert "test_log_likelihood_logit" not in run  # validation only
        figure = (f"{_signed(run['validation_log_likelihood_logit'])} ± "
                  f"{run['validation_log_likelihood_logit_stderr']:.1f}")  # fmt: skip
        assert figure in row and f"{run['validation_bits_per_dim']:.3f}" in row, noise
    row = next(x for x in text.splitlines() if x.startswith("| VMoNF MNIST 0–4 |"))
    run = _load("vmonf_mnist_runs/unsupervised_paper_seed0.json")
    validation = run["mnist"]["validation"]
    assert run["mnist"]["split"] == "validation" and run["commit"][:7] in row
    assert f"validation log-likelihood {_signed(validation['log_likelihood'])} nats" in row
    assert (
        f"clustering accuracy {validation['accuracy']:.3f} with NMI {validation['nmi']:.1f}" in row
    )


def _claims_row(text: str, claim: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(f"| {claim}"))


def test_results_claims_rows_print_their_json():
    """Each headline figure of RESULTS.md's claims table is in the JSON its row names."""
    text = _results_text()
    nif = _load("nif_mnist_eval_nif64_dense_noise04_gmm10.json")
    vq = _load("vq_flows_mnist_cpu.json")["mnist"]
    unsupervised = _load("vmonf_mnist_cpu_kmeans_encoder.json")["mnist"]["unsupervised"]
    semi = _load("vmonf_mnist_cpu_semi_6000.json")["mnist"]["semi-supervised (100 labels)"]
    vae = {e: _load(f"flow_vae_mnist_cpu_{e}{n}/results.json")["runs"][e]
           for e, n in (("gaussian", 1200), ("iaf", 1200), ("pcp", 120))}  # fmt: skip

    def end(name: str) -> str:  # the Fréchet distance after the last step, mean ± std
        last = vq[name]["frechet"][-1]
        return f"{last['mean']:.1f} ± {last['std']:.1f}"

    expected = {
        "NIF claim 1": [f"{nif['bits_per_dim']['NIF-64']:.4f}"],
        "NIF claim 2": [f"{nif['frechet']['NIF-64 s=0']:.1f}"],
        "NIF claim 4": [f"{nif['embedding']['NIF-64']['knn10_accuracy']:.3f} (linear probe "
                        f"{nif['embedding']['NIF-64']['linear_probe_accuracy']:.3f})"],
        "VMoNF MNIST 0–4, unsupervised": [
            f"{unsupervised['accuracy']:.3f} by q(k\\|x) (exact posterior "
            f"{unsupervised['exact_posterior_accuracy']:.3f}; NMI {unsupervised['nmi']:.3f})"],
        "VMoNF MNIST 0–4, 100 labels": [
            f"{semi['accuracy']:.3f} by q(k\\|x), {semi['exact_posterior_accuracy']:.3f} by the "
            "exact posterior"],
        "VQ-RealNVP vs RealNVP on MNIST": [f"β = 1.0: {end('vq_realnvp_beta1')}",
                                           f"default β = 0.25: {end('vq_realnvp')}"],
        "VQ-MAF vs MAF on MNIST": [f"β = 1.0: {end('vq_maf_beta1')}",
                                   f"default β = 0.25: {end('vq_maf')}"],
        **{f"VAE, {label} encoder": [f"{vae[e]['test_nll_iwae']:.2f} ± "
                                     f"{vae[e]['test_nll_iwae_stderr']:.2f}"]
           for e, label in (("gaussian", "Gaussian"), ("iaf", "IAF"), ("pcp", "PCP-Map"))},
    }  # fmt: skip
    for claim, figures in expected.items():
        row = _claims_row(text, claim)
        for figure in figures:
            assert figure in row.split(" | ")[1], (claim, figure)


def _mean_sd(values: list[float], digits: int = 3) -> str:
    """'mean ± sample std' as RESULTS.md prints the seeds of a configuration."""
    import statistics

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


def test_results_nif_configurations_table_figures_are_in_the_named_json():
    """Every decimal figure of "Every NIF configuration tried" is in the JSONs its row names."""
    import re

    text = _results_text()
    header = "| latent, A, initial noise | prior | bits/dim | Fréchet s = 0 |"
    table = _table_rows(text, header)
    checked = skipped = 0
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([^`]+\.json)`", cells[-1])
        if not names:
            skipped += 1
            continue  # a run stopped early, no JSON kept (the row says so)
        values = [x for name in names for x in _numbers(_load(name))]
        # a median in parentheses is mnist_test_outliers.py's printout (the text below says so)
        figures = re.sub(r"\(median [\d.]+\)", "", " ".join(cells[2:-1]))
        for token in re.findall(r"−?\d+\.\d+", figures):
            assert _found_in(token, values), (line, token)
            checked += 1
    assert len(table) == 21 and skipped == 2 and checked > 80


# tables whose every decimal figure must be in the JSON their text names: a table's header
# (its first cells), the JSON files (None: those named in the row's last cell), its rows
NAMED_JSON_TABLES = {
    "NF controls": ("| NF (MAF(5), the run above) | test bits/dim (exact) |",
                    ["nf_mixture_base.json", "mnist_maf.json", "nif_mnist_eval.json"], 2),
    "NIF prior gap": ("| dense NIF-64, initial noise | Fréchet s = 0, z ~ N(0, I) |",
                      ["nif_prior_gap.json"], 3),
    "VMoNF MNIST, pre-protocol": ("| MNIST 0–4 | start | accuracy, q(k\\|x) |", None, 5),
    "VQ-MNIST draws in their regions": ("| model | Fréchet, draws inside their region |",
                                        ["vq_flows_mnist_cpu.json"], 3),
    "VQ-MNIST dimension": ("| d | Fréchet distance (1000 samples) |",
                           ["vq_flows_dimension_cpu.json", "vq_flows_mnist_cpu.json"], 4),
    "robustness": ("| model | data (5,000 points) | steps | final loss |", ["robustness.json"],
                   9),
}  # fmt: skip


def _found_in(token: str, values: list[float]) -> bool:
    """Whether the printed decimal ``token`` (true minus sign, thousands commas) is a value."""
    digits = len(token.split(".")[1])
    number = float(token.replace("−", "-").replace(",", ""))
    return any(round(v, digits) == number for v in values)


@pytest.mark.parametrize("table", sorted(NAMED_JSON_TABLES))
def test_results_table_figures_are_in_the_named_json(table):
    """Every decimal figure of these tables is a value (sign and rounding included) of the
    JSON named for it: a mistyped figure fails, one copied from another cell of the same
    JSON would not (these JSONs' layouts differ from the tables')."""
    import re

    header, names, num_rows = NAMED_JSON_TABLES[table]
    text = _results_text()
    assert text.count(header) == 1, table
    rows = _table_rows(text, header)
    assert len(rows) == num_rows, table
    checked = 0
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        files = names or re.findall(r"`([^`]+\.json)`", cells[-1])
        documents = [_load(name) for name in files]
        for merged in [d["merged"] for d in documents if "merged" in d]:  # and their parts
            documents += [_load(Path(part).name) for part in merged]
        values = [x for document in documents for x in _numbers(document)]
        figures = re.sub(r"[≥≤] [\d.]+", "", " ".join(cells[1:]))  # an issue's bar, not a figure
        for token in re.findall(r"−?\d[\d,]*\.\d+", figures):
            assert _found_in(token, values), (line, token)
            checked += 1
    assert checked >= len(rows), table


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
