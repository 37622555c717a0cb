"""
Variational mixture of normalizing flows
========================================

A mixture of K normalizing flows whose posterior over the component is an amortised
classifier q(k | x) (Pires & Figueiredo, 2020, `arXiv:2009.00585
<https://arxiv.org/abs/2009.00585>`_): one model for density estimation and clustering,
which also learns from a few labels. We write the model and the guide by hand as Pyro
programs around :class:`pyro_manifold.distributions.MixtureOfFlows`, train them with
Pyro's ``SVI`` and ``TraceEnum_ELBO``, show that
:class:`pyro_manifold.models.VariationalMixtureOfFlows` packages the same program, and
read the results with ``pyro.infer.Predictive`` (new samples) and
``pyro.infer.infer_discrete`` (cluster assignments).

How to run: ``python tutorials/variational_mixture_of_flows.py [--smoke] [--out DIR]``
(headless; the figures are written as PNG files to ``DIR``, by default
``tutorial_output/variational_mixture_of_flows``). ``--smoke`` takes a few steps only.
The MNIST part runs only when ``PYRO_MANIFOLD_DATA`` points at the MNIST files (with
``--smoke``, on 500 images with the narrowest MAFs, 784 units, for a few steps).
"""

# %%
# Data
# ----
#
# Three data sets of growing difficulty: the 5-wing pinwheel (each wing is a cluster that
# a single flow struggles to separate from its neighbours), two concentric circles (a
# cluster that surrounds another, which no half-plane split recovers), and MNIST digits
# 0-4 (784 dimensions, dequantised and logit-transformed; optional, see Training). The
# toy samplers of :mod:`pyro_manifold.datasets` return the points and the label of the
# component each point was drawn from, which we use only to score the clusterings (and,
# for 64 points of the circles, as the few labels of semi-supervised training).

import argparse
import json
import os
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import SVI, Predictive, TraceEnum_ELBO, config_enumerate, infer_discrete
from pyro.nn import DenseNN

from pyro_manifold.datasets import pinwheel, two_circles
from pyro_manifold.distributions import MixtureOfFlows
from pyro_manifold.infer import fit
from pyro_manifold.metrics import clustering_accuracy, contingency_table
from pyro_manifold.models import VariationalMixtureOfFlows
from pyro_manifold.plotting import plot_clusters_2d, plot_training_curve
from pyro_manifold.transforms import flow_stack

parser = argparse.ArgumentParser(description="Variational mixture of flows tutorial")
parser.add_argument("--smoke", action="store_true", help="a few steps only")
parser.add_argument("--out", default="tutorial_output/variational_mixture_of_flows")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
steps = 20 if args.smoke else 3000
n_train = 500 if args.smoke else 2560
torch.manual_seed(0)
pyro.set_rng_seed(0)

x, wing = pinwheel(n_train, seed=0)
x_test, wing_test = pinwheel(1000, seed=1)
circles = two_circles(2 * n_train, noise=0.05, factor=0.5, seed=0)
circles_test = two_circles(1000, noise=0.05, factor=0.5, seed=1)

fig = Figure(figsize=(9, 4.5), dpi=100)
for i, (points, labels, title) in enumerate(
    [(x, wing, "pinwheel, by wing"), (circles.data, circles.labels, "two circles, by circle")]
):
    ax = fig.add_subplot(1, 2, i + 1)
    ax.scatter(points[:, 0], points[:, 1], s=2, c=[f"C{j}" for j in labels.tolist()])
    ax.set_aspect("equal")
    ax.set_title(title)
fig.tight_layout()
fig.savefig(out / "data.png")

# %%
# Objective
# ---------
#
# The model draws a component, then a point from that component's flow,
#
# .. math::
#
#     k \sim \mathrm{Categorical}(\pi), \qquad x \mid k \sim p_k(x), \qquad
#     p(x) = \sum_{k=1}^{K} \pi_k\, p_k(x),
#
# where :math:`p_k` is the density of flow :math:`k` (a base normal pushed through
# :math:`k`'s own layers). The guide is an amortised classifier with a temperature
# :math:`T`,
#
# .. math::
#
#     q(k \mid x) = \mathrm{softmax}\bigl(g(x) / T\bigr)_k ,
#
# with :math:`g` a small network from :math:`\mathbb R^D` to :math:`K` logits. Training
# maximises the evidence lower bound of Pires & Figueiredo (2020), eq. (31):
#
# .. math::
#
#     \mathcal L(x) = \sum_{k=1}^{K} q(k \mid x)\,\bigl[\log p_k(x) + \log \pi_k
#         - \log q(k \mid x)\bigr]
#       = \log p(x) - \mathrm{KL}\bigl(q(k \mid x)\,\|\,p(k \mid x)\bigr) \le \log p(x).
#
# Each term is a piece of code below: :math:`\log p_k(x)` is the observed site ``"x"``
# scored under ``MixtureOfFlows.component(k)``, :math:`\log \pi_k` the model's site
# ``"component"``, and :math:`-\log q(k \mid x)` the guide's site ``"component"``. Because
# :math:`k` is discrete the expectation has only :math:`K` terms: the guide marks its site
# for parallel enumeration, and Pyro's ``TraceEnum_ELBO`` then evaluates the sum exactly,
# with no sampling and no score-function gradients.
#
# **The temperature.** The bound holds for every :math:`q`, so it holds at every
# :math:`T`; the temperature changes the path of the optimisation, not what is optimised
# at the end. A large :math:`T` flattens :math:`q(k \mid x)` towards :math:`1/K`, so at
# first every component is trained on every point and none is starved before the flows
# have learned anything; as :math:`T_t = T_\infty + (T_0 - T_\infty)\gamma^t` decays, the
# classifier sharpens. Dividing the logits by :math:`T` keeps their order, so
# :math:`\arg\max_k q(k \mid x)` is the same at every :math:`T`. The gap of the bound is
# :math:`\mathrm{KL}(q(k \mid x)\,\|\,p(k \mid x))`, so training pushes :math:`q` towards
# the model's own posterior :math:`p(k \mid x) = \pi_k p_k(x) / p(x)`; in the Results we
# compare the two.
#
# **Labels.** A labelled point :math:`(x, y)` needs no guide: its component is observed,
# :math:`k = y`, and it contributes :math:`\log p_y(x) + \log \pi_y`. To make the labels
# also train the classifier we add :math:`\alpha \log q(y \mid x)` (an observed site of
# the model scaled by :math:`\alpha`; Kingma et al. 2014), so the semi-supervised fit is
# one SVI loop.

# %%
# Model and guide
# ---------------
#
# The pieces, as a user builds them:
#
# * ``flow_stack(D, "realnvp", ..., num_components=K)`` builds the :math:`K` flows as
#   *one* batched flow: each layer's network holds :math:`K` stacked weight sets and acts
#   on :math:`(N, K, D)` tensors, row :math:`k` through flow :math:`k`. Pushed through
#   it, a base ``Normal`` of batch shape :math:`(K,)` becomes a
#   ``TransformedDistribution`` whose batch is the :math:`K` components.
# * ``MixtureOfFlows(log_weights, components)`` is :math:`p(x)`: ``log_prob`` is the
#   exact log-sum-exp over the components, and ``component(k)`` is :math:`p(x \mid k)`,
#   the distribution of the site that a model observes after drawing :math:`k`. When
#   the guide's :math:`k` is enumerated it has shape :math:`(K, 1)`, and
#   ``component(k).log_prob(x)`` returns the :math:`(K, N)` table of
#   :math:`\log p_k(x_n)` from one pass of the batched flow.
# * A ``DenseNN`` is the classifier :math:`g`.
#
# The program below takes the unlabelled points ``x`` and, optionally, labelled points
# ``x_labelled`` with their labels; with ``x=None`` and ``num_points=n`` the model draws
# ``n`` new points (for ``Predictive``). The mixture weights are uniform
# (:math:`\pi_k = 1/K`, the paper's choice and the class's default). ``pyro.module``
# registers the networks' parameters so that ``SVI`` trains them.

K, D = 5, 2
label_weight = 0.05 * circles.data.shape[0]  # alpha, see the two circles in Training


def mixture_program(flows, encoder, base_loc, base_scale, log_weights, label_weight=1.0):
    """Return ``model``, ``guide`` and ``mixture`` (the current p(x)) of a VMoNF."""

    def mixture():
        base = dist.Normal(base_loc, base_scale).to_event(1)  # batch (K,), event (D,)
        return MixtureOfFlows(log_weights, dist.TransformedDistribution(base, list(flows)))

    def model(x=None, x_labelled=None, y_labelled=None, num_points=None, temperature=1.0):
        pyro.module("flows", flows)
        pyro.module("encoder", encoder)
        p = mixture()
        log_pi = p.mixture_log_weights
        if x_labelled is not None:
            logits = encoder(x_labelled) / temperature
            with pyro.plate("labelled", x_labelled.shape[0]):
                pyro.sample("label", dist.Categorical(logits=log_pi), obs=y_labelled)
                pyro.sample("x_labelled", p.component(y_labelled), obs=x_labelled)
                with poutine.scale(scale=label_weight):  # alpha log q(y | x)
                    pyro.sample("classification", dist.Categorical(logits=logits), obs=y_labelled)
        n = num_points if x is None else x.shape[0]
        if n:
            with pyro.plate("data", n):
                k = pyro.sample("component", dist.Categorical(logits=log_pi))
                pyro.sample("x", p.component(k), obs=x)
            return k

    def guide(x=None, x_labelled=None, y_labelled=None, num_points=None, temperature=1.0):
        pyro.module("encoder", encoder)
        if x is not None and x.shape[0]:
            logits = encoder(x) / temperature
            with pyro.plate("data", x.shape[0]):
                pyro.sample(
                    "component", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
                )

    return model, guide, mixture


# %%
# Training
# --------
#
# SVI on the hand-written program
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# We build the pieces for the pinwheel (five RealNVP components of four coupling layers,
# a classifier with two hidden layers of 64) and train them with Pyro's own ``SVI`` on
# mini-batches, passing the temperature of each step to both programs, as Pyro's own
# examples pass schedules. ``TraceEnum_ELBO(max_plate_nesting=1)``: the data plate is the
# one plate, so enumeration may use the dimension to its left.

initial_temperature, final_temperature, decay = 5.0, 1.0, 0.998


def temperature_at(step):
    return final_temperature + (initial_temperature - final_temperature) * decay**step


flows = flow_stack(D, "realnvp", num_layers=4, hidden_dims=[32, 32], num_components=K)
encoder = DenseNN(D, [64, 64], param_dims=[K])
base_loc, base_scale = torch.zeros(K, D), torch.ones(K, D)
uniform = torch.zeros(K)  # unnormalised log-weights: pi_k = 1 / K
model, guide, mixture = mixture_program(flows, encoder, base_loc, base_scale, uniform)

pyro.clear_param_store()  # pyro.module reuses any stored parameter of the same name
svi = SVI(model, guide, pyro.optim.Adam({"lr": 2e-3}), TraceEnum_ELBO(max_plate_nesting=1))
batches = torch.Generator().manual_seed(0)
svi_history = {"step": [], "loss": []}
for step in range(steps):
    batch = x[torch.randint(len(x), (256,), generator=batches)]
    loss = svi.step(batch, temperature=temperature_at(step)) / len(batch)
    svi_history["step"].append(step + 1)
    svi_history["loss"].append(loss)
    if step % max(steps // 5, 1) == 0 or step == steps - 1:
        print(f"step {step + 1:5d}  T = {temperature_at(step):.2f}  -ELBO per point {loss:.3f}")
plot_training_curve(svi_history, out / "pinwheel_by_hand_training.png")

# %%
# The packaged model gives the same loss
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# :class:`~pyro_manifold.models.VariationalMixtureOfFlows` holds the same pieces: its
# ``layers`` are the batched flow (built by the same ``flow_stack`` call), its
# ``encoder`` is :math:`g` (a ``DenseNN`` with two hidden layers of
# :math:`\max(10D, 64)` by default), ``base_loc`` and ``base_scale`` the base normal,
# ``mixture_log_weights()`` gives :math:`\log\pi`, and ``step_kwargs(t)`` the temperature
# schedule above. Its ``model(x, y)`` takes the labels as one vector (``-1`` marks an
# unlabelled point) and splits the points as our program's caller does.
#
# We load the weights trained above into a fresh instance and wire our program to *its*
# modules: our program and the class's ``model``/``guide`` give the same loss, without
# labels and with labels, at the same temperature. The loss is exact (enumeration draws
# nothing), so the two agree to float precision.

vmonf = VariationalMixtureOfFlows(
    D,
    K,
    "realnvp",
    num_layers=4,
    hidden_dims=[32, 32],
    initial_temperature=initial_temperature,
    final_temperature=final_temperature,
    temperature_decay=decay,
    label_weight=label_weight,
)
vmonf.layers.load_state_dict(flows.state_dict())
vmonf.encoder.load_state_dict(encoder.state_dict())
ours = mixture_program(
    vmonf.layers,
    vmonf.encoder,
    vmonf.base_loc,
    vmonf.base_scale,
    vmonf.mixture_log_weights(),
    label_weight=label_weight,
)
elbo = TraceEnum_ELBO(max_plate_nesting=1)
y = torch.full_like(wing, -1)  # a few labels, for the semi-supervised program
y[:40] = wing[:40]
labelled = y >= 0
for t in (0, 50):
    assert abs(vmonf.step_kwargs(t)["temperature"] - temperature_at(t)) < 1e-12
    T = temperature_at(t)
    torch.testing.assert_close(
        elbo.differentiable_loss(ours[0], ours[1], x, temperature=T),
        elbo.differentiable_loss(vmonf.model, vmonf.guide, x, **vmonf.step_kwargs(t)),
    )
    torch.testing.assert_close(
        elbo.differentiable_loss(
            ours[0], ours[1], x[~labelled], x[labelled], y[labelled], temperature=T
        ),
        elbo.differentiable_loss(vmonf.model, vmonf.guide, x, y, **vmonf.step_kwargs(t)),
    )
# the class with our weights is our trained model
torch.testing.assert_close(vmonf.log_prob(x_test), mixture().log_prob(x_test))
print("VariationalMixtureOfFlows gives the same loss as the hand-written program")

# %%
# Training with ``fit``
# ~~~~~~~~~~~~~~~~~~~~~
#
# The packaged model goes straight into :func:`pyro_manifold.infer.fit`, which draws the
# mini-batches, evaluates ``step_kwargs`` before each step and keeps a history. Here the
# temperature stays at its default :math:`T = 1`.


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


trained = {}  # name -> (model, test points, test labels)

# %%
# Pinwheel
# ~~~~~~~~
#
# The paper's model starts every component at the same standard normal, and random
# differences between the networks decide which component takes which wing. This
# sometimes leaves one component on two half-wings. As an option,
# ``initialize_components`` centres each component's base distribution on a k-means
# cluster first, much as a Gaussian mixture is started from k-means. We train both.

for start in ("random", "kmeans"):
    torch.manual_seed(0)
    model_k = VariationalMixtureOfFlows(D, K, "realnvp", num_layers=4, hidden_dims=[32, 32])
    if start == "kmeans":
        model_k.initialize_components(x)
    history = train(model_k, x).history
    plot_training_curve(history, out / f"pinwheel_{start}_training.png")
    trained[f"pinwheel/{start}"] = (model_k, x_test, wing_test)

# %%
# Two circles, without and with labels
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# With no labels, a mixture of two flows has no reason to prefer "inner circle / outer
# circle" to "left half / right half". Both explain the density about equally well, and
# what the unsupervised model finds depends on its start: a model of this size, trained
# by ``python benchmarks/vmonf.py --part circles`` over five seeds, scores test accuracies
# from 0.53 (chance, what a split of the plane in half gives) to 0.89
# (``benchmarks/RESULTS.md``).
# With 64 labels (32 per circle; the share of labelled points is printed below) the
# labelled points fix the component in the model, and the :math:`\alpha \log q(y \mid x)`
# term teaches the classifier the radial boundary. So few labels need a large weight per
# label: we take :math:`\alpha = 0.05 N` (Kingma et al. 2014 use :math:`0.1 N`).

labels = torch.full_like(circles.labels, -1)
for c in (0, 1):
    labels[(circles.labels == c).nonzero()[:32, 0]] = c
print(f"two circles: {int((labels >= 0).sum())} labelled points of {len(labels)}")
for name, data in (("unsupervised", circles.data), ("semi_supervised", (circles.data, labels))):
    torch.manual_seed(0)
    model_c = VariationalMixtureOfFlows(
        D, 2, "realnvp", num_layers=4, hidden_dims=[32, 32], label_weight=label_weight
    )
    train(model_c, data)
    trained[f"two_circles/{name}"] = (model_c, circles_test.data, circles_test.labels)

# %%
# MNIST digits 0-4 (when the data are there)
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# Five MAF components on dequantised, logit-transformed digits (as in the paper). This
# part needs the data (``PYRO_MANIFOLD_DATA``) and is slow on a CPU (it prints the
# minutes each run took); smoke mode runs it on 500 images with the narrowest MAFs (784
# units, the fewest a MADE on 784 pixels can have) and a 64-unit encoder. In the Results
# we report the normalised contingency table of clusters against digits (the paper's
# table 1) and a grid of samples from each component (the paper's fig. 9).
#
# In 784 dimensions the start decides the clustering. With :math:`q(k \mid x) \approx
# 1/K` at first, every component is trained on every digit, and one flexible component
# can end up holding several digits while others go empty. So we start each MAF near the
# identity (``scale_output_layer``), centre each component on a k-means cluster
# (``initialize_components``; with labels, the k-means is seeded by them, so component
# :math:`k` starts on digit :math:`k`), and fit the encoder to that partition
# (``fit_encoder``) before the ELBO steps. ``benchmarks/vmonf.py`` compares this start
# with the k-means start alone (``benchmarks/RESULTS.md``).

mnist_models = {}
if os.environ.get("PYRO_MANIFOLD_DATA"):
    from pyro_manifold.datasets import (
        ToyData,
        dequantize_logit,
        inverse_logit_transform,
        load_mnist,
    )
    from pyro_manifold.nn import scale_output_layer
    from pyro_manifold.plotting import plot_image_grid

    digits = [0, 1, 2, 3, 4]
    mnist, mnist_test = (load_mnist(split=s, digits=digits) for s in ("train", "test"))
    if args.smoke:  # 500 images of each split, the narrowest networks, a few steps
        mnist, mnist_test = (ToyData(d.data[:500], d.labels[:500]) for d in (mnist, mnist_test))
    flow_hidden, encoder_hidden = ([784], [64]) if args.smoke else ([1024], [512, 512])
    encoder_steps, mnist_steps = (5, 5) if args.smoke else (1000, 3000)
    xm, xm_test = dequantize_logit(mnist.data, 0)[0], dequantize_logit(mnist_test.data, 1)[0]
    semi = torch.full_like(mnist.labels, -1)
    for d in digits:
        semi[(mnist.labels == d).nonzero()[:20, 0]] = d
    for name, ym in (("unsupervised", None), ("semi_supervised", semi)):
        started = time.time()
        torch.manual_seed(0)
        model_m = VariationalMixtureOfFlows(
            784,
            5,
            "maf",
            num_layers=1,
            hidden_dims=flow_hidden,
            encoder_hidden_dims=encoder_hidden,
            label_weight=0.05 * xm.shape[0],
        )
        for layer in model_m.layers:
            scale_output_layer(layer.arn)
        start = model_m.initialize_components(xm, y=ym)
        model_m.fit_encoder(xm, start, num_steps=encoder_steps)
        fit(
            model_m.model,
            model_m.guide,
            xm if ym is None else (xm, ym),
            loss=TraceEnum_ELBO(max_plate_nesting=1),
            num_steps=mnist_steps,
            batch_size=128,
            lr=3e-4,
            progress=False,
        )
        mnist_models[name] = model_m.cpu()
        print(f"MNIST {name}: trained in {(time.time() - started) / 60:.1f} minutes")

# %%
# Results
# -------
#
# New samples: ``Predictive`` on the model
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# Called with ``x=None``, the model draws :math:`k \sim \pi` and
# :math:`x \sim p_k` for a plate of new points, so ``Predictive(model, num_samples=1)``
# returns one draw of the whole plate: the sites ``"component"`` and ``"x"``. (The
# class's model takes the plate's size as ``num_samples``; our program calls it
# ``num_points``.)
#
# Cluster assignments: ``infer_discrete`` and the guide
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# Two assignments answer two questions. ``infer_discrete(config_enumerate(model),
# temperature=0)`` runs the model on observed points with its own ``"component"`` site
# enumerated and returns the MAP assignment under the *model*,
# :math:`\arg\max_k \pi_k p_k(x)`: the flows' own opinion, which costs :math:`K` flow
# evaluations per point. :math:`\arg\max_k q(k \mid x)` is the amortised *guide*'s
# answer, one pass of the classifier. The first must equal the argmax of the exact
# posterior ``MixtureOfFlows.posterior_log_prob`` (we assert it); the second agrees with
# it where training has closed the gap :math:`\mathrm{KL}(q \,\|\, p(k \mid x))`, and we
# report the fraction of test points on which the two agree, with each one's accuracy
# against the true wings or circles (under the best matching of components to labels).
# ``Predictive(model, guide=guide, ...)`` instead *draws* :math:`k \sim q(k \mid x)`
# (the guide's site), a stochastic assignment; its frequencies estimate
# :math:`q(k \mid x)`.


def map_assignment(model, x):
    """The MAP component of each point under the model (its discrete site enumerated)."""
    decoder = infer_discrete(config_enumerate(model), first_available_dim=-2, temperature=0)
    return poutine.trace(decoder).get_trace(x).nodes["component"]["value"]


with torch.no_grad():
    new = Predictive(model, num_samples=1)(num_points=2000)
    by_hand_samples, by_hand_components = new["x"][0], new["component"][0]
    by_model = map_assignment(model, x_test)
    assert torch.equal(by_model, mixture().posterior_log_prob(x_test).argmax(-1))
    by_guide = encoder(x_test).argmax(-1)
    draws = Predictive(model, guide=guide, num_samples=200, return_sites=["component"])(x_test)
    frequencies = torch.nn.functional.one_hot(draws["component"], K).double().mean(0)
    q = torch.softmax(encoder(x_test), -1).double()
    assert (frequencies - q).abs().max() < 0.2  # 200 draws: standard error at most 0.035
results = {
    "pinwheel/by_hand": {
        "accuracy_guide": clustering_accuracy(by_guide, wing_test),
        "accuracy_model_map": clustering_accuracy(by_model, wing_test),
        "guide_agrees_with_model_map": float((by_guide == by_model).double().mean()),
        "test_log_likelihood": mixture().log_prob(x_test).mean().item(),
    }
}

# %%
# The same calls on the packaged models. We plot each model's test points by cluster and
# its samples by component over the regions where :math:`\arg\max_k q(k \mid x)` takes
# each component (``plot_clusters_2d``; colour = component).


plot_clusters_2d(
    [
        (x_test, by_guide, "hand-written (SVI): test points by cluster"),
        (by_hand_samples, by_hand_components, "samples by component"),
    ],
    out / "pinwheel_by_hand.png",
    classify=lambda grid: encoder(grid).argmax(-1),
)
for key, (m, test_x, test_labels) in trained.items():
    with torch.no_grad():
        new = Predictive(m.model, num_samples=1)(num_samples=2000)
        by_model = map_assignment(m.model, test_x)
        assert torch.equal(by_model, m.cluster(test_x, exact=True))
        by_guide = m.cluster(test_x)
        results[key] = {
            "accuracy_guide": clustering_accuracy(by_guide, test_labels),
            "accuracy_model_map": clustering_accuracy(by_model, test_labels),
            "guide_agrees_with_model_map": float((by_guide == by_model).double().mean()),
            "test_log_likelihood": m.log_prob(test_x).mean().item(),
        }
        plot_clusters_2d(
            [
                (test_x, by_guide, f"{key}: test points by cluster"),
                (new["x"][0], new["component"][0], "samples by component"),
            ],
            out / f"{key.replace('/', '_')}.png",
            classify=m.cluster,
        )

# %%
# MNIST: the normalised contingency table of the guide's clusters against the digits
# (rows: clusters, columns: digits), the MAP assignment under the model for the same
# table, and one row of samples per component: ``MixtureOfFlows.component(k)`` is
# :math:`p(x \mid k)`, so its ``sample()`` draws from chosen components (one sequential
# MAF pass per draw of the whole grid).

for name, m in mnist_models.items():
    with torch.no_grad():
        by_guide = torch.cat([m.cluster(c) for c in xm_test.split(1000)])
        by_model = torch.cat([map_assignment(m.model, c) for c in xm_test.split(1000)])
        table = contingency_table(by_guide, mnist_test.labels, normalize="class", num_clusters=5)
        results[f"mnist/{name}"] = {
            "accuracy_guide": clustering_accuracy(by_guide, mnist_test.labels),
            "accuracy_model_map": clustering_accuracy(by_model, mnist_test.labels),
            "guide_agrees_with_model_map": float((by_guide == by_model).double().mean()),
            "contingency_table": table.tolist(),
        }
        print(f"MNIST {name}: normalised contingency table (rows: clusters, cols: digits)")
        print(table)
        rows = torch.arange(5).repeat_interleave(8)  # eight samples of each component
        grid = m.distribution().component(rows).sample()
        # a draw that overflowed is drawn black (plots take finite pixels)
        images = inverse_logit_transform(grid, alpha=1e-6).nan_to_num(nan=0.0)
    plot_image_grid(
        images, out / f"mnist_{name}_samples.png", ncols=8, title="one row per component"
    )

# %%
# The scores: clustering accuracy of :math:`\arg\max_k q(k \mid x)` (the guide) and of
# the model's MAP assignment (``infer_discrete``) under the best matching of clusters to
# classes (higher is better), the fraction of test points on which the two agree, and the
# test log-likelihood per point. ``benchmarks/vmonf.py`` runs the same experiments over
# several seeds and compares them with a single flow of the same size.

print("| experiment | accuracy, argmax q | accuracy, model MAP | agreement | test log-lik. |")
print("|---|---|---|---|---|")
for key, r in results.items():
    ll = r.get("test_log_likelihood")
    print(
        f"| {key} | {r['accuracy_guide']:.3f} | {r['accuracy_model_map']:.3f} | "
        f"{r['guide_agrees_with_model_map']:.3f} | {'' if ll is None else f'{ll:.3f}'} |"
    )
(out / "results.json").write_text(json.dumps(results, indent=1))
