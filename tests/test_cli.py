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
    # README: "Each run directory holds ... PNG figures": the training curve, the density
    figure = "density.png" if dataset == "two_moons" else "samples.png"
    assert {"training_curve.png", figure} <= {p.name for p in run.glob("*.png")}
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


def test_fit_reads_mnist_from_the_data_option(tmp_path, monkeypatch, capsys):
    """README: "Point the package at MNIST with ... ``--data`` on the command line": the
    folder given is the one read (a missing one is named in the one-line error, and the
    run directory is not created), not ``$PYRO_MANIFOLD_DATA``."""
    monkeypatch.setenv("PYRO_MANIFOLD_DATA", str(tmp_path / "from_the_environment"))
    given, run = tmp_path / "from_the_option", tmp_path / "run"
    argv = ["fit", "flow", "--dataset", "mnist", "--data", str(given), "--run-dir", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"data folder '{given}' (from the argument root) does not exist" in err
    assert not run.exists()


@pytest.fixture
def quick_classifier(monkeypatch):
    """Stands in for training the MNIST classifier; records its root and device."""
    from pyro_manifold.metrics import frechet
    from pyro_manifold.nn import MNISTClassifier

    calls = []

    def quick_train(root, **kwargs):
        calls.append((root, kwargs.get("device")))
        net = MNISTClassifier()
        net.test_accuracy = 0.5
        return net.eval()

    monkeypatch.setattr(frechet, "train_mnist_classifier", quick_train)
    return calls


def test_train_classifier_reads_the_data_option_and_caches_beside_it(
    tmp_path, monkeypatch, fake_mnist, quick_classifier
):
    """``train-classifier --data ROOT`` trains on ROOT's MNIST (not ``$PYRO_MANIFOLD_DATA``),
    on the device asked for, and caches the network in ``ROOT/pyro_manifold``."""
    root = fake_mnist(tmp_path / "data")
    monkeypatch.setenv("PYRO_MANIFOLD_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PYRO_MANIFOLD_CACHE", str(tmp_path / "cache"))
    assert main(["train-classifier", "--data", str(root), "--device", "cpu:0"]) == 0
    assert quick_classifier == [(str(root), torch.device("cpu", 0))]  # not the default "cpu"
    assert (root / "pyro_manifold" / "mnist_classifier.pt").is_file()


@pytest.mark.parametrize(
    "device, match",
    [("meta", "expected a device that holds data"), ("nope", "expected a torch device")],
)
def test_train_classifier_refuses_a_bad_device_before_training_or_writing(
    tmp_path, monkeypatch, fake_mnist, quick_classifier, capsys, device, match
):
    """README: the command line checks "the devices (``meta`` or an absent CUDA device is
    refused)" before anything is written: ``train-classifier --device meta`` was accepted,
    trained on the CPU and wrote its cache."""
    root = fake_mnist(tmp_path / "data")
    monkeypatch.setenv("PYRO_MANIFOLD_CACHE", str(tmp_path / "cache"))
    assert main(["train-classifier", "--data", str(root), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device: ") and match in err and err.count("\n") == 1
    assert quick_classifier == [] and not (root / "pyro_manifold").exists()
    assert not (tmp_path / "cache").exists()
