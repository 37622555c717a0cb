"""``python -m pyro_manifold demo`` in smoke mode: every method in the report, with its
metric and figures; refused arguments."""

import json
import math
import re

import pytest

from pyro_manifold.__main__ import main
from pyro_manifold.demo import DEMO_ENTRIES, run_demo
from pyro_manifold.errors import ArgumentError, ArgumentTypeError, RunDirectoryError

#: the metric each entry must report: (key in metrics.json, words in its report row)
HEADLINES = {
    "flow_two_moons": [("test_log_likelihood", "test log-likelihood")],
    "nif_sphere": [
        ("test_log_likelihood", "test log-likelihood"),
        ("mean_manifold_distance_s0", "distance to the sphere at s = 0"),
    ],
    "vmonf_pinwheel": [("clustering_accuracy", "clustering accuracy")],
    "vqflow_torus": [("test_log_likelihood", "test log-likelihood"), ("charts_used", "charts")],
    "vae_shapes": [
        (f"{encoder}/test_iwae_log_likelihood", f"{encoder} ")
        for encoder in ("Gaussian", "IAF", "PCP-Map")
    ],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--smoke", "--out", str(out)]) == 0
    return out


def _lookup(metrics, key):
    for part in key.split("/"):
        metrics = metrics[part]
    return metrics


def test_every_method_has_a_row_with_its_metric_and_figures(demo):
    report = (demo / "report.md").read_text()
    metrics = json.loads((demo / "metrics.json").read_text())
    assert set(HEADLINES) == {name for name, _ in DEMO_ENTRIES}
    rows = {line.split(" | ")[0][2:]: line for line in report.splitlines() if line[:2] == "| "}
    for name, method in DEMO_ENTRIES:
        row = rows[name]
        assert f"| {name} | {method} |" in row
        for key, words in HEADLINES[name]:
            assert words in row, (name, words)
            value = _lookup(metrics[name], key)
            assert math.isfinite(value), (name, key)
            if isinstance(value, float) and "IWAE" in row:
                assert f"{words}{value:.2f}" in row
        figures = re.findall(r"\]\(([^)]+\.png)\)", row)
        assert figures, name
        for figure in figures:
            assert figure.startswith(f"{name}/")
            assert (demo / figure).stat().st_size > 1000, figure
            assert f"]({figure})" in report.split("\n## ", 1)[1]  # drawn in its section too
        assert metrics[name]["seconds"] >= 0 and metrics[name]["cpu_seconds"] >= 0


def test_report_states_the_total_time_and_the_methods(demo):
    report = (demo / "report.md").read_text()
    metrics = json.loads((demo / "metrics.json").read_text())
    total = re.search(r"trained and evaluated in (\d+) s in all", report)
    assert total and int(total.group(1)) == round(metrics["total_seconds"])
    assert "smoke mode" in report
    for name, _ in DEMO_ENTRIES:
        assert re.search(rf"^## .*\(`{name}`, \d+ s\)$", report, re.MULTILINE), name


def test_vmonf_and_vae_metrics_are_consistent(demo):
    metrics = json.loads((demo / "metrics.json").read_text())
    vmonf = metrics["vmonf_pinwheel"]
    assert 0.2 <= vmonf["clustering_accuracy"] <= 1 and 0.2 <= vmonf["kmeans_accuracy"] <= 1
    row = next(line for line in (demo / "report.md").read_text().splitlines()
               if line.startswith("| vmonf_pinwheel |"))  # fmt: skip
    # the headline row carries the honest baseline beside the mixture's accuracy
    assert f"k-means alone {vmonf['kmeans_accuracy']:.3f}" in row
    for encoder in ("Gaussian", "IAF", "PCP-Map"):
        vae = metrics["vae_shapes"][encoder]
        assert vae["test_iwae_log_likelihood"] < 0  # a bound on the log of a probability
    vq = metrics["vqflow_torus"]
    assert 1 <= vq["charts_used"] <= vq["num_charts"]


def test_a_second_demo_into_the_same_folder_is_refused_before_training(demo):
    before = (demo / "report.md").read_text()
    with pytest.raises(ArgumentError, match="out_dir: expected a new or empty folder"):
        run_demo(demo, smoke=True, progress=False)
    assert (demo / "report.md").read_text() == before


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"smoke": "yes"}, ArgumentTypeError, "smoke"),
        ({"progress": 1}, ArgumentTypeError, "progress"),
        ({"device": "gpu0"}, ArgumentError, "device: expected a torch device"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        run_demo(tmp_path / "out", **{"smoke": True, **kwargs})
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(RunDirectoryError, match="out_dir: expected a directory"):
        run_demo(path, smoke=True)
    assert main(["demo", "--smoke", "--out", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: out_dir")
