"""Every benchmark script runs with --smoke and writes the JSON fields RESULTS.md reads.

speed.py, device_check.py and streaming_memory.py are run by tests/test_benchmarks.py.
The scripts that evaluate trained MNIST runs get two tiny runs of mnist_flows.py --smoke
(an NF and a NIF, trained once per module). Each script runs as a subprocess in a
temporary folder, so a smoke run writes nothing into the repository.

The second half checks the benchmark-only metrics code on constructed inputs with known
answers: k-NN and linear-probe accuracy, bits/dim of a known density through the
dequantization pipeline, chart purity.
"""

import argparse
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
    # the names RESULTS.md uses: --out names the JSON, --figures and --tag the PNGs
    _run("nif_mnist_eval.py", "--smoke", "--nf-run", str(nf), "--nif64-run", str(nif),
         "--models", "NF", "NIF-64", "--out", "results/nif_mnist_eval_noise01.json",
         "--figures", "figures", "--tag", "noise01", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "results" / "nif_mnist_eval_noise01.json").read_text())
    assert [(p["models"], "--smoke" in p["command"]) for p in report["provenance"]] == [
        (["NF", "NIF-64"], True)
    ]
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
    pngs = {"temperature_NF_noise01.png", "temperature_NIF-64_noise01.png",
            "nif_frechet_vs_s_noise01.png"}  # fmt: skip
    assert {p.name for p in (tmp_path / "figures").iterdir()} == pngs
    assert all((tmp_path / "figures" / png).stat().st_size > 0 for png in pngs)
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["nif_mnist_eval_noise01.json"]


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
        assert row["log_likelihood_logit_mean_without_worst"] >= row["log_likelihood_logit_mean"]
        assert row["log_likelihood_logit_mean"] == pytest.approx(
            mnist_runs[name][1]["test_log_likelihood_logit"], rel=1e-5
        )
        assert _finite(row["bits_per_dim_median"], row["log_likelihood_logit_median"])
    assert len(report["commit"]) == 40 and "--smoke" in report["command"]


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
         "--out", "mix/nf_mixture_base.json",
         "--figure", "figures/temperature_NF_gmm10.png", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "mix" / "nf_mixture_base.json").read_text())
    assert report["smoke"] and report["components"] == 2 and len(report["commit"]) == 40
    assert 1 <= report["em"]["iterations"] <= 3
    assert report["val_nll_mixture_base"] == min(report["em"]["val_loss"])
    unit, mixture = report["unit normal"], report["2-component mixture"]
    assert unit["bits_per_dim"] == pytest.approx(nf_report["test_bits_per_dim"], rel=1e-5)
    for row in (unit, mixture):
        assert _finite(row["bits_per_dim"], row["frechet_t1"], row["nonfinite_sample_fraction"])
    # the figure under the name RESULTS.md uses, not the default next to the JSON
    assert (tmp_path / "figures" / "temperature_NF_gmm10.png").stat().st_size > 0
    assert [p.name for p in (tmp_path / "mix").iterdir()] == ["nf_mixture_base.json"]


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


def check_vae_protocol(tmp_path, mnist_runs):
    """The whole queue (vae_protocol.sh) in smoke mode: select on validation, test once."""
    notest = tmp_path / "notest" / "MNIST" / "raw"  # the training files only
    notest.mkdir(parents=True)
    raw = Path(os.environ["PYRO_MANIFOLD_DATA"]) / "MNIST" / "raw"
    for f in raw.glob("train-*"):
        (notest / f.name).symlink_to(f)
    env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, MPLBACKEND="Agg",
               RESULTS=str(tmp_path / "results"), FIGURES=str(tmp_path / "figures"),
               RUNS=str(tmp_path / "runs"), PYRO_MANIFOLD_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                          if p))  # fmt: skip

    def queue(*stages, data=os.environ["PYRO_MANIFOLD_DATA"], ok=True):
        out = ""
        for stage in stages:
            proc = subprocess.run(["bash", str(BENCHMARKS / "vae_protocol.sh"), stage],
                                  env={**env, "PYRO_MANIFOLD_DATA": str(data)},
                                  capture_output=True, text=True, timeout=900)  # fmt: skip
            assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
            out += proc.stdout + proc.stderr
        return out

    results, runs = tmp_path / "results", tmp_path / "runs"
    # before the selection exists, the test stage refuses to read the test images
    refused = subprocess.run(
        [sys.executable, str(BENCHMARKS / "vae_protocol.py"), "--stage", "test", "--smoke",
         "--encoder", "gaussian", "--recipe", "e500", "--results", str(results)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode != 0 and "run the select stage first" in refused.stderr
    # training and selection run without the test files on disk: they never read them
    queue("candidates", "select", "finals", data=tmp_path / "notest")
    queue("test", data=tmp_path / "notest", ok=False)  # the test stage needs them
    out = queue("all")  # trained runs are skipped; the test stage scores each run once
    assert "training" not in out and out.count("scoring the test images") == 8

    selection = json.loads((results / "vae_protocol_selection.json").read_text())
    assert selection["split"] == "validation" and selection["seeds"] == [0, 1]
    assert selection["configurations_tried"] == ["e500", "e1200", "e1200_w10"]
    trained = {p.stem: json.loads(p.read_text())
               for p in (results / "vae_protocol_runs").glob("*.json")
               if not p.stem.endswith("_test")}  # fmt: skip
    nll = {r: trained[f"gaussian_{r}_seed0"]["validation_nll_iwae"]
           for r in selection["configurations_tried"]}  # fmt: skip
    assert selection["chosen"] == min(nll, key=nll.get)  # the rule, on validation only
    assert selection["validation"][selection["chosen"]]["validation_nll_iwae"] == min(nll.values())
    for name, row in trained.items():  # validation figures only, curves on validation
        assert row["split"] == "validation" and not [k for k in row if "test" in k], name
        assert row["validation_nll_iwae"] == pytest.approx(
            -sum(row["validation_iwae_bound"]) / 200, abs=1e-3
        )
        assert len(row["curve_epochs"]) == len(row["curve_validation_neg_elbo"]) >= 1
        assert row["best_epoch"] in row["curve_epochs"] and len(row["commit"]) == 40
        assert row["budget"]["batch_size"] == 100 and row["budget"]["lr_schedule"] == "cosine"
    report = json.loads((results / "vae_protocol_test.json").read_text())
    assert report["chosen"] == selection["chosen"] and report["selection_commit"]
    configurations = report["configurations"]
    reduced = selection["final_runs"]["pcp_cpu"][0][1]
    assert set(configurations) == {f"gaussian {selection['chosen']}",
                                   f"iaf {selection['chosen']}", f"gaussian {reduced}",
                                   f"pcp64 {reduced}"}  # fmt: skip
    for key, row in configurations.items():
        encoder, recipe = key.split()
        tests = [json.loads((results / "vae_protocol_runs" /
                             f"{encoder}_{recipe}_seed{s}_test.json").read_text())
                 for s in (0, 1)]  # fmt: skip
        for t in tests:  # all 100 smoke test images, 20 samples, scored in 2 blocks
            assert t["test_iwae_points"] == 100 and t["test_iwae_samples"] == 20
            assert t["test_nll_iwae"] == pytest.approx(-sum(t["test_iwae_bound"]) / 100, abs=1e-3)
            assert t["selection_commit"] == selection["commit"]
        per_seed = [t["test_nll_iwae"] for t in tests]
        assert row["test_nll_iwae"]["per_seed"] == per_seed
        assert row["test_nll_iwae"]["mean"] == pytest.approx(sum(per_seed) / 2)
        assert (tmp_path / "figures" / row["samples_figure"]).stat().st_size > 0
    claims, chosen = report["claims"], selection["chosen"]
    gaussian = configurations[f"gaussian {chosen}"]["test_nll_iwae"]["mean"]
    assert claims["gaussian_bar"]["met"] == (gaussian <= 87.5)  # smoke: far above the bar
    assert claims["iaf_margin"]["gain_nats"] == pytest.approx(
        gaussian - configurations[f"iaf {chosen}"]["test_nll_iwae"]["mean"]
    )
    assert claims["iaf_margin"]["met"] == (claims["iaf_margin"]["gain_nats"] >= 1.0)
    assert claims["pcp_cpu"]["met"] == (claims["pcp_cpu"]["gain_nats"] > 0)
    assert "pcp_gpu" not in claims  # the GPU's runs were not made
    for name in ("candidates", "validation_curves"):
        assert (tmp_path / "figures" / f"vae_protocol_{name}.png").stat().st_size > 0

    # once: a scored run is refused, and a second queue run starts nothing
    scored = results / "vae_protocol_runs" / f"gaussian_{chosen}_seed0_test.json"
    before = scored.stat().st_mtime_ns
    again = subprocess.run(
        [sys.executable, str(BENCHMARKS / "vae_protocol.py"), "--stage", "test", "--smoke",
         "--encoder", "gaussian", "--recipe", chosen, "--results", str(results),
         "--runs", str(runs)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode != 0 and "already" in again.stderr
    # a run whose JSON is lost resumes from its checkpoint to the same validation figure
    lost = results / "vae_protocol_runs" / f"pcp64_{reduced}_seed1.json"
    kept = json.loads(lost.read_text())
    lost.unlink()
    (runs / f"pcp64_{reduced}_seed1" / "validation_iwae.json").unlink()
    out = queue("finals")
    assert out.count("training --resume") == 1 and scored.stat().st_mtime_ns == before
    resumed = json.loads(lost.read_text())
    assert resumed["validation_nll_iwae"] == kept["validation_nll_iwae"]
    assert resumed["curve_validation_neg_elbo"] == kept["curve_validation_neg_elbo"]


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


def check_vmonf_mnist(tmp_path):
    """The MNIST queue (benchmarks/vmonf_mnist.sh) in smoke mode, seeds 0 and 1: candidates,
    select and seeds with a data root that holds only the training files (so no stage before
    the test reads a test image), then test; then a job whose JSON is gone resumes."""
    data = Path(os.environ["PYRO_MANIFOLD_DATA"])
    train_only = tmp_path / "train_only"
    (train_only / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (train_only / "MNIST" / "raw" / name).symlink_to(data / "MNIST" / "raw" / name)
    results, runs, figures = tmp_path / "results", tmp_path / "runs", tmp_path / "figures"

    def queue(stage, root):
        env = dict(os.environ, MPLBACKEND="Agg", PYRO_MANIFOLD_CACHE=str(tmp_path / "cache"),
                   PYTHON=sys.executable, PYRO_MANIFOLD_DATA=str(root),
                   VMONF_MNIST_RUNS=str(runs), VMONF_MNIST_RESULTS=str(results),
                   VMONF_MNIST_FIGURES=str(figures), VMONF_MNIST_SEEDS="1",
                   VMONF_MNIST_ARGS="--smoke")  # fmt: skip
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        proc = subprocess.run(["bash", str(BENCHMARKS / "vmonf_mnist.sh"), stage], env=env,
                              capture_output=True, text=True, timeout=1200)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    for stage in ("candidates", "select", "seeds"):
        queue(stage, train_only)
    queue("test", data)

    def load(path):
        return json.loads(path.read_text())

    reports = {p.stem: load(p) for p in (results / "vmonf_mnist_runs").glob("*.json")}
    selection = load(results / "vmonf_mnist_selection.json")
    chosen, tried = selection["mnist"]["selected"], selection["mnist"]["configurations_tried"]
    assert tried == {"unsupervised": ["paper", "kmeans", "kmeans_encoder"],
                     "semi100": ["paper", "kmeans_encoder"]}  # fmt: skip
    assert (
        selection["mnist"]["split"] == "validation"
        and selection["mnist"]["num_configurations"] == 5
    )
    for setting, configs in tried.items():  # the rule: seed 0's validation log-likelihood
        ll = {c: reports[f"{setting}_{c}_seed0"]["mnist"]["validation"]["log_likelihood"]
              for c in configs}  # fmt: skip
        assert chosen[setting] == max(ll, key=ll.get)
    pairs = [[s, c] for s in tried for c in dict.fromkeys((chosen[s], "paper"))]
    assert selection["mnist"]["train_next"] == pairs
    assert set(reports) == {f"{s}_{c}_seed0" for s in tried for c in tried[s]} | {
        f"{s}_{c}_seed1" for s, c in pairs
    }
    for name, report in reports.items():
        run = report["mnist"]
        assert run["split"] == "validation" and run["steps"] == 4 and not run["resumed"]
        assert "--smoke" in report["command"] and len(report["commit"]) == 40
        assert run["best_validation_loss"] == min(run["validation_curve"]["loss"])
        assert run["best_step"] in run["validation_curve"]["step"]
        assert run["job"]["labels"] == (100 if name.startswith("semi100") else 0)
        assert (runs / name / "best.pt").exists() and _finite(run["validation"]["log_likelihood"])
    test = load(results / "vmonf_mnist_test.json")["mnist"]
    assert test["split"] == "test" and test["seeds"] == [0, 1]
    assert test["selection"]["commit"] == selection["commit"]
    for setting, tag in (("unsupervised", "unsupervised"), ("semi100", "semi")):
        rows = test[setting]["test"]
        models = {row["configuration"]: row for row in rows.values() if "configuration" in row}
        assert set(models) == {chosen[setting], "paper"}
        for config, row in models.items():
            assert row["seeds"] == [0, 1] and row["accuracy_metric"] == (
                "accuracy" if setting == "unsupervised" else "classification_accuracy"
            )
            assert row["accuracy"]["per_seed"] == [
                s[row["accuracy_metric"]] for s in row["per_seed"]
            ]
            assert row["accuracy"]["mean"] == pytest.approx(sum(row["accuracy"]["per_seed"]) / 2)
            for scores in row["per_seed"]:  # the checkpoint scored is the one its run scored
                run = reports[f"{setting}_{config}_seed{scores['seed']}"]["mnist"]
                assert scores["validation_log_likelihood_reloaded"] == pytest.approx(
                    run["validation"]["log_likelihood"], rel=1e-5
                )
                assert sum(map(sum, scores["contingency_table"])) == 500  # every test image
        baselines = {name: row for name, row in rows.items() if name not in
                     {n for n, row in rows.items() if "configuration" in row}}  # fmt: skip
        assert len(baselines) == (3 if setting == "unsupervised" else 5)
        for name, row in baselines.items():
            assert 0 <= row["accuracy"]["mean"] <= 1, name
            assert row["seeds"] == ([] if name.startswith("1-NN") else [0, 1]), name
        figure = test[setting]["figure"]
        lls = {
            s["seed"]: s["validation_log_likelihood"] for s in models[chosen[setting]]["per_seed"]
        }
        assert (
            figure["seed"] == max(lls, key=lls.get) and figure["configuration"] == chosen[setting]
        )
        assert (figures / f"vmonf_mnist_{tag}.png").stat().st_size > 0
    # a job whose JSON is missing resumes from its last checkpoint; finished jobs are skipped
    name = "unsupervised_kmeans_seed0"
    (results / "vmonf_mnist_runs" / f"{name}.json").unlink()
    out = queue("candidates", train_only)
    assert out.count(": done (") == 4 and f"{name}: training --resume" in out
    resumed = load(results / "vmonf_mnist_runs" / f"{name}.json")["mnist"]
    assert resumed["resumed"] and resumed["validation"] == reports[name]["mnist"]["validation"]
    assert resumed["validation_curve"] == reports[name]["mnist"]["validation_curve"]


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
    # the toy jobs were saved as they ended: --resume loads them, and scores the same
    assert toy["jobs"]["loaded"] == 0 and toy["jobs"]["commits"] == [report["commit"]]
    jobs = sorted(p.name for p in (tmp_path / "runs" / "smoke" / "vq_flows_toy").iterdir())
    assert len(jobs) == 2 * 3 and all(j.endswith("_seed0.pt") for j in jobs)
    resumed = _run("vq_flows.py", "--part", "toy", "--smoke", "--device", "cpu", "--resume",
                   "--out", "vq_resumed.json", cwd=tmp_path)  # fmt: skip
    assert resumed.stdout.count(", loaded)") == 6
    again = json.loads((tmp_path / "vq_resumed.json").read_text())["toy"]
    assert again["jobs"]["loaded"] == 6
    for manifold in ("sphere", "torus"):
        for key in ("validation", "selected", "test", "parameters"):
            assert again[manifold][key] == toy[manifold][key], (manifold, key)
    # a job trained with other settings, or damaged, is refused by name, not reused

    def refused(*extra):
        command = [sys.executable, str(BENCHMARKS / "vq_flows.py"), "--part", "toy", "--smoke",
                   "--device", "cpu", "--resume", "--out", "x.json", *extra]  # fmt: skip
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PYTHONPATH": path})  # fmt: skip
        assert proc.returncode != 0 and not (tmp_path / "x.json").exists()
        return proc.stderr

    assert "remove the file or run without --resume" in refused("--noise", "0.05")
    (tmp_path / "runs" / "smoke" / "vq_flows_toy" / jobs[0]).write_bytes(b"not a checkpoint")
    assert f"{jobs[0]}: unreadable" in refused()


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


def check_validation_curves(tmp_path, mnist_runs):
    run, _ = mnist_runs["maf"]
    _run("validation_curves.py", "--smoke", str(run), "--figure", "fig/curves.png",
         "--out", "res/curves.json", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "res" / "curves.json").read_text())
    history = json.loads((run / "history.json").read_text())
    batch = json.loads((run / "config.json").read_text())["batch_size"]
    c = report["runs"][run.name]
    assert c["step"] == history["val_step"] and c["validation_nll"] == history["val_loss"]
    assert c["epoch"] == [s * batch / 50_000 for s in c["step"]]
    assert c["best_validation_nll"] == min(history["val_loss"]) and len(report["commit"]) == 40
    assert (tmp_path / "fig" / "curves.png").stat().st_size > 0


def check_mnist_classifier(tmp_path, fake_mnist):
    """Each seed trained and scored once; seed 0 cached where the metrics look."""
    data = fake_mnist(tmp_path / "data")
    _run("mnist_classifier.py", "--smoke", "--data", str(data), "--cache",
         "--out", "res/mnist_classifier.json", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "res" / "mnist_classifier.json").read_text())
    assert report["smoke"] and report["seeds"] == [0, 1] and len(report["commit"]) == 40
    assert report["recipe"]["epochs"] == 1 and not report["recipe"]["augment"]
    accuracies = [report["runs"][s]["test_accuracy"] for s in ("0", "1")]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert report["test_accuracy"]["min"] == min(accuracies)
    assert report["test_accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
    assert report["met"] == (min(accuracies) >= 0.99)
    from pyro_manifold.metrics import load_mnist_classifier

    cached = load_mnist_classifier(data)  # the data root's cache: seed 0's network
    assert report["cached_seed0"] == str(data / "pyro_manifold" / "mnist_classifier.pt")
    assert cached.test_accuracy == report["runs"]["0"]["test_accuracy"]


# script -> (check, what it needs: "runs" (the mnist_runs fixture), "mnist", "fake_mnist"
#            (a tiny synthetic MNIST: the fake_mnist fixture) or None,
#            slow: more than about 10 s on one thread)
SMOKE = {
    "mnist_classifier.py": (check_mnist_classifier, "fake_mnist", False),
    "validation_curves.py": (check_validation_curves, "runs", False),
    "mnist_flows.py": (check_mnist_flows, "runs", False),
    "nif_mnist_eval.py": (check_nif_mnist_eval, "runs", True),
    "nif_prior_gap.py": (check_nif_prior_gap, "runs", True),
    "mnist_test_outliers.py": (check_mnist_test_outliers, "runs", False),
    "nf_mixture_base.py": (check_nf_mixture_base, "runs", True),
    "nif_protocol.py": (check_nif_protocol, "runs", True),
    "vq_atlas_purity.py": (check_vq_atlas_purity, "mnist", False),
    "flow_vae_mnist.py": (check_flow_vae_mnist, "mnist", False),
    "vae_protocol.py": (check_vae_protocol, "mnist", True),
    "vmonf.py": (check_vmonf, None, False),
    "vq_flows.py": (check_vq_flows, None, True),
    "vq_protocol.py": (check_vq_protocol, "mnist", True),
    "robustness.py": (check_robustness, None, False),
}


@NEEDS_MNIST
@pytest.mark.mnist
@pytest.mark.slow
def test_vmonf_mnist_protocol_smoke(tmp_path):
    """vmonf.py --part mnist's stages through their queue (beside vmonf.py's toy parts)."""
    check_vmonf_mnist(tmp_path)


def test_every_benchmark_script_is_smoke_tested():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    assert set(SMOKE) | TESTED_ELSEWHERE | MODULES == scripts
    assert not set(SMOKE) & TESTED_ELSEWHERE
    for script in SMOKE:
        assert "--smoke" in (BENCHMARKS / script).read_text(), script


def _params():
    for script, (_, needs, slow) in SMOKE.items():
        real_mnist = needs in ("runs", "mnist")
        marks = ([NEEDS_MNIST, pytest.mark.mnist] if real_mnist else []) + (
            [pytest.mark.slow] if slow else []
        )
        yield pytest.param(script, marks=marks, id=script.removesuffix(".py"))


@pytest.mark.parametrize("script", list(_params()))
def test_smoke(script, tmp_path, request):
    check, needs, _ = SMOKE[script]
    fixture = {"runs": "mnist_runs", "fake_mnist": "fake_mnist"}.get(needs)
    check(tmp_path, request.getfixturevalue(fixture) if fixture else None)


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


def test_vae_protocol_rule(bench):
    """The lowest finite validation NLL, ties to the cheaper; the final runs it implies."""
    from vae_protocol import CANDIDATES, choose, final_runs, recipe, with_epochs

    assert choose({"e500": 88.9, "e1200": 88.1, "e1200_w10": 88.3}) == "e1200"
    assert choose({"e500": 88.0, "e1200": 88.0, "e1200_w10": 88.0}) == "e500"  # a tie
    assert choose({"e500": 90.0, "e1200": float("nan"), "e1200_w10": 89.5}) == "e1200_w10"
    with pytest.raises(SystemExit):
        choose(dict.fromkeys(CANDIDATES, float("inf")))
    assert recipe("e1200_w10") == {"epochs": 1200, "kl_warmup_fraction": 0.1}
    with pytest.raises(ValueError):
        recipe("1200")
    assert with_epochs("e1200_w10", 300) == "e300_w10"
    runs = final_runs("e1200_w10")
    assert runs["main"] == [["gaussian", "e1200_w10"], ["iaf", "e1200_w10"]]
    # the CPU's PCP-Map and its baseline share the shortened budget; the GPU's the chosen one
    assert runs["pcp_cpu"] == [["gaussian", "e300_w10"], ["pcp64", "e300_w10"]]
    assert runs["pcp_gpu"] == [["gaussian", "e1200_w10"], ["pcp", "e1200_w10"]]


def test_vae_protocol_iwae_resumes_block_by_block(bench, tmp_path):
    """An evaluation stopped after a block and resumed returns the uninterrupted numbers."""
    from vae_protocol import iwae_in_blocks

    from pyro_manifold.models import FlowVAE

    torch.manual_seed(0)
    vae = FlowVAE(2, 6, hidden_dims=[8]).eval()
    x = torch.randint(0, 2, (7, 6)).float()
    whole, done = iwae_in_blocks(vae, x, 16, tmp_path / "a.json", seed=3, block=3)
    assert done and whole.shape == (7,)
    part, done = iwae_in_blocks(vae, x, 16, tmp_path / "b.json", seed=3, block=3, max_blocks=1)
    assert not done and part.shape == (3,)
    rest, done = iwae_in_blocks(vae, x, 16, tmp_path / "b.json", seed=3, block=3)
    assert done
    torch.testing.assert_close(rest, whole, rtol=0, atol=0)
    with pytest.raises(SystemExit, match="remove it"):  # another setting: refused
        iwae_in_blocks(vae, x, 32, tmp_path / "b.json", seed=3, block=3)


def test_output_names_follow_out_figures_and_tag(bench, tmp_path, monkeypatch):
    """The options that let a printed command write the names RESULTS.md uses."""
    _, nif_mnist_eval, _ = bench
    import vmonf

    output_paths = nif_mnist_eval.output_paths
    # --out a folder: nif_mnist_eval.json in it, the figures beside it, untagged
    assert output_paths(tmp_path / "a") == (tmp_path / "a" / "nif_mnist_eval.json",
                                            tmp_path / "a", "")  # fmt: skip
    # --out a JSON, --figures elsewhere, --tag: the figure names end in _TAG
    json_path = tmp_path / "results" / "nif_mnist_eval_nif64_dense_noise04.json"
    assert output_paths(json_path, tmp_path / "figures", "dense_noise04") == (
        json_path,
        tmp_path / "figures",
        "_dense_noise04",
    )
    assert (tmp_path / "results").is_dir() and (tmp_path / "figures").is_dir()
    monkeypatch.chdir(tmp_path)  # the defaults are relative to the working folder
    assert output_paths(None)[0] == Path("benchmarks/results/nif_mnist_eval.json")
    assert output_paths(None, smoke=True)[0] == Path(
        "runs/smoke/nif_mnist_eval/nif_mnist_eval.json"
    )

    args = argparse.Namespace(figures="figs", tag="")
    assert vmonf.figure_path(args, "vmonf_pinwheel") == Path("figs/vmonf_pinwheel.png")
    args.tag = "6000"
    assert vmonf.figure_path(args, "vmonf_mnist_semi") == Path("figs/vmonf_mnist_semi_6000.png")


def test_vmonf_mnist_rule(bench):
    """Seed 0's validation log-likelihood picks (a mean with more seeds); validation
    accuracy does not; the paper's random start is trained with the other seeds too."""
    from vmonf import MNIST_BASELINE, mnist_choose

    validation = {
        "unsupervised": {
            "paper": {"val_log_likelihood": [-700.0], "val_accuracy": [0.99]},
            "kmeans": {"val_log_likelihood": [-650.0], "val_accuracy": [0.50]},
            "kmeans_encoder": {"val_log_likelihood": [-660.0], "val_accuracy": [0.95]},
        },
        "semi100": {
            "paper": {"val_log_likelihood": [-600.0], "val_accuracy": [0.10]},
            "kmeans_encoder": {"val_log_likelihood": [-610.0], "val_accuracy": [0.99]},
        },
    }
    chosen, train_next = mnist_choose(validation)
    assert MNIST_BASELINE == "paper" and chosen == {"unsupervised": "kmeans", "semi100": "paper"}
    # one job when the random start is the chosen one
    assert train_next == [
        ["unsupervised", "kmeans"],
        ["unsupervised", "paper"],
        ["semi100", "paper"],
    ]
    validation["unsupervised"]["paper"]["val_log_likelihood"] = [-600.0, -695.0]  # mean -647.5
    assert mnist_choose(validation)[0]["unsupervised"] == "paper"


def test_diagonal_em_known_answers(bench):
    from vmonf import COVARIANCE_FLOOR, classification_accuracy, diagonal_em, diagonal_gmm_log_joint

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5]) + 3
    # one component: the maximum-likelihood Gaussian after one M-step, whatever the start
    mixture = diagonal_em(x, 1, x, seed=0)
    torch.testing.assert_close(mixture[1][0], x.mean(0))
    torch.testing.assert_close(mixture[2][0], x.var(0, unbiased=False) + COVARIANCE_FLOOR)
    normal = torch.distributions.Normal(mixture[1][0], mixture[2][0].sqrt())
    torch.testing.assert_close(diagonal_gmm_log_joint(mixture, x)[:, 0], normal.log_prob(x).sum(-1))
    # ten far-apart blobs, one label each: component k is blob k on new points
    (points, labels), (new, new_labels) = _blobs(g, 30), _blobs(g, 10)
    known = torch.full_like(labels, -1)
    known[::30] = labels[::30]
    mixture = diagonal_em(points, 10, new, seed=0, labels=known)
    pred = diagonal_gmm_log_joint(mixture, new).argmax(-1)
    assert classification_accuracy(pred, new_labels) == 1.0
    assert classification_accuracy(pred, (new_labels + 1) % 10) == 0.0  # no matching


def test_mnist_scores_match_the_toy_protocol_functions(bench):
    """The chunked scores of the MNIST stages against pinwheel's whole-split functions."""
    import vmonf

    from pyro_manifold.datasets import pinwheel
    from pyro_manifold.models import VariationalMixtureOfFlows

    torch.manual_seed(0)
    model = VariationalMixtureOfFlows(2, 5, num_layers=2, hidden_dims=[8, 8]).eval()
    split, cpu = pinwheel(300, seed=0), torch.device("cpu")
    scores = vmonf.mnist_scores(model, split, cpu, chunk=64)
    assert scores["log_likelihood"] == pytest.approx(
        vmonf.mean_log_likelihood(model, split.data, cpu), rel=1e-6
    )
    assert scores["accuracy"] == vmonf.accuracy(model, split, cpu)
    exact = model.cluster(split.data, exact=True)
    assert scores["exact_posterior_classification_accuracy"] == (
        vmonf.classification_accuracy(exact, split.labels)
    )
    assert sum(map(sum, scores["contingency_table"])) == 300


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


def test_merge_mnist_files_curves_and_shares_under_their_commitment(bench, tmp_path):
    """merge_mnist keeps each part's curves and in-region shares under curve_label(kind, β),
    β from the part's config: β = 1 parts that named their kind alone (``vq_maf``) and those
    that named it with its β land together, apart from the default β = 0.25."""
    from vq_flows import merge_mnist

    def part(name, commitment, kind, seed, frechet, share):
        mnist = {"curves": {kind: {seed: [[2, frechet + 10.0], [4, frechet]]}}}
        if kind.startswith("vq_"):
            mnist["curves"][f"{kind}_in_regions"] = {seed: [[2, frechet + 5.0], [4, frechet - 1]]}
            mnist["acceptance"] = {kind: {seed: [[2, share / 2], [4, share]]}}
        run = {"mnist": mnist}
        if commitment is not None:  # the older parts record no commitment: the default
            run["config"] = {"commitment": commitment}
        (tmp_path / name).write_text(json.dumps(run))
        return str(tmp_path / name)

    paths = [
        part("plain.json", None, "maf", "0", 400.0, None),
        part("default.json", None, "vq_maf", "0", 300.0, 0.5),
        part("beta1_by_kind.json", 1.0, "vq_maf", "0", 200.0, 0.9),
        part("beta1_by_label.json", 1.0, "vq_maf_beta1", "1", 100.0, 0.8),
    ]
    merged = merge_mnist(paths)
    assert merged["acceptance"] == {
        "vq_maf": {"0": [[2, 0.25], [4, 0.5]]},
        "vq_maf_beta1": {"0": [[2, 0.45], [4, 0.9]], "1": [[2, 0.4], [4, 0.8]]},
    }
    assert set(merged["curves"]) == {"maf", "vq_maf", "vq_maf_in_regions", "vq_maf_beta1",
                                     "vq_maf_beta1_in_regions"}  # fmt: skip
    assert merged["vq_maf_beta1"]["seeds"] == ["0", "1"]
    assert merged["vq_maf_beta1"]["frechet"][-1]["values"] == [200.0, 100.0]
    assert merged["vq_maf"]["frechet"][-1]["values"] == [300.0]
    assert merged["vq_maf_beta1_in_regions"]["frechet"][-1]["values"] == [199.0, 99.0]


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
