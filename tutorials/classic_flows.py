# %% [markdown]
# # Classic normalizing flows in Pyro: the baseline every method is compared with
#
# Run: `python tutorials/classic_flows.py [--smoke] [--out DIR]` (headless; figures are
# written as PNG to DIR, default `tutorial_output/classic_flows`).
#
# ## Data
# The 5-wing pinwheel of the VMoNF paper and two moons: 2D densities whose generating
# process we know, so we can look at the learned density next to the data.

# %%
import argparse
import json
from pathlib import Path

import torch

from pyro_manifold.datasets import pinwheel, two_moons
from pyro_manifold.infer import fit
from pyro_manifold.metrics import maximum_mean_discrepancy
from pyro_manifold.models import Flow
from pyro_manifold.plotting import plot_density_2d, plot_training_curve

parser = argparse.ArgumentParser(description="Classic flows tutorial")
parser.add_argument("--smoke", action="store_true", help="a few steps only")
parser.add_argument("--out", default="tutorial_output/classic_flows")
args = parser.parse_args()
out = Path(args.out)
steps = 20 if args.smoke else 2000
n = 500 if args.smoke else 5000

datasets = {"pinwheel": pinwheel, "two_moons": two_moons}

# %% [markdown]
# ## Objective
# A flow writes data as :math:`x = T(u)` with :math:`u \sim \mathcal N(0, I)` and an
# invertible :math:`T = T_L \circ \dots \circ T_1`, so that
#
# .. math::  \log p(x) = \log \mathcal N(T^{-1}(x); 0, I) - \sum_l \log|\det J_{T_l}|.
#
# Training maximises :math:`\sum_n \log p(x_n)`.
#
# ## Model and guide
# `Flow.model` observes the data under a `pyro.plate`; the guide is empty because there
# are no latent sites, so Pyro's `Trace_ELBO` is exactly the negative log-likelihood.
# We compare the three layer families: MAF (one pass to score data), RealNVP affine
# couplings and neural spline couplings.

# %% [markdown]
# ## Training

# %%
results = {}
for data_name, make in datasets.items():
    train = make(n, seed=0).data
    test = make(max(n // 5, 100), seed=1).data
    for kind in ("maf", "realnvp", "spline_coupling"):
        torch.manual_seed(0)
        flow = Flow(
            2,
            kind,
            num_layers=5 if kind != "spline_coupling" else 3,
            hidden_dims=[64, 64] if kind != "maf" else [64],
        )
        history = fit(
            flow.model,
            flow.guide,
            train,
            num_steps=steps,
            batch_size=256,
            lr=2e-3,
            lr_schedule="cosine",
            device="cpu",
        ).history
        with torch.no_grad():
            samples = flow.sample(2000)
            results[f"{data_name}/{kind}"] = {
                "test_log_likelihood": flow.log_prob(test).mean().item(),
                "mmd2": maximum_mean_discrepancy(samples, test).item(),
            }
        plot_density_2d(
            flow.log_prob,
            test,
            out / f"{data_name}_{kind}.png",
            samples=samples,
            title=f"{kind} on {data_name}",
        )
        plot_training_curve(history, out / f"{data_name}_{kind}_training.png")

# %% [markdown]
# ## Results
# Test log-likelihood per point (higher is better) and MMD² between samples and test
# data (lower is better). The figures show the learned density and samples over data.

# %%
print("| data / flow | test log-likelihood | MMD² |")
print("|---|---|---|")
for key, r in results.items():
    print(f"| {key} | {r['test_log_likelihood']:.3f} | {r['mmd2']:.2e} |")
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps(results, indent=1))
