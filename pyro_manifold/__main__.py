r"""The command line: ``python -m pyro_manifold {fit,evaluate,sample,demo,train-classifier}``.

Examples::

    python -m pyro_manifold demo
    python -m pyro_manifold fit flow --dataset pinwheel --flow spline_coupling --steps 3000
    python -m pyro_manifold fit nif --dataset sphere --latent-dim 2 --flow realnvp --noise 0.03
    torchrun --nproc-per-node 4 -m pyro_manifold fit flow --dataset pinwheel  # data-parallel
    python -m pyro_manifold evaluate runs/flow_pinwheel
    python -m pyro_manifold sample runs/flow_pinwheel -n 1000
    python -m pyro_manifold train-classifier --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pyro_manifold.datasets import DATASETS
from pyro_manifold.demo import run_demo
from pyro_manifold.errors import PyroManifoldError
from pyro_manifold.experiment import DEFAULT_CONFIG, MODELS, evaluate_run, sample_run, train_run
from pyro_manifold.infer import resolve_device
from pyro_manifold.infer.distributed import is_main_process, torchrun_process_group
from pyro_manifold.metrics import load_mnist_classifier
from pyro_manifold.transforms import FLOWS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pyro_manifold",
        description="Train, evaluate and sample pyro_manifold models.",
    )
    p.add_argument(
        "--debug", action="store_true", help="show an error's traceback (default: one line)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="train a model; writes a run directory")
    f.add_argument("model", choices=MODELS, help="which model to train")
    f.add_argument("--dataset", required=True, choices=DATASETS, help="training data")
    f.add_argument("--latent-dim", type=int, default=None, help="latent dimension (nif)")
    f.add_argument(
        "--flow",
        choices=FLOWS,
        default=DEFAULT_CONFIG["flow"],
        help="flow layers (the top flow of a nif)",
    )
    f.add_argument("--layers", type=int, default=DEFAULT_CONFIG["layers"], help="flow layers")
    f.add_argument(
        "--hidden",
        type=int,
        default=DEFAULT_CONFIG["hidden"],
        help="hidden width of each layer's network",
    )
    f.add_argument("--batch-norm", action="store_true", help="batch norm between flow layers")
    f.add_argument("--steps", type=int, default=DEFAULT_CONFIG["steps"], help="SVI steps")
    f.add_argument("--batch-size", type=int, default=DEFAULT_CONFIG["batch_size"])
    f.add_argument("--lr", type=float, default=DEFAULT_CONFIG["lr"], help="Adam learning rate")
    f.add_argument(
        "--num-samples",
        type=int,
        default=DEFAULT_CONFIG["num_samples"],
        help="training points for toy data (validation and test: a fifth each)",
    )
    f.add_argument(
        "--noise",
        type=float,
        default=DEFAULT_CONFIG["noise"],
        help="off-manifold noise std for 3D toy manifolds",
    )
    f.add_argument("--seed", type=int, default=DEFAULT_CONFIG["seed"])
    f.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    f.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early stopping after this many validations without improvement",
    )
    f.add_argument("--validate-every", type=int, default=DEFAULT_CONFIG["validate_every"])
    f.add_argument(
        "--data", dest="data_root", default=None, help="MNIST root (default: $PYRO_MANIFOLD_DATA)"
    )
    f.add_argument("--run-dir", default=None, help="output folder (default: runs/MODEL_DATASET)")
    f.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")

    e = sub.add_parser("evaluate", help="test metrics of a run; writes metrics.json")
    e.add_argument("run_dir")

    s = sub.add_parser("sample", help="draw samples from a run; writes samples.pt and a PNG")
    s.add_argument("run_dir")
    s.add_argument("-n", "--num-samples", type=int, default=1000)

    d = sub.add_parser(
        "demo", help="one small model per method on generated data (< 3 min on 2 CPU cores)"
    )
    d.add_argument("--out", default="demo_output", help="output folder")
    d.add_argument("--smoke", action="store_true", help="a few steps only (for tests)")

    c = sub.add_parser(
        "train-classifier", help="train the MNIST classifier behind the Fréchet distance"
    )
    c.add_argument("--data", default=None, help="MNIST root (default: $PYRO_MANIFOLD_DATA)")
    c.add_argument("--device", default=None, help="where to train it (default: cpu)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pyro_manifold``; returns the exit status.

    An error of the package (:class:`~pyro_manifold.errors.PyroManifoldError`: a refused
    argument, checkpoint or run directory) is printed as one line, ``error: ...``, on
    stderr with exit status 2; ``--debug`` (before the command) shows the traceback.

    Example:
        >>> main(["evaluate", "--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
        >>> import contextlib, io, tempfile
        >>> with contextlib.redirect_stderr(io.StringIO()) as err:
        ...     status = main(["evaluate", tempfile.mkdtemp()])
        >>> status, err.getvalue().startswith("error: ")
        (2, True)
    """
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except PyroManifoldError as e:
        if args.debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "fit":
        config = {
            k: v for k, v in vars(args).items() if k in DEFAULT_CONFIG and k not in ("data_dim",)
        }
        run_dir = args.run_dir or f"runs/{args.model}_{args.dataset}"
        with torchrun_process_group(args.device):  # under torchrun: data-parallel training
            metrics = train_run(config, run_dir, resume=args.resume)
            main_process = is_main_process()
        if main_process:
            print(json.dumps(metrics, indent=1))
            print(f"run written to {run_dir}")
    elif args.command == "evaluate":
        print(json.dumps(evaluate_run(args.run_dir), indent=1))
    elif args.command == "sample":
        print(f"samples written to {sample_run(args.run_dir, args.num_samples)}")
    elif args.command == "demo":
        print(f"report written to {run_demo(args.out, smoke=args.smoke)}")
    else:
        # refused before anything is trained or written, as fit refuses it
        device = None if args.device is None else resolve_device(args.device)
        clf = load_mnist_classifier(args.data, train_if_missing=True, device=device)
        print(f"MNIST classifier ready (test accuracy {clf.test_accuracy:.4f})")


if __name__ == "__main__":
    sys.exit(main())
