r"""Figures saved as PNG: 2D densities, clusters, samples over data, image grids, curves.

Matplotlib is used headless (the Agg canvas); every function writes one PNG and returns
its path. Arguments are checked before anything is drawn: points and images must be
non-empty floating tensors of the stated shape with finite entries (drop the
non-finite rows of model samples first, e.g. ``x[torch.isfinite(x).all(-1)]``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from pyro_manifold._validation import check_per_point, check_positive_int, check_tensor
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "plot_clusters_2d",
    "plot_density_2d",
    "plot_image_grid",
    "plot_samples_3d",
    "plot_training_curve",
]


def _figure(
    ncols: int = 1, size: float = 4.0, projection: str | None = None, height: float | None = None
):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols, size if height is None else height), dpi=100)
    axes = [fig.add_subplot(1, ncols, i + 1, projection=projection) for i in range(ncols)]
    return fig, axes


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _bounds(points: Tensor, margin: float = 0.15) -> tuple[float, float, float, float]:
    lo, hi = points.min(0).values, points.max(0).values
    pad = torch.where(hi > lo, margin * (hi - lo), 0.5)  # a flat axis gets +-0.5
    return (*(lo - pad).tolist(), *(hi + pad).tolist())  # x0, y0, x1, y1


@torch.no_grad()
def plot_density_2d(
    log_prob: Callable[[Tensor], Tensor],
    data: Tensor,
    path: str | os.PathLike,
    *,
    samples: Tensor | None = None,
    grid_size: int = 150,
    title: str = "",
) -> Path:
    r"""Contours of :math:`p(x)` on a grid, with the data and (optionally) model samples.

    Left panel: :math:`p(x)` over the data's bounding box. Right panel (with
    ``samples``): samples drawn from the model over the data.

    Args:
        log_prob: maps :math:`(M, 2)` points to :math:`(M,)` log-densities.
        data: :math:`(N, 2)` points.
        path: the PNG to write.
        samples: :math:`(S, 2)` model samples.
        grid_size: points per axis.
        title: figure title.

    Example:
        >>> import tempfile, os
        >>> p = plot_density_2d(lambda x: -0.5 * (x**2).sum(-1), torch.randn(50, 2),
        ...                     os.path.join(tempfile.mkdtemp(), "d.png"), grid_size=20)
        >>> p.exists()
        True
    """
    if not callable(log_prob):
        raise ArgumentTypeError(f"log_prob: expected a callable, got {type(log_prob).__name__}")
    check_tensor("data", data, event_shape=(2,), min_dim=2)
    if samples is not None:
        check_tensor("samples", samples, event_shape=(2,), min_dim=2)
    check_positive_int("grid_size", grid_size, minimum=2)
    data = data.detach().cpu().float().reshape(-1, 2)
    x0, y0, x1, y1 = _bounds(data)
    xs = torch.linspace(x0, x1, grid_size)
    ys = torch.linspace(y0, y1, grid_size)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
    lp = torch.cat([_grid_log_prob(log_prob, chunk) for chunk in pts.split(4096)])
    dens = lp.exp().reshape(grid_size, grid_size)
    fig, axes = _figure(2 if samples is not None else 1)
    axes[0].contourf(gx.numpy(), gy.numpy(), dens.numpy(), levels=30, cmap="viridis")
    axes[0].scatter(data[:500, 0], data[:500, 1], s=1, c="white", alpha=0.4)
    axes[0].set_title(f"{title} density" if title else "density")
    if samples is not None:
        s = samples.detach().cpu().float().reshape(-1, 2)
        axes[1].scatter(data[:, 0], data[:, 1], s=2, c="0.7", label="data")
        axes[1].scatter(s[:, 0], s[:, 1], s=2, c="C3", alpha=0.6, label="samples")
        axes[1].set_xlim(x0, x1)
        axes[1].set_ylim(y0, y1)
        axes[1].legend(loc="upper right", markerscale=4)
        axes[1].set_title("samples over data")
    return _save(fig, path)


@torch.no_grad()
def plot_clusters_2d(
    panels: Sequence[tuple[Tensor, Tensor, str]],
    path: str | os.PathLike,
    *,
    classify: Callable[[Tensor], Tensor] | None = None,
    grid_size: int = 150,
) -> Path:
    r"""Points coloured by an integer label, one panel each, over the regions of a classifier.

    Panel :math:`i` scatters its points :math:`x_n` in the colour of label
    :math:`k_n`. With ``classify`` (a map from :math:`(M, 2)` points to :math:`(M,)`
    integer labels, e.g. a mixture's cluster rule :math:`\arg\max_k q(k \mid x)`),
    every panel's background shows the regions :math:`\{x : \mathrm{classify}(x) = k\}`
    in the same colours on a ``grid_size`` × ``grid_size`` grid. All panels share the
    bounding box of the first panel's points (the data, say), so later panels (model
    samples) are drawn at the same scale; points outside it are cut off.

    Colours: matplotlib's ``C0``–``C9`` when every label is below 10, the 20 colours of
    ``tab20`` when every label is below 20; labels from 20 on repeat the colour of
    :math:`k \bmod 20`.

    Args:
        panels: a list of ``(points, labels, title)`` triples: :math:`(N, 2)` finite
            floating points, :math:`(N,)` non-negative integer (or bool) labels, a title.
        path: the PNG to write.
        classify: the region rule drawn under every panel; ``None`` draws no regions. It
            is called under ``torch.no_grad()`` on chunks of at most 4096 grid points
            with the dtype and device of the first panel's points (so a model on a GPU
            classifies a grid on that GPU).
        grid_size: grid points per axis for the regions.

    Example:
        >>> import tempfile, os
        >>> x = torch.randn(40, 2)
        >>> rule = lambda p: (p[:, 0] > 0).long()
        >>> path = os.path.join(tempfile.mkdtemp(), "c.png")
        >>> plot_clusters_2d([(x, rule(x), "by sign")], path, classify=rule).exists()
        True
    """
    if isinstance(panels, (Tensor, str)) or not isinstance(panels, Sequence):
        raise ArgumentTypeError(
            f"panels: expected a sequence of (points, labels, title), got {type(panels).__name__}"
        )
    if isinstance(panels, tuple) and len(panels) == 3 and isinstance(panels[0], Tensor):
        raise ArgumentTypeError(
            "panels: expected a sequence of (points, labels, title), got one such triple "
            "(wrap a single panel in a list)"
        )
    if not panels:
        raise ArgumentError("panels: expected at least one (points, labels, title), got none")
    checked = [_check_panel(i, panel) for i, panel in enumerate(panels)]
    if classify is not None and not callable(classify):
        raise ArgumentTypeError(f"classify: expected a callable, got {type(classify).__name__}")
    check_positive_int("grid_size", grid_size, minimum=2)
    x0, y0, x1, y1 = _bounds(checked[0][0])
    regions = None
    if classify is not None:
        gx, gy = torch.meshgrid(
            torch.linspace(x0, x1, grid_size), torch.linspace(y0, y1, grid_size), indexing="xy"
        )
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
        first = panels[0][0]
        regions = _grid_labels(classify, grid.to(first.device, first.dtype))
        regions = regions.reshape(grid_size, grid_size)
    largest = max(int(labels.max()) for _, labels, _ in checked)
    colours = _label_colours(max(largest, -1 if regions is None else int(regions.max())) + 1)
    fig, axes = _figure(len(checked), size=4.5)
    for ax, (points, labels, title) in zip(axes, checked, strict=True):
        if regions is not None:
            _draw_regions(ax, gx, gy, regions, colours)
        ax.scatter(points[:, 0], points[:, 1], s=2, c=[colours[k] for k in labels.tolist()])
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(title)
    return _save(fig, path)


def _check_panel(i: int, panel: object) -> tuple[Tensor, Tensor, str]:
    name = f"panels[{i}]"
    if not isinstance(panel, (tuple, list)) or len(panel) != 3:
        raise ArgumentTypeError(
            f"{name}: expected a (points, labels, title) triple, got {type(panel).__name__}"
            + (f" of length {len(panel)}" if isinstance(panel, (tuple, list)) else "")
        )
    points, labels, title = panel
    check_tensor(f"{name} points", points, event_shape=(2,), min_dim=2)
    if points.dim() != 2:
        raise ArgumentError(f"{name} points: expected shape (N, 2), got {tuple(points.shape)}")
    labels = _check_labels(f"{name} labels", labels, points.shape[0])
    if not isinstance(title, str):
        raise ArgumentTypeError(f"{name} title: expected a str, got {type(title).__name__}")
    return points.detach().cpu().float(), labels, title


def _check_labels(name: str, labels: object, num_points: int) -> Tensor:
    check_tensor(name, labels, floating=False)
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ArgumentTypeError(f"{name}: expected an integer or bool tensor, got {labels.dtype}")
    if labels.shape != (num_points,):
        raise ArgumentError(f"{name}: expected shape ({num_points},), got {tuple(labels.shape)}")
    labels = labels.detach().cpu().long()
    if (labels < 0).any():
        raise ArgumentError(f"{name}: expected labels >= 0, got {int(labels.min())}")
    return labels


def _grid_labels(classify: Callable[[Tensor], Tensor], grid: Tensor) -> Tensor:
    chunks = []
    for chunk in grid.split(4096):
        out = check_per_point("classify", classify(chunk), chunk)
        chunks.append(_check_labels("classify (on the plotting grid)", out, chunk.shape[0]))
    return torch.cat(chunks)


def _label_colours(num_labels: int) -> list:
    """One colour per label: C0-C9 up to 10 labels, tab20 beyond (repeating after 20)."""
    if num_labels <= 10:
        return [f"C{k}" for k in range(num_labels)]
    from matplotlib import colormaps

    return [colormaps["tab20"](k % 20) for k in range(num_labels)]


def _draw_regions(ax, gx: Tensor, gy: Tensor, regions: Tensor, colours: list) -> None:
    from matplotlib.colors import ListedColormap

    num_labels = int(regions.max()) + 1
    ax.contourf(
        gx.numpy(),
        gy.numpy(),
        regions.numpy(),
        levels=[k - 0.5 for k in range(num_labels + 1)],
        cmap=ListedColormap(colours[:num_labels]),
        alpha=0.25,
    )


def _grid_log_prob(log_prob: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    lp = check_per_point("log_prob", log_prob(points), points).detach().cpu().float()
    if torch.isnan(lp).any() or (lp == math.inf).any():
        raise ArgumentError(
            f"log_prob: expected values in [-inf, inf), got {int(torch.isnan(lp).sum())} NaN "
            f"and {int((lp == math.inf).sum())} +inf on the plotting grid"
        )
    return lp


def plot_samples_3d(
    data: Tensor, path: str | os.PathLike, *, samples: Tensor | None = None, title: str = ""
) -> Path:
    """Scatter 3D data (grey) and model samples (red).

    Example:
        >>> import tempfile, os
        >>> plot_samples_3d(torch.randn(30, 3), os.path.join(tempfile.mkdtemp(), "s.png")).exists()
        True
    """
    check_tensor("data", data, event_shape=(3,), min_dim=2)
    if samples is not None:
        check_tensor("samples", samples, event_shape=(3,), min_dim=2)
    fig, (ax,) = _figure(1, size=5.0, projection="3d")
    d = data.detach().cpu().float().reshape(-1, 3)
    ax.scatter(d[:, 0], d[:, 1], d[:, 2], s=1, c="0.6", label="data")
    if samples is not None:
        s = samples.detach().cpu().float().reshape(-1, 3)
        ax.scatter(s[:, 0], s[:, 1], s[:, 2], s=1, c="C3", label="samples")
        ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    return _save(fig, path)


def plot_image_grid(
    images: Tensor, path: str | os.PathLike, *, ncols: int = 8, side: int = 28, title: str = ""
) -> Path:
    r"""Tile :math:`(N, side^2)` images with values in :math:`[0, 1]` into one grid.

    Values outside :math:`[0, 1]` are clipped; :math:`(N, side, side)` images are taken
    as well. The grid has ``min(ncols, N)`` columns and :math:`\lceil N / ncols \rceil`
    rows, and the figure the grid's aspect ratio.

    Example:
        >>> import tempfile, os
        >>> plot_image_grid(torch.rand(10, 784), os.path.join(tempfile.mkdtemp(), "g.png")).exists()
        True
    """
    check_positive_int("side", side)
    check_positive_int("ncols", ncols)
    check_tensor("images", images, min_dim=2)
    if tuple(images.shape[1:]) not in ((side * side,), (side, side)):
        raise ArgumentError(
            f"images: expected shape (N, {side * side}) or (N, {side}, {side}), "
            f"got {tuple(images.shape)}"
        )
    imgs = images.detach().cpu().float().clamp(0, 1).reshape(-1, side, side)
    n = imgs.shape[0]
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    canvas = torch.ones(nrows * (side + 2), ncols * (side + 2))
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (side + 2) + 1 : r * (side + 2) + 1 + side,
               c * (side + 2) + 1 : c * (side + 2) + 1 + side] = imgs[i]  # fmt: skip
    width = max(3.0, ncols * 0.6)
    title_room = 0.4 if title else 0.0
    fig, (ax,) = _figure(
        1, size=width, height=width * canvas.shape[0] / canvas.shape[1] + title_room
    )
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(title)
    return _save(fig, path)


def plot_training_curve(history: dict[str, list[float]], path: str | os.PathLike) -> Path:
    """Training loss (and validation loss when present) against the step.

    Example:
        >>> import tempfile, os
        >>> h = {"step": [1, 2], "loss": [3.0, 2.0], "val_step": [2], "val_loss": [2.5]}
        >>> plot_training_curve(h, os.path.join(tempfile.mkdtemp(), "c.png")).exists()
        True
    """
    _check_history(history)
    fig, (ax,) = _figure(1, size=4.5)
    ax.plot(history["step"], history["loss"], label="train")
    if history.get("val_step"):
        ax.plot(history["val_step"], history["val_loss"], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per data point")
    ax.legend()
    return _save(fig, path)


def _check_history(history: object) -> None:
    if not isinstance(history, dict):
        raise ArgumentTypeError(f"history: expected a dict of lists, got {type(history).__name__}")
    pairs = [("step", "loss")] + ([("val_step", "val_loss")] if history.get("val_step") else [])
    for x, y in pairs:
        if x not in history or y not in history:
            raise ArgumentError(
                f"history: expected keys {x!r} and {y!r}, got keys {sorted(history)}"
            )
        if len(history[x]) != len(history[y]):
            raise ArgumentError(
                f"history: expected {x!r} and {y!r} of the same length, "
                f"got {len(history[x])} and {len(history[y])}"
            )
