"""The command line: fit, evaluate, sample, --help (smoke sizes; the demo: test_demo.py)."""

import json
import os

import pytest
import torch

from pyro_manifold.__main__ import main
from pyro_manifold.infer import load_checkpoint

SMALL = [
    "--steps",
    "20",
    "--num-samples",
    "200",
    "--layers",
    "1",
    "--hidden",
    "8",
    "--device",
    "cpu",
    "--validate-every",
    "10",
]


@pytest.mark.parametrize(
    "model, dataset", [("flow", "two_moons"), ("flow", "swiss_roll"), ("nif", "sphere")]
)
def test_fit_evaluate_sample(tmp_path, model, dataset, capsys):
    run = tmp_path / "run"
    extra = ["--latent-dim", "2"] if model == "nif" else []
    assert main(["fit", model, "--dataset", dataset, "--run-dir", str(run), *SMALL, *extra]) == 0
    for name in ["config.json", "checkpoint.pt", "history.json", "metrics.json"]:
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == dataset and metrics["mmd2"] == metrics["mmd2"]
    if dataset != "two_moons":
        assert metrics["mean_manifold_distance"] >= 0
    if model == "nif":
        assert metrics["mean_manifold_distance_s0"] >= 0
        assert (run / "samples_s0.png").exists()
    assert main(["evaluate", str(run)]) == 0
    assert main(["sample", str(run), "-n", "50"]) == 0
    assert torch.load(run / "samples.pt", weights_only=True).shape[0] == 50


def test_sample_draws_in_batches(tmp_path, monkeypatch):
    import pyro_manifold.experiment as experiment

    run = tmp_path / "run"
    assert main(["fit", "flow", "--dataset", "two_moons", "--run-dir", str(run), *SMALL]) == 0
    monkeypatch.setattr(experiment, "SAMPLE_BATCH", 7)
    monkeypatch.setattr(experiment, "MAX_PLOTTED", 5)
    sizes = []
    real_sample = experiment.Flow.sample

    def spy(self, n, *args, **kwargs):
        sizes.append(n)
        return real_sample(self, n, *args, **kwargs)

    monkeypatch.setattr(experiment.Flow, "sample", spy)
    assert main(["sample", str(run), "-n", "30"]) == 0
    assert sizes == [7, 7, 7, 7, 2]
    samples = torch.load(run / "samples.pt", weights_only=True)
    assert samples.shape == (30, 2) and samples.device.type == "cpu"


def test_fit_resume_continues(tmp_path):
    run = str(tmp_path / "run")
    args = ["fit", "flow", "--dataset", "pinwheel", "--run-dir", run, *SMALL]
    main(args)
    args[args.index("--steps") + 1] = "30"
    main([*args, "--resume"])
    assert load_checkpoint(os.path.join(run, "checkpoint.pt"))["step"] == 30


@pytest.mark.parametrize("command", ["fit", "evaluate", "sample", "demo", "train-classifier"])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "flow", "--dataset", "nope"])
    assert "invalid choice" in capsys.readouterr().err
