r"""``python -m pyro_manifold demo``: small models on the embedded toy data, with a report.

Each entry trains one model with :func:`~pyro_manifold.experiment.train_run` in its own
run directory and the demo writes ``report.md`` (a metrics table and the figures) beside
them. The whole demo takes under 3 minutes on 2 CPU cores (it trains on one thread:
its networks are too small to gain from more); ``smoke=True`` runs a few steps of each
entry for tests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from pyro_manifold.experiment import train_run

__all__ = ["DEMO_RUNS", "run_demo"]

#: (run name, config, one-line description) of each demo entry.
DEMO_RUNS: tuple[tuple[str, dict[str, Any], str], ...] = (
    (
        "flow_two_moons",
        {"dataset": "two_moons", "flow": "spline_coupling", "steps": 1500},
        "Neural spline flow on two moons",
    ),
    (
        "flow_pinwheel",
        {"dataset": "pinwheel", "flow": "spline_coupling", "steps": 1500},
        "Neural spline flow on the 5-wing pinwheel",
    ),
    (
        "flow_eight_gaussians",
        {"dataset": "eight_gaussians", "flow": "realnvp", "layers": 6, "steps": 1500},
        "RealNVP on 8 Gaussians",
    ),
    (
        "flow_checkerboard",
        {"dataset": "checkerboard", "flow": "maf", "layers": 5, "steps": 1500},
        "MAF on the checkerboard",
    ),
    (
        "flow_sphere",
        {"dataset": "sphere", "flow": "realnvp", "layers": 6, "noise": 0.03, "steps": 1500},
        "RealNVP on a noisy sphere (the full-dimensional baseline)",
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


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_demo(
    out_dir: str | os.PathLike = "demo_output",
    *,
    smoke: bool = False,
    device: str | None = "cpu",
    progress: bool | None = None,
) -> Path:
    """Train every entry of :data:`DEMO_RUNS` and write ``out_dir/report.md``.

    Args:
        out_dir: where the runs and the report go.
        smoke: a few steps on little data per entry (seconds, for tests).
        device: device for training (the CPU by default, where the timing is promised).
        progress: tqdm bars; default only on a terminal.

    Returns:
        The report's path.

    Example:
        >>> import tempfile
        >>> run_demo(tempfile.mkdtemp(), smoke=True, progress=False).name
        'report.md'
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: extra threads only add synchronisation
    try:
        for name, config, description in DEMO_RUNS:
            config = {**config, "device": device}
            if smoke:
                config.update(steps=5, num_samples=300, validate_every=5)
            t0 = time.perf_counter()
            metrics = train_run(config, out / name, progress=progress)
            rows.append((name, description, metrics, time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    total = time.perf_counter() - started
    lines = [
        "# pyro_manifold demo report",
        "",
        f"Trained {len(rows)} models in {total:.0f} s"
        + (" (smoke mode: a few steps each; numbers are not meaningful)." if smoke else "."),
        "Log-likelihoods are per point on a held-out test set (nats); MMD² compares 2000",
        "model samples with the test set; lower is better.",
        "",
        "| run | model | test log-likelihood | MMD² | distance to manifold "
        "(samples; s = 0; data) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, description, m, seconds in rows:
        ll = f"{m['test_log_likelihood']:.3f} ± {m['test_log_likelihood_stderr']:.3f}"
        dist = (
            "; ".join(
                _format(m[k])
                for k in (
                    "mean_manifold_distance",
                    "mean_manifold_distance_s0",
                    "test_data_manifold_distance",
                )
                if k in m
            )
            or "n/a"
        )
        lines.append(
            f"| {name} | {description} | {ll} | {_format(m['mmd2'])} | {dist} | {seconds:.0f} |"
        )
    lines.append("")
    for name, description, _, _ in rows:
        figure = "density.png" if (out / name / "density.png").exists() else "samples.png"
        lines += [f"## {description}", "", f"![{name}]({name}/{figure})"]
        if (out / name / "samples_s0.png").exists():
            lines.append(f"![{name} on its manifold]({name}/samples_s0.png)")
        lines += [f"![{name} training]({name}/training_curve.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    (out / "metrics.json").write_text(json.dumps({name: m for name, _, m, _ in rows}, indent=1))
    return report
