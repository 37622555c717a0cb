"""Every benchmark script runs with --smoke and writes the JSON fields RESULTS.md reads.

speed.py, device_check.py and streaming_memory.py are run by tests/test_benchmarks.py.
The scripts that evaluate trained MNIST runs get two tiny runs of mnist_flows.py --smoke
(an NF and a NIF, trained once per module). Each script runs as a subprocess in a
temporary folder, so a smoke run writes nothing into the repository.

The second half checks the benchmark-only metrics code on constructed inputs with known
answers: k-NN and linear-probe accuracy, bits/dim of a known density through the
dequantization pipeline, chart purity.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
TESTED_ELSEWHERE = {"speed.py", "device_check.py", "streaming_memory.py"}  # test_benchmarks.py
MODULES = {"provenance.py"}  # imported by the scripts; tested below
NEEDS_MNIST = pytest.mark.skipif(
    not os.environ.get("PYRO_MANIFOLD_DATA"),
    reason="needs the MNIST files: set PYRO_MANIFOLD_DATA to the data root (CI does)",
)


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYRO_MANIFOLD_CACHE=str(cwd / "cache"))
    env.setdefault("OMP_NUM_THREADS", "1")
    pythonpath = [str(ROOT), env.get("PYTHONPATH", "")]  # this checkout's package
    env["PYTHONPATH"] = os.pathsep.join(p for p in pythonpath if p)
    command = [sys.executable, str(BENCHMARKS / script), *args]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory):
    """Two mnist_flows.py --smoke runs: {"maf": (run_dir, json), "nif": (run_dir, json)}."""
    if not os.environ.get("PYRO_MANIFOLD_DATA"):
        pytest.skip("needs the MNIST files: set PYRO_MANIFOLD_DATA to the data root (CI does)")
    folder = tmp_path_factory.mktemp("mnist_runs")
    runs = {}
    for name, model in (("maf", ["--model", "maf"]), ("nif", ["--model", "nif", "--latent", "16"])):
        out = folder / f"{name}.json"
        _run("mnist_flows.py", "--smoke", *model, "--run-dir", str(folder / name),
             "--out", str(out), cwd=folder)  # fmt: skip
        runs[name] = (folder / name, json.loads(out.read_text()))
    return runs


# ---------------------------------------------------------------------- one test per script
def check_mnist_flows(tmp_path, mnist_runs):
    for name, (run_dir, report) in mnist_runs.items():
        assert (run_dir / "best.pt").exists() and (run_dir / "checkpoint.pt").exists()
        assert report["parameters"] > 0 and report["steps"] == 2 and report["epochs_run"] == 1
        assert _finite(report["test_log_likelihood_logit"], report["test_bits_per_dim"],
                       report["test_bits_per_dim_stderr"], report["best_validation_nll_logit"],
                       report["train_seconds"])  # fmt: skip
        assert report["args"]["smoke"] and ("NIF" in report["model"]) == (name == "nif")
        assert len(report["commit"]) == 40 and "--smoke" in report["command"]
        bn_fields = {k for k in report if k.endswith("_train_set_bn")}
        assert bool(bn_fields) == (name == "maf")  # the MAF ablation's batch-norm figures
        assert _finite(*(report[k] for k in bn_fields))


def check_nif_mnist_eval(tmp_path, mnist_runs):
    (nf, nf_report), (nif, nif_report) = mnist_runs["maf"], mnist_runs["nif"]
    _run("nif_mnist_eval.py", "--smoke", "--nf-run", str(nf), "--nif64-run", str(nif),
         "--models", "NF", "NIF-64", "--out", "out", cwd=tmp_path)  # fmt: skip
    out = tmp_path / "out"
    report = json.loads((out / "nif_mnist_eval.json").read_text())
    # the same test images, checkpoint and dequantization as mnist_flows.py's own figure
    assert report["bits_per_dim"]["NF"] == pytest.approx(nf_report["test_bits_per_dim"], rel=1e-5)
    assert report["bits_per_dim"]["NIF-64"] == pytest.approx(
        nif_report["test_bits_per_dim"], rel=1e-5
    )
    assert set(report["frechet"]) == {"NF t=1", "NIF-64 s=0", "NIF-64 s=1"}
    assert _finite(*report["frechet"].values()) and min(report["frechet"].values()) >= 0
    assert set(report["nonfinite_sample_fraction"]) == set(report["frechet"])
    assert report["num_samples"] == 16
    assert {k: v["dim"] for k, v in report["embedding"].items()} == {"NF": 784, "NIF-64": 16}
    for scores in report["embedding"].values():
        assert 0 <= scores["knn10_accuracy"] <= 1 and 0 <= scores["linear_probe_accuracy"] <= 1
    for png in ("temperature_NF.png", "temperature_NIF-64.png", "nif_frechet_vs_s.png"):
        assert (out / png).stat().st_size > 0


def check_nif_prior_gap(tmp_path, mnist_runs):
    nif = str(mnist_runs["nif"][0])
    _run("nif_prior_gap.py", "--smoke", "--out", "gap.json", nif, cwd=tmp_path)
    row = json.loads((tmp_path / "gap.json").read_text())[nif]
    draws = {"unit normal", "Gaussian fit to Q", "Q"}
    assert set(row["frechet_s0"]) == set(row["finite_fraction"]) == draws
    assert _finite(*row["frechet_s0"].values())
    for key in ("q_aggregate_covariance_eigenvalues", "stochastic_inverse_covariance_eigenvalues"):
        low, mid, high = row[key]
        assert 0 < low <= mid <= high
    bpd = row["validation_bits_per_dim"]
    # the script's mixture formula with the unit prior against the model's closed form
    assert bpd["unit normal"] == pytest.approx(bpd["unit normal, closed form"], rel=1e-5)
    assert _finite(bpd["Q"])


def check_mnist_test_outliers(tmp_path, mnist_runs):
    runs = {name: str(run_dir) for name, (run_dir, _) in mnist_runs.items()}
    _run("mnist_test_outliers.py", "--smoke", "--out", "outliers.json", *runs.values(),
         cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "outliers.json").read_text())
    assert report["test_images"] == 256 and set(report["runs"]) == set(runs.values())
    for name, run in runs.items():
        row = report["runs"][run]
        assert row["bits_per_dim_mean"] == pytest.approx(
            mnist_runs[name][1]["test_bits_per_dim"], rel=1e-5
        )
        assert 0 <= row["worst_index"] < 256 and _finite(row["worst_log_likelihood_logit"])
        # dropping the worst image cannot raise the mean
        assert row["bits_per_dim_mean_without_worst"] <= row["bits_per_dim_mean"]
        assert _finite(row["bits_per_dim_median"])


def check_nif_protocol(tmp_path, mnist_runs):
    import shutil

    (nf, nf_report), (nif, _) = mnist_runs["maf"], mnist_runs["nif"]
    for name in ("nif64_image_noise1", "nif64_image_noise04"):  # the smoke's two candidates
        for seed in (0, 1):
            shutil.copytree(nif, tmp_path / "runs" / f"{name}_seed{seed}")
    _run("nif_protocol.py", "--smoke", "--stage", "select", "--runs", "runs", "--nf-runs",
         str(nf), "--out", "select.json", cwd=tmp_path)  # fmt: skip
    selection = json.loads((tmp_path / "select.json").read_text())
    assert selection["split"] == "validation" and len(selection["configurations_tried"]) == 4
    assert set(selection["validation"]) == set(selection["configurations_tried"])
    assert selection["chosen"] in selection["validation"] and selection["nf_temperature"] == 1.0
    for scores in selection["validation"].values():
        assert _finite(scores["bits_per_dim"], scores["frechet_s0"], scores["knn10_accuracy"])
    _run("nif_protocol.py", "--smoke", "--stage", "test", "--runs", "runs", "--nf-runs", str(nf),
         str(nf), "--seeds", "0", "1", "--selection", "select.json", "--out", "test.json",
         cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "test.json").read_text())
    assert report["split"] == "test" and [row["seed"] for row in report["seeds"]] == [0, 1]
    # the NF's test bits/dim are mnist_flows.py's own figure (same images, same dequantization)
    assert report["seeds"][0]["nf"]["bits_per_dim"] == pytest.approx(
        nf_report["test_bits_per_dim"], rel=1e-5
    )
    assert report["selection_commit"] == selection["commit"] and len(report["commit"]) == 40


def check_nf_mixture_base(tmp_path, mnist_runs):
    nf, nf_report = mnist_runs["maf"]
    _run("nf_mixture_base.py", "--smoke", "--components", "2", "--nf-run", str(nf),
         "--out", "mix/nf_mixture_base.json", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "mix" / "nf_mixture_base.json").read_text())
    assert report["smoke"] and report["components"] == 2
    assert 1 <= report["em"]["iterations"] <= 3
    assert report["val_nll_mixture_base"] == min(report["em"]["val_loss"])
    unit, mixture = report["unit normal"], report["2-component mixture"]
    assert unit["bits_per_dim"] == pytest.approx(nf_report["test_bits_per_dim"], rel=1e-5)
    for row in (unit, mixture):
        assert _finite(row["bits_per_dim"], row["frechet_t1"], row["nonfinite_sample_fraction"])
    assert (tmp_path / "mix" / "nf_mixture_base_temperature.png").exists()


def check_vq_atlas_purity(tmp_path, mnist_runs):
    _run("vq_atlas_purity.py", "--smoke", "--out", "purity.json", cwd=tmp_path)
    report = json.loads((tmp_path / "purity.json").read_text())
    (row,) = report["rows"]
    assert {k: row[k] for k in ("commitment", "code_dim", "steps", "seed")} == {
        "commitment": 0.25, "code_dim": 4, "steps": 5, "seed": 0
    }  # fmt: skip
    # the largest class share bounds purity below; it is a share
    assert 0.1 <= row["purity"] <= 1 and 0.1 <= report["kmeans_purity"] <= 1
    assert _finite(row["mse"]) and row["mse"] > 0


def check_flow_vae_mnist(tmp_path, mnist_runs):
    _run("flow_vae_mnist.py", "--smoke", "--out", "vae", "--run-dir", "runs", cwd=tmp_path)
    runs = json.loads((tmp_path / "vae" / "results.json").read_text())["runs"]
    assert set(runs) == {"gaussian", "iaf", "pcp"}
    for encoder, row in runs.items():
        assert row["encoder"] == encoder and row["iwae_samples"] == 20
        assert row["iwae_points"] == 100 and row["parameters"] > 0
        assert _finite(row["test_nll_iwae"], row["test_nll_iwae_stderr"], row["epochs"],
                       row["train_seconds"], row["seconds_per_epoch"])  # fmt: skip
        assert row["test_nll_iwae"] > 0  # binarized pixels: a negative log probability
        assert (tmp_path / "vae" / f"samples_{encoder}.png").exists()


def check_vmonf(tmp_path, mnist_runs):
    _run("vmonf.py", "--part", "all", "--smoke", "--device", "cpu", "--out", "vmonf.json",
         "--figures", "figures", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "vmonf.json").read_text())
    assert report["command"].startswith("python ") and "--smoke" in report["command"]
    assert len(report["commit"]) == 40 and report["machine"]["cpu_count"] >= 1
    seeds = report["args"]["seeds"]
    pinwheel = report["pinwheel"]
    tried = pinwheel["configurations_tried"]
    assert tried["vmonf"] == ["paper", "paper+anneal", "kmeans"]
    assert pinwheel["num_configurations"] == len(tried["vmonf"]) + len(tried["single_flow"])
    validation = pinwheel["validation"]
    for name in (*tried["vmonf"], *tried["single_flow"]):  # every configuration on validation
        assert len(validation[name]["val_log_likelihood"]) == len(seeds)
        assert _finite(*validation[name]["val_log_likelihood"], *validation[name]["best_step"])
    chosen, chosen_flow = pinwheel["selected"]["vmonf"], pinwheel["selected"]["single_flow"]
    for group, pick in ((tried["vmonf"], chosen), (tried["single_flow"], chosen_flow)):
        means = {c: sum(validation[c]["val_log_likelihood"]) for c in group}
        assert pick == max(means, key=means.get)  # the rule: highest validation log-likelihood
    test = pinwheel["test"]
    assert set(test) == {f"VMoNF ({chosen})", f"single {chosen_flow}", "k-means",
                         "Gaussian mixture (EM)"}  # fmt: skip
    for name, row in test.items():
        assert row["seeds"] == seeds, name
        for metric in ("accuracy", "test_log_likelihood"):
            if metric in row:
                figures = row[metric]
                assert len(figures["per_seed"]) == len(seeds) and _finite(figures["std"])
                assert figures["mean"] == pytest.approx(sum(figures["per_seed"]) / len(seeds))
    assert 0 <= test[f"VMoNF ({chosen})"]["accuracy"]["mean"] <= 1
    assert "accuracy" not in test[f"single {chosen_flow}"]
    # k-means finds the well separated pinwheel wings
    assert test["k-means"]["accuracy"]["mean"] > 0.9
    circles = report["circles"]
    assert circles["configurations_tried"] == tried["vmonf"]
    for setting in ("unsupervised", "semi-supervised (64 labels)"):
        picked = circles[setting]["selected"]
        assert picked in tried["vmonf"]
        row = circles[setting]["test"][f"VMoNF ({picked})"]
        assert len(row["accuracy"]["per_seed"]) == len(seeds)
        assert 0 <= row["accuracy"]["mean"] <= 1
    semi = circles["semi-supervised (64 labels)"]["test"]
    assert semi["1-NN on the 64 labels"]["accuracy"]["mean"] > 0.99  # separable circles
    assert {"k-means seeded by the labels", "Gaussian mixture (EM), labels fixed"} <= set(semi)
    # the figures under the names RESULTS.md uses
    for name in ("pinwheel", "circles_unsupervised", "circles_semi"):
        assert (tmp_path / "figures" / f"vmonf_{name}.png").exists(), name
    assert pinwheel["figure"]["configuration"] == chosen
    timing = report["timing"]
    assert _finite(timing["K=1"]["seconds_per_step"], timing["ratio_K10_over_K1"])
    assert timing["ratio_K10_over_K1"] == pytest.approx(
        timing["K=10"]["seconds_per_step"] / timing["K=1"]["seconds_per_step"]
    )


def check_vq_flows(tmp_path, mnist_runs):
    # runs without MNIST too (random images, untrained classifier)
    _run("vq_flows.py", "--part", "all", "--smoke", "--device", "cpu", "--out", "vq.json",
         "--figures", "figures", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "vq.json").read_text())
    assert len(report["commit"]) == 40 and "--smoke" in report["command"]
    toy = report["toy"]
    tried = toy["configurations_tried"]
    assert tried == {"vq_realnvp": ["K8_eps0.2"], "realnvp": ["realnvp8", "realnvp4"]}
    assert toy["num_configurations"] == 3 and toy["seeds"] == [0]
    budget = toy["budget"]  # the same total steps: the VQ model's two stages together
    assert budget["steps_total"] == budget["vq_atlas_steps"] + budget["vq_chart_steps"]
    for manifold in ("sphere", "torus"):
        row = report["toy"][manifold]
        params = row["parameters"]
        assert min(params[c] for c in tried["realnvp"]) >= max(
            params[c] for c in tried["vq_realnvp"]
        )
        validation = row["validation"]
        for family, configs in tried.items():  # the rule: lowest mean validation MMD²
            means = {c: validation[c]["mmd2"]["mean"] for c in configs}
            assert row["selected"][family] == min(means, key=means.get)
        vq, nf = row["test"]["vq_realnvp"], row["test"]["realnvp"]
        assert vq["configuration"] == row["selected"]["vq_realnvp"]
        assert nf["configuration"] == row["selected"]["realnvp"]
        for model in (vq, nf):
            assert len(model["mmd2"]["values"]) == 1
            assert _finite(model["mmd2"]["mean"], model["distance"]["mean"])
        for metric in ("mmd2", "distance"):
            assert row["claim_met"][metric] == (vq[metric]["mean"] < nf[metric]["mean"])
    assert (tmp_path / "figures" / "vq_flows_toy.png").exists()
    mnist = report["mnist"]
    for kind in ("realnvp", "vq_realnvp", "maf", "vq_maf", "vq_maf_in_regions"):
        assert mnist[kind]["steps"] == [4] and _finite(mnist[kind]["frechet"][-1]["mean"])
    for kind in ("vq_realnvp", "vq_maf"):
        (shares,) = mnist["atlas_chart_shares"][kind].values()
        assert sum(shares) == pytest.approx(1.0) and len(shares) == 10
        assert 0 <= mnist["acceptance"][kind]["0"][-1][1] <= 1
    assert set(report["dimension"]) == {"8", "16"}
    for row in report["dimension"].values():
        assert _finite(row["frechet"], row["reconstruction_mse"])


def check_vq_protocol(tmp_path, mnist_runs):
    """The queue trains, skips finished jobs and resumes an interrupted one exactly; the
    training jobs and the selection run on a data folder without the test files."""
    raw = Path(os.environ["PYRO_MANIFOLD_DATA"]) / "MNIST" / "raw"
    no_test = tmp_path / "no_test"
    (no_test / "MNIST" / "raw").mkdir(parents=True)
    for f in raw.glob("train-*"):
        (no_test / "MNIST" / "raw" / f.name).symlink_to(f)
    env = dict(os.environ, MPLBACKEND="Agg", PYRO_MANIFOLD_CACHE=str(tmp_path / "cache"),
               PYRO_MANIFOLD_DATA=str(no_test), PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                          if p),
               VQ_PROTOCOL_ARGS="--smoke", VQ_PROTOCOL_SEEDS="0",
               VQ_PROTOCOL_FAMILIES="realnvp", VQ_PROTOCOL_RUNS=str(tmp_path / "runs"),
               VQ_PROTOCOL_RESULTS=str(tmp_path / "results"))  # fmt: skip

    def call(*command, rc=0, **overrides):
        proc = subprocess.run(command, cwd=tmp_path, env={**env, **overrides},
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == rc, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    script, queue = str(BENCHMARKS / "vq_protocol.py"), str(BENCHMARKS / "vq_protocol.sh")
    job = ("--stage", "train", "--kind", "vq_realnvp", "--commitment", "1", "--seed", "0")
    # an interrupted job (after its atlas and the first chart-flow steps, before the
    # evaluation); then the queue resumes it and trains the other two
    call(sys.executable, script, "--smoke", *job, "--runs", "runs", "--results", "results",
         "--interrupt-at", "3", rc=3)  # fmt: skip
    out = call("bash", queue, "train")
    assert "vq_realnvp_beta1 seed 0: training --resume" in out
    assert "realnvp_matched seed 0: training" in out
    out = call("bash", queue, "train")  # everything done: nothing trains
    assert out.count(": done (") == 3 and "training" not in out
    assert call("bash", queue, "status").count(": done") == 3
    call(sys.executable, script, "--smoke", *job, "--runs", "ref", "--results", "ref")
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")}
    resumed, reference = (
        runs["vq_realnvp_beta1_seed0"],
        json.loads((tmp_path / "ref" / "vq_realnvp_beta1_seed0.json").read_text()),
    )
    assert resumed["sessions"] == 2 and reference["sessions"] == 1
    assert resumed["curve"] == reference["curve"]  # the resumed run is the uninterrupted one
    assert resumed["validation_in_regions"] == reference["validation_in_regions"]
    plain, vq = runs["realnvp_matched_seed0"], runs["vq_realnvp_beta0.25_seed0"]
    assert plain["parameters"] >= vq["parameters"] == resumed["parameters"]
    assert plain["budget"]["total_steps"] == vq["budget"]["total_steps"]
    assert plain["budget"]["flow_steps"] == vq["budget"]["atlas_steps"] + vq["budget"]["flow_steps"]
    assert [p["step"] for p in plain["curve"]][-1] == [p["step"] for p in vq["curve"]][-1]
    assert sum(vq["atlas_chart_shares"]) == pytest.approx(1.0)
    assert all(run["split"] == "validation" and len(run["commit"]) == 40 for run in runs.values())

    select = ("--smoke", "--seeds", "0", "--families", "realnvp", "--results", "results")
    call(sys.executable, script, "--stage", "select", *select, "--out", "select.json")
    selection = json.loads((tmp_path / "select.json").read_text())
    assert selection["split"] == "validation"
    assert selection["configurations_tried"] == {
        "realnvp": ["vq_realnvp_beta0.25", "vq_realnvp_beta1", "realnvp_matched"]
    }
    ends = {b: runs[f"vq_realnvp_beta{b}_seed0"]["validation_frechet_end"] for b in ("0.25", "1")}
    assert selection["chosen"]["realnvp"] == f"vq_realnvp_beta{min(ends, key=ends.get)}"
    # the test stage, with the test files now
    call(sys.executable, script, "--stage", "test", *select, "--selection", "select.json",
         "--out", "test.json", "--figures", "figures",
         PYRO_MANIFOLD_DATA=os.environ["PYRO_MANIFOLD_DATA"])  # fmt: skip
    report = json.loads((tmp_path / "test.json").read_text())
    family = report["families"]["realnvp"]
    assert report["split"] == "test" and report["selection_commit"] == selection["commit"]
    assert family["chosen"] == selection["chosen"]["realnvp"] and family["num_configurations"] == 3
    test_figures = family["test_frechet"]
    assert set(test_figures) == {family["chosen"], "realnvp_matched"}
    for figure in test_figures.values():
        assert len(figure["per_seed"]) == 1 and figure["mean"] == figure["per_seed"][0]
    assert family["claim_met"] == (
        test_figures[family["chosen"]]["mean"] < test_figures["realnvp_matched"]["mean"]
    )
    assert _finite(family["test_frechet_in_regions"]["mean"])
    assert (tmp_path / "figures" / "vq_protocol_mnist.png").stat().st_size > 0


def check_robustness(tmp_path, mnist_runs):
    _run("robustness.py", "--smoke", "--out", "robustness.json", cwd=tmp_path)
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["dtype"] == "float32" and len(report["rows"]) == 9
    assert report["info"]["commit"] and "--smoke" in report["info"]["command"]
    for name, row in report["rows"].items():
        assert row["all_losses_finite"] and row["parameters_finite"], name
        assert row["steps"] == (20 if name == "VQFlow" else 10)
        assert _finite(row["final_loss"], row["test_log_likelihood"])


# script -> (check, what it needs: "runs" (the mnist_runs fixture), "mnist" or None,
#            slow: more than about 10 s on one thread)
SMOKE = {
    "mnist_flows.py": (check_mnist_flows, "runs", False),
    "nif_mnist_eval.py": (check_nif_mnist_eval, "runs", True),
    "nif_prior_gap.py": (check_nif_prior_gap, "runs", True),
    "mnist_test_outliers.py": (check_mnist_test_outliers, "runs", False),
    "nf_mixture_base.py": (check_nf_mixture_base, "runs", True),
    "nif_protocol.py": (check_nif_protocol, "runs", True),
    "vq_atlas_purity.py": (check_vq_atlas_purity, "mnist", False),
    "flow_vae_mnist.py": (check_flow_vae_mnist, "mnist", False),
    "vmonf.py": (check_vmonf, None, False),
    "vq_flows.py": (check_vq_flows, None, True),
    "vq_protocol.py": (check_vq_protocol, "mnist", True),
    "robustness.py": (check_robustness, None, False),
}


def test_every_benchmark_script_is_smoke_tested():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    assert set(SMOKE) | TESTED_ELSEWHERE | MODULES == scripts
    assert not set(SMOKE) & TESTED_ELSEWHERE
    for script in SMOKE:
        assert "--smoke" in (BENCHMARKS / script).read_text(), script


def _params():
    for script, (_, needs, slow) in SMOKE.items():
        marks = ([NEEDS_MNIST, pytest.mark.mnist] if needs else []) + (
            [pytest.mark.slow] if slow else []
        )
        yield pytest.param(script, marks=marks, id=script.removesuffix(".py"))


@pytest.mark.parametrize("script", list(_params()))
def test_smoke(script, tmp_path, request):
    check, needs, _ = SMOKE[script]
    check(tmp_path, request.getfixturevalue("mnist_runs") if needs == "runs" else None)


# ------------------------------------------------------- known answers of the metrics code
@pytest.fixture
def bench(monkeypatch):
    """The benchmark scripts as modules (benchmarks/ on sys.path, as when run)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import mnist_flows
    import nif_mnist_eval
    import vq_atlas_purity

    return mnist_flows, nif_mnist_eval, vq_atlas_purity


def _blobs(generator, per_class, dim=20, spread=0.1):
    """Ten far-apart clusters, one per label: centres 10 e_k, isotropic noise ``spread``."""
    labels = torch.arange(10).repeat_interleave(per_class)
    centres = 10 * torch.eye(10, dim)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_knn_and_linear_probe_score_one_on_separable_points(bench):
    _, nif_mnist_eval, _ = bench
    g = torch.Generator().manual_seed(0)
    (train_z, train_y), (test_z, test_y) = _blobs(g, 30), _blobs(g, 10)
    assert nif_mnist_eval.knn_accuracy(train_z, train_y, test_z, test_y) == 1.0
    assert nif_mnist_eval.linear_probe_accuracy(train_z, train_y, test_z, test_y) == 1.0
    # labels that the points do not carry: the probe cannot be right on every test point
    shuffled = test_y[torch.randperm(len(test_y), generator=g)]
    assert nif_mnist_eval.linear_probe_accuracy(train_z, train_y, test_z, shuffled) < 0.5


def test_knn_votes_by_hand(bench):
    _, nif_mnist_eval, _ = bench
    train_z = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    train_y = torch.tensor([0, 0, 0, 1, 1, 1])
    test_z = torch.tensor([[1.5], [10.5], [6.9]])  # the third: 2 of its 3 neighbours say 1
    assert nif_mnist_eval.knn_accuracy(train_z, train_y, test_z, torch.tensor([0, 0, 1]), k=3) == (
        pytest.approx(2 / 3)
    )


def test_bits_per_dim_of_the_uniform_density_is_eight(bench):
    """The dequantized pixels u ~ U[0, 1): log p(u) = 0, so exactly log2(256) = 8 bits/dim.

    In logit space y = logit(lam + (1 - 2 lam) u) that density is
    log p(y) = log sigmoid(y) + log sigmoid(-y) - log(1 - 2 lam), written here without the
    package's transform; mnist_flows.evaluate adds the transform's log-determinant back.
    """
    mnist_flows, _, _ = bench

    class Uniform(torch.nn.Module):
        def log_prob(self, y):
            y = y.double()
            log_density = torch.nn.functional.logsigmoid(y) + torch.nn.functional.logsigmoid(-y)
            return (log_density - math.log1p(-2 * mnist_flows.LAMBDA)).sum(-1)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 784), generator=g, dtype=torch.uint8)
    images[0] = 0  # the extremes, where the logit is steepest
    images[1] = 255
    metrics = mnist_flows.evaluate(Uniform(), images, batch_size=128)
    assert metrics["bits_per_dim"] == pytest.approx(8.0, abs=1e-4)
    assert metrics["bits_per_dim_stderr"] < 1e-5
    # a density twice as high on every pixel (not normalised) is one bit per dimension less
    _, per_image = mnist_flows.per_image(
        Uniform(), images, log_prob=lambda y: Uniform().log_prob(y) + 784 * math.log(2)
    )
    torch.testing.assert_close(per_image, torch.full_like(per_image, 7.0), rtol=0, atol=1e-4)


def test_nif_protocol_rule(bench):
    """Claim 1's margin on validation first, then the lowest Fréchet; the NF's best t."""
    from nif_protocol import MARGIN_BITS, choose

    nf = {"bits_per_dim": 1.70, "frechet": {0.5: 300.0, 0.8: 240.0, 1.0: 250.0}}
    nif = {
        "close, blurry": {"bits_per_dim": 1.70 + MARGIN_BITS, "frechet_s0": 200.0},
        "close, sharp": {"bits_per_dim": 1.69, "frechet_s0": 150.0},
        "far, sharpest": {"bits_per_dim": 1.70 + 2 * MARGIN_BITS, "frechet_s0": 50.0},
    }
    assert choose(nif, nf) == ("close, sharp", 0.8)
    # nothing within the margin: the best bits/dim, whatever its Fréchet distance
    far = {k: {**v, "bits_per_dim": v["bits_per_dim"] + 1} for k, v in nif.items()}
    assert choose(far, nf) == ("close, sharp", 0.8)


def test_provenance_names_this_checkout(bench):
    from provenance import provenance

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    report = provenance()
    assert report["commit"] == head and isinstance(report["uncommitted_changes"], bool)
    assert report["command"].startswith("python ") and report["machine"]["threads"] >= 1


def test_batch_norm_statistics_of_the_whole_training_set(bench):
    """After the reset, evaluation mode scores the training set exactly as one training batch.

    In training mode each batch norm normalises by its input batch's own mean and unbiased
    variance; with the whole training set as the batch, those are the statistics the
    reset must have stored, layer by layer from the data end.
    """
    mnist_flows, _, _ = bench
    from pyro_manifold.models import Flow

    torch.manual_seed(0)
    flow = Flow(4, "maf", num_layers=3, hidden_dims=[8], batch_norm=True).double()
    y = torch.randn(300, 4, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0]) + 1.0
    assert mnist_flows.set_batch_norm_to_training_set(flow, y, batch_size=64) == 2
    with torch.no_grad():
        eval_log_prob = flow.log_prob(y)
        flow.train()
        train_log_prob = flow.log_prob(y)
    torch.testing.assert_close(eval_log_prob, train_log_prob, rtol=1e-10, atol=1e-10)


def test_chart_purity_known_answers(bench):
    *_, vq_atlas_purity = bench
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (400,), generator=g)
    charts = (torch.randperm(10, generator=g) + 3)[labels]  # one chart per digit, renamed
    assert vq_atlas_purity.purity(charts, labels, 13) == 1.0
    # by hand: chart 0 holds digits 0, 0, 1 and chart 1 digits 1, 1, 2 -> (2 + 2) / 6
    assign, digits = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 1, 2])
    assert vq_atlas_purity.purity(assign, digits, 2) == pytest.approx(4 / 6)
    # one chart for everything: the share of the most common digit
    assert vq_atlas_purity.purity(torch.zeros(6, dtype=torch.long), digits, 1) == 0.5


def test_vq_protocol_rule(bench):
    """The commitment with the lowest mean validation Fréchet distance, per VQ family."""
    from vq_flows import lowest_mean
    from vq_protocol import choose

    validation = {
        "maf": {0.25: [493.8, 352.5, 427.5], 1.0: [318.9, 357.0, 315.7]},  # 424.6 / 330.5
        "realnvp": {0.25: [410.0, 420.0, 430.0], 1.0: [300.0, 600.0, 400.0]},  # 420 / 433.3
    }
    assert choose(validation) == {"maf": 1.0, "realnvp": 0.25}
    # a tie goes to the smaller beta, whatever the order given
    assert choose({"maf": {1.0: [2.0, 4.0], 0.25: [3.0, 3.0]}}) == {"maf": 0.25}
    with pytest.raises(ValueError, match="same seeds"):
        choose({"maf": {0.25: [1.0, 2.0, 3.0], 1.0: [1.0, 2.0]}})
    # the toy rule: lowest mean, ties to the first listed
    assert lowest_mean({"K8": [2.0, 4.0], "K4": [1.0, 4.5], "K2": [3.0, 3.0]}) == "K4"
    assert lowest_mean({"a": [1.0, 3.0], "b": [2.0, 2.0]}) == "a"
    with pytest.raises(ValueError):
        lowest_mean({"a": []})


def test_vq_protocol_matched_width(bench):
    """The plain baseline is the narrowest flow with at least the VQ model's parameters."""
    import vq_protocol

    settings = vq_protocol.SMOKE
    for family in vq_protocol.FAMILIES:
        width, target = vq_protocol.matched_width(family, settings)
        vq = vq_protocol.build(f"vq_{family}", settings, commitment=1.0)
        assert target == vq_protocol.count(vq)  # beta does not change the count
        assert vq_protocol.count(vq_protocol.build(family, settings, width=width)) >= target
        assert vq_protocol.count(vq_protocol.build(family, settings, width=width - 1)) < target
