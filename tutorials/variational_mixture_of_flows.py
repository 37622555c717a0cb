# %% [markdown]
# # Variational mixture of normalizing flows: density estimation, clustering, few labels
#
# Run: `python tutorials/variational_mixture_of_flows.py [--smoke] [--out DIR]` (headless;
# figures are written as PNG to DIR, default `tutorial_output/variational_mixture_of_flows`).
# The MNIST part runs only when `PYRO_MANIFOLD_DATA` points at the MNIST files and
# `--smoke` is not given.
#
# ## Data
# Three data sets of growing difficulty: the 5-wing pinwheel (each wing is a cluster a
# single flow struggles to separate from its neighbours), two concentric circles (a
# cluster that surrounds another, which no half-plane split recovers), and MNIST digits
# 0-4 (784 dimensions, dequantised and logit-transformed).

# %%
import argparse
import json
import os
from pathlib import Path

import torch
from pyro.infer import TraceEnum_ELBO

from pyro_manifold.datasets import pinwheel, two_circles
from pyro_manifold.infer import fit
from pyro_manifold.metrics import clustering_accuracy, contingency_table
from pyro_manifold.models import VariationalMixtureOfFlows
from pyro_manifold.plotting import plot_training_curve

parser = argparse.ArgumentParser(description="Variational mixture of flows tutorial")
parser.add_argument("--smoke", action="store_true", help="a few steps only")
parser.add_argument("--out", default="tutorial_output/variational_mixture_of_flows")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
steps = 20 if args.smoke else 3000
n_train = 500 if args.smoke else 2560

# %% [markdown]
# ## Objective
# The model draws a component and then a point from that component's flow,
#
# .. math::  k \sim \mathrm{Categorical}(\pi), \qquad x \mid k \sim p_k(x),
#
# so :math:`p(x) = \sum_k \pi_k p_k(x)`. The guide is an amortised classifier with a
# temperature, :math:`q(k|x) = \mathrm{softmax}(g(x)/T)`, and training maximises the
# evidence lower bound of Pires & Figueiredo (2020), eq. (31):
#
# .. math::  \mathcal L(x) = \sum_k q(k|x)\,[\log p_k(x) + \log \pi_k - \log q(k|x)]
#            \le \log p(x).
#
# Because :math:`k` is discrete the sum has only :math:`K` terms. The guide marks its
# site for parallel enumeration, so Pyro's `TraceEnum_ELBO` evaluates the sum exactly,
# with no sampling and no score-function gradients. A labelled point (label
# :math:`y \geq 0`; `-1` marks an unlabelled one) fixes :math:`k = y` in the model and adds
# :math:`\alpha \log q(y|x)` to the bound. Maximising the bound therefore also trains the
# classifier.
#
# ## Model and guide
# `VariationalMixtureOfFlows` holds the :math:`K` flows as one batched flow. Each layer's
# network has :math:`K` stacked weight sets and runs as batched matrix products, so
# scoring a point under all :math:`K` components is one pass. `model(x, y)` and
# `guide(x, y)` are ordinary Pyro programs and go straight into `fit`.


# %%
def train(model, data, num_steps=steps, lr=2e-3):
    return fit(
        model.model,
        model.guide,
        data,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        num_steps=num_steps,
        batch_size=256,
        lr=lr,
        device="cpu",
        progress=False,
    )


@torch.no_grad()
def plot_regions(model, data, path, title, grid_size=150):
    """Samples coloured by their component over the regions argmax q(k|x)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    lo, hi = data.min(0).values - 0.3, data.max(0).values + 0.3
    xs, ys = torch.linspace(lo[0], hi[0], grid_size), torch.linspace(lo[1], hi[1], grid_size)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    regions = model.cluster(torch.stack([gx.reshape(-1), gy.reshape(-1)], -1))
    samples, comp = model.sample(2000)
    colors = [f"C{i}" for i in range(model.num_components)]
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    levels = (torch.arange(model.num_components + 1) - 0.5).tolist()
    ax.contourf(
        gx.numpy(),
        gy.numpy(),
        regions.reshape(grid_size, grid_size).numpy(),
        levels=levels,
        cmap=ListedColormap(colors),
        alpha=0.25,
    )
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c=[colors[i] for i in comp.tolist()])
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


results = {}

# %% [markdown]
# ## Training, part 1: pinwheel
# Five RealNVP components of four coupling layers each. The paper's model starts every
# component at the same standard normal, and random differences between the
# networks decide which component takes which wing. This sometimes leaves one
# component on two half-wings. As an option, `initialize_components` centres each
# component's base distribution on a k-means cluster first, much as a Gaussian mixture is
# started from k-means. We train both.

# %%
x, wing = pinwheel(n_train, seed=0)
x_test, wing_test = pinwheel(1000, seed=1)
for start in ("random", "kmeans"):
    torch.manual_seed(0)
    vmonf = VariationalMixtureOfFlows(2, 5, "realnvp", num_layers=4, hidden_dims=[32, 32])
    if start == "kmeans":
        vmonf.initialize_components(x)
    history = train(vmonf, x).history
    with torch.no_grad():
        results[f"pinwheel/{start}"] = {
            "accuracy": clustering_accuracy(vmonf.cluster(x_test), wing_test),
            "test_log_likelihood": vmonf.log_prob(x_test).mean().item(),
        }
    plot_regions(vmonf, x, out / f"pinwheel_{start}.png", f"pinwheel, {start} start")
    plot_training_curve(history, out / f"pinwheel_{start}_training.png")

# %% [markdown]
# ## Training, part 2: two circles, without and with labels
# With no labels, a mixture of two flows has no reason to prefer "inner circle / outer
# circle" to "left half / right half". Both explain the density about equally well, and
# the paper's model splits the plane in half. With 64 labels (32 per circle, 3% of the
# points) the labelled points fix the component in the model, and the :math:`\alpha \log
# q(y|x)` term teaches the classifier the radial boundary. So few labels need a large
# weight per label. We take :math:`\alpha = 0.05 N` (Kingma et al. 2014 use
# :math:`0.1 N`); with :math:`\alpha = 10` the unlabelled points slowly pull the boundary
# towards the flows' own partition.

# %%
circles = two_circles(2 * n_train, noise=0.05, factor=0.5, seed=0)
circles_test = two_circles(1000, noise=0.05, factor=0.5, seed=1)
labels = torch.full_like(circles.labels, -1)
for c in (0, 1):
    labels[(circles.labels == c).nonzero()[:32, 0]] = c
for name, data in (("unsupervised", circles.data), ("semi_supervised", (circles.data, labels))):
    torch.manual_seed(0)
    vmonf = VariationalMixtureOfFlows(
        2,
        2,
        "realnvp",
        num_layers=4,
        hidden_dims=[32, 32],
        label_weight=0.05 * circles.data.shape[0],
    )
    train(vmonf, data)
    with torch.no_grad():
        results[f"two_circles/{name}"] = {
            "accuracy": clustering_accuracy(vmonf.cluster(circles_test.data), circles_test.labels),
            "test_log_likelihood": vmonf.log_prob(circles_test.data).mean().item(),
        }
    plot_regions(vmonf, circles.data, out / f"two_circles_{name}.png", f"two circles, {name}")

# %% [markdown]
# ## Training, part 3: MNIST digits 0-4
# Five MAF components on dequantised, logit-transformed digits (as in the paper). This
# part needs the data (`PYRO_MANIFOLD_DATA`) and is slow on a CPU (about 25 minutes per
# run on one thread), so smoke mode skips it. We report the normalised contingency table
# of clusters against digits (paper table 1) and a grid of samples from each component
# (paper fig. 9).
#
# In 784 dimensions the start decides the clustering. With :math:`q(k|x) \approx 1/K`
# at first, every component is trained on every digit, and one flexible component can
# end up holding several digits while others go empty. So we start each MAF near the
# identity (`scale_output_layer`), centre each component on a k-means cluster
# (`initialize_components`; with labels, the k-means is seeded by them, so component
# :math:`k` starts on digit :math:`k`), and fit the encoder to that partition
# (`fit_encoder`) before the ELBO steps. `benchmarks/vmonf.py` compares this start with
# the k-means start alone (benchmarks/RESULTS.md).

# %%
if os.environ.get("PYRO_MANIFOLD_DATA") and not args.smoke:
    from pyro_manifold.datasets import (
        dequantize_logit,
        inverse_logit_transform,
        load_mnist,
    )
    from pyro_manifold.nn import scale_output_layer
    from pyro_manifold.plotting import plot_image_grid

    digits = [0, 1, 2, 3, 4]
    mnist, mnist_test = (load_mnist(split=s, digits=digits) for s in ("train", "test"))

    xm, xm_test = dequantize_logit(mnist.data, 0)[0], dequantize_logit(mnist_test.data, 1)[0]
    semi = torch.full_like(mnist.labels, -1)
    for d in digits:
        semi[(mnist.labels == d).nonzero()[:20, 0]] = d
    for name, y in (("unsupervised", None), ("semi_supervised", semi)):
        torch.manual_seed(0)
        vmonf = VariationalMixtureOfFlows(
            784,
            5,
            "maf",
            num_layers=1,
            hidden_dims=[1024],
            encoder_hidden_dims=[512, 512],
            label_weight=0.05 * xm.shape[0],
        )
        for layer in vmonf.layers:
            scale_output_layer(layer.arn)
        start = vmonf.initialize_components(xm, y=y)
        vmonf.fit_encoder(xm, start, num_steps=1000)
        fit(
            vmonf.model,
            vmonf.guide,
            xm if y is None else (xm, y),
            loss=TraceEnum_ELBO(max_plate_nesting=1),
            num_steps=3000,
            batch_size=128,
            lr=3e-4,
            progress=False,
        )
        vmonf.cpu()
        with torch.no_grad():
            pred = torch.cat([vmonf.cluster(c) for c in xm_test.split(1000)])
            table = contingency_table(pred, mnist_test.labels, normalize="class", num_clusters=5)
            results[f"mnist/{name}"] = {
                "accuracy": clustering_accuracy(pred, mnist_test.labels),
                "contingency_table": table.tolist(),
            }
            print(f"MNIST {name}: normalised contingency table (rows: clusters, cols: digits)")
            print(table)
            grid = [vmonf.distribution().component(torch.full((8,), k)).sample() for k in range(5)]
            # a draw that overflowed is drawn black (plots take finite pixels)
            images = inverse_logit_transform(torch.cat(grid), alpha=1e-6).nan_to_num(nan=0.0)
        plot_image_grid(
            images,
            out / f"mnist_{name}_samples.png",
            ncols=8,
            title="one row of samples per component",
        )

# %% [markdown]
# ## Results
# Clustering accuracy under the best matching of clusters to classes (higher is better)
# and test log-likelihood per point. `benchmarks/vmonf.py` runs the same experiments
# over several seeds and compares them with a single flow of the same size.

# %%
print("| experiment | accuracy | test log-likelihood |")
print("|---|---|---|")
for key, r in results.items():
    ll = r.get("test_log_likelihood")
    print(f"| {key} | {r['accuracy']:.3f} | {'' if ll is None else f'{ll:.3f}'} |")
(out / "results.json").write_text(json.dumps(results, indent=1))
