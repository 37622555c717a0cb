"""The NIF paper's MNIST claims 1, 2 and 4 under the protocol: select on validation, test once.

Protocol (issue 21; fixed before any run under it):

* Candidates: NIF-64 (``mnist_flows.py --model nif --latent 64``: the NF's top flow,
  MAF(5) with 1024 hidden units and batch norm, 30 epochs, best validation checkpoint)
  with A in {image (appendix A.6), dense} x initial noise scale in {1, 0.4, 0.1}, each
  scored with two priors on z: the unit normal it trains with, and a 10-component
  Gaussian mixture fitted by EM to the stochastic inverse of the training images after
  training (``NoisyInjectiveFlow.fit_prior``, early-stopped on the validation images).
  12 configurations (``CONFIGURATIONS``), one seed (0) each. The NF is the MAF(5) of the
  baseline (``maf_ablation.sh``), sampled at temperature t in ``NF_TEMPERATURES``
  (the base scaled by sqrt(t)), its natural counterpart of the NIF's s = 0.
* Selection metrics, validation images only (10,000, never the test set): bits/dim
  (exact for both priors), the MNIST Fréchet distance (the package's classifier, not FID)
  of ``--num-samples`` samples against the validation images (NIF at s = 0, the NF at
  each t), and the 10-NN accuracy of validation latents against 10,000 training latents
  (NIF: pseudo-inverse; NF: f^-1(x)).
* Rule: the NF's temperature is the t with the lowest validation Fréchet distance. The
  NIF configuration is, among those with validation bits/dim at most the NF's + 0.02
  (claim 1's margin), the one with the lowest validation Fréchet distance at s = 0
  (claim 2); if none is within the margin, the one with the lowest bits/dim.
* Test, once: the chosen configuration is trained with seeds 0, 1, 2 and the NF has
  seeds 0, 1, 2; each pair is scored on the 10,000 test images: claim 1 (NIF test
  bits/dim within 0.02 of the NF's), claim 2 (NIF Fréchet at s = 0 at least 25% lower
  than the NF's at its chosen t), claim 4 (NIF 10-NN accuracy at least the NF's + 5
  points); mean ± std and per seed.

Stages:

1. ``bash benchmarks/nif_protocol.sh candidates`` trains the six NIF-64 runs
   (``--evaluate validation``: their test images are not read);
2. ``python benchmarks/nif_protocol.py --stage select`` scores every configuration and
   the NF on validation and writes ``benchmarks/results/nif_protocol_selection.json``;
3. ``bash benchmarks/nif_protocol.sh seeds`` trains seeds 1 and 2 of the chosen one;
4. ``python benchmarks/nif_protocol.py --stage test`` writes
   ``benchmarks/results/nif_protocol_test.json``.

Smoke: python benchmarks/nif_protocol.py --smoke --stage select --runs DIR --nf-runs RUN
       (smoke runs of mnist_flows.py in DIR/<name>_seed0 for the first two runs, whose four
       configurations are scored; an untrained classifier; numbers mean nothing)
"""

import argparse
import json
import statistics
from pathlib import Path

import torch
from mnist_flows import SMOKE_TEST_IMAGES, evaluate  # benchmarks/ is the script's directory
from nif_mnist_eval import (
    draw,
    embed,
    fit_prior_flow,
    frechet_classifier,
    head,
    knn_accuracy,
    load_run,
    to_logit,
    to_pixels,
)
from provenance import provenance

from pyro_manifold.datasets import load_mnist
from pyro_manifold.metrics import mnist_frechet_distance

RUNS = (("image", "1"), ("image", "04"), ("image", "01"),
        ("dense", "1"), ("dense", "04"), ("dense", "01"))  # fmt: skip
PRIORS = ("unit", "gmm10")
CONFIGURATIONS = tuple(
    f"nif64_{nif_map}_noise{noise}+{prior}" for nif_map, noise in RUNS for prior in PRIORS
)
NF_TEMPERATURES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MARGIN_BITS = 0.02  # claim 1
SEEDS = (0, 1, 2)


def choose(nif: dict, nf: dict) -> tuple[str, float]:
    """The protocol's rule on validation scores: (configuration, NF temperature).

    ``nif[c]`` holds ``bits_per_dim`` and ``frechet_s0``; ``nf`` holds ``bits_per_dim``
    and ``frechet`` (temperature -> distance).

    Example:
        >>> nf = {"bits_per_dim": 1.70, "frechet": {0.5: 300.0, 1.0: 250.0}}
        >>> nif = {"a": {"bits_per_dim": 1.71, "frechet_s0": 200.0},
        ...        "b": {"bits_per_dim": 1.80, "frechet_s0": 100.0}}
        >>> choose(nif, nf)
        ('a', 1.0)
    """
    t = min(nf["frechet"], key=nf["frechet"].get)
    within = [c for c in nif if nif[c]["bits_per_dim"] <= nf["bits_per_dim"] + MARGIN_BITS]
    if within:
        return min(within, key=lambda c: nif[c]["frechet_s0"]), t
    return min(nif, key=lambda c: nif[c]["bits_per_dim"]), t


class Scorer:
    """The validation or test metrics of the protocol for one split."""

    def __init__(self, args, split):
        self.args = args
        self.classifier = frechet_classifier(args.classifier_root or args.data, args.smoke)
        self.train = load_mnist(args.data, "train")
        self.validation = load_mnist(args.data, "validation")
        images = load_mnist(args.data, split)
        if args.smoke:
            self.train, self.validation = head(self.train, 300), head(self.validation, 200)
            images = head(images, SMOKE_TEST_IMAGES)
        self.images, self.seed = images, 12345 if split == "validation" else 1
        self.reference = images.data.float() / 255
        idx = torch.randperm(self.train.data.shape[0], generator=torch.Generator().manual_seed(0))
        self.embed_idx = idx[: args.embed_train]

    def bits_per_dim(self, model):
        return evaluate(model, self.images.data, seed=self.seed)["bits_per_dim"]

    def frechet(self, samples):
        return mnist_frechet_distance(samples, self.reference, self.classifier)

    def knn(self, model):
        train_z = embed(model, to_logit(self.train.data[self.embed_idx]))
        z = embed(model, to_logit(self.images.data))
        return knn_accuracy(train_z, self.train.labels[self.embed_idx], z, self.images.labels)

    def nif(self, run_dir, prior):
        """(model, scores) of a NIF run with the unit prior or a fitted mixture prior."""
        if prior == "unit":
            model = load_run(run_dir)
        else:
            model = load_run(run_dir, {"prior_components": 10})
            fit_prior_flow(model, self.train, self.validation, self.args.prior_steps)
        torch.manual_seed(0)
        samples = draw(model, self.args.num_samples, self.args.batch, str(run_dir), s=0.0)
        return {"bits_per_dim": self.bits_per_dim(model), "frechet_s0": self.frechet(samples),
                "knn10_accuracy": self.knn(model)}  # fmt: skip

    def nf(self, run_dir, temperatures):
        model = load_run(run_dir)
        frechet = {}
        for t in temperatures:
            torch.manual_seed(0)
            frechet[t] = self.frechet(nf_samples(model, self.args.num_samples, self.args.batch, t))
        return {"bits_per_dim": self.bits_per_dim(model), "frechet": frechet,
                "knn10_accuracy": self.knn(model)}  # fmt: skip


@torch.no_grad()
def nf_samples(flow, n, batch, t):
    """``n`` finite NF samples at temperature ``t`` (base variance t), in pixel space."""
    out, kept = [], 0
    while kept < n:
        base = torch.distributions.Normal(flow.base_loc, flow.base_scale * t**0.5)
        u = base.sample((min(batch, n - kept),))
        for layer in flow.layers:
            u = layer(u)
        u = u[torch.isfinite(u).all(-1)]
        out.append(u)
        kept += len(u)
    return to_pixels(torch.cat(out))


def select(args):
    scorer = Scorer(args, "validation")
    nif = {}
    configurations = CONFIGURATIONS[:4] if args.smoke else CONFIGURATIONS  # two runs' worth
    for configuration in configurations:
        name, prior = configuration.split("+")
        run_dir = Path(args.runs) / f"{name}_seed0"
        if not run_dir.exists():
            raise SystemExit(f"{run_dir}: missing; train it with nif_protocol.sh candidates")
        nif[configuration] = scorer.nif(run_dir, prior)
        print(configuration, nif[configuration], flush=True)
    temperatures = (1.0,) if args.smoke else NF_TEMPERATURES
    nf = scorer.nf(args.nf_runs[0], temperatures)
    print("NF", nf, flush=True)
    chosen, t = choose(nif, nf)
    return {
        "stage": "select",
        "split": "validation",
        "configurations_tried": list(configurations),
        "nf_temperatures_tried": list(temperatures),
        "validation": nif,
        "nf_validation": {**nf, "frechet": {str(k): v for k, v in nf["frechet"].items()}},
        "chosen": chosen,
        "nf_temperature": t,
        "num_samples": args.num_samples,
    }


def test(args):
    selection = json.loads(Path(args.selection).read_text())
    chosen, t = selection["chosen"], selection["nf_temperature"]
    name, prior = chosen.split("+")
    scorer = Scorer(args, "test")
    rows = []
    for seed, nf_run in zip(args.seeds, args.nf_runs, strict=True):
        nif = scorer.nif(Path(args.runs) / f"{name}_seed{seed}", prior)
        nf = scorer.nf(nf_run, (t,))
        nf["frechet"] = nf["frechet"][t]
        rows.append({"seed": seed, "nif": nif, "nf": nf,
                     "claim1": nif["bits_per_dim"] - nf["bits_per_dim"] <= MARGIN_BITS,
                     "claim2": nif["frechet_s0"] <= 0.75 * nf["frechet"],
                     "claim4": nif["knn10_accuracy"] >= nf["knn10_accuracy"] + 0.05})  # fmt: skip
        print(rows[-1], flush=True)

    def summary(side, key):
        values = [row[side][key] for row in rows]
        return {"mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0}  # fmt: skip

    return {
        "stage": "test",
        "split": "test",
        "chosen": chosen,
        "nf_temperature": t,
        "configurations_tried": selection["configurations_tried"],
        "selection_commit": selection.get("commit"),
        "seeds": rows,
        "summary": {
            "nif": {k: summary("nif", k) for k in ("bits_per_dim", "frechet_s0", "knn10_accuracy")},
            "nf": {k: summary("nf", k) for k in ("bits_per_dim", "frechet", "knn10_accuracy")},
        },
        "num_samples": args.num_samples,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["select", "test"], required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--classifier-root", default=None, help="where the classifier is cached")
    p.add_argument("--runs", default="runs/nif_protocol", help="folder of the NIF runs")
    p.add_argument("--nf-runs", nargs="+",
                   default=[f"runs/mnist_maf_seed{s}" for s in SEEDS],
                   help="the NF runs, one per seed (select uses the first)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--selection", default="benchmarks/results/nif_protocol_selection.json")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--embed-train", type=int, default=10000)
    p.add_argument("--prior-steps", type=int, default=3000, help="EM iterations at most")
    p.add_argument("--out", default=None, help="default benchmarks/results/nif_protocol_STAGE.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, an untrained classifier")
    args = p.parse_args()
    if args.smoke:
        args.num_samples = args.batch = 16
        args.embed_train, args.prior_steps = 200, 5
    default = "runs/smoke" if args.smoke else "benchmarks/results"
    stage_name = "selection" if args.stage == "select" else "test"
    out = Path(args.out or f"{default}/nif_protocol_{stage_name}.json")
    torch.manual_seed(0)
    report = select(args) if args.stage == "select" else test(args)
    report.update(args=vars(args), **provenance())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("chosen", "nf_temperature")}, indent=2))


if __name__ == "__main__":
    main()
