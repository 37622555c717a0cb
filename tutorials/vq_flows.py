# %% [markdown]
# # VQ-Flows: an atlas of local normalizing flows
#
# Run: `python tutorials/vq_flows.py [--smoke] [--out DIR] [--manifold NAME]` (headless;
# figures are written as PNG to DIR, default `tutorial_output/vq_flows`). The MNIST part
# runs only without `--smoke` and when `PYRO_MANIFOLD_DATA` points at the MNIST folder.
#
# ## Data
# A density on a 2D surface (or 1D curve) in R^3 from `pyro_manifold.datasets`: by
# default the sphere with a non-uniform density (a mixture of bumps), plus a little
# isotropic noise so that the data is *near* the manifold. A single flow must bend all
# of R^3 around the surface; VQ-Flows instead covers it with charts, each a small flow
# conditioned on its chart centre.

# %%
import argparse
import json
import math
import os
from pathlib import Path

import pyro
import torch
from matplotlib.figure import Figure

from pyro_manifold.datasets import make_manifold
from pyro_manifold.infer import fit, resolve_device
from pyro_manifold.metrics import maximum_mean_discrepancy, mean_manifold_distance
from pyro_manifold.models import Flow, VQFlow
from pyro_manifold.plotting import plot_training_curve

parser = argparse.ArgumentParser(description="VQ-Flows tutorial")
parser.add_argument("--smoke", action="store_true", help="a few steps only, no MNIST")
parser.add_argument("--out", default="tutorial_output/vq_flows")
parser.add_argument("--manifold", default="sphere", help="sphere, torus, swiss_roll, rings")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
steps = 20 if args.smoke else 3000
n = 500 if args.smoke else 10000
torch.manual_seed(0)
pyro.set_rng_seed(0)

name = {"rings": "linked_rings"}.get(args.manifold, args.manifold)
manifold = make_manifold(name)
train = manifold.sample(n, noise=0.02, seed=0).data
test = manifold.sample(max(n // 5, 200), noise=0.02, seed=1).data

# %% [markdown]
# ## Objective
# A VQ autoencoder (encoder E, decoder D, codebook {v_k}) learns the atlas: the chart
# centres v_k and the overlapping regions
#
# .. math::  U_k = \{x : \lVert E(x) - v_k\rVert \le (1 + \varepsilon)\,\tilde d_m(x)\},
#
# with d̃_m(x) the distance of E(x) to its m-th nearest code, so that every point lies
# in at least m charts. Chart k maps latents to data by
# g_k = c_k ∘ g^L(·; v_k) ∘ … ∘ g^1(·; v_k): conditional flow layers shared by every chart
# (they see k only through v_k) and a conformal embedding c_k (rotation, scale, shift
# D(v_k) + b(v_k)). With f_k = g_k^{-1} the density is eq. (2) of the paper,
#
# .. math::  p(x) = \sum_{k: x\in U_k} p_k\,|\det J_{f_k} J_{f_k}^\top|^{1/2}\, q(f_k(x)).
#
# ## Model and guide
# `VQFlow.model` holds the two stages: stage "atlas" adds the VQ autoencoder loss
# (reconstruction + codebook + commitment, k-means start, dead-code re-seeding) as a
# `pyro.factor`; stage "flows" observes x under the `ChartMixture` of eq. (2). The guide
# is empty (there are no latent sites), so `fit` with Pyro's `Trace_ELBO` minimises the
# stage's loss. The baseline is a RealNVP with at least as many parameters.

# %%
vq = VQFlow(
    3,
    num_charts=8,
    flow="realnvp",
    num_layers=4,
    hidden_dims=[32],
    autoencoder_hidden_dims=[64],
    num_overlap=1,
    epsilon=0.2,
)
vq_params = sum(p.numel() for p in vq.parameters())
width = 4
while True:  # the smallest RealNVP(8) width with at least as many parameters
    baseline = Flow(3, "realnvp", num_layers=8, hidden_dims=[width, width])
    if sum(p.numel() for p in baseline.parameters()) >= vq_params:
        break
    width += 1
nf_params = sum(p.numel() for p in baseline.parameters())
print(f"parameters: VQ-RealNVP {vq_params}, RealNVP {nf_params} (width {width})")

# %% [markdown]
# ## Training
# Stage 1 learns the atlas; `set_stage("flows", x)` freezes it and sets the chart weights
# p_k to the fraction of data nearest to each centre; stage 2 fits the chart flows by
# maximum likelihood. The baseline gets the same total number of steps.

# %%
common = dict(batch_size=256, device="cpu", progress=False)
atlas_history = fit(vq.model, vq.guide, train, num_steps=steps, lr=3e-3, **common).history
vq.set_stage("flows", train)
flow_history = fit(
    vq.model, vq.guide, train, num_steps=2 * steps, lr=1e-3, lr_schedule="cosine", **common
).history
nf_history = fit(
    baseline.model, baseline.guide, train, num_steps=3 * steps, lr=1e-3, lr_schedule="cosine",
    **common,
).history  # fmt: skip
plot_training_curve(atlas_history, out / "atlas_training.png")
plot_training_curve(flow_history, out / "chart_flows_training.png")

# %% [markdown]
# ## Results
# The atlas: data coloured by its nearest chart, the decoded centres D(v_k) as black
# crosses, and the number of charts containing each point. Then data, RealNVP samples
# and VQ-RealNVP samples side by side, and the scores: MMD² between samples and held-out
# data and the mean distance of samples to the true manifold (both lower is better).
#
# A learned chart map can send part of its mass outside its region U_k, where eq. (2)
# does not count it. `vq.sample(n, within_regions=True)` keeps only the draws of chart k
# that land in U_k (rejection), which samples exactly the normalised density that
# `log_prob` scores; the share of draws kept is the mass the charts hold in their regions.

# %%
vq.eval()
with torch.no_grad():
    chart = vq.autoencoder.assign(train)
    members = vq.autoencoder.chart_membership(train, vq.num_overlap, vq.epsilon).sum(-1)
    centres = vq.autoencoder.decoder(vq.autoencoder.centres)
    vq_samples = vq.sample(len(test))
    vq_within = vq.sample(len(test), within_regions=True)
    mixture = vq.distribution()
    drawn, k = mixture.sample_with_charts((len(test),))
    kept = float(mixture.region_mask(drawn)[torch.arange(len(test)), k].float().mean())
    nf_samples = baseline.sample(len(test))
    results = {
        "manifold": name,
        "parameters": {"vq_realnvp": vq_params, "realnvp": nf_params},
        "charts_used": int(chart.unique().numel()),
        "mean_charts_per_point": float(members.float().mean()),
        "draws_inside_their_region": kept,
    }
    scored = (("vq_realnvp", vq_samples), ("vq_realnvp_within", vq_within), ("realnvp", nf_samples))
    for key, samples in scored:
        results[key] = {
            "mmd2": float(maximum_mean_discrepancy(samples, test)),
            "mean_manifold_distance": mean_manifold_distance(samples, manifold.distance),
        }


def scatter3d(ax, points, color, title, cmap=None):
    p = points.detach().cpu()
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c=color, cmap=cmap)
    ax.set_title(title)


fig = Figure(figsize=(10, 5))
ax = fig.add_subplot(1, 2, 1, projection="3d")
scatter3d(ax, train, chart.numpy(), "nearest chart", cmap="tab10")
c = centres.detach()
ax.scatter(c[:, 0], c[:, 1], c[:, 2], s=60, c="k", marker="x")
ax = fig.add_subplot(1, 2, 2, projection="3d")
scatter3d(ax, train, members.numpy(), "charts containing the point", cmap="viridis")
fig.tight_layout()
fig.savefig(out / "atlas.png")

fig = Figure(figsize=(20, 5))
panels = [(test, "data"), (nf_samples, "RealNVP"), (vq_samples, "VQ-RealNVP"),
          (vq_within, "VQ-RealNVP, within regions")]  # fmt: skip
for i, (points, title) in enumerate(panels):
    scatter3d(fig.add_subplot(1, 4, i + 1, projection="3d"), points, "C0", title)
fig.tight_layout()
fig.savefig(out / "samples.png")

print("| model | MMD² | mean distance to the manifold |")
print("|---|---|---|")
for key in ("realnvp", "vq_realnvp", "vq_realnvp_within"):
    r = results[key]
    print(f"| {key} | {r['mmd2']:.2e} | {r['mean_manifold_distance']:.4f} |")
print(f"draws of VQ-RealNVP inside their chart's region: {kept:.1%}")

# %% [markdown]
# ## MNIST (optional)
# Only without `--smoke` and with `PYRO_MANIFOLD_DATA` set. Dequantized pixels in the
# logit space (Papamakarios et al. 2017), K = 10 charts of dimension d = 64 embedded in
# R^784 by the conformal embeddings, and the reconstruction term of conformal embedding
# flows for the directions off the charts. Samples are mapped back to pixels.

# %%
if not args.smoke and os.environ.get("PYRO_MANIFOLD_DATA"):
    from pyro_manifold.datasets import (
        dequantize_logit,
        inverse_logit_transform,
        load_mnist,
    )
    from pyro_manifold.plotting import plot_image_grid

    device = resolve_device()
    pixels = load_mnist(split="train").data[:20000]
    images = dequantize_logit(pixels, 0)[0].to(device)
    mnist_vq = VQFlow(
        784, num_charts=10, latent_dim=64, code_dim=16, flow="realnvp", num_layers=4,
        hidden_dims=[256, 256], autoencoder_hidden_dims=[512], reconstruction_weight=1.0,
    )  # fmt: skip
    mnist_fit = dict(lr=1e-3, batch_size=128, device=device)
    fit(mnist_vq.model, mnist_vq.guide, images, num_steps=2000, **mnist_fit)
    mnist_vq.set_stage("flows", images[:5000])
    fit(mnist_vq.model, mnist_vq.guide, images, num_steps=4000, **mnist_fit)
    mnist_vq.eval()
    with torch.no_grad():
        # a draw that overflowed is drawn black (plots take finite pixels)
        samples = inverse_logit_transform(mnist_vq.sample(64).cpu()).nan_to_num(nan=0.0)
        error = (mnist_vq.reconstruct(images[:1000]) - images[:1000]).pow(2).mean()
    plot_image_grid(samples, out / "mnist_samples.png", title="VQ-RealNVP, d = 64")
    results["mnist_reconstruction_mse_logit_space"] = float(error)

(out / "results.json").write_text(json.dumps(results, indent=1))
assert math.isfinite(results["vq_realnvp"]["mmd2"])
