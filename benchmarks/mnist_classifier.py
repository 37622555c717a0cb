"""The MNIST classifier behind the Fréchet distance, over seeds: test accuracy >= 99%.

Issue 2 asks for a classifier with at least 99% test accuracy, whose penultimate features
``pyro_manifold.metrics.mnist_frechet_distance`` compares. This script trains it with the
package's one recipe, :func:`pyro_manifold.metrics.train_mnist_classifier` with its
defaults (3 epochs over the 60,000 training images, batch 128, AdamW with a one-cycle
schedule to 2e-3, no augmentation), once per seed, and scores each on the 10,000 test
images once, at the end. Nothing is selected: there is one configuration, so no
validation split is needed and the test figure of each seed is reported as it comes. The
bar is met when every seed reaches it.
Seed 0 is the network every Fréchet distance uses (``load_mnist_classifier`` trains
exactly it when no weights are cached); ``--cache`` saves it where the metrics look.

Run:   PYRO_MANIFOLD_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/mnist_classifier.py \
           --device cpu --threads 1 --cache --out benchmarks/results/mnist_classifier.json
Smoke: python benchmarks/mnist_classifier.py --smoke --data DIR --out DIR/c.json
       (one epoch of whatever MNIST files DIR holds, seeds 0 and 1; numbers mean nothing)
"""

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path

import torch
from provenance import provenance  # benchmarks/ is the script's directory

from pyro_manifold.metrics import save_mnist_classifier, train_mnist_classifier

SEEDS = (0, 1, 2)
BAR = 0.99


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MNIST root (default: $PYRO_MANIFOLD_DATA)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--cache", action="store_true", help="save seed 0's weights for the metrics")
    p.add_argument("--out", default="benchmarks/results/mnist_classifier.json")
    p.add_argument("--smoke", action="store_true", help="one epoch, seeds 0 and 1")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0, 1] if args.smoke else list(SEEDS)
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        p.error(f"--seeds: expected distinct seeds >= 0, got {args.seeds}")
    if args.cache and 0 not in args.seeds:
        p.error("--cache saves seed 0's network (the metrics'), so --seeds must include 0")
    return args


def recipe_defaults():
    """train_mnist_classifier's default settings (the recipe), as the JSON records them."""
    parameters = inspect.signature(train_mnist_classifier).parameters
    return {k: parameters[k].default for k in ("epochs", "batch_size", "lr", "augment")}


def main(argv=None):
    args = parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    epochs = 1 if args.smoke else recipe_defaults()["epochs"]
    runs, cached = {}, None
    for seed in args.seeds:
        started = time.time()
        net = train_mnist_classifier(args.data, epochs=epochs, seed=seed, device=args.device)
        runs[str(seed)] = {"test_accuracy": net.test_accuracy,
                           "train_seconds": time.time() - started}  # fmt: skip
        print(f"seed {seed}: test accuracy {net.test_accuracy:.4f} "
              f"({runs[str(seed)]['train_seconds'] / 60:.1f} min)", flush=True)  # fmt: skip
        if args.cache and seed == 0:
            cached = str(save_mnist_classifier(net.cpu(), args.data))
    accuracies = [r["test_accuracy"] for r in runs.values()]
    report = {
        **provenance(),
        "smoke": args.smoke,
        "recipe": {
            **recipe_defaults(),
            "epochs": epochs,
            "training_images": "MNIST's official training set (train+validation)",
        },  # fmt: skip
        "selection": "none: one configuration, each seed scored on the test images once",
        "seeds": args.seeds,
        "runs": runs,
        "test_accuracy": {
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "min": min(accuracies),
        },
        "bar": BAR,
        "met": min(accuracies) >= BAR,
        "cached_seed0": cached,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    spread = report["test_accuracy"]
    verdict = "met" if report["met"] else "not met"
    print(f"test accuracy {spread['mean']:.4f} (lowest seed {spread['min']:.4f}) "
          f"over seeds {args.seeds}; bar {BAR}: {verdict}")  # fmt: skip
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
