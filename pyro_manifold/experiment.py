r"""Runs: build a model and its data from a plain config, train, evaluate and sample.

A run directory holds ``config.json`` (the plain config below), ``checkpoint.pt``
(from :func:`~pyro_manifold.infer.fit`), ``history.json``, ``metrics.json`` and PNG
figures. The command line (``python -m pyro_manifold``) is a thin layer over these
functions.

Config keys: ``model`` (``"flow"`` or ``"nif"``), ``latent_dim`` (for ``"nif"``),
``dataset`` (a name from :data:`pyro_manifold.datasets.DATASETS`), ``flow``, ``layers``, ``hidden``,
``batch_norm``, ``steps``, ``batch_size``, ``lr``, ``num_samples``, ``noise``, ``seed``,
``device``, ``patience``, ``validate_every``, ``data_root`` and ``data_dim`` (filled in
by :func:`train_run`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_manifold._validation import (
    check_bool,
    check_choice,
    check_positive,
    check_positive_int,
)
from pyro_manifold.datasets import (
    DATASETS,
    dequantize_logit,
    load_dataset,
    make_manifold,
)
from pyro_manifold.errors import ArgumentError, ArgumentTypeError, DataFormatError
from pyro_manifold.infer import fit, load_checkpoint, resolve_device
from pyro_manifold.infer.distributed import is_main_process
from pyro_manifold.infer.rundir import check_run_dir
from pyro_manifold.metrics import (
    SAMPLE_BATCH,
    bits_per_dim,
    maximum_mean_discrepancy,
    mean_log_likelihood,
    mean_manifold_distance,
    sample_in_batches,
)
from pyro_manifold.models import Flow, NoisyInjectiveFlow
from pyro_manifold.plotting import (
    plot_density_2d,
    plot_image_grid,
    plot_samples_3d,
    plot_training_curve,
)
from pyro_manifold.transforms import FLOWS, check_flow

__all__ = [
    "DEFAULT_CONFIG",
    "MODELS",
    "build_model",
    "evaluate_run",
    "load_splits",
    "sample_run",
    "train_run",
]

#: The models of a run's ``"model"`` entry: a full-dimensional flow or a noisy injective flow.
MODELS = ("flow", "nif")
MIN_NUM_SAMPLES = 10
"""The fewest training points of a toy run: its validation and test splits (a fifth each)
need at least 2 points for the test metrics (a standard error, an MMD)."""
LOGIT_ALPHA = 1e-6
EVAL_BATCH = 1000  # test points per call of model.log_prob in evaluate_run
MMD_POINTS = 2000  # test points (the first) that the MMD compares with as many samples
MAX_PLOTTED = 10_000  # draws shown in sample_run's figure

#: A run's configuration when it sets nothing; :func:`train_run` completes a partial one from it.
DEFAULT_CONFIG: dict[str, Any] = {
    "model": "flow",
    "latent_dim": None,
    "dataset": "two_moons",
    "flow": "spline_coupling",
    "layers": 4,
    "hidden": 64,
    "batch_norm": False,
    "steps": 2000,
    "batch_size": 256,
    "lr": 1e-3,
    "num_samples": 5000,
    "noise": 0.0,
    "seed": 0,
    "device": None,
    "patience": None,
    "validate_every": 200,
    "data_root": None,
    "data_dim": None,
}


def _complete(config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ArgumentError(
            f"config: unknown keys {sorted(unknown)}; expected {sorted(DEFAULT_CONFIG)}"
        )
    full = {**DEFAULT_CONFIG, **config}
    check_choice("model", full["model"], MODELS)
    check_choice("dataset", full["dataset"], DATASETS)
    if isinstance(full["flow"], str):
        check_flow("flow", full["flow"])  # names the successors of a renamed choice
    else:
        check_choice("flow", full["flow"], FLOWS)  # a config is plain data: names only
    _check_values(full)
    return full


def _check_values(config: dict[str, Any]) -> None:
    """Refuse a config value that would fail only after training (or train nonsense)."""
    for key in ("steps", "batch_size", "layers", "validate_every"):
        check_positive_int(key, config[key])
    for key in ("hidden", "patience", "latent_dim", "data_dim"):
        if config[key] is not None:
            check_positive_int(key, config[key])
    check_positive_int("seed", config["seed"], minimum=0)
    check_positive_int("num_samples", config["num_samples"], minimum=MIN_NUM_SAMPLES)
    check_positive("lr", config["lr"])
    check_positive("noise", config["noise"], allow_zero=True)
    check_bool("batch_norm", config["batch_norm"])
    for key in ("device", "data_root"):
        if config[key] is not None and not isinstance(config[key], str):
            raise ArgumentTypeError(
                f"{key}: expected a string or None, got {type(config[key]).__name__}"
            )


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.json``; runs saved before the flow names were split load too.

    ``"spline"`` was the spline coupling for every model a run builds (a
    :class:`~pyro_manifold.models.Flow` or a NIF's top flow), now ``"spline_coupling"``,
    with the same layers and state-dict keys; new configs must use the new name.
    """
    if not (run_dir / "config.json").is_file():
        raise ArgumentError(
            f"run_dir: expected a run directory written by fit (with config.json), got "
            f"{str(run_dir)!r}"
        )
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise DataFormatError(f"{path}: expected the JSON written by fit, got {e}") from None
    if not isinstance(config, dict):
        raise DataFormatError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("flow") == "spline":
        config["flow"] = "spline_coupling"
    return _complete(config)


def _is_mnist(config: dict[str, Any]) -> bool:
    return config["dataset"] == "mnist"


def load_splits(config: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """Train, validation and test data for a config (MNIST stays uint8).

    Toy data: ``num_samples`` training points and a fifth of that for validation and
    test, each drawn with its own seed (``seed``, ``seed + 1``, ``seed + 2``).
    """
    config = _complete(config)
    if _is_mnist(config):
        root = config["data_root"]
        return tuple(
            load_dataset("mnist", split=s, root=root).data for s in ("train", "validation", "test")
        )  # type: ignore[return-value]
    n, seed = config["num_samples"], config["seed"]
    sizes = (n, max(n // 5, 1), max(n // 5, 1))
    return tuple(
        load_dataset(config["dataset"], size, seed=seed + i, noise=config["noise"]).data
        for i, size in enumerate(sizes)
    )  # type: ignore[return-value]


def build_model(config: dict[str, Any], data_dim: int) -> Flow | NoisyInjectiveFlow:
    """The model a config names, for data of dimension ``data_dim``.

    ``"flow"``: a :class:`~pyro_manifold.models.Flow`. ``"nif"``: a
    :class:`~pyro_manifold.models.NoisyInjectiveFlow` with a unit-normal prior and the same
    flow as its top flow (for MNIST its NIF layer is the structured image map, factor 7).

    Example:
        >>> build_model({"model": "nif", "latent_dim": 1, "flow": "realnvp"}, 2).latent_dim
        1
    """
    config = _complete(config)
    hidden = config["hidden"]
    autoregressive = config["flow"] in ("maf", "spline_autoregressive")
    hidden_dims = None if hidden is None else [hidden] * (1 if autoregressive else 2)
    if config["model"] == "flow":
        return Flow(
            data_dim,
            config["flow"],
            num_layers=config["layers"],
            hidden_dims=hidden_dims,
            batch_norm=config["batch_norm"],
        )
    if config["latent_dim"] is None:
        raise ArgumentError("latent_dim: the nif model needs a latent dimension, got None")
    image = {"image_shape": (1, 28, 28), "factor": 7} if _is_mnist(config) else {}
    return NoisyInjectiveFlow(
        data_dim,
        config["latent_dim"],
        top_flow=config["flow"],
        top_layers=config["layers"],
        top_hidden_dims=hidden_dims,
        batch_norm=config["batch_norm"],
        init_noise_scale=1.0 if _is_mnist(config) else 0.5,
        **image,
    )


def _model_data(config, x: Tensor) -> Tensor:
    """What the model sees: logit space for MNIST, the data itself otherwise."""
    if _is_mnist(config) and x.dtype == torch.uint8:
        return dequantize_logit(x, config["seed"] + 7, alpha=LOGIT_ALPHA)[0]
    return x


def train_run(
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train the model of ``config``, writing the run into ``run_dir``; returns the metrics.

    Inside a ``torch.distributed`` process group (``torchrun``) training is data-parallel
    (``batch_size`` per process); rank 0 writes the run and returns the metrics, the
    other ranks return ``{}``.

    Example:
        >>> import tempfile
        >>> m = train_run({"dataset": "two_moons", "steps": 20, "num_samples": 200,
        ...                "layers": 1, "hidden": 8, "device": "cpu"}, tempfile.mkdtemp(),
        ...               progress=False)
        >>> sorted(k for k in m if k.startswith("test"))
        ['test_log_likelihood', 'test_log_likelihood_stderr']
    """
    check_bool("resume", resume)
    check_bool("progress", progress, allow_none=True)
    config = _complete(config)
    run_dir = check_run_dir(run_dir)
    train, val, _ = load_splits(config)
    config["data_dim"] = train.shape[-1]
    _check_run_for(config, run_dir, resume)
    torch.manual_seed(config["seed"])
    model = build_model(config, train.shape[-1])  # checks the model's options

    def transform_batch(x):
        return (dequantize_logit(x, alpha=LOGIT_ALPHA)[0],) if x.dtype == torch.uint8 else (x,)

    result = fit(
        model.model,
        model.guide,
        train,
        num_steps=config["steps"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        validation_data=_model_data(config, val),
        validate_every=config["validate_every"],
        patience=config["patience"],
        transform_batch=transform_batch if _is_mnist(config) else None,
        device=config["device"],
        seed=config["seed"],
        run_dir=run_dir,
        checkpoint_every=max(config["steps"] // 10, 1),
        resume=run_dir / "checkpoint.pt" if resume else None,
        progress=progress,
        config=config,
    )
    if not is_main_process():  # data-parallel (torchrun): rank 0 evaluates and plots
        return {}
    plot_training_curve(result.history, run_dir / "training_curve.png")
    return evaluate_run(run_dir, model=model)


RESUMABLE_CHANGES = ("steps", "device")
"""Options a ``--resume`` may change (train longer, or on another device)."""


def _check_run_for(config: dict[str, Any], run_dir: Path, resume: bool) -> None:
    """Refuse, before anything is written, a fit that would damage the run in ``run_dir``.

    A new run may not overwrite a trained one; a resumed run must exist and keep its
    saved options, but for :data:`RESUMABLE_CHANGES`.
    """
    trained = (run_dir / "checkpoint.pt").exists()
    if not resume:
        if trained:
            raise ArgumentError(
                f"run_dir: expected a new or empty run directory, but {str(run_dir)!r} holds "
                "a trained run; resume it (--resume) or choose another --run-dir"
            )
        return
    if not trained or not (run_dir / "config.json").is_file():
        raise ArgumentError(
            f"resume: expected a run directory with checkpoint.pt and config.json, got "
            f"{str(run_dir)!r}"
        )
    saved = _saved_config(run_dir)
    changed = sorted(
        k for k in set(saved) | set(config)
        if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k)
    )  # fmt: skip
    if changed:
        diff = ", ".join(f"{k}: saved {saved.get(k)!r}, given {config.get(k)!r}" for k in changed)
        raise ArgumentError(
            f"resume: expected the options of the saved run (only {list(RESUMABLE_CHANGES)} "
            f"may change), got {diff}"
        )


def _load_run(run_dir: Path) -> tuple[dict[str, Any], Flow | NoisyInjectiveFlow]:
    config = _saved_config(run_dir)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    model = build_model(config, config["data_dim"])
    # fit ends a run with validation at its best validation state (restore_best), which
    # the checkpoint keeps beside the last one: the model that train_run scored
    best = state.get("best_states")
    model.load_state_dict((best or state["modules"])[0])
    model.to(resolve_device(config["device"])).eval()
    return config, model


def _finite_samples(samples: Tensor, metrics: dict[str, Any], key: str) -> Tensor:
    """The rows of ``samples`` with finite entries; the dropped fraction goes to ``metrics``."""
    ok = torch.isfinite(samples).all(-1)
    metrics.setdefault("nonfinite_sample_fraction", {})[key] = 1.0 - ok.float().mean().item()
    return samples[ok]


@torch.no_grad()
def evaluate_run(
    run_dir: str | os.PathLike, *, model: Flow | NoisyInjectiveFlow | None = None
) -> dict[str, Any]:
    """Test metrics of a trained run, written to ``run_dir/metrics.json`` with figures.

    Toy data: mean test log-likelihood (± standard error), MMD² between 2000 samples and
    the test set, and for 3D manifolds the mean distance of samples (and of the test
    data) to the manifold; a NIF also reports it for samples on its learned manifold
    (``s = 0``).
    MNIST: test log-likelihood in logit space and bits per dimension in pixel space.
    The test set is scored ``EVAL_BATCH`` points at a time and the samples are drawn in
    batches, so memory beyond the data is that of one batch whatever the test set's
    size; the MMD compares the samples with the first ``MMD_POINTS`` test points (its
    memory grows as the square of the points).
    Samples with a non-finite entry (an overflow in a flow's inverse) are dropped before
    the sample metrics and plots, and their fraction is reported as
    ``nonfinite_sample_fraction``.
    """
    run_dir = Path(run_dir)
    config, loaded = _load_run(run_dir)
    model = model if model is not None else loaded
    model.eval()
    device = next(iter(model.buffers())).device
    _, _, test = load_splits(config)
    test = test.to(device)
    metrics: dict[str, Any] = {"dataset": config["dataset"], "model": config["model"]}
    if _is_mnist(config):
        y_test, logdet_test = dequantize_logit(test, 1, alpha=LOGIT_ALPHA)
        lps, bpds = [], []
        for y, logdet in zip(y_test.split(EVAL_BATCH), logdet_test.split(EVAL_BATCH), strict=True):
            lp = model.log_prob(y)
            lps.append(lp)
            bpds.append(bits_per_dim(lp + logdet, y.shape[-1]))
        lp, bpd = torch.cat(lps), torch.cat(bpds)
        metrics.update(
            test_log_likelihood_logit=lp.mean().item(),
            test_log_likelihood_stderr=(lp.std() / math.sqrt(lp.numel())).item(),
            bits_per_dim=bpd.mean().item(),
        )
        samples = torch.sigmoid(_finite_samples(model.sample(32), metrics, "samples"))
        plot_image_grid((samples - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA), run_dir / "samples.png")
    else:
        mean, stderr = mean_log_likelihood(model.log_prob, test, EVAL_BATCH)
        samples = _finite_samples(model.sample(2000), metrics, "samples")
        metrics.update(
            test_log_likelihood=mean,
            test_log_likelihood_stderr=stderr,
            mmd2=maximum_mean_discrepancy(samples, test[:MMD_POINTS]).item(),
        )
        if test.shape[-1] == 2:
            plot_density_2d(
                model.log_prob,
                test,
                run_dir / "density.png",
                samples=samples,
                title=config["dataset"],
            )
        else:
            distance = make_manifold(config["dataset"]).distance
            metrics["mean_manifold_distance"] = mean_manifold_distance(samples, distance)
            metrics["test_data_manifold_distance"] = mean_manifold_distance(test, distance)
            plot_samples_3d(test, run_dir / "samples.png", samples=samples, title=config["dataset"])
            if isinstance(model, NoisyInjectiveFlow):
                on_manifold = _finite_samples(model.sample(2000, s=0.0), metrics, "samples_s0")
                metrics["mean_manifold_distance_s0"] = mean_manifold_distance(on_manifold, distance)
                plot_samples_3d(
                    test,
                    run_dir / "samples_s0.png",
                    samples=on_manifold,
                    title="NIF samples, s = 0",
                )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


@torch.no_grad()
def sample_run(run_dir: str | os.PathLike, num_samples: int) -> Path:
    """Draw ``num_samples`` points from a trained run; saves ``samples.pt`` and a PNG.

    MNIST samples are mapped back from logit space to pixel intensities in ``[0, 1]``.
    The draws are made in batches of ``SAMPLE_BATCH`` (the default of
    :func:`~pyro_manifold.metrics.sample_in_batches`) into one tensor on the CPU
    (:func:`~pyro_manifold.metrics.sample_in_batches`), so memory beyond the samples
    themselves is that of one batch at any ``num_samples``. ``samples.pt`` holds every
    draw; the figure shows the finite ones among the first ``MAX_PLOTTED`` (none is
    drawn when none of those is finite).
    """
    check_positive_int("num_samples", num_samples)
    run_dir = Path(run_dir)
    config, model = _load_run(run_dir)
    samples = sample_in_batches(model.sample, num_samples, SAMPLE_BATCH)  # on the CPU
    if _is_mnist(config):
        # in place: no temporary as large as the samples
        samples.sigmoid_().sub_(LOGIT_ALPHA).div_(1 - 2 * LOGIT_ALPHA)
    path = run_dir / "samples.pt"
    torch.save(samples, path)
    shown = samples[:MAX_PLOTTED]
    shown = shown[torch.isfinite(shown).all(-1)]
    if len(shown) == 0:
        return path
    if _is_mnist(config):
        plot_image_grid(shown[:64], run_dir / "samples_grid.png")
    elif samples.shape[-1] == 2:
        plot_density_2d(model.log_prob, shown, run_dir / "samples_density.png", samples=shown)
    else:
        plot_samples_3d(shown, run_dir / "samples_3d.png")
    return path
