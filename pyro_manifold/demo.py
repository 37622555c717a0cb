r"""``python -m pyro_manifold demo``: every method of the package on small data, with a report.

Five entries, one per method, each trained with :func:`~pyro_manifold.infer.fit` on data
the package generates (nothing is downloaded):

* ``flow_two_moons``: a classic flow (RealNVP) on two moons;
* ``nif_sphere``: a noisy injective flow (latent 2) on a noisy sphere in 3D;
* ``vmonf_pinwheel``: a variational mixture of five flows clustering the 5-wing pinwheel
  (clustering accuracy against the true wings);
* ``vqflow_torus``: a VQ-Flow, an atlas of eight charts, on a noisy torus (its charts
  drawn);
* ``vae_shapes``: VAEs with Gaussian, IAF and PCP-Map encoders on generated binary images
  of shapes (:func:`~pyro_manifold.datasets.binary_shapes`), their test IWAE bounds side
  by side.

Each entry writes its figures into its own folder of ``out_dir``; the demo then writes
``report.md`` (a summary table, then one section per entry with its metrics and figures)
and ``metrics.json``. It trains on one thread (its networks are too small to gain from
more) and is sized to take under 3 minutes on 2 CPU cores; ``smoke=True`` runs a few steps
of each entry on little data (seconds, for tests).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from torch import Tensor

from pyro_manifold._validation import check_bool
from pyro_manifold.datasets import binary_shapes, make_manifold, pinwheel
from pyro_manifold.errors import ArgumentError
from pyro_manifold.experiment import train_run
from pyro_manifold.infer import fit, resolve_device
from pyro_manifold.infer.rundir import check_run_dir
from pyro_manifold.metrics import (
    clustering_accuracy,
    iwae_log_likelihood,
    maximum_mean_discrepancy,
    mean_log_likelihood,
    mean_manifold_distance,
)
from pyro_manifold.models import FlowVAE, VariationalMixtureOfFlows, VQFlow
from pyro_manifold.nn import kmeans
from pyro_manifold.plotting import plot_clusters_2d, plot_image_grid, plot_training_curve

__all__ = ["DEMO_ENTRIES", "DEMO_RUNS", "run_demo"]

#: (run name, config, one-line description) of the entries trained by
#: :func:`~pyro_manifold.experiment.train_run` (a run directory each).
DEMO_RUNS: tuple[tuple[str, dict[str, Any], str], ...] = (
    (
        "flow_two_moons",
        {"dataset": "two_moons", "flow": "realnvp", "layers": 6, "steps": 1500},
        "RealNVP on two moons",
    ),
    (
        "nif_sphere",
        {
            "model": "nif",
            "latent_dim": 2,
            "dataset": "sphere",
            "flow": "realnvp",
            "layers": 6,
            "noise": 0.03,
            "steps": 1500,
        },
        "Noisy injective flow (latent 2) on a noisy sphere",
    ),
)

#: (entry name, method) of every entry, in the report's order.
DEMO_ENTRIES: tuple[tuple[str, str], ...] = (
    ("flow_two_moons", "classic flow"),
    ("nif_sphere", "noisy injective flow"),
    ("vmonf_pinwheel", "variational mixture of flows"),
    ("vqflow_torus", "VQ-Flow"),
    ("vae_shapes", "VAE with Gaussian, IAF and PCP-Map encoders"),
)

_SHAPES_SIDE = 16
_VAE_ENCODERS = (("Gaussian", None), ("IAF", "iaf"), ("PCP-Map", "pcp"))


@dataclass
class _Entry:
    """What an entry puts in the report."""

    name: str
    method: str
    description: str
    metrics: dict[str, Any]
    summary: str  # the headline metric, one line
    details: list[str] = field(default_factory=list)  # Markdown lines under the heading
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, file in name/)
    seconds: float = 0.0  # wall-clock
    cpu_seconds: float = 0.0  # this process's CPU time (the work, whatever the load)


@dataclass(frozen=True)
class _Settings:
    """Sizes of one demo (full or smoke) and where and how it trains."""

    out: Path
    smoke: bool
    device: torch.device
    progress: bool | None

    def steps(self, full: int) -> int:
        return 5 if self.smoke else full

    def size(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full


# -- entries trained by experiment.train_run (classic flow, NIF) ----------------------
def _train_run_entry(settings: _Settings, index: int) -> _Entry:
    name, config, description = DEMO_RUNS[index]
    config = {**config, "device": str(settings.device)}
    if settings.smoke:
        config.update(steps=5, num_samples=300, validate_every=5)
    m = train_run(config, settings.out / name, progress=settings.progress)
    summary = (
        f"test log-likelihood {m['test_log_likelihood']:.3f} ± "
        f"{m['test_log_likelihood_stderr']:.3f} nats; MMD² {m['mmd2']:.2g}"
    )
    details = [
        f"- test log-likelihood per point: {m['test_log_likelihood']:.3f} ± "
        f"{m['test_log_likelihood_stderr']:.3f} nats (higher is better)",
        f"- MMD² between model samples and test points: {m['mmd2']:.3g} (lower is better)",
    ]
    if "mean_manifold_distance_s0" in m:
        summary += f"; distance to the sphere at s = 0 {m['mean_manifold_distance_s0']:.3f}"
        details.append(
            "- mean distance to the true sphere: samples "
            f"{m['mean_manifold_distance']:.4f}, samples at noise scale s = 0 "
            f"{m['mean_manifold_distance_s0']:.4f}, test data "
            f"{m['test_data_manifold_distance']:.4f}"
        )
    run = settings.out / name
    main = "density.png" if (run / "density.png").exists() else "samples.png"
    figures = [("density and samples" if main == "density.png" else "samples", main)]
    if (run / "samples_s0.png").exists():
        figures.append(("samples at s = 0, on the learned manifold", "samples_s0.png"))
    figures.append(("training curve", "training_curve.png"))
    return _Entry(
        name=name,
        method=DEMO_ENTRIES[index][1],
        description=description,
        metrics=m,
        summary=summary,
        details=details,
        figures=figures,
    )


def _flow_entry(settings: _Settings) -> _Entry:
    entry = _train_run_entry(settings, 0)
    entry.details[:0] = [
        "A RealNVP flow (6 affine coupling layers) trained by maximum likelihood; "
        "`python -m pyro_manifold fit flow --dataset two_moons --flow realnvp --layers 6` "
        "trains the same model.",
        "",
    ]
    return entry


def _nif_entry(settings: _Settings) -> _Entry:
    entry = _train_run_entry(settings, 1)
    entry.details[:0] = [
        "A noisy injective flow: a 2D unit-normal latent z, a noisy injective layer "
        "x = Az + b + noise into 3D, then 6 RealNVP layers in 3D. Sampled with the noise "
        "scaled to s = 0, its points lie on the learned 2D surface.",
        "",
    ]
    return entry


# -- variational mixture of flows -------------------------------------------------------
def _vmonf_entry(settings: _Settings) -> _Entry:
    name, out = "vmonf_pinwheel", settings.out / "vmonf_pinwheel"
    train = pinwheel(settings.size(2560, 300), seed=0)
    val = pinwheel(settings.size(512, 100), seed=2)
    test = pinwheel(settings.size(2560, 300), seed=1)
    torch.manual_seed(0)
    model = VariationalMixtureOfFlows(
        2, 5, "realnvp", num_layers=4, hidden_dims=[32, 32], encoder_hidden_dims=[64, 64]
    )
    model.initialize_components(train.data, seed=0)  # k-means start
    steps = settings.steps(1000)
    result = fit(
        model.model,
        model.guide,
        train.data,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        num_steps=steps,
        batch_size=256,
        lr=2e-3,
        validation_data=val.data,
        validate_every=max(steps // 6, 1),
        device=settings.device,
        progress=settings.progress,
    )
    model.cpu().eval()
    with torch.no_grad():
        clusters = model.cluster(test.data)
        accuracy = clustering_accuracy(clusters, test.labels)
        ll, ll_err = mean_log_likelihood(model.log_prob, test.data)
        samples, components = model.sample(2000)
        # the reference: k-means alone (the start of the components), test points to the
        # nearest centroid
        centroids, _ = kmeans(
            train.data.double(), 5, 50, generator=torch.Generator().manual_seed(0)
        )
        kmeans_accuracy = clustering_accuracy(
            torch.cdist(test.data.double(), centroids).argmin(-1), test.labels
        )
    out.mkdir(parents=True, exist_ok=True)
    plot_clusters_2d(
        [(test.data, clusters, "test points by cluster"), (samples, components, "samples")],
        out / "clusters.png",
        classify=model.cluster,
        grid_size=120,
    )
    plot_training_curve(result.history, out / "training_curve.png")
    metrics = {
        "clustering_accuracy": accuracy,
        "chance_accuracy": 1 / model.num_components,
        "kmeans_accuracy": kmeans_accuracy,
        "test_log_likelihood": ll,
        "test_log_likelihood_stderr": ll_err,
    }
    return _Entry(
        name=name,
        method=DEMO_ENTRIES[2][1],
        description="Variational mixture of 5 RealNVP flows on the 5-wing pinwheel",
        metrics=metrics,
        summary=f"clustering accuracy {accuracy:.3f} (k-means alone {kmeans_accuracy:.3f}, "
        f"chance 0.2); test log-likelihood {ll:.3f} nats",
        details=[
            "Five RealNVP components, each started on a k-means cluster, and an encoder "
            "q(k|x) trained together on the ELBO (summed exactly over k by "
            "`TraceEnum_ELBO`). No labels are used; a test point's cluster is "
            "argmax_k q(k|x).",
            "",
            f"- clustering accuracy on {test.data.shape[0]} test points against the true "
            f"wings (best one-to-one matching): {accuracy:.3f} (chance: 0.2; k-means "
            f"alone, the components' start: {kmeans_accuracy:.3f})",
            f"- test log-likelihood per point: {ll:.3f} ± {ll_err:.3f} nats",
        ],
        figures=[
            ("test points by cluster; samples by component", "clusters.png"),
            ("training curve", "training_curve.png"),
        ],
    )


# -- VQ-Flow ------------------------------------------------------------------------------
def _vqflow_entry(settings: _Settings) -> _Entry:
    name, out = "vqflow_torus", settings.out / "vqflow_torus"
    manifold = make_manifold("torus")
    train = manifold.sample(settings.size(5000, 300), noise=0.02, seed=0).data
    test = manifold.sample(settings.size(1000, 100), noise=0.02, seed=1).data
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    model = VQFlow(
        3,
        num_charts=8,
        flow="realnvp",
        num_layers=4,
        hidden_dims=[32],
        autoencoder_hidden_dims=[64],
        epsilon=0.2,
    )
    common = {
        "batch_size": 256,
        "device": settings.device,
        "progress": settings.progress,
    }
    fit(model.model, model.guide, train, num_steps=settings.steps(500), lr=3e-3, **common)
    model.set_stage("flows", train.to(settings.device))
    flows = fit(
        model.model,
        model.guide,
        train,
        num_steps=settings.steps(1000),
        lr=1e-3,
        lr_schedule="cosine",
        **common,
    )
    model.cpu().eval()
    with torch.no_grad():
        ll, ll_err = mean_log_likelihood(model.log_prob, test)
        chart = model.autoencoder.assign(train)
        centres = model.autoencoder.decoder(model.autoencoder.centres)
        samples, sample_chart = model.distribution().sample_with_charts((test.shape[0],))
        mmd2 = float(maximum_mean_discrepancy(samples, test))
        distance = mean_manifold_distance(samples, manifold.distance)
        data_distance = mean_manifold_distance(test, manifold.distance)
    out.mkdir(parents=True, exist_ok=True)
    _plot_charts(train, chart, centres, samples, sample_chart, out / "charts.png")
    plot_training_curve(flows.history, out / "training_curve.png")  # stage 2
    used = int(chart.unique().numel())
    metrics = {
        "test_log_likelihood": ll,
        "test_log_likelihood_stderr": ll_err,
        "mmd2": mmd2,
        "mean_manifold_distance": distance,
        "test_data_manifold_distance": data_distance,
        "charts_used": used,
        "num_charts": model.num_charts,
    }
    return _Entry(
        name=name,
        method=DEMO_ENTRIES[3][1],
        description="VQ-Flow: an atlas of 8 charts with local RealNVP flows on a noisy torus",
        metrics=metrics,
        summary=f"test log-likelihood {ll:.3f} nats; MMD² {mmd2:.2g}; {used} of 8 charts in use",
        details=[
            "Stage 1 learns the atlas (a VQ autoencoder: chart centres and overlapping "
            "regions); stage 2 freezes it and fits the chart flows, conditioned on their "
            "centres, by maximum likelihood of the mixture over the charts holding a point.",
            "",
            f"- test log-likelihood per point: {ll:.3f} ± {ll_err:.3f} nats",
            f"- MMD² between samples and test points: {mmd2:.3g} (lower is better)",
            f"- mean distance to the true torus: samples {distance:.4f}, test data "
            f"{data_distance:.4f}",
            f"- charts holding training points: {used} of {model.num_charts}",
        ],
        figures=[
            ("training points by chart (crosses: decoded centres); samples by chart", "charts.png"),
            ("training curve of the chart flows (stage 2)", "training_curve.png"),
        ],
    )


def _plot_charts(
    data: Tensor,
    chart: Tensor,
    centres: Tensor,
    samples: Tensor,
    sample_chart: Tensor,
    path: Path,
) -> None:
    """Data coloured by nearest chart with the decoded centres; samples by their chart."""
    from matplotlib.figure import Figure

    lo, hi = data.min(0).values.tolist(), data.max(0).values.tolist()
    fig = Figure(figsize=(10, 5), dpi=100)
    for i, (x, k, title) in enumerate(
        ((data, chart, "training points by chart"), (samples, sample_chart, "samples by chart"))
    ):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=1, c=k.numpy(), cmap="tab10", vmin=0, vmax=9)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), zlim=(lo[2], hi[2]))
        ax.set_box_aspect([b - a for a, b in zip(lo, hi, strict=True)])
        if i == 0:
            c = centres.numpy()
            ax.scatter(c[:, 0], c[:, 1], c[:, 2], s=60, c="k", marker="x")
        ax.set_title(title)
    _save(fig, path)


# -- VAEs -----------------------------------------------------------------------------------
def _vae_entry(settings: _Settings) -> _Entry:
    name, out = "vae_shapes", settings.out / "vae_shapes"
    side, latent = _SHAPES_SIDE, settings.size(16, 4)
    x_train = binary_shapes(settings.size(4000, 200), side, seed=0).data
    x_test = binary_shapes(settings.size(500, 50), side, seed=1).data
    iwae_samples = settings.size(200, 10)
    steps = settings.steps(1500)
    results, histories, recon, drawn = {}, {}, [x_test[:12]], []
    for label, flow in _VAE_ENCODERS:
        torch.manual_seed(0)
        vae = FlowVAE(
            latent,
            side * side,
            flow,
            num_flows=2,
            hidden_dims=[settings.size(256, 16)],
            flow_hidden_dims=[settings.size(32, 8)] * 2,
        )
        vae.init_decoder_bias(x_train)  # start from the mean image
        history = fit(
            vae.model,
            vae.guide,
            x_train,
            num_steps=steps,
            batch_size=100,
            lr=3e-3,
            lr_schedule="cosine",
            validation_data=x_test,
            validate_every=max(steps // 10, 1),
            restore_best=False,
            device=settings.device,
            progress=settings.progress,
        ).history
        vae.cpu().eval()
        bound = iwae_log_likelihood(vae, x_test, num_samples=iwae_samples, chunk_size=50)
        with torch.no_grad():
            recon.append(vae.reconstruct(x_test[:12]))
            torch.manual_seed(1)  # the same latent draws for the three decoders
            drawn.append(vae.sample(12))
        histories[label] = history
        results[label] = {
            "test_iwae_log_likelihood": bound.mean().item(),
            "test_iwae_log_likelihood_stderr": bound.std().item() / math.sqrt(len(bound)),
            "test_negative_elbo": history["val_loss"][-1],
        }
    out.mkdir(parents=True, exist_ok=True)
    plot_image_grid(
        torch.cat(recon),
        out / "reconstructions.png",
        ncols=12,
        side=side,
        title="test images; reconstructions by the Gaussian, IAF, PCP-Map VAEs",
    )
    plot_image_grid(
        torch.cat(drawn),
        out / "samples.png",
        ncols=12,
        side=side,
        title="samples (decoder means): Gaussian, IAF, PCP-Map VAEs",
    )
    _plot_test_losses(histories, out / "test_loss.png")
    table = [
        f"| encoder | test IWAE bound on log p(x), K = {iwae_samples} (nats per image, "
        "higher is better) | test ELBO (nats per image) |",
        "|---|---|---|",
    ]
    for label, r in results.items():
        table.append(
            f"| {label} | {r['test_iwae_log_likelihood']:.2f} ± "
            f"{r['test_iwae_log_likelihood_stderr']:.2f} | {-r['test_negative_elbo']:.2f} |"
        )
    summary = "test IWAE bounds (nats per image): " + ", ".join(
        f"{label} {r['test_iwae_log_likelihood']:.2f}" for label, r in results.items()
    )
    metrics = {"iwae_samples": iwae_samples, "image_side": side, "latent_dim": latent, **results}
    return _Entry(
        name=name,
        method=DEMO_ENTRIES[4][1],
        description=f"VAEs with Gaussian, IAF and PCP-Map encoders on {side} x {side} binary "
        "shapes",
        metrics=metrics,
        summary=summary,
        details=[
            f"{x_train.shape[0]} training and {x_test.shape[0]} test images from "
            "`pyro_manifold.datasets.binary_shapes` (rectangles, frames, ellipses and "
            "crosses of random sizes and places). The three VAEs share the Bernoulli "
            f"decoder and encoder networks and a {latent}-dimensional latent; they differ "
            "in the flow on top of the diagonal Gaussian q(z|x): none, two IAF layers, or "
            "two PCP-Map layers. In expectation log p(x) >= IWAE bound >= ELBO. The "
            "samples use the same latent draws for the three decoders.",
            "",
            *table,
        ],
        figures=[
            ("test images and reconstructions", "reconstructions.png"),
            ("samples", "samples.png"),
            ("test loss during training", "test_loss.png"),
        ],
    )


def _plot_test_losses(histories: dict[str, dict[str, list[float]]], path: Path) -> None:
    """The test negative ELBO of each encoder against the step, in one plot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, history in histories.items():
        ax.plot(history["val_step"], history["val_loss"], "o-", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("test negative ELBO (nats per image)")
    ax.legend()
    _save(fig, path)


# -- the report ---------------------------------------------------------------------------
def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)


_ENTRY_FUNCTIONS: dict[str, Callable[[_Settings], _Entry]] = {
    "flow_two_moons": _flow_entry,
    "nif_sphere": _nif_entry,
    "vmonf_pinwheel": _vmonf_entry,
    "vqflow_torus": _vqflow_entry,
    "vae_shapes": _vae_entry,
}


def _check_out_dir(out_dir: object) -> Path:
    """A folder that holds no earlier demo (its runs would refuse to be overwritten)."""
    out = check_run_dir(out_dir, "out_dir")
    taken = [n for n, _ in DEMO_ENTRIES if (out / n).exists()]
    if (out / "report.md").exists() or taken:
        raise ArgumentError(
            f"out_dir: expected a new or empty folder, but {str(out)!r} holds an earlier "
            f"demo ({', '.join(taken) or 'report.md'}); choose another --out or delete it"
        )
    return out


def _report(entries: list[_Entry], total: float, smoke: bool) -> str:
    lines = [
        "# pyro_manifold demo report",
        "",
        f"{len(entries)} entries, one per method, trained and evaluated in {total:.0f} s "
        "in all (one thread)"
        + (" (smoke mode: a few steps each; the numbers mean nothing)." if smoke else "."),
        "Log-likelihoods are in nats per point (per image for the VAEs) on held-out test "
        "data. MMD² compares model samples with the test points (lower is better; an "
        "unbiased estimate, so near 0, and possibly below, when they match).",
        "",
        "| entry | method | metric | figures | seconds |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        figures = ", ".join(f"[{f}]({e.name}/{f})" for _, f in e.figures)
        lines.append(f"| {e.name} | {e.method} | {e.summary} | {figures} | {e.seconds:.0f} |")
    for e in entries:
        lines += ["", f"## {e.description} (`{e.name}`, {e.seconds:.0f} s)", "", *e.details, ""]
        for caption, f in e.figures:
            lines += [f"![{e.name}: {caption}]({e.name}/{f})", ""]
    return "\n".join(lines) + "\n"


def run_demo(
    out_dir: str | os.PathLike = "demo_output",
    *,
    smoke: bool = False,
    device: str | torch.device | None = "cpu",
    progress: bool | None = None,
) -> Path:
    """Train every entry of :data:`DEMO_ENTRIES` and write ``out_dir/report.md``.

    Args:
        out_dir: where the entries' folders, ``report.md`` and ``metrics.json`` go; a
            new or empty folder (one that holds no earlier demo).
        smoke: a few steps on little data per entry (seconds, for tests).
        device: device for training (the CPU by default, where the timing is promised;
            ``None``: CUDA when available).
        progress: tqdm bars; default only on a terminal.

    Returns:
        The report's path.

    Example:
        >>> import tempfile
        >>> run_demo(tempfile.mkdtemp(), smoke=True, progress=False).name
        'report.md'
    """
    check_bool("smoke", smoke)
    check_bool("progress", progress, allow_none=True)
    settings = _Settings(_check_out_dir(out_dir), smoke, resolve_device(device), progress)
    settings.out.mkdir(parents=True, exist_ok=True)
    entries, started, started_cpu = [], time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: extra threads only add synchronisation
    try:
        for name, _ in DEMO_ENTRIES:
            t0, c0 = time.perf_counter(), time.process_time()
            entry = _ENTRY_FUNCTIONS[name](settings)
            entry.seconds = time.perf_counter() - t0
            entry.cpu_seconds = time.process_time() - c0
            entries.append(entry)
    finally:
        torch.set_num_threads(threads)
    total, total_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    report = settings.out / "report.md"
    report.write_text(_report(entries, total, smoke))
    metrics: dict[str, Any] = {
        e.name: {**e.metrics, "seconds": e.seconds, "cpu_seconds": e.cpu_seconds} for e in entries
    }
    metrics.update(total_seconds=total, total_cpu_seconds=total_cpu)
    (settings.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return report
