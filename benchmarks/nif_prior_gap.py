"""How much of a NIF's on-manifold sample quality is lost to its prior on z.

For runs of `mnist_flows.py --model nif`, draws s = 0 samples f(Az + b) with z from
three distributions and gives the MNIST Frechet distance of each against the test images
(the same classifier features and sample count as nif_mnist_eval.py):

* the model's unit-normal prior N(0, I);
* the Gaussian with the mean and covariance of the aggregate stochastic inverse
  Q(z) = 1/N sum_n q(z | y_n), y_n = f^-1(x_n), over --train training images;
* Q itself: one draw z ~ q(z | y_n) for each of --num-samples other training images.

Q is the prior that maximises the NIF bound on the training images with the NIF layer
and the top flow fixed (NoisyInjectiveFlow.fit_prior's target), so its samples' Frechet
distance is what a perfectly fitted prior would reach. Q is also a density: because
p(y | z) = exp(log_manifold_term(y)) q(z | y) and every q(z | y) has the same covariance
Lambda^-1,

    p_Q(y) = exp(log_manifold_term(y)) * 1/N sum_n N(z+(y); z+_n, 2 Lambda^-1),

exact (checked against the sum of the 784-dimensional Gaussians and against Monte Carlo
in float64 on a small problem). Its bits/dim on the validation images tell how well the
aggregate generalises; the unit prior's, by the same formula with N(z+(y); 0, I +
Lambda^-1), are given for comparison. The test images are only the Frechet reference.

Run:  PYRO_MANIFOLD_DATA=../shared/data python benchmarks/nif_prior_gap.py \
          --classifier-root /tmp/mnistroot runs/mnist_nif64_dense_noise05
Smoke (a run of mnist_flows.py --smoke --model nif; an untrained classifier; numbers mean
nothing):  python benchmarks/nif_prior_gap.py --smoke --out /tmp/gap.json runs/smoke/mnist_nif16
"""

import argparse
import json
import math
import os

import pyro
import pyro.poutine as poutine
import torch
from mnist_flows import per_image  # benchmarks/ is the script's directory
from nif_mnist_eval import frechet_classifier, load_run, to_logit, to_pixels

from pyro_manifold.datasets import load_mnist
from pyro_manifold.metrics import mnist_frechet_distance


@torch.no_grad()
def on_manifold(model, z):
    """f(Az + b) for given z (s = 0), the rows that did not overflow, and their fraction."""
    with pyro.validation_enabled(False):
        y = poutine.condition(model.model, data={"z": z})(None, z.shape[0], s=0.0)
    ok = torch.isfinite(y).all(-1)
    return to_pixels(y[ok]), ok.float().mean().item()


def log_prob_with_prior(model, z_centres, scale_tril):
    """log p(y) of the NIF with prior Q (``z_centres``) or, for ``None``, N(0, I)."""
    d = scale_tril.shape[-1]
    log_det = 2 * scale_tril.diagonal().log().sum()  # log det Lambda^-1

    def log_prob(y):
        u = model.top_inverse(y)
        top_log_det = model.log_prob(y) - model.nif.marginal().log_prob(u)
        z = model.nif.pseudo_inverse(u).double()
        if z_centres is None:  # N(z+; 0, I + Lambda^-1)
            cov = torch.eye(d, dtype=z.dtype) + scale_tril @ scale_tril.T
            prior = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=z.dtype), cov)
            log_mix = prior.log_prob(z)
        else:  # 1/N sum_n N(z+; z+_n, 2 Lambda^-1)
            w = torch.linalg.solve_triangular(scale_tril, z.T, upper=False).T
            sq = torch.cdist(w, z_centres).pow(2)
            log_mix = (
                torch.logsumexp(-0.25 * sq, -1)
                - math.log(z_centres.shape[0])
                - 0.5 * d * math.log(4 * math.pi)
                - 0.5 * log_det
            )
        return (model.nif.log_manifold_term(u).double() + log_mix).float() + top_log_det

    return log_prob


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories of mnist_flows.py --model nif")
    p.add_argument("--data", default=os.environ.get("PYRO_MANIFOLD_DATA"))
    p.add_argument("--classifier-root", default=None, help="where the classifier is cached")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--train", type=int, default=50000, help="training images that define Q")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few images and samples, an untrained classifier: checks the script only",
    )
    args = p.parse_args()
    classifier = frechet_classifier(args.classifier_root or args.data, args.smoke)
    reference = load_mnist(args.data, "test").data.float() / 255
    train = load_mnist(args.data, "train").data
    validation = load_mnist(args.data, "validation").data
    if args.smoke:
        reference, validation = reference[:200], validation[:200]
        args.train, args.num_samples = min(args.train, 300), min(args.num_samples, 16)
    report = {}
    header = (
        f"{'run':40s} {'N(0,I)':>8s} {'Gauss(Q)':>8s} {'Q':>8s} {'bpd N(0,I)':>10s} {'bpd Q':>7s}"
    )
    print(header, flush=True)
    for run in args.runs:
        torch.manual_seed(0)
        model = load_run(run)
        y = to_logit(train[: args.train], seed=8)
        with torch.no_grad():
            u = torch.cat([model.top_inverse(c) for c in y.split(1000)])
            q = model.nif.stochastic_inverse(u)
            z_q = q.sample()
            cov = model.nif.stochastic_inverse(u[:1]).covariance_matrix[0]  # the same for all y
            scale_tril = torch.linalg.cholesky(cov.double())
            centres = torch.linalg.solve_triangular(scale_tril, q.mean.double().T, upper=False).T
        n = args.num_samples
        gauss = torch.distributions.MultivariateNormal(z_q.mean(0), torch.cov(z_q.T))
        draws = {
            "unit normal": torch.randn(n, z_q.shape[1]),
            "Gaussian fit to Q": gauss.sample((n,)),
            "Q": z_q[-n:],
        }
        spread = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
        row = {
            "frechet_s0": {},
            "finite_fraction": {},
            # min, median, max eigenvalue of Q's covariance and of every q(z | y)'s
            "q_aggregate_covariance_eigenvalues": torch.linalg.eigvalsh(torch.cov(z_q.T).double())
            .quantile(spread)
            .tolist(),
            "stochastic_inverse_covariance_eigenvalues": torch.linalg.eigvalsh(cov.double())
            .quantile(spread)
            .tolist(),
        }
        for name, z in draws.items():
            pixels, finite = on_manifold(model, z)
            row["frechet_s0"][name] = mnist_frechet_distance(pixels, reference, classifier)
            row["finite_fraction"][name] = finite
        bpd = {}
        for name, c in (("unit normal", None), ("Q", centres)):
            _, per = per_image(
                model, validation, log_prob=log_prob_with_prior(model, c, scale_tril)
            )
            bpd[name] = per.mean().item()
        _, per = per_image(model, validation)  # the closed form, to check the formula above
        bpd["unit normal, closed form"] = per.mean().item()
        row["validation_bits_per_dim"] = bpd
        report[run] = row
        fd, bpd = row["frechet_s0"], row["validation_bits_per_dim"]
        print(
            f"{run:40s} {fd['unit normal']:8.1f} {fd['Gaussian fit to Q']:8.1f} {fd['Q']:8.1f}"
            f" {bpd['unit normal']:10.4f} {bpd['Q']:7.4f}",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
