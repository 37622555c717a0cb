"""Validation curves of several mnist_flows.py runs in one figure, and their data as JSON.

Reads each run directory's ``history.json`` (written by ``fit``: the validation loss per
image, in nats, at every validation step) and ``config.json`` (the batch size, for the
epoch axis: epoch = step x batch / 50,000 training images), and plots the validation
negative log-likelihood (logit space) against the epoch, one line per run, labelled by
its folder name. The JSON keeps the curves, so the figure outlives the run directories.
It reads no test image and selects nothing.

Run:   python benchmarks/validation_curves.py runs/mnist_maf_seed1 runs/mnist_maf_static \\
           runs/mnist_maf_paper_schedule runs/mnist_maf_epochs10 \\
           --figure benchmarks/figures/maf_ablation_validation.png \\
           --out benchmarks/results/maf_ablation_validation.json --ymax 1450
Smoke: python benchmarks/validation_curves.py --smoke runs/smoke/mnist_maf \\
           --figure /tmp/curves.png --out /tmp/curves.json
"""

import argparse
import json
from pathlib import Path

from provenance import provenance  # benchmarks/ is the script's directory

TRAIN_IMAGES = 50_000  # mnist_flows.py's training split (the official 60,000 less validation)


def curve(run: Path) -> dict:
    """The run's validation curve: steps, epochs and the loss per image (nats)."""
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    batch = config["batch_size"]
    steps, losses = history["val_step"], history["val_loss"]
    if not steps:
        raise SystemExit(f"{run}: its history.json holds no validation loss")
    return {
        "batch_size": batch,
        "step": steps,
        "epoch": [s * batch / TRAIN_IMAGES for s in steps],
        "validation_nll": losses,
        "best_validation_nll": min(losses),
        "best_epoch": steps[losses.index(min(losses))] * batch / TRAIN_IMAGES,
    }


def plot(curves: dict, path: Path, ymax: float | None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        ax.plot(c["epoch"], c["validation_nll"], marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NLL, logit space (nats)")
    if ymax is not None:
        ax.set_ylim(top=ymax)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories of mnist_flows.py")
    p.add_argument("--figure", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ymax", type=float, default=None, help="cut the axis (early epochs)")
    p.add_argument("--smoke", action="store_true", help="recorded in the JSON only")
    args = p.parse_args(argv)
    curves = {run.name: curve(run) for run in args.runs}
    plot(curves, args.figure, args.ymax)
    report = {**provenance(), "smoke": args.smoke, "figure": str(args.figure), "runs": curves}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for name, c in curves.items():
        print(f"{name}: best validation NLL {c['best_validation_nll']:.1f} nats "
              f"at epoch {c['best_epoch']:.1f}")  # fmt: skip
    print(f"wrote {args.figure} and {args.out}")


if __name__ == "__main__":
    main()
