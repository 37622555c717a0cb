"""Peak memory of drawing and scoring 10^4 .. 10^6 points: the CLI's `sample`, model.sample.

Each measurement runs in a fresh process (so peaks do not mix). What is measured is the
resident set (RSS) of that process, the whole of it: Python, torch's libraries, the
model, its tensors and the allocator's caches; no tracemalloc, no torch allocator
statistics. Two readings:

- the command line: the peak RSS of `python -m pyro_manifold sample RUN -n N` (the kernel's
  ``ru_maxrss`` of the finished child, from ``os.wait4``), and beside it the peak of a
  process that only imports the command line (``cli-import``); the difference is what
  sampling adds;
- in-process cases: the process's high-water mark (VmHWM, Linux) after the imports and the
  model (``peak_before_mib``) and after the call (``peak_after_mib``).

Runs: a spline-coupling flow on two_moons (2-d) and a NIF on the sphere (3-d, latent 2),
each trained briefly by `python -m pyro_manifold fit` into a temporary directory (the
weights matter little to memory).

Cases:
  cli-import         python -c "import pyro_manifold.__main__" (the baseline of the CLI rows)
  cli-flow, cli-nif  python -m pyro_manifold sample RUN -n N
  model-flow, model-nif           model.sample(N) (batches of SAMPLE_BATCH draws)
  model-flow-oneshot, model-nif-oneshot   model.sample(N, batch_size=N), one call (what
                                  batching avoids)
  flow-stream        mean_log_likelihood(flow.log_prob, x, batch_size=10_000) (MAF, 8-d)
  flow-oneshot       flow.log_prob(x) on all points at once
  vae-iwae           iwae_log_likelihood(vae, x, num_samples=16) (FlowVAE with IAF, 32-d)

Run:  OMP_NUM_THREADS=1 python benchmarks/streaming_memory.py
Smoke (tests/test_benchmarks.py):  python benchmarks/streaming_memory.py --smoke --out F
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI_CASES = ("cli-import", "cli-flow", "cli-nif")
MODEL_CASES = ("model-flow", "model-flow-oneshot", "model-nif", "model-nif-oneshot")
EVAL_CASES = ("flow-stream", "flow-oneshot", "vae-iwae")
DEFAULT_CASES = (*CLI_CASES, *MODEL_CASES)

CHILD = """
import sys, time, torch
torch.manual_seed(0)
torch.set_num_threads(1)
case, n, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

if case.startswith("model"):
    from pyro_manifold.experiment import _load_run
    from pathlib import Path
    model = _load_run(Path(run))[1]
    with torch.no_grad():  # warm up allocator and kernels on a few points
        model.sample(10)
elif case.startswith("flow"):
    from pyro_manifold.metrics import mean_log_likelihood
    from pyro_manifold.models import Flow
    model = Flow(8, "maf", num_layers=5, hidden_dims=[64]).eval()
    x = torch.randn(n, 8)
    with torch.no_grad():
        model.log_prob(torch.randn(10, 8))
else:
    from pyro_manifold.metrics import iwae_log_likelihood
    from pyro_manifold.models import FlowVAE
    model = FlowVAE(4, data_dim=32, encoder_flow="iaf", hidden_dims=[64]).eval()
    x = torch.randint(0, 2, (n, 32)).float()
before = hwm_mib()
t0 = time.perf_counter()
with torch.no_grad():
    if case.startswith("model"):
        draws = model.sample(n, batch_size=n) if case.endswith("oneshot") else model.sample(n)
        value = draws.mean().item()
    elif case == "flow-stream":
        value = mean_log_likelihood(model.log_prob, x, batch_size=10_000)[0]
    elif case == "flow-oneshot":
        value = model.log_prob(x).mean().item()
    else:
        value = iwae_log_likelihood(model, x, num_samples=16, chunk_size=16,
                                    batch_size=10_000).mean().item()
seconds = time.perf_counter() - t0
after = hwm_mib()
print(before, after, seconds, value)
"""


def _peak_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; its peak RSS in MiB (``ru_maxrss`` of this child alone) and seconds."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode()[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def _train_runs(root: Path, steps: int, env: dict[str, str]) -> dict[str, Path]:
    runs = {"flow": root / "flow_two_moons", "nif": root / "nif_sphere"}
    fits = {
        "flow": ["flow", "--dataset", "two_moons"],
        "nif": ["nif", "--dataset", "sphere", "--latent-dim", "2"],
    }
    for name, args in fits.items():
        cmd = [
            sys.executable,
            "-m",
            "pyro_manifold",
            "fit",
            *args,
            "--steps",
            str(steps),
            "--num-samples",
            "1000",
            "--device",
            "cpu",
            "--run-dir",
            str(runs[name]),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return runs


def _info(argv: list[str]) -> dict:
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "command": " ".join(["python", "benchmarks/streaming_memory.py", *argv]),
        "commit": commit,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": 1,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "measure": "peak RSS of the whole process (ru_maxrss via os.wait4, or VmHWM)",
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument(
        "--cases",
        nargs="+",
        default=list(DEFAULT_CASES),
        choices=[*CLI_CASES, *MODEL_CASES, *EVAL_CASES],
    )
    p.add_argument("--steps", type=int, default=200, help="training steps of the two runs")
    p.add_argument("--smoke", action="store_true", help="N = 200, 2 training steps")
    p.add_argument("--out", default="benchmarks/results/streaming_memory.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.steps = [200], 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    rows = []
    print(f"{'case':<20}{'N':>10}{'peak before':>13}{'peak':>10}{'extra MiB':>11}{'s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        needs_runs = any(c.startswith(("cli-flow", "cli-nif", "model")) for c in args.cases)
        runs = _train_runs(Path(tmp), args.steps, env) if needs_runs else {}
        baseline = None
        if any(c.startswith("cli") for c in args.cases):
            cmd = [sys.executable, "-c", "import pyro_manifold.__main__"]
            baseline, seconds = _peak_of(cmd, env)
            if "cli-import" in args.cases:
                rows.append(
                    dict(
                        case="cli-import",
                        n=0,
                        peak_before_mib=None,
                        peak_after_mib=baseline,
                        extra_mib=0.0,
                        seconds=seconds,
                    )
                )
                print(
                    f"{'cli-import':<20}{0:>10}{'':>13}{baseline:>10.1f}{0.0:>11.1f}"
                    f"{seconds:>8.2f}",
                    flush=True,
                )
        for case in args.cases:
            if case == "cli-import":
                continue
            for n in args.sizes:
                if case.startswith("cli"):
                    run = runs[case.split("-")[1]]
                    cmd = [sys.executable, "-m", "pyro_manifold", "sample", str(run), "-n", str(n)]
                    after, seconds = _peak_of(cmd, env)
                    before, value = baseline, None
                    samples = Path(run) / "samples.pt"
                    import torch

                    value = torch.load(samples, weights_only=True).mean().item()
                else:
                    run = runs.get(case.split("-")[1], "")
                    res = subprocess.run(
                        [sys.executable, "-c", CHILD, case, str(n), str(run)],
                        capture_output=True,
                        text=True,
                        env=env,
                        cwd=ROOT,
                    )
                    if res.returncode != 0:
                        raise SystemExit(f"{case} N={n} failed:\n{res.stderr[-3000:]}")
                    before, after, seconds, value = map(float, res.stdout.split())
                row = dict(
                    case=case,
                    n=n,
                    peak_before_mib=before,
                    peak_after_mib=after,
                    extra_mib=after - before,
                    seconds=seconds,
                    mean_value=value,
                )
                rows.append(row)
                print(
                    f"{case:<20}{n:>10}{before:>13.1f}{after:>10.1f}{after - before:>11.1f}"
                    f"{seconds:>8.2f}",
                    flush=True,
                )
    result = {"info": _info(argv), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
