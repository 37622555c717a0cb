"""Figures: what each plotting function draws, and its errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from matplotlib.image import imread

from pyro_manifold.__main__ import main
from pyro_manifold.experiment import evaluate_run, sample_run
from pyro_manifold.plotting import (
    plot_clusters_2d,
    plot_density_2d,
    plot_image_grid,
    plot_samples_3d,
    plot_training_curve,
)

NAN = float("nan")


def gauss(x):
    return -0.5 * (x**2).sum(-1)


def with_nan(n: int, d: int) -> torch.Tensor:
    x = torch.randn(n, d)
    x[1, 0] = NAN
    return x


@pytest.mark.parametrize("n, ncols, rows, cols", [(32, 8, 4, 8), (3, 8, 1, 3), (10, 4, 3, 4)])
def test_image_grid_has_the_grids_shape(tmp_path, n, ncols, rows, cols):
    path = plot_image_grid(torch.zeros(n, 784), tmp_path / "g.png", ncols=ncols)
    png = torch.from_numpy(imread(path)[..., :3].mean(-1))
    height, width = png.shape
    assert width / height == pytest.approx(cols / rows, rel=0.1)
    # black tiles on a white background: the most dark runs along any row is the
    # number of columns of tiles, along any column the number of rows
    dark = png < 0.5
    starts = dark[:, 1:] & ~dark[:, :-1]
    assert int(starts.sum(1).max()) == cols
    starts = dark[1:, :] & ~dark[:-1, :]
    assert int(starts.sum(0).max()) == rows


def test_image_grid_takes_square_images_and_clips(tmp_path):
    a = plot_image_grid(torch.rand(4, 28, 28) * 3 - 1, tmp_path / "a.png")
    b = plot_image_grid(torch.rand(4, 16), tmp_path / "b.png", side=4)
    assert a.stat().st_size > 1000 and b.stat().st_size > 500


def test_density_and_scatter_plots_write_pngs(tmp_path):
    x2, x3 = torch.randn(100, 2), torch.randn(100, 3)
    # a log-density that is -inf on part of the grid is allowed (zero density)
    half = lambda x: torch.where(x[:, 0] > 0, gauss(x), torch.full_like(x[:, 0], -torch.inf))  # noqa: E731
    assert plot_density_2d(half, x2, tmp_path / "d.png", samples=x2, grid_size=10).exists()
    assert plot_samples_3d(x3, tmp_path / "s.png", samples=x3, title="t").exists()
    h = {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "val_step": [3], "val_loss": [1.7]}
    assert plot_training_curve(h, tmp_path / "c.png").exists()


def test_clusters_colour_the_regions_of_the_rule_under_every_panel(tmp_path):
    """Blue (C0) where the rule says 0, orange (C1) where it says 1, in both panels."""
    rule = lambda x: (x[:, 0] > 0).long()  # noqa: E731
    x = torch.rand(200, 2) * 2 - 1
    path = plot_clusters_2d(
        [(x, rule(x), "a"), (x / 2, rule(x), "b")], tmp_path / "c.png", classify=rule
    )
    png = torch.from_numpy(imread(path)[..., :3])
    height, width = png.shape[:2]
    for panel in (0, 1):  # a pixel a quarter into each half of each panel, near the top
        left, right = (png[int(0.15 * height), int(width * (panel + f) / 2)] for f in (0.3, 0.75))
        assert left[2] > left[0] and right[0] > right[2], (panel, left, right)
    assert plot_clusters_2d([(x, rule(x), "no regions")], tmp_path / "n.png").exists()


def test_clusters_classify_sees_chunks_in_the_points_dtype_and_bools_are_labels(tmp_path):
    seen = []

    def rule(grid):
        seen.append((grid.shape[0], grid.dtype))
        return grid[:, 0] > 0  # bool labels, as a comparison gives

    x = torch.randn(50, 2, dtype=torch.float64)
    plot_clusters_2d([(x, x[:, 1] > 0, "t")], tmp_path / "c.png", classify=rule, grid_size=100)
    assert sum(n for n, _ in seen) == 100 * 100 and max(n for n, _ in seen) <= 4096
    assert {dtype for _, dtype in seen} == {torch.float64}


def test_clusters_give_eleven_labels_eleven_colours(tmp_path):
    """Past ten labels the colours come from tab20, so label 10 is not label 0's colour."""
    x = torch.stack([torch.arange(11.0).repeat_interleave(200), torch.rand(2200)], -1)
    labels = torch.arange(11).repeat_interleave(200)
    path = plot_clusters_2d([(x, labels, "")], tmp_path / "c.png")
    png = torch.from_numpy(imread(path)[..., :3]).reshape(-1, 3)
    coloured = png[(png.max(-1).values - png.min(-1).values) > 0.1]  # not grey or white
    found, counts = torch.unique((coloured * 255).round(), dim=0, return_counts=True)
    assert int((counts >= 100).sum()) >= 11, found[counts >= 100]  # blends of edges are rare


BAD = [
    pytest.param(
        lambda p: plot_clusters_2d((torch.rand(5, 2), torch.zeros(5).long(), "t"), p),
        TypeError,
        r"got one such triple \(wrap a single panel in a list\)",
    ),
    pytest.param(
        lambda p: plot_clusters_2d([], p),
        ValueError,
        r"panels: expected at least one \(points, labels, title\), got none",
    ),
    pytest.param(
        lambda p: plot_clusters_2d(torch.rand(5, 2), p),
        TypeError,
        r"panels: expected a sequence of \(points, labels, title\), got Tensor",
    ),
    pytest.param(
        lambda p: plot_clusters_2d([(torch.rand(5, 2), torch.zeros(5).long())], p),
        TypeError,
        r"panels\[0\]: expected a \(points, labels, title\) triple, got tuple of length 2",
    ),
    pytest.param(
        lambda p: plot_clusters_2d([(torch.rand(5, 2), torch.zeros(5), "t")], p),
        TypeError,
        r"panels\[0\] labels: expected an integer or bool tensor, got torch.float32",
    ),
    pytest.param(
        lambda p: plot_clusters_2d([(torch.rand(5, 2), torch.zeros(4).long(), "t")], p),
        ValueError,
        r"panels\[0\] labels: expected shape \(5,\), got \(4,\)",
    ),
    pytest.param(
        lambda p: plot_clusters_2d([(torch.rand(5, 2), -torch.ones(5).long(), "t")], p),
        ValueError,
        r"panels\[0\] labels: expected labels >= 0, got -1",
    ),
    pytest.param(
        lambda p: plot_clusters_2d([(with_nan(5, 2), torch.zeros(5).long(), "t")], p),
        ValueError,
        r"panels\[0\] points: expected finite values",
    ),
    pytest.param(
        lambda p: plot_clusters_2d(
            [(torch.rand(5, 2), torch.zeros(5).long(), "t")], p, classify=lambda x: x[:, 0]
        ),
        TypeError,
        r"classify \(on the plotting grid\): expected an integer or bool tensor, got torch.float32",
    ),
    pytest.param(
        lambda p: plot_clusters_2d([(torch.rand(5, 2), torch.zeros(5).long(), "t")], p, classify=1),
        TypeError,
        r"classify: expected a callable, got int",
    ),
    pytest.param(
        lambda p: plot_image_grid(torch.rand(2, 10), p),
        ValueError,
        r"images: expected shape \(N, 784\) or \(N, 28, 28\), got \(2, 10\)",
    ),
    pytest.param(
        lambda p: plot_image_grid(torch.rand(0, 784), p),
        ValueError,
        r"images: expected a non-empty tensor",
    ),
    pytest.param(
        lambda p: plot_image_grid(with_nan(2, 784), p),
        ValueError,
        r"images: expected finite values, got 1 non-finite",
    ),
    pytest.param(
        lambda p: plot_image_grid(torch.zeros(2, 784, dtype=torch.uint8), p),
        TypeError,
        r"images: expected a floating-point tensor",
    ),
    pytest.param(
        lambda p: plot_image_grid(torch.rand(2, 784), p, ncols=0),
        ValueError,
        r"ncols: expected an int >= 1, got 0",
    ),
    pytest.param(
        lambda p: plot_image_grid(torch.rand(2, 784), p, side=2.5),
        TypeError,
        r"side: expected an int >= 1, got float 2.5",
    ),
    pytest.param(
        lambda p: plot_samples_3d(torch.rand(5, 2), p),
        ValueError,
        r"data: expected shape \(\*, 3\)",
    ),
    pytest.param(
        lambda p: plot_samples_3d(torch.rand(5, 3), p, samples=torch.rand(4, 2)),
        ValueError,
        r"samples: expected shape \(\*, 3\)",
    ),
    pytest.param(
        lambda p: plot_samples_3d(with_nan(5, 3), p), ValueError, r"data: expected finite values"
    ),
    pytest.param(
        lambda p: plot_density_2d(gauss, torch.rand(5, 3), p),
        ValueError,
        r"data: expected shape \(\*, 2\)",
    ),
    pytest.param(
        lambda p: plot_density_2d(gauss, torch.rand(0, 2), p),
        ValueError,
        r"data: expected a non-empty tensor",
    ),
    pytest.param(
        lambda p: plot_density_2d(gauss, torch.rand(5, 2), p, samples=with_nan(4, 2)),
        ValueError,
        r"samples: expected finite values",
    ),
    pytest.param(
        lambda p: plot_density_2d(gauss, torch.rand(5, 2), p, grid_size=1),
        ValueError,
        r"grid_size: expected an int >= 2, got 1",
    ),
    pytest.param(
        lambda p: plot_density_2d(lambda x: x, torch.rand(5, 2), p, grid_size=10),
        ValueError,
        r"log_prob: expected an output of shape \(100,\) for inputs of shape \(100, 2\), "
        r"got \(100, 2\)",
    ),
    pytest.param(
        lambda p: plot_density_2d(lambda x: gauss(x) * NAN, torch.rand(5, 2), p, grid_size=10),
        ValueError,
        r"log_prob: expected values in \[-inf, inf\), got 100 NaN",
    ),
    pytest.param(
        lambda p: plot_density_2d("gauss", torch.rand(5, 2), p),
        TypeError,
        r"log_prob: expected a callable, got str",
    ),
    pytest.param(
        lambda p: plot_training_curve({"step": [1]}, p),
        ValueError,
        r"history: expected keys 'step' and 'loss', got keys \['step'\]",
    ),
    pytest.param(
        lambda p: plot_training_curve({"step": [1, 2], "loss": [1.0]}, p),
        ValueError,
        r"history: expected 'step' and 'loss' of the same length, got 2 and 1",
    ),
    pytest.param(
        lambda p: plot_training_curve(
            {"step": [1], "loss": [1.0], "val_step": [1], "val_loss": []}, p
        ),
        ValueError,
        r"'val_step' and 'val_loss' of the same length",
    ),
    pytest.param(
        lambda p: plot_training_curve([1, 2], p),
        TypeError,
        r"history: expected a dict of lists, got list",
    ),
]


@pytest.mark.parametrize("call, error, pattern", BAD)
def test_bad_input_raises_before_anything_is_written(tmp_path, call, error, pattern):
    path = tmp_path / "out.png"
    with pytest.raises(error, match=pattern):
        call(path)
    assert not path.exists()


@pytest.fixture(scope="module")
def sphere_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("nif") / "run"
    small = "--steps 10 --num-samples 200 --layers 1 --hidden 8 --device cpu --validate-every 5"
    args = ["fit", "nif", "--dataset", "sphere", "--latent-dim", "2", "--run-dir", str(run)]
    assert main([*args, *small.split()]) == 0
    return run


def test_samples_that_overflow_are_dropped_and_counted(sphere_run, monkeypatch):
    """A few non-finite draws leave the sample metrics and figures finite."""
    metrics = json.loads((sphere_run / "metrics.json").read_text())
    assert metrics["nonfinite_sample_fraction"] == {"samples": 0.0, "samples_s0": 0.0}

    from pyro_manifold.experiment import _load_run

    _, model = _load_run(sphere_run)
    draw = model.sample

    def sample(n, **kwargs):
        x = draw(n, **kwargs)
        x[: n // 4] = torch.inf
        return x

    monkeypatch.setattr(model, "sample", sample)
    metrics = evaluate_run(sphere_run, model=model)
    assert metrics["nonfinite_sample_fraction"] == {"samples": 0.25, "samples_s0": 0.25}
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ["mmd2", "mean_manifold_distance"])


def test_sample_run_keeps_every_draw_and_plots_the_finite_ones(sphere_run, monkeypatch):
    import pyro_manifold.experiment as experiment

    loaded = experiment._load_run(sphere_run)
    draw = loaded[1].sample

    def sample(n, **kwargs):
        x = draw(n, **kwargs)
        x[0] = NAN
        return x

    monkeypatch.setattr(loaded[1], "sample", sample)
    monkeypatch.setattr(experiment, "_load_run", lambda run_dir: loaded)
    (sphere_run / "samples_3d.png").unlink(missing_ok=True)
    path = sample_run(sphere_run, 20)
    assert torch.load(path, weights_only=True)[0].isnan().all()
    assert (sphere_run / "samples_3d.png").exists()
