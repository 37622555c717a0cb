r"""
Noisy injective flows: densities near a manifold
================================================

A noisy injective flow (NIF; Cunningham et al., *Normalizing Flows Across Dimensions*,
arXiv:2006.13070) models data that lie near a :math:`d`-dimensional manifold in
:math:`\mathbb R^D`: a low-dimensional latent is embedded linearly, with Gaussian noise,
and a flow bends the embedding. This tutorial writes the NIF as a Pyro program by hand
from ``pyro_manifold.distributions``: ``NoisyInjective`` (the likelihood
:math:`p(y|z)`) in the model and ``StochasticInverse`` (:math:`q(z|y)`) in the guide,
trains it with Pyro's ``SVI``, shows that ``pyro_manifold.models.NoisyInjectiveFlow`` is
the same program, and then uses ``pyro.infer.Predictive`` for new samples, the stochastic
inverse of data (reconstructions and projections on the learned manifold) and samples
on the manifold.

How to run (headless; PNG figures and ``results.json`` go to ``DIR``, default
``tutorial_output/noisy_injective_flows``)::

    python tutorials/noisy_injective_flows.py [--smoke] [--out DIR]

``--smoke`` takes a few steps only (the test suite runs it). A short MNIST section runs
when ``PYRO_MANIFOLD_DATA`` points at the MNIST files (with ``--smoke``, on 500 images
with a narrower top flow, for a few steps); the full MNIST comparison is
``benchmarks/mnist_flows.py`` and ``benchmarks/nif_mnist_eval.py``.
"""

# %%
# Data
# ----
#
# 2D points near a line (a training set and a held-out set drawn with another seed), and
# 3D points near a curved 2D surface: a sphere with a non-uniform density on it and a
# little off-surface noise.

import argparse
import json
import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.optim import Adam
from torch.testing import assert_close

from pyro_manifold.datasets import Sphere
from pyro_manifold.distributions import (
    GaussianNIF,
    NoisyInjective,
    StochasticInverse,
    log_manifold_term,
)
from pyro_manifold.infer import fit
from pyro_manifold.models import NoisyInjectiveFlow
from pyro_manifold.plotting import plot_samples_3d, plot_training_curve
from pyro_manifold.transforms import flow_stack

parser = argparse.ArgumentParser(description="Noisy injective flows tutorial")
parser.add_argument("--smoke", action="store_true", help="a few steps only")
parser.add_argument("--out", default="tutorial_output/noisy_injective_flows")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
steps = 20 if args.smoke else 3000  # fit steps
svi_steps = 20 if args.smoke else 1500  # SVI steps of the hand-written program
results = {}


def near_line(num_points, seed):
    """Points near the line x_2 = 0.6 x_1 + 0.5, with noise of scale 0.05."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(num_points, 1, generator=g) * 1.5
    return torch.cat([t, 0.6 * t + 0.5], -1) + 0.05 * torch.randn(num_points, 2, generator=g)


def distance_to_line(x):
    """Euclidean distance from points (N, 2) to the true line x_2 = 0.6 x_1 + 0.5."""
    return (0.6 * x[:, 0] - x[:, 1] + 0.5).abs() / (1 + 0.6**2) ** 0.5


line, line_test = near_line(3000, seed=0), near_line(500, seed=1)
sphere = Sphere().sample(3000, noise=0.03, seed=0).data

# %%
# Objective
# ---------
#
# A NIF draws a latent :math:`z \in \mathbb R^d` from a prior, embeds it in
# :math:`\mathbb R^D` (:math:`d < D`) with noise, and pushes the result through a flow
# :math:`f` on :math:`\mathbb R^D` (the *top flow*):
#
# .. math::
#
#     z \sim \mathcal N(0, I_d), \qquad
#     y \,|\, z \sim \mathcal N(Az + b, \Sigma), \qquad x = f(y),
#
# with :math:`A` a :math:`D \times d` matrix of full column rank and
# :math:`\Sigma = \operatorname{diag}(\sigma^2)`. ``GaussianNIF`` holds the parameters
# :math:`A`, :math:`b` and :math:`\sigma` (``.linear``, ``.bias``, ``.noise_scale``);
# ``NoisyInjective(z, A, b, sigma)`` is the likelihood :math:`p(y|z)`.
#
# As a function of :math:`z`, :math:`p(y|z)` is an unnormalised Gaussian. Normalised, it
# is the *stochastic inverse* ``StochasticInverse(y, A, b, sigma)``,
#
# .. math::
#
#     q(z|y) = \mathcal N(\Lambda^{-1}u, \Lambda^{-1}), \qquad
#     \Lambda = A^\top\Sigma^{-1}A, \quad u = A^\top\Sigma^{-1}(y - b),
#
# whose mean is the least-squares pseudo-inverse :math:`z^+ = \Lambda^{-1}u`, and the
# normaliser is the *manifold term* ``log_manifold_term(y, A, b, sigma)``,
#
# .. math::
#
#     \log p(y|z) - \log q(z|y) = \log\int p(y|z')\,dz' \quad \text{for every } z.
#
# Used as the guide, :math:`q(z|y)` with :math:`y = f^{-1}(x)` gives the ELBO
#
# .. math::
#
#     \mathcal L(x) = \mathbb E_{q(z|y)}\big[\log p(z)\big] + \log\int p(y|z)\,dz
#         + \log\left|\det J_{f^{-1}}(x)\right|,
#
# in which only the prior term is estimated by sampling: the manifold term is exact, with
# zero variance, and so is the top flow's change of variables. Let us check the identity
# on a fresh layer: :math:`\log p(y|z) - \log q(z|y)` is the same for two independent
# draws of :math:`z`, and equals the manifold term. (The layer's methods
# ``likelihood(z, s)`` and ``stochastic_inverse(y)`` build the same two distributions
# from its parameters; the packaged model below uses them.)

torch.manual_seed(0)
layer = GaussianNIF(1, 2, init_noise_scale=0.5)  # A (2 x 1), b, sigma
A, b, sigma = layer.linear, layer.bias, layer.noise_scale
y = line[:5]
q = StochasticInverse(y, A, b, sigma)
with torch.no_grad():
    for _ in range(2):
        z = q.sample()
        difference = NoisyInjective(z, A, b, sigma).log_prob(y) - q.log_prob(z)
        assert_close(difference, log_manifold_term(y, A, b, sigma), rtol=1e-4, atol=1e-4)
        assert_close(layer.likelihood(z).log_prob(y), NoisyInjective(z, A, b, sigma).log_prob(y))
        assert_close(layer.stochastic_inverse(y).log_prob(z), q.log_prob(z))

# %%
# Model and guide
# ---------------
#
# The program by hand, for the line (:math:`d = 1`, :math:`D = 2`): a ``GaussianNIF``
# layer and a top flow of three RealNVP couplings from the package's flow factory
# ``flow_stack``, both registered with ``pyro.module``. The model draws :math:`z` from
# the prior and observes :math:`x` through ``dist.TransformedDistribution(p(y|z), top)``
# (the likelihood pushed through the top flow), inside a ``pyro.plate`` over the data
# points. Its noise multiplier ``s`` scales :math:`\Sigma` when drawing new points:
# ``s=0`` puts them exactly on the learned manifold :math:`f(\{Az + b\})`. The guide
# inverts the top flow, deterministically, and samples the stochastic inverse; with
# ``x=None`` (drawing new points) it has nothing to infer.

torch.manual_seed(0)
nif = GaussianNIF(1, 2, init_noise_scale=0.5)
top = flow_stack(2, "realnvp", 3, [32, 32])


def top_inverse(x):
    """y = f^{-1}(x): the top flow's layers inverted from the last to the first."""
    for t in reversed(top):
        x = t.inv(x)
    return x


def model(x=None, num_samples=None, s=1.0):
    pyro.module("nif", nif)
    pyro.module("top", top)
    with pyro.plate("data", x.shape[0] if x is not None else num_samples):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        p_y = NoisyInjective(z, nif.linear, nif.bias, nif.noise_scale, noise_multiplier=s)
        return pyro.sample("x", dist.TransformedDistribution(p_y, list(top)), obs=x)


def guide(x=None, num_samples=None, s=1.0):
    if x is None:  # drawing new points: the model's prior draws z
        return None
    pyro.module("nif", nif)
    pyro.module("top", top)
    y = top_inverse(x)
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("z", StochasticInverse(y, nif.linear, nif.bias, nif.noise_scale))


# %%
# Pyro's ``Trace_ELBO`` of this pair is the bound of the objective, term by term: with
# the guide's draw of :math:`z` fixed by a seed, its loss is minus the sum over the data
# of :math:`\log p(z) + \log\int p(y|z)dz + \log|\det J_{f^{-1}}(x)|`.

x = line_test[:200]
with torch.no_grad():
    pyro.set_rng_seed(1)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    y, log_det = x, torch.zeros(len(x))
    for t in reversed(top):  # log|det J_{f^-1}(x)| = -sum of the layers' log-determinants
        y_before = t.inv(y)
        log_det = log_det - t.log_abs_det_jacobian(y_before, y)
        y = y_before
    prior_term = dist.Normal(torch.zeros(1), 1.0).to_event(1).log_prob(z)
    manifold_term = log_manifold_term(y, nif.linear, nif.bias, nif.noise_scale)
    bound = (prior_term + manifold_term + log_det).sum()
    pyro.set_rng_seed(1)
    assert_close(Trace_ELBO().loss(model, guide, x), -bound.item(), rtol=1e-5, atol=1e-3)

# %%
# Training
# --------
#
# With Pyro's SVI
# ~~~~~~~~~~~~~~~
#
# ``pyro.infer.SVI`` trains the hand-written pair on random mini-batches of the line.
# ``svi.step`` returns the loss of its batch (minus the ELBO estimate); divided by the
# batch size it is per point.

pyro.clear_param_store()
svi = SVI(model, guide, Adam({"lr": 5e-3}), Trace_ELBO())
generator = torch.Generator().manual_seed(0)
svi_history = {"step": [], "loss": []}
for step in range(1, svi_steps + 1):
    batch = line[torch.randint(len(line), (256,), generator=generator)]
    loss = svi.step(batch) / len(batch)
    svi_history["step"].append(step)
    svi_history["loss"].append(loss)
    if step % max(svi_steps // 5, 1) == 0:
        print(f"SVI step {step}: loss per point {loss:.3f}")
plot_training_curve(svi_history, out / "line_svi_training.png")

# %%
# The packaged model
# ~~~~~~~~~~~~~~~~~~
#
# ``pyro_manifold.models.NoisyInjectiveFlow`` bundles this program (and adds a
# temperature, a prior flow or a Gaussian-mixture prior, image layers and exact
# evaluation). Built with the same sizes, its NIF layer is a ``GaussianNIF`` (``.nif``)
# and its top flow the same ``flow_stack`` (``.top_layers``; ``top_flow`` also takes your
# own flow, a callable ``top_flow(D)`` returning Pyro ``TransformModule`` s). Loaded with
# the parameters SVI has just trained, its ``model``/``guide`` give the same loss as ours
# for the same draws of :math:`z` (the same seed before each evaluation).

nif2d = NoisyInjectiveFlow(
    2, 1, top_flow="realnvp", top_layers=3, top_hidden_dims=[32, 32], init_noise_scale=0.5
)
nif2d.nif.load_state_dict(nif.state_dict())
nif2d.top_layers.load_state_dict(top.state_dict())
for seed in (1, 2):
    pyro.set_rng_seed(seed)
    ours = Trace_ELBO().loss(model, guide, line_test)
    pyro.set_rng_seed(seed)
    assert_close(Trace_ELBO().loss(nif2d.model, nif2d.guide, line_test), ours)

# %%
# With fit
# ~~~~~~~~
#
# ``pyro_manifold.infer.fit`` runs SVI over shuffled mini-batches with a learning-rate
# schedule and checks for non-finite losses. It continues training the line model where
# SVI left it, and trains a sphere model (:math:`d = 2`, :math:`D = 3`, six couplings)
# from scratch.

h2 = fit(
    nif2d.model,
    nif2d.guide,
    line,
    num_steps=steps,
    lr=5e-3,
    lr_schedule="cosine",
    device="cpu",
    progress=False,
).history
torch.manual_seed(0)
nif3d = NoisyInjectiveFlow(
    3, 2, top_flow="realnvp", top_layers=6, top_hidden_dims=[64, 64], init_noise_scale=0.5
)
h3 = fit(
    nif3d.model,
    nif3d.guide,
    sphere,
    num_steps=steps,
    lr=3e-3,
    lr_schedule="cosine",
    device="cpu",
    progress=False,
).history
plot_training_curve(h2, out / "line_training.png")
plot_training_curve(h3, out / "sphere_training.png")

# %%
# Results
# -------
#
# ``pyro.infer.Predictive`` runs the programs for us. Called with ``x=None``, the model
# draws new points: at ``s=1`` from the model with its learned noise, at ``s=0`` on the
# learned manifold. Called with data, ``Predictive`` runs the guide first, so
# ``return_sites=["z"]`` gives draws from the stochastic inverse :math:`q(z|f^{-1}(x))`:
# a cloud in :math:`z` around each point's pseudo-inverse :math:`z^+`. Handing those
# draws to ``Predictive`` as ``posterior_samples`` runs the model with :math:`z` fixed to
# them and ``x=None``; at ``s=0`` this maps each draw to :math:`f(Az + b)`, a
# reconstruction of the data point on the learned manifold. As the learned noise
# :math:`\sigma` shrinks, :math:`q(z|y)` concentrates at :math:`z^+` (``nif2d.encode(x)``)
# and the reconstructions approach :math:`f(Az^+ + b)`, the projection of the data onto
# the manifold (least squares in :math:`y = f^{-1}(x)`, weighted by :math:`\Sigma^{-1}`).
# That projection is not the nearest point of the manifold in :math:`x`: the top flow
# may turn a direction that the NIF layer treats as noise into one along the manifold,
# and then a point's reconstruction lies on the manifold but moved along it. In the
# last panel of the figure, a grey segment joins each held-out point to its
# reconstruction.
#
# We score the held-out log-likelihood (exact for a NIF with a unit-normal prior:
# ``log_prob`` integrates :math:`z` out in closed form); the mean distance to the true
# line of the samples at ``s=0``, of the reconstructions and projections of the held-out
# points, and of those points themselves; and the mean distance from each held-out point
# to its reconstruction and to its projection.

with torch.no_grad():
    new_points = Predictive(nif2d.model, guide=nif2d.guide, num_samples=1, return_sites=["x"])
    on = new_points(None, 1000, s=0.0)["x"][0]  # model(x=None, num_samples=1000, s=0)
    noisy = new_points(None, 1000, s=1.0)["x"][0]
    stochastic_inverse = Predictive(
        nif2d.model, guide=nif2d.guide, num_samples=300, return_sites=["z"]
    )
    z_draws = stochastic_inverse(line[:3])["z"]  # (300, 3, 1): 300 draws for each point
    one_draw = Predictive(nif2d.model, guide=nif2d.guide, num_samples=1, return_sites=["z"])
    z_data = one_draw(line_test)["z"]  # (1, 500, 1): one draw for every held-out point
    decode = Predictive(nif2d.model, posterior_samples={"z": z_data}, return_sites=["x"])
    reconstructions = decode(None, len(line_test), s=0.0)["x"][0]
    z_plus = nif2d.encode(line_test).unsqueeze(0)  # the pseudo-inverse, as one "draw"
    project = Predictive(nif2d.model, posterior_samples={"z": z_plus}, return_sites=["x"])
    projections = project(None, len(line_test), s=0.0)["x"][0]
    # s = 0 samples lie on the learned manifold f({Az + b}): back through the top flow,
    # y = f^-1(x) is exactly A z+ + b for its own pseudo-inverse z+
    y_on = nif2d.top_inverse(on)
    torch.testing.assert_close(
        nif2d.nif.likelihood(nif2d.nif.pseudo_inverse(y_on)).mean, y_on, rtol=0, atol=1e-4
    )
    # encode(x) is z+, the mean of the stochastic inverse q(z | f^-1(x))
    torch.testing.assert_close(
        z_plus[0], nif2d.nif.stochastic_inverse(nif2d.top_inverse(line_test)).mean
    )

    fig = Figure(figsize=(16, 4))
    axes = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
    for ax, points, color, label in ((axes[0], on, "C3", "s = 0"), (axes[1], noisy, "C0", "s = 1")):
        ax.scatter(line[:, 0], line[:, 1], s=1, c="0.6", label="data")
        ax.scatter(points[:, 0], points[:, 1], s=1, c=color, label=f"samples, {label}")
        ax.legend(markerscale=5)
    axes[0].set_title("learned manifold")
    axes[1].set_title("samples with noise")
    for i in range(3):
        axes[2].hist(z_draws[:, i, 0].numpy(), bins=30, alpha=0.6, label=f"q(z | x_{i})")
    axes[2].legend()
    axes[2].set_title("stochastic inverse in z")
    shown = line_test[:150], reconstructions[:150]
    for (x0, y0), (x1, y1) in zip(shown[0].tolist(), shown[1].tolist(), strict=True):
        axes[3].plot([x0, x1], [y0, y1], c="0.7", lw=0.5)
    axes[3].scatter(shown[0][:, 0], shown[0][:, 1], s=3, c="0.4", label="held-out data")
    axes[3].scatter(shown[1][:, 0], shown[1][:, 1], s=3, c="C3", label="reconstructions")
    axes[3].legend(markerscale=3)
    axes[3].set_title("reconstructions at s = 0")
    fig.tight_layout()
    fig.savefig(out / "line.png")
    results["line_test_log_likelihood"] = nif2d.log_prob(line_test).mean().item()
    results["line_distance_s0"] = distance_to_line(on).mean().item()
    for name, points in (("reconstructions", reconstructions), ("projections", projections)):
        results[f"line_distance_{name}"] = distance_to_line(points).mean().item()
        results[f"line_shift_{name}"] = (points - line_test).norm(dim=-1).mean().item()
    results["line_distance_data"] = distance_to_line(line_test).mean().item()

# %%
# For the sphere, ``nif3d.sample(n, s=...)`` draws new points (it runs the same model
# program in batches), and ``Predictive`` reconstructs the data on the learned surface.
# We measure how far the samples at ``s=0``, the reconstructions and the data themselves
# lie from the true sphere (mean Euclidean distance).

with torch.no_grad():
    on3 = nif3d.sample(2000, s=0.0)
    plot_samples_3d(sphere, out / "sphere_samples_s0.png", samples=on3, title="s = 0")
    plot_samples_3d(
        sphere, out / "sphere_samples_s1.png", samples=nif3d.sample(2000, s=1.0), title="s = 1"
    )
    z_sphere = Predictive(nif3d.model, guide=nif3d.guide, num_samples=1, return_sites=["z"])(
        sphere[:1000]
    )["z"]
    reconstructed = Predictive(nif3d.model, posterior_samples={"z": z_sphere}, return_sites=["x"])(
        None, 1000, s=0.0
    )["x"][0]
    plot_samples_3d(
        sphere[:1000],
        out / "sphere_reconstructions.png",
        samples=reconstructed,
        title="reconstructions at s = 0",
    )
    results["sphere_distance_s0"] = Sphere().distance(on3).mean().item()
    results["sphere_distance_reconstructions"] = Sphere().distance(reconstructed).mean().item()
    results["sphere_distance_data"] = Sphere().distance(sphere).mean().item()

# %%
# MNIST (when the data are there)
# -------------------------------
#
# A short run of an image NIF (latent 16: a 1 x 4 x 4 latent image upsampled by 7) with a
# small MAF on top and a 10-component Gaussian-mixture prior on :math:`z`
# (``prior_components``; ``log_prob`` stays exact). After training, ``fit_prior`` refits
# the mixture alone by EM to the stochastic inverse of the data (the NIF layer and the top
# flow stay fixed), so that samples at ``s=0`` come from where the data sit on the
# manifold. The full MNIST protocol, and what this step does to the on-manifold samples'
# Fréchet distance, are in ``benchmarks/RESULTS.md``.

if os.environ.get("PYRO_MANIFOLD_DATA"):
    from pyro_manifold.datasets import dequantize_logit, load_mnist
    from pyro_manifold.plotting import plot_image_grid

    images = load_mnist(None, "train").data[: 500 if args.smoke else 20000]

    def to_logit(batch):
        return (dequantize_logit(batch)[0],)

    mnist_nif = NoisyInjectiveFlow(
        784,
        16,
        top_flow="maf",
        top_layers=2,
        top_hidden_dims=[784] if args.smoke else [1024],
        batch_norm=True,
        image_shape=(1, 28, 28),
        factor=7,
        init_noise_scale=1.0,
        prior_components=10,
    )
    mnist_history = fit(
        mnist_nif.model,
        mnist_nif.guide,
        images,
        num_steps=5 if args.smoke else 2000,
        lr=5e-4,
        transform_batch=to_logit,
        device="cpu",
        progress=False,
    )
    results["mnist_last_loss_per_image"] = mnist_history.history["loss"][-1]
    mnist_nif.eval()  # batch norm: use its running statistics from here on
    with torch.no_grad():
        y = mnist_nif.sample(16, s=0.0)
    # a draw that overflowed in the MAF's inverse is drawn black (plots take finite pixels)
    plot_image_grid(
        torch.sigmoid(y).nan_to_num(nan=0.0), out / "mnist_samples_s0.png", title="NIF-16, s = 0"
    )
    mnist_nif.fit_prior(to_logit(images)[0], num_steps=5 if args.smoke else 200)
    with torch.no_grad():
        y = mnist_nif.sample(16, s=0.0)
    plot_image_grid(
        torch.sigmoid(y).nan_to_num(nan=0.0),
        out / "mnist_samples_s0_fitted_prior.png",
        title="after fit_prior, s = 0",
    )

print(json.dumps(results, indent=1))
(out / "results.json").write_text(json.dumps(results, indent=1))
