"""
VQ-Flows: an atlas of local normalizing flows
=============================================

VQ-Flows (Sidheekh, Dock et al., 2022, `arXiv:2203.11556
<https://arxiv.org/abs/2203.11556>`_) model data on or near a manifold with an atlas:
overlapping charts, each a small normalizing flow conditioned on its chart centre and
placed in the data space by a conformal embedding (Ross & Cresswell, 2021,
`arXiv:2106.05275 <https://arxiv.org/abs/2106.05275>`_). A VQ autoencoder learns the
atlas first; the chart flows are then fitted by maximum likelihood. We write both stages
by hand as Pyro programs around :class:`pyro_manifold.distributions.ChartMixture` and
:class:`pyro_manifold.transforms.ConditionalConformalEmbedding`, train them with Pyro's
``SVI``, show that :class:`pyro_manifold.models.VQFlow` packages the same programs, and
draw new points with ``pyro.infer.Predictive``.

How to run: ``python tutorials/vq_flows.py [--smoke] [--out DIR] [--manifold NAME]``
(headless; the figures are written as PNG files to ``DIR``, by default
``tutorial_output/vq_flows``). ``--smoke`` takes a few steps only. The MNIST part runs
when ``PYRO_MANIFOLD_DATA`` points at the MNIST folder (with ``--smoke``, on 500 images
with small networks for a few steps).
"""

# %%
# Data
# ----
#
# A density on a 2D surface (or 1D curve) in :math:`\mathbb R^3` from
# :mod:`pyro_manifold.datasets`: by default the sphere with a non-uniform density (a
# mixture of bumps), plus a little isotropic noise so that the data lies *near* the
# manifold. A single flow must bend all of :math:`\mathbb R^3` around the surface;
# VQ-Flows instead covers it with charts, each a small flow conditioned on its chart
# centre. ``--manifold`` picks another surface: ``sphere``, ``torus``, ``swiss_roll`` or
# ``rings``.

import argparse
import json
import math
import os
from pathlib import Path

import pyro
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.nn import DenseNN

from pyro_manifold.datasets import make_manifold
from pyro_manifold.distributions import ChartMixture
from pyro_manifold.infer import fit, resolve_device
from pyro_manifold.metrics import maximum_mean_discrepancy, mean_manifold_distance
from pyro_manifold.models import Flow, VQAutoencoder, VQFlow
from pyro_manifold.nn import chart_membership, scale_output_layer
from pyro_manifold.plotting import plot_training_curve
from pyro_manifold.transforms import ConditionalConformalEmbedding, Reverse, flow_stack

parser = argparse.ArgumentParser(description="VQ-Flows tutorial")
parser.add_argument(
    "--smoke", action="store_true", help="a few steps only (MNIST, when present, at tiny sizes)"
)
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

# %%
# Objective
# ---------
#
# **The atlas (stage 1).** A VQ autoencoder, encoder :math:`E`, decoder :math:`\mathcal D`
# and a codebook :math:`\{v_k\}_{k=1}^K` of chart centres, is trained on the per-point loss
#
# .. math::
#
#     \ell(x) = \lVert x - \mathcal D(\hat e(x))\rVert^2
#         + \lVert \mathrm{sg}[E(x)] - v_{k^*(x)}\rVert^2
#         + \beta\,\lVert E(x) - \mathrm{sg}[v_{k^*(x)}]\rVert^2,
#
# with :math:`k^*(x)` the nearest code of :math:`E(x)`, :math:`\hat e(x)` that code
# passed straight through to :math:`E(x)`'s gradient, and :math:`\mathrm{sg}` the stop
# gradient (van den Oord et al., 2017). ``nn.VectorQuantizer`` computes
# :math:`\hat e`, :math:`k^*` and the last two terms in one call. The codes define the
# overlapping chart regions
#
# .. math::
#
#     U_k = \{x : d_k(x) \le (1 + \varepsilon)\,\tilde d_m(x)\}, \qquad
#     d_k(x) = \lVert E(x) - v_k \rVert,
#
# with :math:`\tilde d_m(x)` the distance of :math:`E(x)` to its :math:`m`-th nearest
# code, so that every point lies in at least :math:`m` charts (``nn.chart_membership``
# of the distances ``VQAutoencoder.chart_distances(x)``).
#
# **The charts (stage 2).** Chart :math:`k` maps latents :math:`z \in \mathbb R^d` to data
# in :math:`\mathbb R^D`,
#
# .. math::
#
#     g_k = c_k \circ g^L(\cdot\,; v_k) \circ \cdots \circ g^1(\cdot\,; v_k), \qquad
#     c_k(z) = \lambda_k\, H_1 \cdots H_r \begin{pmatrix} z \\ 0 \end{pmatrix} + b_k,
#
# where the conditional flow layers :math:`g^l` are shared by every chart (they see
# :math:`k` only through :math:`v_k`) and :math:`c_k` is a conformal embedding: an
# orthogonal frame built from Householder reflections :math:`H_i`, a scale
# :math:`\lambda_k` and a shift :math:`b_k`, all computed from :math:`v_k` by a small
# network. For :math:`d < D` it raises the dimension, and because it scales every tangent
# direction alike, :math:`\tfrac12 \log\det J_{c_k}^\top J_{c_k} = d \log\lambda_k`
# needs no determinant of a learned matrix. With :math:`f_k = g_k^{-1}` computed through
# the left inverse :math:`c_k^\dagger` (the projection onto chart :math:`k`'s plane), the
# density is eq. (2) of the paper,
#
# .. math::
#
#     p(x) = \sum_{k:\, x \in U_k} p_k\,
#         \bigl|\det J_{f_k}(x) J_{f_k}(x)^\top\bigr|^{1/2}\, q(f_k(x)),
#     \qquad
#     \log p(x) = \log \sum_{k:\, x\in U_k} \exp\Bigl(\log p_k + \log q(f_k(x))
#         - \sum_{l} \log\lvert\det J_{g^l}\rvert - d \log \lambda_k \Bigr),
#
# with :math:`q = \mathcal N(0, I_d)` and chart weights :math:`p = \mathrm{softmax}(\ell)`:
# ``ChartMixture.log_prob``, which runs the chart maps only on the (point, chart) pairs
# with :math:`x \in U_k`. Stage 2 maximises :math:`\sum_n \log p(x_n)` with the atlas
# frozen; for :math:`d < D` the data lies only *near* the charts, and the reconstruction
# term of conformal embedding flows,
# :math:`-w \lVert x - \sum_k p(k \mid x)\, g_k(f_k(x)) \rVert^2`
# (``ChartMixture.reconstruct``), pulls the charts onto the data. Neither stage has a
# latent site, so the guides are empty and ``Trace_ELBO`` is the negative of this
# objective.

# %%
# Model and guide
# ---------------
#
# Stage 1: the atlas
# ~~~~~~~~~~~~~~~~~~
#
# ``models.VQAutoencoder`` holds :math:`E`, :math:`\mathcal D` (``DenseNN`` s) and the
# codebook (its ``quantizer``, a ``VectorQuantizer``). Our model adds :math:`-\ell(x)` as
# a ``pyro.factor`` in the data plate.

D, K, C = 3, 8, 3  # data dimension, charts, code dimension
num_overlap, epsilon, reconstruction_weight = 1, 0.2, 100.0


def atlas_program(atlas):
    """Return ``model`` and ``guide`` of stage 1 for a ``VQAutoencoder``."""

    def model(x):
        pyro.module("atlas", atlas)
        with pyro.plate("data", x.shape[0]):
            code, _, vq_loss = atlas.quantizer(atlas.encoder(x))  # e_hat, k*, VQ terms
            error = (x - atlas.decoder(code)).pow(2).sum(-1)
            pyro.factor("atlas_loss", -(error + vq_loss))

    def guide(x):
        pass  # no latent sites

    return model, guide


# %%
# Stage 2: the charts
# ~~~~~~~~~~~~~~~~~~~
#
# The pieces of the chart maps, for charts of dimension :math:`d = 2` (the sphere is a
# surface, so the embeddings raise the dimension from 2 to 3):
#
# * ``flow_stack(d, "realnvp", ..., context_dim=C)``: conditional coupling layers
#   :math:`g^l(\cdot\,; v)` on :math:`\mathbb R^d`; their last network layers start
#   small (``scale_output_layer``), so each chart starts near its embedding alone.
# * ``ConditionalConformalEmbedding(d, D, hypernet, r)``: :math:`c_k`, whose scale,
#   shift and reflections come from ``hypernet(v_k)``. Ours starts every chart at its
#   decoded centre, shift :math:`\mathcal D(v_k) + b(v_k)` with :math:`b` small at
#   first, so each chart starts where the autoencoder puts its part of the data. It
#   holds the frozen decoder in a plain list, so that ``pyro.module`` neither registers
#   nor trains it.
# * chart weights :math:`p = \mathrm{softmax}(\ell)`, started at the share of points
#   nearest to each centre.
#
# Because :math:`c_k` is affine, a chart of dimension :math:`d < D` lies in a
# :math:`d`-plane (the flow moves mass only within it), so the atlas covers the sphere
# with flat facets. The likelihood term alone also rewards a chart turned edge-on to its
# data: the projections of the points then crowd onto a curve where the chart's density
# is large, while the points themselves lie far from the chart. The reconstruction term
# penalises that distance; for these toy data, whose noise is small, we give it a large
# weight, :math:`w = 100` (``VQFlow``'s default is :math:`w = 1`, the value of the MNIST
# part below). The Results print the mean squared distance of test points to their
# projection onto the charts.
#
# The model observes ``x`` under ``ChartMixture(atlas, chart_flow, chart_logits, ...)``,
# the atlas's codebook being the contexts :math:`v_k`; with ``x=None`` it draws
# ``num_points`` new points (for ``Predictive``). The three trainable pieces sit in one
# ``nn.Module`` so that one ``pyro.module`` call registers them; the frozen atlas is not
# registered. ``build_chart_pieces(atlas, d, x)`` builds and starts the pieces for charts
# of dimension :math:`d`.


class ChartPlacement(torch.nn.Module):
    """The hypernetwork of the embeddings: v -> (scale, D(v) + shift, reflections)."""

    def __init__(self, decoder, num_reflections, hidden=32):
        super().__init__()
        self.net = DenseNN(C, [hidden], param_dims=[1, D, num_reflections * D])
        scale_output_layer(self.net)  # start at scale 1, shift D(v), the base reflections
        self.frozen = [decoder]  # a list: the frozen decoder is not one of our parameters

    def forward(self, v):
        s, b, dv = self.net(v)
        return s, b + self.frozen[0](v), dv


def chart_pieces(chart_flow, embedding, chart_logits):
    """The trainable pieces of stage 2 in one module, for ``pyro.module``."""
    pieces = torch.nn.Module()
    pieces.chart_flow, pieces.embedding, pieces.chart_logits = chart_flow, embedding, chart_logits
    return pieces


def build_chart_pieces(atlas, d, x):
    """The pieces for charts of dimension ``d``, started as described above on data ``x``."""
    chart_flow = flow_stack(d, "realnvp", num_layers=4, hidden_dims=[32], context_dim=C)
    for layer in chart_flow:
        if not isinstance(layer, Reverse):  # Reverse permutes; it has no network
            scale_output_layer(layer.nn)
    r = min(d, D - 1)  # reflections: enough to reach every orientation of the chart plane
    embedding = ConditionalConformalEmbedding(
        d, D, ChartPlacement(atlas.decoder, r), r, context_dim=C
    )
    with torch.no_grad():
        counts = torch.bincount(atlas.assign(x), minlength=K).float() + 1
    return chart_pieces(chart_flow, embedding, torch.nn.Parameter(counts.log()))


def chart_program(atlas, pieces):
    """Return ``model``, ``guide`` and ``mixture`` (the current p(x)) of stage 2."""
    latent_dim = pieces.embedding.latent_dim

    def mixture():
        return ChartMixture(
            atlas,
            list(pieces.chart_flow),
            pieces.chart_logits,
            data_dim=D,
            latent_dim=latent_dim,
            embedding=pieces.embedding,
            num_overlap=num_overlap,
            epsilon=epsilon,
        )

    def model(x=None, num_points=None):
        pyro.module("charts", pieces)
        p = mixture()
        with pyro.plate("data", num_points if x is None else x.shape[0]):
            drawn = pyro.sample("x", p, obs=x)
            if x is not None and latent_dim < D:
                error = (x - p.reconstruct(x)).pow(2).sum(-1)
                pyro.factor("reconstruction", -reconstruction_weight * error)
        return drawn

    def guide(x=None, num_points=None):
        pass  # no latent sites

    return model, guide, mixture


# %%
# Training
# --------
#
# Stage 1 by SVI
# ~~~~~~~~~~~~~~
#
# Pyro's ``SVI`` with ``Trace_ELBO`` on mini-batches. As VQ-VAEs are, the codebook is
# started by k-means on the encodings (``VectorQuantizer.initialize``), and codes that
# no point chose in the last 100 steps are moved onto encodings of the batch
# (``reseed_dead_codes``).


def train_by_svi(model, guide, data, num_steps, lr, every_100=None):
    """Pyro's SVI on mini-batches of 256 points; returns the loss history per point."""
    pyro.clear_param_store()  # pyro.module reuses any stored parameter of the same name
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    batches = torch.Generator().manual_seed(0)
    history = {"step": [], "loss": []}
    for step in range(num_steps):
        batch = data[torch.randint(len(data), (256,), generator=batches)]
        loss = svi.step(batch) / len(batch)
        history["step"].append(step + 1)
        history["loss"].append(loss)
        if every_100 is not None and (step + 1) % 100 == 0:
            every_100(batch)
        if step % max(num_steps // 4, 1) == 0 or step == num_steps - 1:
            print(f"step {step + 1:5d}  loss per point {loss:.3f}")
    return history


torch.manual_seed(1)
atlas = VQAutoencoder(D, code_dim=C, num_charts=K, hidden_dims=[64])
with torch.no_grad():
    atlas.quantizer.initialize(atlas.encoder(train))  # k-means start of the codebook


@torch.no_grad()
def reseed(batch):
    atlas.quantizer.reseed_dead_codes(atlas.encoder(batch))


atlas_model, atlas_guide = atlas_program(atlas)
atlas_history = train_by_svi(atlas_model, atlas_guide, train, steps, 3e-3, every_100=reseed)
plot_training_curve(atlas_history, out / "atlas_by_hand_training.png")

# %%
# The regions :math:`U_k` follow from the code distances; every point lies in at least
# :math:`m` of them.

atlas.requires_grad_(False)  # stage 2 keeps the atlas fixed
atlas.eval()
with torch.no_grad():
    regions = chart_membership(atlas.chart_distances(train), num_overlap, epsilon)  # (N, K)
assert regions.shape == (len(train), K) and bool((regions.sum(-1) >= num_overlap).all())

# %%
# Stage 2 by SVI
# ~~~~~~~~~~~~~~
#
# The pieces for charts of dimension :math:`d = 2`, started as described above, trained
# with the atlas frozen.

pieces = build_chart_pieces(atlas, 2, train)  # charts of dimension d = 2
model, guide, mixture = chart_program(atlas, pieces)
flows_history = train_by_svi(model, guide, train, 2 * steps, 1e-3)
plot_training_curve(flows_history, out / "chart_flows_by_hand_training.png")

# %%
# The packaged model gives the same loss
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# :class:`~pyro_manifold.models.VQFlow` holds the same pieces under the same names: its
# ``autoencoder`` is the atlas, ``chart_flow`` the conditional layers (built by the same
# ``flow_stack`` call and started small in the same way), ``embedding`` the conditional
# conformal embedding (its hypernetwork also shifts each chart to
# :math:`\mathcal D(v_k)`) and ``chart_logits`` :math:`\ell`. Its ``model`` runs stage 1
# until ``set_stage("flows", x)`` freezes the atlas and sets the chart weights from the
# nearest-centre counts, as we did. We build a ``VQFlow`` of the same shapes, load our
# hand-trained parameters into it (the atlas under ``autoencoder.``, the stage-2 pieces
# under their own names) and check that ``vq.model`` and ``vq.guide`` give the same
# ``Trace_ELBO`` loss as our programs with the same parameters, in both stages: for the
# trained charts of dimension :math:`d = 2` (with the reconstruction term), and for
# freshly built charts of dimension :math:`d = D = 3` (where :math:`c_k` is a
# similarity: rotation, scale and shift). The comparison runs in eval mode: in training
# mode ``VQAutoencoder``'s model also starts the codebook by k-means on its first call and
# re-seeds dead codes, side effects inside the model that our loop takes as separate steps.


def same_loss(model_a, guide_a, model_b, guide_b, x):
    torch.testing.assert_close(
        Trace_ELBO().differentiable_loss(model_a, guide_a, x),
        Trace_ELBO().differentiable_loss(model_b, guide_b, x),
    )


def vq_flow_like(pieces):
    """A ``VQFlow`` whose modules have the shapes of our atlas and ``pieces``."""
    return VQFlow(
        D,
        num_charts=K,
        latent_dim=pieces.embedding.latent_dim,
        code_dim=C,
        flow="realnvp",
        num_layers=4,
        hidden_dims=[32],
        autoencoder_hidden_dims=[64],
        num_overlap=num_overlap,
        epsilon=epsilon,
        reconstruction_weight=reconstruction_weight,
    )


def hand_written_state(atlas, pieces):
    """Our parameters under ``VQFlow``'s names."""
    state = {f"autoencoder.{key}": value for key, value in atlas.state_dict().items()}
    return state | pieces.state_dict()


with torch.no_grad():
    nearest = torch.bincount(atlas.assign(train), minlength=K).float() + 1
for hand_pieces in (pieces, build_chart_pieces(atlas, 3, train)):
    packaged = vq_flow_like(hand_pieces)
    packaged.load_state_dict(hand_written_state(atlas, hand_pieces))  # strict: every name
    packaged.eval()
    same_loss(atlas_model, atlas_guide, packaged.model, packaged.guide, test)  # stage 1
    packaged.set_stage("flows", train)
    torch.testing.assert_close(packaged.chart_logits.detach(), nearest.log())
    packaged.load_state_dict(hand_written_state(atlas, hand_pieces))  # our trained logits
    hand_model, hand_guide, _ = chart_program(atlas, hand_pieces)
    same_loss(hand_model, hand_guide, packaged.model, packaged.guide, test)  # stage 2
print("VQFlow with our parameters gives the same loss as the hand-written programs")

# %%
# Training with ``fit``
# ~~~~~~~~~~~~~~~~~~~~~
#
# The packaged model trains with :func:`pyro_manifold.infer.fit`, one run per stage. As
# in ``benchmarks/vq_flows.py`` we fit VQ-RealNVP with full-dimensional charts
# (:math:`d = D`, the class's default) and compare it with a RealNVP of eight coupling
# layers and at least as many parameters. Stage 1 learns the atlas;
# ``set_stage("flows", x)`` freezes it and sets the chart weights :math:`p_k` to the
# fraction of data nearest to each centre; stage 2 fits the chart flows by maximum
# likelihood. The baseline gets the same total number of steps.

torch.manual_seed(0)
vq = VQFlow(
    D,
    num_charts=K,
    flow="realnvp",
    num_layers=4,
    hidden_dims=[32],
    autoencoder_hidden_dims=[64],
    num_overlap=num_overlap,
    epsilon=epsilon,
)
vq_params = sum(p.numel() for p in vq.parameters())
width = 4
while True:  # the smallest RealNVP(8) width with at least as many parameters
    baseline = Flow(D, "realnvp", num_layers=8, hidden_dims=[width, width])
    if sum(p.numel() for p in baseline.parameters()) >= vq_params:
        break
    width += 1
nf_params = sum(p.numel() for p in baseline.parameters())
print(f"parameters: VQ-RealNVP {vq_params}, RealNVP {nf_params} (width {width})")

common = dict(batch_size=256, device="cpu", progress=False)
fit_atlas = fit(vq.model, vq.guide, train, num_steps=steps, lr=3e-3, **common).history
vq.set_stage("flows", train)
fit_flows = fit(
    vq.model, vq.guide, train, num_steps=2 * steps, lr=1e-3, lr_schedule="cosine", **common
).history
fit_baseline = fit(
    baseline.model, baseline.guide, train, num_steps=3 * steps, lr=1e-3, lr_schedule="cosine",
    **common,
).history  # fmt: skip
plot_training_curve(fit_atlas, out / "atlas_training.png")
plot_training_curve(fit_flows, out / "chart_flows_training.png")

# %%
# Results
# -------
#
# The atlas
# ~~~~~~~~~
#
# Data coloured by its nearest chart with the decoded centres :math:`\mathcal D(v_k)` as
# black crosses, the region :math:`U_k` of one chart (the chart of the first point), and
# the number of charts containing each point: the overlaps, where :math:`\varepsilon`
# lets a point belong to more than :math:`m` charts.


def scatter3d(ax, points, color, title, cmap=None):
    p = points.detach().cpu()
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c=color, cmap=cmap)
    ax.set_title(title)


@torch.no_grad()
def plot_atlas(autoencoder, x, path, title):
    chart = autoencoder.assign(x)
    inside = autoencoder.chart_membership(x, num_overlap, epsilon)  # (N, K)
    k = int(chart[0])
    centres = autoencoder.decoder(autoencoder.centres)
    fig = Figure(figsize=(15, 5))
    ax = fig.add_subplot(1, 3, 1, projection="3d")
    scatter3d(ax, x, chart.numpy(), f"{title}: nearest chart", cmap="tab10")
    ax.scatter(centres[:, 0], centres[:, 1], centres[:, 2], s=60, c="k", marker="x")
    ax = fig.add_subplot(1, 3, 2, projection="3d")
    scatter3d(ax, x, inside[:, k].float().numpy(), f"region U_{k}", cmap="coolwarm")
    ax = fig.add_subplot(1, 3, 3, projection="3d")
    scatter3d(ax, x, inside.sum(-1).numpy(), "charts containing the point", cmap="viridis")
    fig.tight_layout()
    fig.savefig(path)
    return chart, inside


plot_atlas(atlas, train, out / "atlas_by_hand.png", "hand-written, SVI")
vq.eval()
chart, inside = plot_atlas(vq.autoencoder, train, out / "atlas.png", "VQFlow, fit")

# %%
# New points: ``Predictive``
# ~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# Called with ``x=None``, our stage-2 model draws a chart :math:`k \sim p`, a latent
# :math:`z \sim q` and returns :math:`g_k(z)` at the site ``"x"``; ``Predictive(model,
# num_samples=1)`` returns one draw of a plate of new points. We draw from the
# hand-written program trained by SVI (:math:`d = 2`: the points lie exactly on the
# charts), and from the fitted VQ-RealNVP through ``vq.model``, which does the same with
# ``x=None`` in its ``"flows"`` stage (we check first that our program wired to the
# class's modules still gives ``vq.model``'s loss). The baseline ``Flow``'s own model
# draws ``num_samples`` points with ``x=None`` too.
#
# A learned chart map can send part of its mass outside its region :math:`U_k`, where
# eq. (2) does not count it. ``vq.sample(n, within_regions=True)`` keeps only the draws of
# chart :math:`k` that land in :math:`U_k` (rejection), which samples exactly the
# normalised density that ``log_prob`` scores; the share of draws kept is the mass the
# charts hold in their regions. We score each sampler by the squared maximum mean
# discrepancy (MMD²) between its samples and held-out data and by the mean distance of its
# samples to the true manifold (both lower is better).

vq_program = chart_program(
    vq.autoencoder, chart_pieces(vq.chart_flow, vq.embedding, vq.chart_logits)
)
same_loss(vq_program[0], vq_program[1], vq.model, vq.guide, test)
with torch.no_grad():
    samples = {
        "by_hand_d2": Predictive(model, num_samples=1)(num_points=len(test))["x"][0],
        "vq_realnvp": Predictive(vq.model, num_samples=1)(None, len(test))["x"][0],
        "vq_realnvp_within": vq.sample(len(test), within_regions=True),
        "realnvp": Predictive(baseline.model, num_samples=1)(num_samples=len(test))["x"][0],
    }
    drawn, k = vq.distribution().sample_with_charts((len(test),))
    kept = float(vq.distribution().region_mask(drawn)[torch.arange(len(test)), k].float().mean())
results = {
    "manifold": name,
    "parameters": {"vq_realnvp": vq_params, "realnvp": nf_params},
    "charts_used": int(chart.unique().numel()),
    "mean_charts_per_point": float(inside.sum(-1).float().mean()),
    "draws_inside_their_region": kept,
}
with torch.no_grad():
    projection = mixture().reconstruct(test)  # sum_k p(k | x) g_k(f_k(x))
results["by_hand_d2_reconstruction_mse"] = float((test - projection).pow(2).sum(-1).mean())
for key, points in samples.items():
    results[key] = {
        "mmd2": float(maximum_mean_discrepancy(points, test)),
        "mean_manifold_distance": mean_manifold_distance(points, manifold.distance),
    }

fig = Figure(figsize=(25, 5))
panels = [(test, "data"), (samples["realnvp"], "RealNVP"), (samples["vq_realnvp"], "VQ-RealNVP"),
          (samples["vq_realnvp_within"], "VQ-RealNVP, within regions"),
          (samples["by_hand_d2"], "hand-written, d = 2")]  # fmt: skip
for i, (points, title) in enumerate(panels):
    scatter3d(fig.add_subplot(1, 5, i + 1, projection="3d"), points, "C0", title)
fig.tight_layout()
fig.savefig(out / "samples.png")

print("| model | MMD² | mean distance to the manifold |")
print("|---|---|---|")
for key in ("realnvp", "vq_realnvp", "vq_realnvp_within", "by_hand_d2"):
    r = results[key]
    print(f"| {key} | {r['mmd2']:.2e} | {r['mean_manifold_distance']:.4f} |")
print(f"draws of VQ-RealNVP inside their chart's region: {kept:.1%}")
print(
    "hand-written, d = 2: mean squared distance of a test point to its projection onto "
    f"the charts {results['by_hand_d2_reconstruction_mse']:.4f}"
)

# %%
# MNIST (when the data are there)
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# Only with ``PYRO_MANIFOLD_DATA`` set (``--smoke``: 500 images, small networks).
# Dequantized pixels in the logit space (Papamakarios et al., 2017), :math:`K = 10`
# charts of dimension :math:`d = 64` embedded in :math:`\mathbb R^{784}` by the conformal
# embeddings, and the reconstruction term for the directions off the charts. Samples are
# mapped back to pixels.

if os.environ.get("PYRO_MANIFOLD_DATA"):
    from pyro_manifold.datasets import dequantize_logit, inverse_logit_transform, load_mnist
    from pyro_manifold.plotting import plot_image_grid

    device = resolve_device()
    pixels = load_mnist(split="train").data[: 500 if args.smoke else 20000]
    images = dequantize_logit(pixels, 0)[0].to(device)
    hidden, autoencoder_hidden = ([32], [32]) if args.smoke else ([256, 256], [512])
    mnist_vq = VQFlow(
        784, num_charts=10, latent_dim=64, code_dim=16, flow="realnvp", num_layers=4,
        hidden_dims=hidden, autoencoder_hidden_dims=autoencoder_hidden, reconstruction_weight=1.0,
    )  # fmt: skip
    mnist_fit = dict(lr=1e-3, batch_size=128, device=device, progress=False)
    fit(mnist_vq.model, mnist_vq.guide, images, num_steps=5 if args.smoke else 2000, **mnist_fit)
    mnist_vq.set_stage("flows", images[:5000])
    fit(mnist_vq.model, mnist_vq.guide, images, num_steps=5 if args.smoke else 4000, **mnist_fit)
    mnist_vq.eval()
    with torch.no_grad():
        # a draw that overflowed is drawn black (plots take finite pixels)
        mnist_samples = inverse_logit_transform(mnist_vq.sample(64).cpu()).nan_to_num(nan=0.0)
        error = (mnist_vq.reconstruct(images[:1000]) - images[:1000]).pow(2).mean()
    plot_image_grid(mnist_samples, out / "mnist_samples.png", title="VQ-RealNVP, d = 64")
    results["mnist_reconstruction_mse_logit_space"] = float(error)

(out / "results.json").write_text(json.dumps(results, indent=1))
assert math.isfinite(results["vq_realnvp"]["mmd2"])
