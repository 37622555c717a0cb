"""The NF baseline given the NIF's mixture prior: does a fitted mixture alone buy claim 2?

Issue 3's claim 2 is met by a NIF whose unit-normal prior was replaced after training by a
K-component Gaussian mixture fitted by EM (benchmarks/nif_mnist_eval.py
--prior-components). This script gives the NF (a run of benchmarks/mnist_flows.py
--model maf) the same treatment, so that the two are compared on equal terms: the NF's
base N(0, I_784) is replaced by a K-component full-covariance Gaussian mixture fitted by
EM (the package's GaussianMixturePrior.fit_em, the same code as the NIF's) to the latents
u = f^-1(y) of the 50,000 training images, with the iterate of best validation fit kept
(10,000 validation images; the test set is not used), and the flow itself unchanged.

Reports, for the unit-normal and the mixture base (the same classifier, the same number
of samples, samples at t = 1): exact test bits/dim (mnist_flows.evaluate's protocol) and
the MNIST Frechet distance of the samples against the test images; and a temperature
grid of the mixture-base NF (``--figure``, by default ``STEM_temperature.png`` next to
the JSON).

Run:  PYRO_MANIFOLD_DATA=../shared/data python benchmarks/nf_mixture_base.py \
          --nf-run runs/mnist_maf --out benchmarks/results/nf_mixture_base.json \
          --figure benchmarks/figures/temperature_NF_gmm10.png
Smoke (a run of mnist_flows.py --smoke; an untrained classifier; numbers mean nothing):
      PYRO_MANIFOLD_DATA=../shared/data python benchmarks/nf_mixture_base.py --smoke \
          --nf-run runs/smoke/mnist_maf
"""

import argparse
import json
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from mnist_flows import SMOKE_TEST_IMAGES, evaluate  # benchmarks/ is the script's directory
from nif_mnist_eval import TEMPERATURES, embed, frechet_classifier, load_run, to_logit, to_pixels
from provenance import provenance

from pyro_manifold.datasets import load_mnist
from pyro_manifold.metrics import mnist_frechet_distance
from pyro_manifold.models._mixture_prior import GaussianMixturePrior
from pyro_manifold.plotting import plot_image_grid


@torch.no_grad()
def push_forward(flow, u, batch):
    """y = f(u), ``batch`` rows at a time (MAF: sequential per layer).

    Rows that overflow to inf/NaN are passed on (validation off) for the caller to drop.
    """
    out = []
    with pyro.validation_enabled(False):
        for chunk in u.split(batch):
            for layer in flow.layers:
                chunk = layer(chunk)
            out.append(chunk)
    return torch.cat(out)


def finite_pixels(y):
    """Pixels of the rows that did not overflow, and the fraction dropped."""
    ok = torch.isfinite(y).all(-1)
    return to_pixels(y[ok]), 1.0 - ok.double().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MNIST root (default: $PYRO_MANIFOLD_DATA)")
    p.add_argument("--classifier-root", default=None, help="where the classifier is cached")
    p.add_argument("--nf-run", default="runs/mnist_maf")
    p.add_argument("--components", type=int, default=10)
    p.add_argument("--em-steps", type=int, default=100, help="at most this many EM iterations")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument(
        "--out",
        default=None,
        help="default benchmarks/results/nf_mixture_base.json (runs/smoke/... with --smoke)",
    )
    p.add_argument(
        "--figure",
        default=None,
        help="the temperature grid's PNG (default: next to --out, named STEM_temperature.png)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few images and samples, an untrained classifier: checks the script only",
    )
    args = p.parse_args()
    torch.manual_seed(0)
    folder = "runs/smoke" if args.smoke else "benchmarks/results"
    args.out = args.out or f"{folder}/nf_mixture_base.json"
    classifier = frechet_classifier(args.classifier_root or args.data, args.smoke)
    train, val = load_mnist(args.data, "train").data, load_mnist(args.data, "validation").data
    test = load_mnist(args.data, "test").data
    temperatures = TEMPERATURES
    if args.smoke:
        train, val, test = train[:300], val[:100], test[:SMOKE_TEST_IMAGES]
        args.num_samples, args.em_steps, temperatures = 16, min(args.em_steps, 3), (1.0,)
    reference = test.float() / 255
    flow = load_run(args.nf_run)
    report = {"nf_run": args.nf_run, "components": args.components, "smoke": args.smoke,
              **provenance()}  # fmt: skip

    # the flow's latents of the training and validation images (the cheap direction)
    u_train, u_val = embed(flow, to_logit(train, seed=4)), embed(flow, to_logit(val, seed=5))
    mixture = GaussianMixturePrior(u_train.shape[1], args.components)
    t0 = time.perf_counter()
    history = mixture.fit_em(u_train, u_val, max_steps=args.em_steps, seed=0)
    report["em"] = {"iterations": len(history["step"]), "seconds": time.perf_counter() - t0,
                    "train_loss": history["loss"], "val_loss": history["val_loss"]}  # fmt: skip
    with torch.no_grad():
        unit = torch.distributions.Normal(0.0, 1.0)
        report["val_nll_unit_base"] = -unit.log_prob(u_val).sum(-1).mean().item()
        report["val_nll_mixture_base"] = min(history["val_loss"])
    print("EM", report["em"]["iterations"], "iterations", report["val_nll_unit_base"],
          "->", report["val_nll_mixture_base"], flush=True)  # fmt: skip

    def mixture_log_prob(y):
        return dist.TransformedDistribution(mixture.distribution(), list(flow.layers)).log_prob(y)

    bases = {"unit normal": None, f"{args.components}-component mixture": mixture_log_prob}
    torch.manual_seed(1)
    for name, log_prob in bases.items():
        metrics = evaluate(flow, test, log_prob=log_prob)
        with torch.no_grad():
            u = (
                torch.randn(args.num_samples, u_val.shape[1])
                if log_prob is None
                else mixture.distribution().sample((args.num_samples,))
            )
        pixels, dropped = finite_pixels(push_forward(flow, u, args.batch))
        report[name] = {
            "bits_per_dim": metrics["bits_per_dim"],
            "bits_per_dim_stderr": metrics["bits_per_dim_stderr"],
            "frechet_t1": mnist_frechet_distance(pixels, reference, classifier),
            "nonfinite_sample_fraction": dropped,
        }
        print(name, report[name], flush=True)

    rows = []
    with torch.no_grad():
        for t in temperatures:
            u = mixture.distribution(t).sample((8,))
            rows.append(to_pixels(push_forward(flow, u, 8)).nan_to_num(nan=0.0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_image_grid(
        torch.cat(rows),
        Path(args.figure) if args.figure else out.with_name(out.stem + "_temperature.png"),
        ncols=8,
        title=f"NF, {args.components}-component mixture base: rows t = "
        + ", ".join(f"{t:g}" for t in temperatures),
    )
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("em", "machine")}, indent=2))


if __name__ == "__main__":
    main()
