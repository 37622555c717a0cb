"""VAE on dynamically binarized MNIST with Gaussian, IAF and PCP-Map encoders.

Protocol (Burda et al. 2016, one stochastic layer): latent size 50, the same MLP encoder
and decoder (two tanh layers) for every encoder, trained on the 60,000 official training
images binarized afresh at every step (dynamic binarization), batch 100, Adam. The figure
is the test negative log-likelihood in nats, minus the IWAE bound with K = 5000 samples,
averaged over the 10,000 official test images, binarized once (seed 0). Anchor: 86.76
nats for a one-stochastic-layer VAE (Burda et al., Table 1).

During training, the negative ELBO on a fixed binarized subset of the test set is
recorded every ``--eval-every`` epochs (the test-loss curves; never used for selection).
Before training, ``--time-steps`` optimisation steps are timed on their own (after a
warm-up) to give the time per epoch on this device, free of evaluation overheads.

Options reported side by side (``--tag`` names a run): ``--kl-warmup-epochs``,
``--lr-schedule cosine|none``, ``--num-flows``, ``--no-init-output-bias`` (by default
the decoder's output bias starts at the training pixels' log-odds).

Cost of the evaluation: the PCP-Map guide needs an exact Hessian log-determinant per
importance sample, about 6e6 flops per sample and layer with the default PICNN widths
([200, 200], latent 50), so IWAE-5000 on 10,000 test images is about 6e14 flops: minutes
on a GPU, hours on a CPU (use ``--iwae-points`` there).

The claims of issue 6 are scored under issue 21's protocol by ``vae_protocol.py`` (and
its queue ``vae_protocol.sh``), which trains on the 50,000-image training split, draws its
curves and makes every choice on the validation split, and scores the test images once
per final run; this script (60,000 training images, curves on test images) made the
earlier figures that RESULTS.md's history cites, and gives ``vae_protocol.py`` its model.

Run:     PYRO_MANIFOLD_DATA=/path/to/data python benchmarks/flow_vae_mnist.py
Smoke:   python benchmarks/flow_vae_mnist.py --smoke
Timing:  python benchmarks/flow_vae_mnist.py --time-only --device cpu --threads 1
"""

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import Trace_ELBO  # noqa: E402

from pyro_manifold.datasets import dynamic_binarize, load_mnist, static_binarize  # noqa: E402
from pyro_manifold.infer import fit, resolve_device  # noqa: E402
from pyro_manifold.metrics import iwae_log_likelihood  # noqa: E402
from pyro_manifold.models import FlowVAE  # noqa: E402
from pyro_manifold.plotting import plot_image_grid  # noqa: E402

ENCODERS = {"gaussian": None, "iaf": "iaf", "pcp": "pcp"}


def binarize_batch(x):
    """Dynamic binarization of raw uint8 batches; binary floats pass through."""
    return (dynamic_binarize(x),) if x.dtype == torch.uint8 else (x,)


def build(args, encoder, steps_per_epoch, pixel_mean=None):
    vae = FlowVAE(
        args.latent,
        784,
        ENCODERS[encoder],
        num_flows=args.num_flows,
        hidden_dims=args.hidden,
        flow_hidden_dims=args.flow_hidden,
        activation=args.activation,
        kl_warmup_steps=args.kl_warmup_epochs * steps_per_epoch,
    )
    if args.init_output_bias and pixel_mean is not None:
        vae.init_decoder_bias(pixel_mean.unsqueeze(0))  # the pixels' marginal log-odds
    return vae


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(args, encoder, train, device, steps_per_epoch, pixel_mean):
    """Seconds per optimisation step, timed after a warm-up, as ``fit`` takes them."""
    torch.manual_seed(args.seed)
    vae = build(args, encoder, steps_per_epoch, pixel_mean).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    elbo = Trace_ELBO()
    vae.train()

    def step():
        idx = torch.randint(0, train.shape[0], (args.batch_size,), device=device)
        (x,) = binarize_batch(train[idx])
        loss = elbo.differentiable_loss(vae.model, vae.guide, x) / args.batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup_steps):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.time_steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / args.time_steps


def merge(paths, out):
    """One figure of every run's test-loss curve; paired IWAE differences, run by run."""
    runs = {}
    for path in paths:
        tag = Path(path).parent.name.removeprefix("flow_vae_mnist_")
        for name, r in json.loads(Path(path).read_text())["runs"].items():
            runs[f"{name} ({tag}, {r['epochs']:.0f} epochs)"] = r
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, r in runs.items():
        ax.plot(r["curve_epochs"], r["curve_test_neg_elbo"], "-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test negative ELBO (nats)")
    ax.set_title("VAE encoders on binarized MNIST")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "test_loss_curves.png", dpi=120)
    plt.close(fig)
    labels = [k for k, r in runs.items() if "test_iwae_bound" in r]
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            x, y = (torch.tensor(runs[k]["test_iwae_bound"]) for k in (a, b))
            if x.shape != y.shape:
                continue
            d = x - y  # the bound is log p: positive means a is better
            print(
                f"{a} - {b}: {d.mean():.3f} ± {d.std() / math.sqrt(d.numel()):.3f} nats "
                f"(paired, {d.numel()} test images; {float((d > 0).double().mean()):.2f} "
                "of them favour the first)"
            )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MNIST root (default: $PYRO_MANIFOLD_DATA)")
    p.add_argument("--encoders", default="gaussian,iaf,pcp")
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    p.add_argument("--activation", default="tanh")
    p.add_argument("--num-flows", type=int, default=2)
    p.add_argument("--flow-hidden", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "none"])
    p.add_argument("--kl-warmup-epochs", type=int, default=0)
    p.add_argument("--clip-norm", type=float, default=None)
    p.add_argument(
        "--init-output-bias",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the decoder's output bias at the training pixels' log-odds",
    )
    p.add_argument("--eval-every", type=int, default=5, help="epochs between test ELBOs")
    p.add_argument("--curve-points", type=int, default=2000, help="test images in the curves")
    p.add_argument("--iwae-samples", type=int, default=5000)
    p.add_argument("--iwae-points", type=int, default=None, help="default: all 10,000")
    p.add_argument("--iwae-chunk", type=int, default=100)
    p.add_argument("--iwae-batch", type=int, default=100)
    p.add_argument("--time-steps", type=int, default=100, help="0 skips the timing")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--time-only", action="store_true", help="only time the steps")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="suffix naming this configuration")
    p.add_argument(
        "--run-dir", default=None, help="default runs/flow_vae_mnist (runs/smoke/... with --smoke)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder (default benchmarks/results/flow_vae_mnist; runs/smoke/... with --smoke)",
    )
    p.add_argument("--resume", action="store_true", help="continue from run-dir checkpoints")
    p.add_argument("--smoke", action="store_true", help="tiny run to check the script")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="RESULTS_JSON",
        help="no training: plot the test-loss curves of these runs in one figure (in --out) "
        "and print paired IWAE differences between runs scored on the same test images",
    )
    args = p.parse_args()
    folder = "runs/smoke" if args.smoke else "benchmarks/results"
    args.out = args.out or f"{folder}/flow_vae_mnist"
    args.run_dir = args.run_dir or f"runs/{'smoke/' if args.smoke else ''}flow_vae_mnist"
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    for e in encoders:
        if e not in ENCODERS:
            p.error(f"--encoders: expected names from {sorted(ENCODERS)}, got {e!r}")

    train = load_mnist(args.data, "train+validation").data
    test = load_mnist(args.data, "test").data
    if args.smoke:
        train, test = train[:500], test[:100]
        args.epochs, args.latent, args.hidden, args.flow_hidden = 1, 8, [64], [32]
        args.eval_every, args.curve_points, args.iwae_samples = 1, 100, 20
        args.time_steps, args.warmup_steps = min(args.time_steps, 3), 1
    args.flow_hidden = args.flow_hidden or None
    test_binary = static_binarize(test, seed=0).to(device)
    if args.iwae_points is not None:
        test_binary_iwae = test_binary[: args.iwae_points]
    else:
        test_binary_iwae = test_binary
    curve_data = test_binary[: args.curve_points]
    train = train.to(device)
    pixel_mean = train.float().mean(0).cpu() / 255
    steps_per_epoch = max(train.shape[0] // args.batch_size, 1)
    suffix = f"_{args.tag}" if args.tag else ""
    out = Path(args.out + suffix)
    out.mkdir(parents=True, exist_ok=True)

    reports = {}
    for encoder in encoders:
        name = encoder + suffix
        report = {"encoder": encoder, "device": str(device), "threads": torch.get_num_threads()}
        if args.time_steps > 0:
            sec = time_steps(args, encoder, train, device, steps_per_epoch, pixel_mean)
            report["seconds_per_step"] = sec
            report["seconds_per_epoch"] = sec * steps_per_epoch
            print(
                f"{name}: {sec * 1e3:.1f} ms/step, {sec * steps_per_epoch:.1f} s/epoch "
                f"({steps_per_epoch} steps) on {device}",
                flush=True,
            )
        if args.time_only:
            reports[name] = report
            continue
        pyro.clear_param_store()
        torch.manual_seed(args.seed)
        vae = build(args, encoder, steps_per_epoch, pixel_mean)
        run_dir = Path(args.run_dir) / name
        t0 = time.perf_counter()
        result = fit(
            vae.model,
            vae.guide,
            train,
            num_steps=args.epochs * steps_per_epoch,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
            clip_norm=args.clip_norm,
            validation_data=curve_data,
            validate_every=args.eval_every * steps_per_epoch,
            restore_best=False,  # the curve data are test data: never select on them
            transform_batch=binarize_batch,
            device=device,
            seed=args.seed,
            run_dir=run_dir,
            checkpoint_every=steps_per_epoch,
            resume=run_dir / "checkpoint.pt" if args.resume else None,
            log_every=50,
            config={k: v for k, v in vars(args).items() if k != "resume"},
        )
        train_seconds = time.perf_counter() - t0
        vae.eval()
        t0 = time.perf_counter()
        bound = iwae_log_likelihood(
            vae,
            test_binary_iwae,
            num_samples=args.iwae_samples,
            chunk_size=args.iwae_chunk,
            batch_size=args.iwae_batch,
        )
        iwae_seconds = time.perf_counter() - t0
        nll = -bound.mean().item()
        stderr = bound.std().item() / math.sqrt(bound.numel())
        report.update(
            parameters=sum(p.numel() for p in vae.parameters()),
            epochs=result.step / steps_per_epoch,
            train_seconds=train_seconds,
            test_nll_iwae=nll,
            test_nll_iwae_stderr=stderr,
            iwae_samples=args.iwae_samples,
            iwae_points=bound.numel(),
            iwae_seconds=iwae_seconds,
            # per test image, in order: paired comparisons between runs on the same images
            test_iwae_bound=[round(v, 4) for v in bound.tolist()],
            curve_epochs=[s / steps_per_epoch for s in result.history["val_step"]],
            curve_test_neg_elbo=result.history["val_loss"],
            train_loss=result.history["loss"][-1],
        )
        reports[name] = report
        with torch.no_grad():
            plot_image_grid(
                vae.reconstruct(test_binary[:32]),
                out / f"reconstructions_{name}.png",
                title=f"{name}: reconstructions",
            )
            plot_image_grid(vae.sample(32), out / f"samples_{name}.png", title=f"{name}: samples")
        print(
            f"| {name} | test NLL (IWAE {args.iwae_samples}) {nll:.2f} ± {stderr:.2f} | "
            f"{report['epochs']:.0f} epochs | {train_seconds / 60:.1f} min on {device} |",
            flush=True,
        )

    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": reports}, indent=2))
    if not args.time_only:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in reports.items():
            ax.plot(r["curve_epochs"], r["curve_test_neg_elbo"], "o-", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test negative ELBO (nats)")
        ax.set_title("VAE encoders on binarized MNIST")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "test_loss_curves.png", dpi=120)
        plt.close(fig)
    print("| encoder | test NLL (nats) | s/epoch | device |")
    print("|---|---|---|---|")
    for name, r in reports.items():
        nll = (
            f"{r['test_nll_iwae']:.2f} ± {r['test_nll_iwae_stderr']:.2f}"
            if "test_nll_iwae" in r
            else "-"
        )
        per_epoch = f"{r['seconds_per_epoch']:.1f}" if "seconds_per_epoch" in r else "-"
        print(f"| {name} | {nll} | {per_epoch} | {r['device']} ({r['threads']} threads) |")


if __name__ == "__main__":
    main()
