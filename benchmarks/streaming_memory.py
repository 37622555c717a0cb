"""Peak memory of scoring 10^4 .. 10^6 points: streamed metrics against one-shot log_prob.

Each measurement runs in a fresh process (so peaks do not mix) and reads the process's
resident-set high-water mark (VmHWM, Linux) before and after the evaluation; the extra
memory is the difference. The data themselves are allocated before the first reading.

Cases:
  flow-stream   mean_log_likelihood(flow.log_prob, x, batch_size=10_000) (MAF, 8-d)
  flow-oneshot  flow.log_prob(x) on all points at once (what streaming avoids)
  vae-iwae      iwae_log_likelihood(vae, x, num_samples=16) (FlowVAE with IAF, 32-d binary)
  sample-batch  sample_in_batches(flow.sample, N) (the CLI's `sample -n N`; the N draws
                themselves, N x 8 floats, are part of the peak)
  sample-oneshot flow.sample(N) in one call (what batching avoids)

Run:  OMP_NUM_THREADS=1 python benchmarks/streaming_memory.py
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, time, torch
torch.manual_seed(0)
torch.set_num_threads(1)
case, n = sys.argv[1], int(sys.argv[2])

def hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

if case.startswith(("flow", "sample")):
    from pyro_manifold.metrics import mean_log_likelihood, sample_in_batches
    from pyro_manifold.models import Flow
    model = Flow(8, "maf", num_layers=5, hidden_dims=[64]).eval()
    x = torch.randn(n, 8)
else:
    from pyro_manifold.metrics import iwae_log_likelihood
    from pyro_manifold.models import FlowVAE
    model = FlowVAE(4, data_dim=32, encoder_flow="iaf", hidden_dims=[64]).eval()
    x = torch.randint(0, 2, (n, 32)).float()
with torch.no_grad():  # warm up allocator and kernels on a few points
    model.log_prob(torch.randn(10, 8)) if case.startswith(("flow", "sample")) else None
before = hwm_mib()
t0 = time.perf_counter()
with torch.no_grad():
    if case == "flow-stream":
        value = mean_log_likelihood(model.log_prob, x, batch_size=10_000)[0]
    elif case == "flow-oneshot":
        value = model.log_prob(x).mean().item()
    elif case == "sample-batch":
        value = sample_in_batches(model.sample, n).mean().item()
    elif case == "sample-oneshot":
        value = model.sample(n).mean().item()
    else:
        value = iwae_log_likelihood(model, x, num_samples=16, chunk_size=16,
                                    batch_size=10_000).mean().item()
seconds = time.perf_counter() - t0
after = hwm_mib()
print(before, after, seconds, value)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument(
        "--cases",
        nargs="+",
        default=["flow-stream", "flow-oneshot", "vae-iwae", "sample-batch", "sample-oneshot"],
    )
    p.add_argument("--out", default="benchmarks/results/streaming_memory.json")
    args = p.parse_args()
    rows = []
    print(f"{'case':<14}{'N':>10}{'peak before':>14}{'peak after':>12}{'extra MiB':>11}{'s':>8}")
    for case in args.cases:
        for n in args.sizes:
            t = time.perf_counter()
            res = subprocess.run(
                [sys.executable, "-c", CHILD, case, str(n)], capture_output=True, text=True
            )
            if res.returncode != 0:
                raise SystemExit(f"{case} N={n} failed:\n{res.stderr}")
            before, after, seconds, value = map(float, res.stdout.split())
            row = dict(
                case=case,
                n=n,
                peak_before_mib=before,
                peak_after_mib=after,
                extra_mib=after - before,
                seconds=seconds,
                mean_value=value,
                process_seconds=time.perf_counter() - t,
            )
            rows.append(row)
            print(
                f"{case:<14}{n:>10}{before:>14.1f}{after:>12.1f}{after - before:>11.1f}"
                f"{seconds:>8.2f}",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
