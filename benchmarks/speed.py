"""Seconds per epoch: hand-written PyTorch loop vs our fit (fast path) vs stock Pyro SVI.

For each job the same modules and the same mini-batches (drawn on the device from one
shuffled order) are trained three ways:

  torch  a hand-written loop of the same math: the ELBO written out with
         torch.distributions (validation off), one torch.optim.Adam (fused on CUDA);
  ours   pyro_manifold.infer.fit with its defaults (fast ELBO, validation off in the
         step, one optimiser) and sync_every equal to the logging interval (fused Adam
         that skips a non-finite step on the device; flags and losses read back only
         at the logging steps);
  pyro   stock pyro.infer.SVI with pyro.optim.Adam and Trace_ELBO/TraceEnum_ELBO,
         Pyro's validation as shipped (on), svi.step per batch;
  zuko   for the MAF job, when zuko is installed: zuko.flows.MAF of the same size
         (5 transforms, one hidden layer of 1024, the same parameter count) trained by
         the hand-written loop.

Each runner is timed over --steps steps after --warmup steps (CUDA synchronised at both
ends); the figure is seconds per step times the steps in one epoch of --epoch-size
points. Ratios: ours/torch (target <= 1.15 on GPU) and pyro/ours (target >= 2.5 at
batch 128 on GPU). Prints one table and writes JSON.

Run:  PYRO_MANIFOLD_DATA=../shared/data python benchmarks/speed.py            (GPU)
      OMP_NUM_THREADS=1 python benchmarks/speed.py --device cpu --steps 30    (CPU)
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

from pyro_manifold.datasets import dequantize, load_dataset, load_mnist, logit_transform
from pyro_manifold.infer import fit
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQFlow,
)


def mnist_pixels(n):
    """MNIST pixels (uint8, (n, 784)) when PYRO_MANIFOLD_DATA has them, else random (said so)."""
    try:
        x = load_mnist(os.environ.get("PYRO_MANIFOLD_DATA"), "train").data[:n]
    except FileNotFoundError as e:
        print(f"MNIST not found ({e}); timing on random images of the same size")
        return (torch.rand(n, 784) * 256).to(torch.uint8)
    return x.reshape(len(x), -1)


def mnist_like(n, device):
    """Binarized MNIST (or random binary images) on the device."""
    return (mnist_pixels(n).float() / 255 > 0.5).float().to(device)


def mnist_logit(n, device):
    """Dequantized logit-space MNIST (the flows' protocol) on the device."""
    x = dequantize(mnist_pixels(n), torch.Generator().manual_seed(0))
    return logit_transform(x)[0].to(device)


def vq_flow(data):
    """VQ-RealNVP on MNIST in stage 2 (the chart flows; the atlas as initialised)."""
    m = VQFlow(784, num_charts=10, latent_dim=64, flow="realnvp", num_layers=3,
               hidden_dims=[256], autoencoder_hidden_dims=[512])  # fmt: skip
    m.to(data.device).set_stage("flows", data[:5000])
    return m


# -- the hand-written losses (the same math as the Pyro programs) -------------------------
def vae_loss(vae, x):
    q = vae.posterior(x)
    z = q.rsample()
    log_q = q.log_prob(z)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = -F.binary_cross_entropy_with_logits(vae.decode(z), x, reduction="none").sum(-1)
    return -(log_prior + log_lik - log_q).sum() / x.shape[0]


def flow_loss(flow, x):
    return -flow.log_prob(x).sum() / x.shape[0]


def vq_flow_loss(m, x):
    distribution = m.distribution()
    error = (x - distribution.reconstruct(x)).pow(2).sum(-1)
    return -(distribution.log_prob(x) - m.reconstruction_weight * error).sum() / x.shape[0]


def vmonf_loss(m, x):
    q = m.responsibilities(x)  # (N, K), enumerated exactly
    log_joint = m.mixture_log_weights() + m.component_log_prob(x)
    return -(q * (log_joint - torch.log(q.clamp_min(1e-30)))).sum() / x.shape[0]


def nif_loss(m, x):
    y, ladj = x, 0.0
    for t in reversed(m.top_layers):
        prev = t.inv(y)
        ladj = ladj + t.log_abs_det_jacobian(prev, y)
        y = prev
    q = m.nif.stochastic_inverse(y)
    z = q.rsample()
    elbo = m.prior().log_prob(z) + m.nif.likelihood(z).log_prob(y) - ladj - q.log_prob(z)
    return -elbo.sum() / x.shape[0]


def jobs(device):
    hidden = [1024]  # MADE needs widths >= 784
    mnist = mnist_like(60_000, device)
    logit = mnist_logit(60_000, device)
    pinwheel = load_dataset("pinwheel", 2560).data.to(device)
    enum = TraceEnum_ELBO(max_plate_nesting=1)
    return {
        "VAE gaussian b128": (lambda: FlowVAE(50, 784, None, hidden_dims=[400]), mnist, 128,
                              vae_loss, Trace_ELBO()),
        "VAE gaussian b1024": (lambda: FlowVAE(50, 784, None, hidden_dims=[400]), mnist, 1024,
                               vae_loss, Trace_ELBO()),
        "VAE iaf b1024": (lambda: FlowVAE(50, 784, "iaf", hidden_dims=[400]), mnist, 1024,
                          vae_loss, Trace_ELBO()),
        "VAE pcp b1024": (lambda: FlowVAE(50, 784, "pcp", hidden_dims=[400]), mnist, 1024,
                          vae_loss, Trace_ELBO()),
        "MAF(5) 784-d b256": (lambda: Flow(784, "maf", num_layers=5, hidden_dims=hidden),
                              mnist, 256, flow_loss, Trace_ELBO()),
        "NIF 784->64 b256": (lambda: NoisyInjectiveFlow(784, 64, top_flow="maf", top_layers=2,
                                                        top_hidden_dims=hidden),
                             mnist, 256, nif_loss, Trace_ELBO()),
        "VMoNF K=1 b128": (lambda: VariationalMixtureOfFlows(2, 1, "realnvp"), pinwheel, 128,
                           vmonf_loss, enum),
        "VMoNF K=10 b128": (lambda: VariationalMixtureOfFlows(2, 10, "realnvp"), pinwheel, 128,
                            vmonf_loss, enum),
        "VQ-Flow 784->64 b256": (lambda: vq_flow(logit), logit, 256, vq_flow_loss, Trace_ELBO()),
    }  # fmt: skip


def zuko_maf():
    """zuko's MAF with our MAF(5)'s size, as a module whose log_prob the loop can call."""
    import zuko

    class ZukoMAF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.flow = zuko.flows.MAF(features=784, transforms=5, hidden_features=[1024])

        def log_prob(self, x):
            return self.flow().log_prob(x)

    return ZukoMAF()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(data, batch, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    while True:
        perm = torch.randperm(data.shape[0], generator=g, device=device)
        for i in range(0, data.shape[0] - batch + 1, batch):
            yield data[perm[i : i + batch]]


def time_torch(module, data, batch, loss_fn, device, warmup, steps):
    params = list(module.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, **({"fused": True} if device.type == "cuda" else {}))
    it = batches(data, batch, device)
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            loss = loss_fn(module, next(it))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
    finally:
        torch.distributions.Distribution.set_default_validate_args(True)
    return (time.perf_counter() - t0) / steps


def time_ours(module, data, batch, loss, device, warmup, steps):
    times = {}
    # fit's history records wall time at each log step: time the steps after the warm-up
    log_every = steps if warmup % steps == 0 else math.gcd(warmup, steps)
    result = fit(module.model, module.guide, data, loss=loss, num_steps=warmup + steps,
                 batch_size=batch, device=device, progress=False, log_every=log_every,
                 lr=1e-3, sync_every=log_every)  # fmt: skip
    for s, t in zip(result.history["step"], result.history["time"], strict=True):
        times[s] = t
    return (times[warmup + steps] - times[warmup]) / steps


def time_pyro(module, data, batch, loss, device, warmup, steps):
    pyro.clear_param_store()
    svi = SVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    it = batches(data, batch, device)
    module.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        svi.step(next(it))
    sync(device)
    return (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--epoch-size", type=int, default=60_000)
    p.add_argument("--jobs", nargs="+", default=None, help="a subset of the job names")
    p.add_argument("--out", default=None, help="default benchmarks/results/speed_DEVICE.json")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = {}
    print(f"device: {name}, torch {torch.__version__}, pyro {pyro.__version__}")
    print(f"{'job':<22}{'torch s/ep':>11}{'ours s/ep':>11}{'pyro s/ep':>11}"
          f"{'ours/torch':>11}{'pyro/ours':>10}")  # fmt: skip
    for job, (build, data, batch, loss_fn, elbo) in jobs(device).items():
        if args.jobs and job not in args.jobs:
            continue
        per_epoch = math.ceil(args.epoch_size / batch)
        row = {}
        for runner, fn in (("torch", time_torch), ("ours", time_ours), ("pyro", time_pyro)):
            torch.manual_seed(0)
            module = build().to(device)
            arg = loss_fn if runner == "torch" else elbo
            row[runner] = fn(module, data, batch, arg, device, args.warmup, args.steps) * per_epoch
        row["ours_over_torch"] = row["ours"] / row["torch"]
        row["pyro_over_ours"] = row["pyro"] / row["ours"]
        if job.startswith("MAF"):
            try:
                torch.manual_seed(0)
                zuko = zuko_maf().to(device)
            except ImportError:
                print("zuko is not installed: no zuko column (pip install zuko)")
                zuko = None
            if zuko is not None:
                seconds = time_torch(zuko, data, batch, flow_loss, device, args.warmup, args.steps)
                row["zuko"] = seconds * per_epoch
                row["zuko_over_ours"] = row["zuko"] / row["ours"]
        rows[job] = row
        print(
            f"{job:<22}{row['torch']:>11.3f}{row['ours']:>11.3f}{row['pyro']:>11.3f}"
            f"{row['ours_over_torch']:>11.2f}{row['pyro_over_ours']:>10.2f}"
            + (f"   zuko {row['zuko']:.3f} s/ep" if "zuko" in row else ""),
            flush=True,
        )
    out = Path(args.out or f"benchmarks/results/speed_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
