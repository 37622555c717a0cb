"""The command line refuses bad commands on one line, before it touches a run directory."""

import subprocess
import sys

import pytest

from pyro_manifold.__main__ import main

FIT = ["fit", "flow", "--dataset", "two_moons", "--steps", "4", "--num-samples", "200",
       "--layers", "1", "--hidden", "8", "--device", "cpu"]  # fmt: skip


def _files(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main([*FIT, "--run-dir", str(run)]) == 0
    return run


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyro_manifold", "evaluate", str(tmp_path)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: run_dir: expected a run directory written by fit (with config.json), got "
        f"'{tmp_path}'"
    ]
    debug = subprocess.run(
        [sys.executable, "-m", "pyro_manifold", "--debug", "evaluate", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--resume", "--hidden", "16"], "hidden: saved 8, given 16"),  # a changed option
        (["--resume", "--hidden", "0"], "hidden: expected an int >= 1, got 0"),  # a bad one
        ([], "holds a trained run"),  # a new run over a trained one
        (["--resume", "--lr", "0.5"], "lr: saved 0.001, given 0.5"),  # a changed option
    ],
)
def test_a_refused_fit_leaves_the_run_directory_as_it_was(trained, capsys, argv, match):
    before = _files(trained)
    assert main([*FIT, "--run-dir", str(trained), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert _files(trained) == before


def test_resume_may_train_longer_and_records_the_new_config(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main([*FIT, "--run-dir", str(run), "--resume", "--steps", "8"]) == 0
    assert '"steps": 8' in (run / "config.json").read_text()


def test_resume_may_change_the_device(trained, tmp_path):
    """README: "``fit ... --resume`` ... may change only ``--steps`` and ``--device``": the run
    trained with ``--device cpu`` resumes with the default device, recorded in its config."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    at = FIT.index("--device")
    default_device = FIT[:at] + FIT[at + 2 :]
    assert main([*default_device, "--run-dir", str(run), "--resume", "--steps", "6"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["device"] is None and config["steps"] == 6


def test_a_run_saved_with_the_old_spline_name_still_evaluates_and_samples(trained, tmp_path):
    """README: "Run directories saved with ``"flow": "spline"`` still load (``evaluate``,
    ``sample``) as ``"spline_coupling"``" (the flow the CLI trains by default)."""
    import json
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config = json.loads((run / "config.json").read_text())
    assert config["flow"] == "spline_coupling"
    (run / "config.json").write_text(json.dumps({**config, "flow": "spline"}))
    want = json.loads((trained / "metrics.json").read_text())["test_log_likelihood"]
    assert main(["evaluate", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["test_log_likelihood"] == want
    assert main(["sample", str(run), "-n", "5"]) == 0
    assert torch.load(run / "samples.pt", weights_only=True).shape == (5, 2)


def test_a_bad_option_creates_no_run_directory(tmp_path, capsys):
    run = tmp_path / "new"
    assert main([*FIT, "--run-dir", str(run), "--hidden", "0"]) == 2
    assert "hidden" in capsys.readouterr().err and not run.exists()


def test_evaluate_scores_the_best_validation_state_that_training_ended_with(tmp_path):
    from pyro_manifold.experiment import evaluate_run, train_run
    from pyro_manifold.infer import load_checkpoint

    config = {"dataset": "two_moons", "steps": 40, "num_samples": 300, "layers": 1,
              "hidden": 8, "device": "cpu", "lr": 0.3, "validate_every": 5}  # fmt: skip
    trained = train_run(config, tmp_path, progress=False)
    history = load_checkpoint(tmp_path / "checkpoint.pt")["history"]
    assert min(history["val_loss"]) < history["val_loss"][-1]  # the best is not the last
    assert evaluate_run(tmp_path)["test_log_likelihood"] == trained["test_log_likelihood"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            ["--num-samples", "7"],
            "num_samples: expected an int >= 10, got 7",
        ),  # failed at evaluation
        (["--noise", "-1"], "noise: expected a finite number >= 0, got -1.0"),
        (["--seed", "-3"], "seed: expected an int >= 0, got -3"),
    ],
)
def test_an_option_that_would_fail_after_training_is_refused_first(tmp_path, capsys, argv, match):
    run = tmp_path / "new"
    assert main([*FIT, "--run-dir", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not run.exists()


def test_sample_refuses_a_bad_count_before_loading(trained, capsys):
    before = _files(trained)
    assert main(["sample", str(trained), "-n", "0"]) == 2
    assert "num_samples: expected an int >= 1, got 0" in capsys.readouterr().err
    assert _files(trained) == before


@pytest.mark.parametrize("content", ["garbage\n", "[1, 2]\n", '{"dataset": "nope"}\n', "\xff\xfe"])
def test_a_damaged_config_json_is_one_line(trained, tmp_path, capsys, content):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.json").write_bytes(content.encode("latin-1"))
    for command in (["evaluate", str(run)], ["sample", str(run), "-n", "5"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
