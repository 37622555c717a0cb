"""
Classic normalizing flows in Pyro
=================================

A normalizing flow is the baseline every other method of ``pyro_manifold`` is compared
with: an invertible map of a standard normal, trained by maximum likelihood. This
tutorial writes a flow as a Pyro program by hand (a base distribution, a list of flow
layers, ``dist.TransformedDistribution`` inside a ``pyro.plate``), trains it with Pyro's
own ``SVI``, shows that ``pyro_manifold.models.Flow`` is the same program, and compares
three layer families (MAF, RealNVP and neural spline couplings) on two 2D densities,
sampling each trained flow with ``pyro.infer.Predictive``.

How to run (headless; PNG figures and ``results.json`` are written to ``DIR``, default
``tutorial_output/classic_flows``)::

    python tutorials/classic_flows.py [--smoke] [--out DIR]

``--smoke`` takes a few steps on small data sets only (the test suite runs it).
"""

# %%
# Data
# ----
#
# The 5-wing pinwheel of the VMoNF paper and two moons: 2D densities whose generating
# process we know, so that the learned density can be looked at next to the data. Each
# data set has a training sample and a held-out sample drawn with another seed.

import argparse
import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.optim import Adam
from torch.testing import assert_close

from pyro_manifold.datasets import pinwheel, two_moons
from pyro_manifold.infer import fit
from pyro_manifold.metrics import maximum_mean_discrepancy
from pyro_manifold.models import Flow
from pyro_manifold.plotting import plot_density_2d, plot_training_curve
from pyro_manifold.transforms import affine_coupling

parser = argparse.ArgumentParser(description="Classic flows tutorial")
parser.add_argument("--smoke", action="store_true", help="a few steps only")
parser.add_argument("--out", default="tutorial_output/classic_flows")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
steps = 20 if args.smoke else 2000  # fit steps per flow
svi_steps = 20 if args.smoke else 1000  # SVI steps of the hand-written program
n = 500 if args.smoke else 5000

data = {}
for name, make in {"pinwheel": pinwheel, "two_moons": two_moons}.items():
    data[name] = (make(n, seed=0).data, make(max(n // 5, 100), seed=1).data)  # train, test
train, test = data["pinwheel"]
print({name: tuple(tr.shape) for name, (tr, _) in data.items()})

# %%
# Objective
# ---------
#
# A flow writes a data point as :math:`x = T(u)` with :math:`u \sim \mathcal N(0, I)`
# and an invertible :math:`T = T_L \circ \dots \circ T_1`. With :math:`u_L = x` and
# :math:`u_{l-1} = T_l^{-1}(u_l)`, the change of variables gives
#
# .. math::
#
#     \log p(x) = \log \mathcal N(u_0; 0, I)
#         - \sum_{l=1}^{L} \log\left|\det \frac{\partial T_l}{\partial u_{l-1}}\right|.
#
# In Pyro, ``dist.TransformedDistribution(base, [T_1, ..., T_L])`` computes this in its
# ``log_prob``: it inverts the layers from the last to the first and subtracts each
# layer's ``log_abs_det_jacobian``. Training maximises :math:`\sum_n \log p(x_n)`. A flow
# has no latent variables, so its guide is empty and the ELBO is the log-likelihood
# itself: Pyro's ``Trace_ELBO`` loss is exactly :math:`-\sum_n \log p(x_n)` (checked
# below).
#
# The three layer families differ in which direction is cheap. A MAF layer
# (``masked_autoregressive``) scores data in one network pass and samples sequentially,
# one pass per dimension; a RealNVP affine coupling (``affine_coupling``) and a neural
# spline coupling are one pass both ways.

# %%
# Model and guide
# ---------------
#
# The program by hand: four affine couplings that alternate the half they keep, on top
# of a standard normal. The layers are ``TransformModule`` s (``torch.nn.Module`` s);
# ``pyro.module`` registers their parameters with Pyro so that ``SVI`` trains them. The
# model observes ``x`` under a ``pyro.plate`` over the data points, or, called with
# ``x=None``, draws ``num_samples`` new points (this is what ``Predictive`` does below).

torch.manual_seed(0)
layers = torch.nn.ModuleList([affine_coupling(2, [64, 64], reverse=bool(i % 2)) for i in range(4)])


def flow_distribution():
    """p(x): the standard normal pushed through the layers (base to data)."""
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    return dist.TransformedDistribution(base, list(layers))


def model(x=None, num_samples=None):
    pyro.module("layers", layers)
    with pyro.plate("data", x.shape[0] if x is not None else num_samples):
        return pyro.sample("x", flow_distribution(), obs=x)


def guide(x=None, num_samples=None):
    """No latent sites: nothing to infer."""


# %%
# With an empty guide, the ELBO is the log-likelihood:

assert_close(
    Trace_ELBO().loss(model, guide, test), -flow_distribution().log_prob(test).sum().item()
)

# %%
# Training
# --------
#
# With Pyro's SVI
# ~~~~~~~~~~~~~~~
#
# The hand-written program trains with ``pyro.infer.SVI`` on random mini-batches of the
# pinwheel. ``svi.step`` returns the loss of its batch; divided by the batch size it is
# the negative log-likelihood per point.

pyro.clear_param_store()
svi = SVI(model, guide, Adam({"lr": 2e-3}), Trace_ELBO())
generator = torch.Generator().manual_seed(0)
svi_history = {"step": [], "loss": []}
for step in range(1, svi_steps + 1):
    batch = train[torch.randint(len(train), (256,), generator=generator)]
    loss = svi.step(batch) / len(batch)
    svi_history["step"].append(step)
    svi_history["loss"].append(loss)
    if step % max(svi_steps // 5, 1) == 0:
        print(f"SVI step {step}: loss per point {loss:.3f}")
plot_training_curve(svi_history, out / "pinwheel_own_svi_training.png")

# %%
# The packaged model: your own flow, or a named family
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# ``pyro_manifold.models.Flow`` bundles this program: ``Flow.model`` observes the data
# under a ``pyro.plate`` with the layers on a standard normal, and ``Flow.guide`` is
# empty. Its ``flow`` argument takes a family's name or your own flow, a callable
# ``flow(D)`` that returns Pyro ``TransformModule`` s, base to data. Given a callable that
# returns our trained layers, the model class wraps those very layers, and its
# ``model``/``guide`` give the same loss as our program.

own = Flow(2, lambda dim: layers)
assert all(a is b for a, b in zip(own.layers, layers, strict=True))
assert_close(Trace_ELBO().loss(own.model, own.guide, test), Trace_ELBO().loss(model, guide, test))

# %%
# The name ``"realnvp"`` builds the same architecture (affine couplings that alternate
# the kept half): loaded with our parameters, a named ``Flow`` gives the same loss too.

named = Flow(2, "realnvp", num_layers=4, hidden_dims=[64, 64])
named.layers.load_state_dict(layers.state_dict())
assert_close(
    Trace_ELBO().loss(named.model, named.guide, test), Trace_ELBO().loss(model, guide, test)
)

# %%
# With fit
# ~~~~~~~~
#
# ``pyro_manifold.infer.fit`` runs SVI over shuffled mini-batches, with a learning-rate
# schedule and a check for non-finite losses and gradients. Here it continues training
# our layers through ``own`` (they are the same modules), then trains each named family
# from scratch on both data sets: MAF and RealNVP with five layers, spline couplings with
# three.


def train_flow(flow, x, num_steps):
    return fit(
        flow.model,
        flow.guide,
        x,
        num_steps=num_steps,
        batch_size=256,
        lr=2e-3,
        lr_schedule="cosine",
        device="cpu",
        progress=False,
    ).history


histories = {"pinwheel/own": train_flow(own, train, steps)}
flows = {"pinwheel/own": own}
for data_name, (x_train, _) in data.items():
    for kind in ("maf", "realnvp", "spline_coupling"):
        torch.manual_seed(0)
        flow = Flow(
            2,
            kind,
            num_layers=5 if kind != "spline_coupling" else 3,
            hidden_dims=[64, 64] if kind != "maf" else [64],
        )
        histories[f"{data_name}/{kind}"] = train_flow(flow, x_train, steps)
        flows[f"{data_name}/{kind}"] = flow
for key, history in histories.items():
    plot_training_curve(history, out / f"{key.replace('/', '_')}_training.png")

# %%
# Results
# -------
#
# New points come from the posterior predictive, ``pyro.infer.Predictive``: with no
# latent sites it runs the model with ``x=None``, which draws from the flow
# (``Flow.sample`` does the same in batches). For our own program we call ``Predictive``
# on the hand-written ``model``/``guide``, whose layers ``fit`` has just trained further.
# Each flow is scored by its test log-likelihood per point (higher is better) and by the
# squared maximum mean discrepancy (MMD²) between its samples and the test data (lower is
# better). The figures show the learned density, and samples over the data.

results = {}
for key, flow in flows.items():
    data_name, kind = key.split("/")
    x_test = data[data_name][1]
    m, g = (model, guide) if kind == "own" else (flow.model, flow.guide)
    with torch.no_grad():
        predictive = Predictive(m, guide=g, num_samples=1, return_sites=["x"])
        samples = predictive(None, 2000)["x"][0]  # model(x=None, num_samples=2000)
        results[key] = {
            "test_log_likelihood": flow.log_prob(x_test).mean().item(),
            "mmd2": maximum_mean_discrepancy(samples, x_test).item(),
        }
    plot_density_2d(
        flow.log_prob,
        x_test,
        out / f"{data_name}_{kind}.png",
        samples=samples,
        title=f"{'our layers' if kind == 'own' else kind} on {data_name}",
    )

print("| data / flow | test log-likelihood | MMD² |")
print("|---|---|---|")
for key, r in results.items():
    print(f"| {key} | {r['test_log_likelihood']:.3f} | {r['mmd2']:.2e} |")
(out / "results.json").write_text(json.dumps(results, indent=1))
