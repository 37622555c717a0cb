"""How well the VQ autoencoder atlas sorts MNIST digits: class purity of its charts.

Trains ``VQAutoencoder`` alone (the first stage of ``VQFlow``) on dequantized
logit-space MNIST, as ``vq_flows.py --part mnist`` does, for each setting given, and
reports the class purity of its charts on the test images (the share of images whose
chart's most common digit is their own), the mean squared reconstruction error
(logit space) and, for reference, the purity of k-means (k-means++ start, 30 Lloyd iterations, on
20,000 training images) on the same images.

Run: PYRO_MANIFOLD_DATA=../shared/data python benchmarks/vq_atlas_purity.py --seeds 3 4
Smoke: PYRO_MANIFOLD_DATA=../shared/data python benchmarks/vq_atlas_purity.py --smoke
       (one setting, a few steps on 512 images; written to runs/smoke/ unless --out)
"""

import argparse
import itertools
import json
from pathlib import Path

import pyro
import torch

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
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
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
    train_set, test_set = load_mnist(split="train"), load_mnist(split="test")
    num_kmeans = 20000
    if args.smoke:
        train_set, test_set = (type(d)(d.data[:512], d.labels[:512]) for d in (train_set, test_set))
        args.seeds, args.commitments, args.code_dims, args.steps = [0], [0.25], [4], [5]
        num_kmeans = 512
    train = dequantize_logit(train_set.data, 0, alpha=LAMBDA)[0]
    test_pixels = test_set.data.float().div(255).clamp(1 / 512, 1 - 1 / 512)
    test = logit_transform(test_pixels, alpha=LAMBDA)[0]
    rows = []
    settings = itertools.product(args.commitments, args.code_dims, args.steps, args.seeds)
    for commitment, code_dim, steps, seed in settings:
        pyro.set_rng_seed(seed)
        atlas = VQAutoencoder(784, code_dim, args.charts, [512], commitment=commitment)
        fit(atlas.model, atlas.guide, train, num_steps=steps, batch_size=128, lr=args.lr,
            device="cpu", progress=False)  # fmt: skip
        atlas.eval()
        with torch.no_grad():
            assign = atlas.assign(test)
            mse = float((atlas.reconstruct(test) - test).pow(2).mean())
        row = dict(commitment=commitment, code_dim=code_dim, steps=steps, seed=seed,
                   purity=purity(assign, test_set.labels, args.charts), mse=mse)  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    seeding = torch.Generator().manual_seed(0)
    centres = kmeans(train[:num_kmeans].double(), args.charts, 30, generator=seeding)[0].float()
    reference = purity(torch.cdist(test, centres).argmin(-1), test_set.labels, args.charts)
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
    out.write_text(json.dumps({"rows": rows, "kmeans_purity": reference, **vars(args)}, indent=1))


if __name__ == "__main__":
    main()
