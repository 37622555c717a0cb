"""Seconds per epoch, interleaved: a hand-written loop, our fit, stock Pyro SVI (and zuko).

For each job the same modules (built from the same seed) and mini-batches of the same
size (drawn on the device from one seeded shuffle) are trained by each runner:

  torch  a hand-written loop of the same math: the ELBO written out with
         torch.distributions, validation off (``pyro.validation_enabled(False)``, which
         also switches off torch's argument checks and the package's value checks, each
         a host read);
  ours   pyro_manifold.infer.fit on its fast path (fast ELBO, validation off in the
         step, one optimiser) with sync_every = log_every = the round's steps (the
         finiteness flags read once per round); each round is one whole ``fit`` call, so
         fit's own per-call set-up (parameter discovery, the first evaluation with Pyro's
         validation on, a fresh optimiser) is inside the time, as a user sees it;
  pyro   stock pyro.infer.SVI with Trace_ELBO/TraceEnum_ELBO and Pyro's validation as
         shipped (on), a loop of svi.step;
  graph  on CUDA only: ours with fit(cuda_graph=True), the step captured as a CUDA graph
         after fit's eager warm-up steps and replayed (the capture is inside each round's
         time); a job whose step cannot be captured runs eagerly and says why;
  zuko   MAF jobs only, where zuko is installed: zuko.flows.MAF of the same size
         (5 transforms, one hidden layer, the same parameter count) in the hand-written loop.

Every runner uses the same optimiser implementation: Adam (lr 1e-3; 1e-4 for the 784-d
MAF, whose steps diverge at 1e-3), the fused kernel
(``torch.optim.Adam(fused=True)`` in the loops, ``pyro.optim.Adam({"fused": True})`` for
stock Pyro, which builds one such optimiser per parameter as Pyro does, and fit's fused
Adam, which sync_every > 1 selects on every device).

The runners alternate: one warm-up round (not recorded) then ``--rounds`` rounds, each
running every runner for the same number of steps, in an order rotated every round, so
that a slow patch of a shared machine lands on all of them. Steps per round are
calibrated after the warm-up so that a round of the hand-written loop takes about
``--round-seconds``, and are at least 10, so that fit's per-call set-up stays a small
part of a round (``--steps`` fixes them). CUDA is synchronised at both ends of each
timed round. Every time is seconds per step times the steps in one epoch of ``--epoch-size`` points;
ratios are taken within each round (paired) and reported as median [min, max]. On CUDA
the peak of extra device memory during a runner's rounds is recorded too.

``--setup-rounds K`` adds, after the rounds, K measures of fit's per-call set-up
(``2 T(n) - T(2n)`` from one ``fit`` call of the round's n steps and one of 2n, on the
warm module): ``ours_setup_seconds`` and its median's share of a round of ours.

Targets (issue 23): ours/torch <= 1.05 (median) on every job; pyro/ours >= 1.2 at batch
<= 128 on the CPU, >= 3 at batch 128 on a GPU.

Run:  PYRO_MANIFOLD_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/speed.py --device cpu
      python benchmarks/speed.py --device cuda          (on a GPU machine)
      python benchmarks/speed.py --device cpu --smoke   (tiny sizes: a check that it runs)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

from pyro_manifold.datasets import dequantize, dequantize_logit, load_dataset, load_mnist
from pyro_manifold.infer import fit
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQFlow,
)

RUNNERS = ("torch", "ours", "graph", "pyro", "zuko")


# -- data ---------------------------------------------------------------------------------
def mnist_pixels(n: int, side: int = 28) -> torch.Tensor:
    """MNIST pixels (uint8, (n, side**2)) when PYRO_MANIFOLD_DATA has them, else random.

    ``side < 28`` average-pools the images (the smoke mode's small data).
    """
    try:
        x = load_mnist(os.environ.get("PYRO_MANIFOLD_DATA"), "train").data[:n]
    except FileNotFoundError as e:
        print(f"MNIST not found ({e}); timing on random images of the same size")
        x = (torch.rand(n, 28, 28) * 256).to(torch.uint8)
    x = x.reshape(len(x), 1, 28, 28).float()
    if side != 28:
        x = F.adaptive_avg_pool2d(x, side).round()
    return x.reshape(len(x), -1).to(torch.uint8)


def mnist_binary(n: int, side: int, device: torch.device) -> torch.Tensor:
    """Binarized MNIST (or random binary images) on the device."""
    return (mnist_pixels(n, side).float() / 255 > 0.5).float().to(device)


def mnist_unit(n: int, side: int, device: torch.device) -> torch.Tensor:
    """Dequantized MNIST in (0, 1) on the device (a density flow's data, well scaled)."""
    return dequantize(mnist_pixels(n, side), torch.Generator().manual_seed(0)).to(device)


def mnist_logit(n: int, side: int, device: torch.device) -> torch.Tensor:
    """Dequantized logit-space MNIST (the flows' protocol) on the device."""
    return dequantize_logit(mnist_pixels(n, side), 0)[0].to(device)


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


# -- the jobs -----------------------------------------------------------------------------
@dataclass
class Job:
    """One model on one data set: how to build it, its hand-written loss and its Pyro ELBO."""

    build: Callable[[], torch.nn.Module]
    data: torch.Tensor
    batch: int
    loss: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    elbo: pyro.infer.ELBO
    zuko: Callable[[], torch.nn.Module] | None = None
    lr: float = 1e-3


def vq_flow(data: torch.Tensor, latent: int, hidden: int, ae_hidden: int) -> VQFlow:
    """VQ-RealNVP in stage 2 (the chart flows; the atlas as initialised)."""
    m = VQFlow(data.shape[1], num_charts=10, latent_dim=latent, flow="realnvp", num_layers=3,
               hidden_dims=[hidden], autoencoder_hidden_dims=[ae_hidden])  # fmt: skip
    m.to(data.device).set_stage("flows", data[:5000])
    return m


def zuko_maf(features: int, hidden: int) -> torch.nn.Module:
    """zuko's MAF with our MAF(5)'s size, as a module whose log_prob the loop can call."""
    import zuko

    class ZukoMAF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.flow = zuko.flows.MAF(features=features, transforms=5, hidden_features=[hidden])

        def log_prob(self, x):
            return self.flow().log_prob(x)

    return ZukoMAF()


def jobs(device: torch.device, smoke: bool = False) -> dict[str, Job]:
    """The jobs of the speed table; ``smoke``: 7x7 images, tiny widths, few points."""
    # points, image side, MADE width, VAE width, VAE latent, NIF latent, VQ chart dimension
    n, side, wide, vae_h, z, nif_z, vq_z = (
        (256, 7, 64, 16, 8, 4, 4) if smoke else (60_000, 28, 1024, 400, 50, 64, 64)
    )
    d = side * side
    binary, logit = mnist_binary(n, side, device), mnist_logit(n, side, device)
    unit = mnist_unit(n, side, device)
    pinwheel = load_dataset("pinwheel", 256 if smoke else 2560).data.to(device)
    enum = TraceEnum_ELBO(max_plate_nesting=1)
    b = lambda size: min(size, n // 2)  # noqa: E731 (smoke data are small)
    vae = lambda flow: lambda: FlowVAE(z, d, flow, hidden_dims=[vae_h])  # noqa: E731
    return {
        "VAE gaussian b128": Job(vae(None), binary, b(128), vae_loss, Trace_ELBO()),
        "VAE gaussian b1024": Job(vae(None), binary, b(1024), vae_loss, Trace_ELBO()),
        "VAE iaf b1024": Job(vae("iaf"), binary, b(1024), vae_loss, Trace_ELBO()),
        "VAE pcp b1024": Job(vae("pcp"), binary, b(1024), vae_loss, Trace_ELBO()),
        "MAF(5) 784-d b256": Job(lambda: Flow(d, "maf", num_layers=5, hidden_dims=[wide]),
                                 unit, b(256), flow_loss, Trace_ELBO(),
                                 zuko=lambda: zuko_maf(d, wide), lr=1e-4),
        "NIF 784->64 b256": Job(lambda: NoisyInjectiveFlow(d, nif_z, top_flow="maf",
                                                           top_layers=2, top_hidden_dims=[wide]),
                                binary, b(256), nif_loss, Trace_ELBO()),
        "VMoNF K=1 b128": Job(lambda: VariationalMixtureOfFlows(2, 1, "realnvp"), pinwheel,
                              128, vmonf_loss, enum),
        "VMoNF K=10 b128": Job(lambda: VariationalMixtureOfFlows(2, 10, "realnvp"), pinwheel,
                               128, vmonf_loss, enum),
        "VQ-Flow 784->64 b256": Job(lambda: vq_flow(logit, vq_z, wide // 4, wide // 2),
                                    logit, b(256), vq_flow_loss, Trace_ELBO()),
    }  # fmt: skip


# -- the runners: each is prepared once per job, then run(steps) trains that many steps ----
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(data: torch.Tensor, batch: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    while True:
        perm = torch.randperm(data.shape[0], generator=g, device=device)
        for i in range(0, data.shape[0] - batch + 1, batch):
            yield data[perm[i : i + batch]]


def loop_runner(module, data, batch, loss_fn, device, lr):
    """The hand-written loop: loss, backward, one fused Adam over every parameter."""
    opt = torch.optim.Adam(module.parameters(), lr=lr, fused=True)
    it = batches(data, batch, device)

    def run(steps: int) -> None:
        with pyro.validation_enabled(False):  # torch's and the package's value checks off
            for _ in range(steps):
                loss = loss_fn(module, next(it))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    return run


def ours_runner(module, data, batch, elbo, device, lr, cuda_graph=False):
    """One whole ``fit`` call per round (set-up included), continuing the same module.

    With ``cuda_graph`` each call warms up, captures and replays (capture included in
    the time); ``run.notes`` collects fit's reasons for running a step eagerly instead.
    """
    calls = iter(range(1_000_000))

    def run(steps: int) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            fit(module.model, module.guide, data, loss=elbo, num_steps=steps,
                batch_size=batch, device=device, progress=False, log_every=steps,
                sync_every=max(steps, 2), lr=lr, seed=next(calls),
                cuda_graph=cuda_graph)  # fmt: skip
        run.notes.update(str(w.message) for w in caught if "cuda_graph" in str(w.message))

    run.notes = set()
    return run


def pyro_runner(module, data, batch, elbo, device, lr):
    """Stock Pyro: SVI with pyro.optim.Adam (fused kernel), validation as shipped."""
    pyro.clear_param_store()
    svi = SVI(module.model, module.guide, pyro.optim.Adam({"lr": lr, "fused": True}), elbo)
    it = batches(data, batch, device)

    def run(steps: int) -> None:
        module.train()
        for _ in range(steps):
            svi.step(next(it))

    return run


def prepare(runner: str, job: Job, device: torch.device):
    """Build the job's module for ``runner`` (seed 0) and return its ``run(steps)``."""
    torch.manual_seed(0)
    if runner == "zuko":
        return loop_runner(job.zuko().to(device), job.data, job.batch, flow_loss, device, job.lr)
    module = job.build().to(device)
    if runner == "torch":
        return loop_runner(module, job.data, job.batch, job.loss, device, job.lr)
    if runner == "pyro":
        return pyro_runner(module, job.data, job.batch, job.elbo, device, job.lr)
    graphed = runner == "graph"
    return ours_runner(module, job.data, job.batch, job.elbo, device, job.lr, graphed)


def timed(run: Callable[[int], None], steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds for ``run(steps)`` and the peak extra device memory (MiB; 0 off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    sync(device)
    t0 = time.perf_counter()
    run(steps)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (
        (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else 0.0
    )
    return seconds, peak


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def zuko_available() -> bool:
    try:
        import zuko  # noqa: F401
    except ImportError:
        return False
    return True


def setup_seconds(run: Callable[[int], None], steps: int, device: torch.device) -> float:
    r"""fit's per-call set-up: :math:`2\,T(n) - T(2n)` from one call of n steps and one of 2n.

    ``run`` is ``ours_runner``'s (one whole ``fit`` call per run); a call of n steps costs
    the set-up :math:`S` plus n steps, so :math:`2T(n) - T(2n) = S`.
    """
    return 2 * timed(run, steps, device)[0] - timed(run, 2 * steps, device)[0]


def time_job(job: Job, device: torch.device, rounds: int, steps: int | None,
             round_seconds: float, epoch_size: int, runners=RUNNERS,
             setup_rounds: int = 0) -> dict:  # fmt: skip
    """Interleaved rounds of ``runners`` on one job; seconds per epoch and paired ratios.

    ``setup_rounds``: then that many measures of fit's per-call fixed cost
    (:func:`setup_seconds`), with the ``ours`` runner.
    """
    names = [
        r
        for r in runners
        if (r != "zuko" or (job.zuko is not None and zuko_available()))
        and (r != "graph" or device.type == "cuda")
    ]
    runs = {r: prepare(r, job, device) for r in names}
    warm = {r: timed(runs[r], 2, device) for r in names}  # warm-up (not recorded)
    if steps is None:  # calibrate on the hand-written loop, warm
        per_step = timed(runs["torch"], 5, device)[0] / 5
        steps = int(min(1000, max(10, round_seconds / max(per_step, 1e-6))))
    seconds = {r: [] for r in names}
    peaks = {r: [warm[r][1]] for r in names}
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        for r in order:
            s, peak = timed(runs[r], steps, device)
            seconds[r].append(s / steps * math.ceil(epoch_size / job.batch))
            peaks[r].append(peak)
    row = {"steps_per_round": steps, "batch": job.batch}
    for r in names:
        row[r] = spread(seconds[r]) | {"rounds": seconds[r]}
        if device.type == "cuda":
            row[r]["peak_extra_mib"] = max(peaks[r])
    if setup_rounds and "ours" in runs:  # after the rounds, so that they are timed as before
        setups = [setup_seconds(runs["ours"], steps, device) for _ in range(setup_rounds)]
        row["ours_setup_seconds"] = spread(setups) | {"rounds": setups}
        ours_round = row["ours"]["median"] / math.ceil(epoch_size / job.batch) * steps
        row["ours_setup_share_of_round"] = statistics.median(setups) / ours_round
    if "graph" in runs:  # why fit ran the step eagerly, if it did
        row["graph_notes"] = sorted(runs["graph"].notes)
    pairs = {"ours_over_torch": ("ours", "torch"), "pyro_over_ours": ("pyro", "ours"),
             "zuko_over_ours": ("zuko", "ours"), "graph_over_torch": ("graph", "torch"),
             "pyro_over_graph": ("pyro", "graph"),
             "zuko_over_graph": ("zuko", "graph")}  # fmt: skip
    for key, (a, b) in pairs.items():
        if a in seconds and b in seconds:
            row[key] = spread([x / y for x, y in zip(seconds[a], seconds[b], strict=True)])
    return row


def describe(device: torch.device) -> dict:
    """The device, the versions, the thread count and the commit the figures came from."""
    packed = os.environ.get("PYRO_MANIFOLD_COMMIT")  # a git archive of it (device_check.sh)
    if packed:
        commit, dirty = packed, False
    else:
        try:
            git = ["git", "-C", str(Path(__file__).resolve().parent)]
            commit = subprocess.run(
                [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            status = [*git, "status", "--porcelain", "--untracked-files=no"]
            dirty = bool(subprocess.run(status, capture_output=True, text=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            commit, dirty = "unknown", None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "pyro": pyro.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "commit": commit, "dirty": dirty}  # fmt: skip


def fmt(s: dict) -> str:
    return f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"


RATIOS = ("ours_over_torch", "pyro_over_ours", "graph_over_torch", "pyro_over_graph")


def print_row(job: str, row: dict) -> None:
    cols = [f"{row[r]['median']:>8.3f}" if r in row else f"{'-':>8}" for r in RUNNERS]
    ratios = [f"{fmt(row[k]) if k in row else '-':<22}" for k in RATIOS]
    print(f"{job:<21}{''.join(cols)}  {''.join(ratios)}", flush=True)
    for note in row.get("graph_notes", ()):
        print(f"{'':<21}graph: {note}")


def print_header() -> None:
    names = "".join(f"{r:>8}" for r in RUNNERS)
    ratios = "".join(f"{k.replace('_over_', '/') + ' [min, max]':<22}" for k in RATIOS)
    print(f"{'job (s/epoch, median)':<21}{names}  {ratios}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: calibrated)")
    p.add_argument(
        "--round-seconds",
        type=float,
        default=None,
        help="target seconds of one runner's round (default 3 on CPU, 1 on CUDA)",
    )
    p.add_argument("--epoch-size", type=int, default=60_000)
    p.add_argument(
        "--setup-rounds",
        type=int,
        default=0,
        help="after the rounds, this many measures of fit's per-call set-up (2 T(n) - T(2n))",
    )
    p.add_argument("--jobs", nargs="+", default=None, help="a subset of the job names")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 rounds of 2 steps")
    p.add_argument("--out", default=None, help="default benchmarks/results/speed_DEVICE.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.smoke:
        args.rounds, args.steps = 2, 2
    round_seconds = args.round_seconds or (1.0 if device.type == "cuda" else 3.0)
    table = jobs(device, smoke=args.smoke)
    unknown = sorted(set(args.jobs or ()) - set(table))
    if unknown:
        p.error(f"--jobs: unknown {unknown}; expected names from {sorted(table)}")
    info = describe(device)
    print(json.dumps(info))
    print_header()
    rows = {}
    for name, job in table.items():
        if args.jobs and name not in args.jobs:
            continue
        rows[name] = time_job(job, device, args.rounds, args.steps, round_seconds,
                              args.epoch_size, setup_rounds=args.setup_rounds)  # fmt: skip
        print_row(name, rows[name])
        if "ours_setup_seconds" in rows[name]:
            setup = rows[name]["ours_setup_seconds"]
            print(f"{'':<21}fit's set-up per call: {fmt(setup)} s, "
                  f"{rows[name]['ours_setup_share_of_round']:.1%} of a round of ours")  # fmt: skip
    result = {"info": info, "args": vars(args), "rows": rows}
    out = Path(args.out or f"benchmarks/results/speed_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
