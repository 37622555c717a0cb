"""How well the VQ autoencoder atlas sorts MNIST digits: class purity of its charts.

Trains ``VQAutoencoder`` alone (the first stage of ``VQFlow``) on dequantized
logit-space MNIST (the 50,000 images of ``load_mnist(split="train")``), as
``vq_flows.py --part mnist`` does, for each setting given, and reports the class purity of
its charts on the 10,000 validation images (the share of images whose chart's most common
digit is their own), the mean squared reconstruction error (logit space) and, for
reference, the purity of k-means (k-means++ start, 30 Lloyd iterations, on 20,000
training images) on the same images.

A diagnostic that chooses nothing (issue 21): the commitment weight is chosen by
``vq_protocol.py`` from the validation Fréchet distance. Sessions 7-8 scored these
purities on the test images' labels and chose beta = 1.0 from them; this script now reads
the validation split only, never the test split.

Run: PYRO_MANIFOLD_DATA=../shared/data python benchmarks/vq_atlas_purity.py
     (seeds 0, 1, 2, beta 0.25 and 1.0: six atlases of 2000 steps, a few minutes each)
Smoke: PYRO_MANIFOLD_DATA=../shared/data python benchmarks/vq_atlas_purity.py --smoke
       (one setting, a few steps on 512 images; written to runs/smoke/ unless --out)
"""

import argparse
import itertools
import json
from pathlib import Path

import pyro
import torch
from provenance import provenance  # benchmarks/ is the script's directory

from pyro_manifold.datasets import dequantize_logit, load_mnist, logit_transform
from pyro_manifold.infer import fit
from pyro_manifold.models import VQAutoencoder
from pyro_manifold.nn import kmeans

LAMBDA = 1e-6


def purity(assign, labels, num_charts):
    """Share of points whose chart's most common label is their own."""
    hits = sum(
        int(torch.bincount(labels[assign == k], minlength=10).max())
        for k in range(num_charts)
        if (assign == k).any()
    )
    return hits / len(labels)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--commitments", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--code-dims", type=int, nargs="+", default=[16])
    p.add_argument("--steps", type=int, nargs="+", default=[2000])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--charts", type=int, default=10)
    p.add_argument(
        "--out",
        default=None,
        help="default benchmarks/results/vq_atlas_purity.json (runs/smoke/... with --smoke)",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps on a few images")
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = "runs/smoke" if args.smoke else "benchmarks/results"
    args.out = args.out or f"{folder}/vq_atlas_purity.json"
    train_set, val_set = load_mnist(split="train"), load_mnist(split="validation")
    num_kmeans = 20000
    if args.smoke:
        train_set, val_set = (type(d)(d.data[:512], d.labels[:512]) for d in (train_set, val_set))
        args.seeds, args.commitments, args.code_dims, args.steps = [0], [0.25], [4], [5]
        num_kmeans = 512
    train = dequantize_logit(train_set.data, 0, alpha=LAMBDA)[0]
    val_pixels = val_set.data.float().div(255).clamp(1 / 512, 1 - 1 / 512)
    val = logit_transform(val_pixels, alpha=LAMBDA)[0]
    rows = []
    settings = itertools.product(args.commitments, args.code_dims, args.steps, args.seeds)
    for commitment, code_dim, steps, seed in settings:
        pyro.set_rng_seed(seed)
        atlas = VQAutoencoder(784, code_dim, args.charts, [512], commitment=commitment)
        fit(atlas.model, atlas.guide, train, num_steps=steps, batch_size=128, lr=args.lr,
            device="cpu", progress=False, seed=seed)  # fmt: skip
        atlas.eval()
        with torch.no_grad():
            assign = atlas.assign(val)
            mse = float((atlas.reconstruct(val) - val).pow(2).mean())
        row = dict(commitment=commitment, code_dim=code_dim, steps=steps, seed=seed,
                   purity=purity(assign, val_set.labels, args.charts), mse=mse)  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    seeding = torch.Generator().manual_seed(0)
    centres = kmeans(train[:num_kmeans].double(), args.charts, 30, generator=seeding)[0].float()
    reference = purity(torch.cdist(val, centres).argmin(-1), val_set.labels, args.charts)
    print("\n| commitment | code dim | steps | seed | purity | MSE (logit) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['commitment']} | {r['code_dim']} | {r['steps']} | {r['seed']} | "
              f"{r['purity']:.3f} | {r['mse']:.2f} |")  # fmt: skip
    print(
        f"k-means on the logit-space images ({num_kmeans:,} training images): "
        f"purity {reference:.3f}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "kmeans_purity": reference, "split": "validation", **vars(args)}
    out.write_text(json.dumps({**report, **provenance()}, indent=1))


if __name__ == "__main__":
    main()
