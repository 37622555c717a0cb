"""Float32 training of every model on toy data for 5,000 steps at fit's default lr.

Issue 8, item 6: each run must finish without a non-finite loss or gradient (``fit``
raises NonFiniteLossError on the first one, so finishing proves it), with finite
parameters and a finite held-out log-likelihood at the end. One table, one JSON.

Run:  OMP_NUM_THREADS=1 python benchmarks/robustness.py            (about 15 min on CPU)
      OMP_NUM_THREADS=1 python benchmarks/robustness.py --smoke  (seconds: 10 steps, 500 points,
      written to runs/smoke/robustness.json unless --out)
"""

import argparse
import json
import time
from pathlib import Path

import torch
from provenance import provenance  # benchmarks/ is the script's directory
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_manifold.datasets import load_dataset
from pyro_manifold.infer import fit
from pyro_manifold.metrics import iwae_log_likelihood
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQFlow,
)


def data(name, n, n_test=1000):
    return load_dataset(name, n, seed=0).data, load_dataset(name, n_test, split="test").data


def vae_log_prob(vae):
    return lambda x: iwae_log_likelihood(vae, x, num_samples=64)


# name -> (builder, data set, ELBO); builders return (model, log_prob, stages) where a
# stage is a callable run before its share of the steps (VQFlow's atlas, then flows)
def runs():
    def flow(kind):
        return lambda x: (lambda f: (f, f.log_prob, None))(Flow(x.shape[1], kind))

    def nif(x):
        m = NoisyInjectiveFlow(x.shape[1], 2, top_flow="realnvp")
        return m, m.log_prob, None

    def vmonf(x):
        m = VariationalMixtureOfFlows(x.shape[1], 5, "realnvp")
        return m, m.log_prob, None

    def vae(kind):
        def build(x):
            m = FlowVAE(2, x.shape[1], kind, hidden_dims=[64, 64], likelihood="gaussian")
            return m, vae_log_prob(m), None

        return build

    def vqflow(x):
        m = VQFlow(x.shape[1], num_charts=8, flow="realnvp", num_layers=4, hidden_dims=[32])
        return m, m.log_prob, [lambda x: None, lambda x: m.set_stage("flows", x)]

    enum = TraceEnum_ELBO(max_plate_nesting=1)
    return {
        "Flow realnvp": (flow("realnvp"), "pinwheel", Trace_ELBO()),
        "Flow maf": (flow("maf"), "checkerboard", Trace_ELBO()),
        "Flow spline": (flow("spline_coupling"), "two_moons", Trace_ELBO()),
        "NoisyInjectiveFlow": (nif, "sphere", Trace_ELBO()),
        "VariationalMixtureOfFlows K=5": (vmonf, "pinwheel", enum),
        "FlowVAE gaussian": (vae(None), "two_moons", Trace_ELBO()),
        "FlowVAE iaf": (vae("iaf"), "two_moons", Trace_ELBO()),
        "FlowVAE pcp": (vae("pcp"), "two_moons", Trace_ELBO()),
        "VQFlow": (vqflow, "swiss_roll", Trace_ELBO()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--models", nargs="+", default=None, help="a subset of the names")
    p.add_argument(
        "--out",
        default=None,
        help="default benchmarks/results/robustness.json (runs/smoke/... with --smoke)",
    )
    p.add_argument("--smoke", action="store_true", help="10 steps on 500 points per model")
    args = p.parse_args()
    folder = "runs/smoke" if args.smoke else "benchmarks/results"
    args.out = args.out or f"{folder}/robustness.json"
    n_train, n_test = (500, 100) if args.smoke else (5000, 1000)
    if args.smoke:
        args.steps = min(args.steps, 10)
    torch.set_default_dtype(torch.float32)
    rows = {}
    print(f"{'model':<32}{'data':<14}{'steps':>7}{'final loss':>12}{'test LL':>10}{'s':>7}")
    for name, (build, dataset, loss) in runs().items():
        if args.models and name not in args.models:
            continue
        torch.manual_seed(0)
        x, test = data(dataset, n_train, n_test)
        model, log_prob, stages = build(x)
        t0 = time.perf_counter()
        stages = stages or [lambda x: None]
        history = {"loss": []}
        for stage in stages:
            stage(x)
            h = fit(model.model, model.guide, x, loss=loss, device="cpu",
                    num_steps=args.steps, progress=False, log_every=50).history  # fmt: skip
            history["loss"] += h["loss"]
        seconds = time.perf_counter() - t0
        params_finite = all(bool(torch.isfinite(q).all()) for q in model.parameters())
        with torch.no_grad():
            ll = log_prob(test.float()).mean().item()
        rows[name] = dict(
            data=dataset,
            steps=args.steps * len(stages),
            final_loss=history["loss"][-1],
            all_losses_finite=all(map(torch.isfinite, map(torch.tensor, history["loss"]))),
            parameters_finite=params_finite,
            test_log_likelihood=ll,
            seconds=seconds,
        )
        print(f"{name:<32}{dataset:<14}{args.steps * len(stages):>7}"
              f"{history['loss'][-1]:>12.4f}{ll:>10.3f}{seconds:>7.0f}", flush=True)  # fmt: skip
        if not (params_finite and torch.isfinite(torch.tensor(ll))):
            raise SystemExit(f"{name}: non-finite parameters or test log-likelihood")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"info": provenance(), "dtype": "float32", "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
