"""MAF(5) and noisy injective flows on dequantized, logit-transformed MNIST.

`--model maf` trains the "NF" baseline; `--model nif --latent 64` trains a deep NIF whose
top flow is the same MAF(5) and whose bottom is a structured image NIF layer
(nearest-neighbour upsampling by 7 of a (latent/16, 4, 4) latent image, appendix A.6 of
Cunningham et al. 2020; `--nif-map dense` uses a dense 784 x latent A instead) with a
unit-normal prior, so its log-likelihood is exact. With
`--prior-flow maf` the NIF has a flow prior on z trained jointly (the deep NIF of appendix
B.5); it is trained on the NIF bound and its test figure is the IWAE bound with
`--iwae-samples` draws per image (an upper bound on bits/dim).

Protocol (Papamakarios et al. 2017): pixels x in {0..255} are dequantized,
u = (x + U[0,1)) / 256, then y = logit(lam + (1 - 2 lam) u) with lam = 1e-6. The flow
models y; the paper's MNIST figure is the test log-likelihood in that logit space. We also
report bits per dimension in pixel space (log p(u) = log p(y) + log|dy/du|).
Training: 50,000 training images, 10,000 validation images for early stopping, the
official 10,000 test images for the figure, each dequantized once with a fixed seed for
evaluation.

Ablation of the MAF baseline against the paper's recipe (issue 21, item 3; fixed before
any run under it): ``--lr-schedule constant`` (the paper's constant learning rate, with
``--lr 1e-4 --batch-size 100``), ``--dequantization static`` (each training image
dequantized once with a fixed seed, as the paper's data loader does, instead of afresh at
every step), ``--epochs``, ``--hidden``; and, for every model with batch norm, the
validation and test figures with each batch norm's statistics set to the whole training
set (``*_train_set_bn`` fields, no retraining) next to the moving averages it trained with.

Run:  PYRO_MANIFOLD_DATA=../shared/data python benchmarks/mnist_flows.py --model maf --epochs 30
      PYRO_MANIFOLD_DATA=../shared/data python benchmarks/mnist_flows.py --model nif --latent 64
Smoke: python benchmarks/mnist_flows.py --smoke   (run and JSON under runs/smoke/ unless given)
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
from provenance import provenance  # benchmarks/ is the script's directory
from pyro.distributions.transforms import BatchNorm

from pyro_manifold.datasets import dequantize_logit, load_mnist
from pyro_manifold.infer import fit, resolve_device
from pyro_manifold.metrics import bits_per_dim, importance_log_likelihood
from pyro_manifold.models import Flow, NoisyInjectiveFlow

LAMBDA = 1e-6
SMOKE_TEST_IMAGES = 256  # --smoke scores the first test images; the other scripts' smokes too


NIF_MAPS = ("image", "dense")


def nif_map_kwargs(nif_map: str) -> dict:
    """``NoisyInjectiveFlow`` arguments for the NIF layer's A (``--nif-map``)."""
    return {"image_shape": (1, 28, 28), "factor": 7} if nif_map == "image" else {}


def per_image(flow, x_uint8, batch_size=1000, seed=1, log_prob=None):
    """log p(y) (logit space) and bits/dim (pixel space) of each image, dequantized with ``seed``.

    ``log_prob`` replaces ``flow.log_prob`` (e.g. an IWAE bound where there is no closed form).
    """
    log_prob = flow.log_prob if log_prob is None else log_prob
    y_all, logdet_all = dequantize_logit(x_uint8, seed, alpha=LAMBDA)
    logit_lp, bpd = [], []
    flow.eval()
    with torch.no_grad():
        for y, logdet in zip(y_all.split(batch_size), logdet_all.split(batch_size), strict=True):
            lp = log_prob(y)
            logit_lp.append(lp)
            bpd.append(bits_per_dim(lp + logdet, 784))
    return torch.cat(logit_lp), torch.cat(bpd)


def evaluate(flow, x_uint8, batch_size=1000, seed=1, log_prob=None):
    """Mean and standard error of :func:`per_image`'s log p(y) and bits/dim."""
    lp, bpd = per_image(flow, x_uint8, batch_size, seed, log_prob)
    n = lp.numel()
    return {
        "log_likelihood_logit": lp.mean().item(),
        "log_likelihood_logit_stderr": (lp.std() / math.sqrt(n)).item(),
        "bits_per_dim": bpd.mean().item(),
        "bits_per_dim_stderr": (bpd.std() / math.sqrt(n)).item(),
    }


def set_batch_norm_to_training_set(flow, y_train, batch_size=1000):
    """Set every batch norm's statistics to those of its inputs over the whole training set.

    ``log_prob`` runs the layers from the data end, so the layers are visited in that
    order: each batch norm gets the exact mean and variance (unbiased, as Pyro's
    ``BatchNorm`` computes a batch's) of what reaches it, then the data pass through it
    with those statistics. Returns the number of batch norms.
    """
    layers = list(flow.layers)
    flow.eval()
    ys = list(y_train.split(batch_size))
    count = 0
    with torch.no_grad():
        for layer in reversed(layers):
            if isinstance(layer, BatchNorm):
                total = sum(y.sum(0) for y in ys)
                mean = total / y_train.shape[0]
                var = sum(((y - mean) ** 2).sum(0) for y in ys) / (y_train.shape[0] - 1)
                layer.moving_mean.copy_(mean)
                layer.moving_variance.copy_(var)
                count += 1
            ys = [layer.inv(y) for y in ys]
    return count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MNIST root (default: $PYRO_MANIFOLD_DATA)")
    p.add_argument("--model", choices=["maf", "nif"], default="maf")
    p.add_argument("--latent", type=int, default=64, help="NIF latent size (multiple of 16)")
    p.add_argument("--init-noise", type=float, default=1.0, help="NIF initial noise scale")
    p.add_argument(
        "--nif-map",
        choices=NIF_MAPS,
        default="image",
        help="NIF layer's A: the structured image map (appendix A.6) or a dense 784 x latent",
    )
    p.add_argument("--prior-flow", choices=["maf", "realnvp"], default=None, help="NIF prior")
    p.add_argument("--prior-layers", type=int, default=5)
    p.add_argument("--prior-hidden", type=int, default=512)
    p.add_argument("--iwae-samples", type=int, default=500, help="with --prior-flow")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument(
        "--dequantization",
        choices=["dynamic", "static"],
        default="dynamic",
        help="training noise drawn afresh at every step, or once per image (seed 54321)",
    )
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--patience", type=int, default=5, help="in epochs")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--run-dir",
        default=None,
        help="default runs/mnist_MODEL[LATENT] (runs/smoke/... with --smoke)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="default benchmarks/results/mnist_MODEL[LATENT].json (runs/smoke/... with --smoke)",
    )
    p.add_argument(
        "--evaluate",
        choices=["test", "validation"],
        default="test",
        help="the split scored after training; validation for runs that only compete in a "
        "selection (benchmarks/nif_protocol.py), so their test images are never read",
    )
    p.add_argument("--resume", action="store_true", help="continue from run-dir/checkpoint.pt")
    p.add_argument("--smoke", action="store_true", help="tiny run to check the script")
    args = p.parse_args()
    name = "mnist_maf" if args.model == "maf" else f"mnist_nif{args.latent}"
    args.run_dir = args.run_dir or f"runs/{'smoke/' if args.smoke else ''}{name}"
    args.out = args.out or f"{'runs/smoke' if args.smoke else 'benchmarks/results'}/{name}.json"
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)

    train = load_mnist(args.data, "train").data
    val = load_mnist(args.data, "validation").data
    if args.evaluate == "test":
        scored, scored_seed = load_mnist(args.data, "test").data, 1
    else:  # the validation images, dequantized as for early stopping
        scored, scored_seed = val, 12345
    if args.smoke:
        train, val, scored = train[:512], val[:256], scored[:SMOKE_TEST_IMAGES]
        args.epochs, args.hidden, args.layers = 1, 800, 1  # MADE widths >= 784
    steps_per_epoch = train.shape[0] // args.batch_size
    num_steps = args.epochs * steps_per_epoch
    val_y = dequantize_logit(val, 12345, alpha=LAMBDA)[0]

    train_y = dequantize_logit(train, 54321, alpha=LAMBDA)[0]  # static; batch-norm statistics

    def transform_batch(x):
        return (dequantize_logit(x, alpha=LAMBDA)[0],) if x.dtype == torch.uint8 else (x,)

    if args.model == "maf":
        flow = Flow(784, "maf", num_layers=args.layers, hidden_dims=[args.hidden], batch_norm=True)
    else:
        flow = NoisyInjectiveFlow(
            784,
            args.latent,
            top_flow="maf",
            top_layers=args.layers,
            top_hidden_dims=[args.hidden],
            batch_norm=True,
            **nif_map_kwargs(args.nif_map),
            init_noise_scale=args.init_noise,
            prior_flow=args.prior_flow,
            prior_layers=args.prior_layers,
            prior_hidden_dims=[args.prior_hidden],
        )
    n_params = sum(p.numel() for p in flow.parameters())
    t0 = time.perf_counter()
    result = fit(
        flow.model,
        flow.guide,
        train_y if args.dequantization == "static" else train,
        num_steps=num_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=None if args.lr_schedule == "constant" else "cosine",
        validation_data=val_y,
        validate_every=steps_per_epoch,
        patience=args.patience,
        transform_batch=transform_batch,
        device=device,
        seed=args.seed,
        run_dir=args.run_dir,
        checkpoint_every=steps_per_epoch,
        resume=Path(args.run_dir) / "checkpoint.pt" if args.resume else None,
        log_every=50,
        config=vars(args),
    )
    train_time = time.perf_counter() - t0
    if args.model == "nif" and args.prior_flow is not None:

        def iwae(y):
            k = args.iwae_samples
            return importance_log_likelihood(flow.model, flow.guide, y, num_samples=k)

        metrics = evaluate(flow, scored.to(device), 100, scored_seed, log_prob=iwae)
    else:
        metrics = evaluate(flow, scored.to(device), seed=scored_seed)
    train_set_bn = {}
    if args.model == "maf":  # the ablation's batch-norm statistics (module docstring)
        set_batch_norm_to_training_set(flow, train_y.to(device))
        val_lp = per_image(flow, val.to(device), seed=12345)[0]
        train_set_bn = {
            "validation_log_likelihood_logit_train_set_bn": val_lp.mean().item(),
            **{
                f"{args.evaluate}_{k}_train_set_bn": v
                for k, v in evaluate(flow, scored.to(device), seed=scored_seed).items()
            },
        }
    nif_layer = "an image" if args.nif_map == "image" else "a dense"
    report = {
        "model": f"MAF({args.layers}) hidden [{args.hidden}] + batch norm"
        + ("" if args.model == "maf" else f" over {nif_layer} NIF with latent {args.latent}")
        + (f", {args.prior_flow} prior (IWAE-{args.iwae_samples})" if args.prior_flow else ""),
        "parameters": n_params,
        "epochs_run": result.step / steps_per_epoch,
        "steps": result.step,
        "best_validation_nll_logit": result.best_validation_loss,
        "train_seconds": train_time,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        **{f"{args.evaluate}_{k}": v for k, v in metrics.items()},
        **train_set_bn,
        "args": vars(args),
        **provenance(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(
        f"| {report['model']} | epochs {report['epochs_run']:.1f} | {args.evaluate} log p (logit) "
        f"{metrics['log_likelihood_logit']:.1f} ± {metrics['log_likelihood_logit_stderr']:.1f}"
        f" | bits/dim {metrics['bits_per_dim']:.3f} | {train_time / 60:.1f} min on {device} |"
    )


if __name__ == "__main__":
    main()
