"""One command that checks and times the package on a device: tests, speed, scaling, memory.

Sections, in this order (each writes its part of one table; a section that fails is
recorded with its error and the next one runs):

  tests      ``pytest -m device tests/test_device.py`` with PYRO_MANIFOLD_TEST_DEVICE set
             to the device: every model configuration end to end (fit with the fast path
             and sync_every > 1, log_prob, sample, Predictive, checkpoint on the device,
             loaded on the CPU and back, resume on the device);
  speed      benchmarks/speed.py's jobs, interleaved rounds (hand-written loop, our fit,
             stock Pyro SVI, zuko's MAF where installed), with peak device memory;
  vmonf_k    VMoNF per-step time at 784-d (dequantized MNIST in (0, 1), MAF(5) components of
             width 1024, batch 128, lr 1e-4) for K in {1, 2, 5, 10, 20}, ours against the
             hand-written loop;
  vae_epoch  one whole epoch of 60,000 binarized MNIST images through ``fit`` at batch 1024,
             Gaussian, IAF and PCP-Map encoders (after a short warm-up fit), eagerly and
             with ``cuda_graph=True`` on CUDA, with peak memory;
  anchors    the shared stock-Pyro anchor script, when ``--anchor-script`` names it.

``--budget`` (seconds) bounds the whole run: a section that would start after it is
skipped and says so, so that a lease always returns a table. Writes ``device_check.json``
(``--out``) and prints the table last. ``--device cpu --smoke`` runs the same code at tiny
sizes in about a minute (the test suite runs it).

Run on a GPU machine (see benchmarks/device_check.sh, which packs what that machine lacks):
    python benchmarks/device_check.py --device cuda --out $OUT/device_check.json
Here:
    python benchmarks/device_check.py --device cpu --smoke --out /tmp/device_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark beside this file)

from pyro_manifold.models import FlowVAE, VariationalMixtureOfFlows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_tests(device: torch.device, smoke: bool) -> dict:
    """The device-marked tests on ``device``, in a child process; counts and failures."""
    env = dict(os.environ, PYRO_MANIFOLD_TEST_DEVICE=str(device))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "device", "-p", "no:cacheprovider",
           "--durations=5", "tests/test_device.py"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out)}
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0,
            "counts": counts, "failures": re.findall(r"^FAILED .*$", out, re.M),
            "tail": out[-3000:]}  # fmt: skip


def run_speed(device: torch.device, smoke: bool, out_dir: Path, round_seconds: float) -> dict:
    """speed.py's whole table on ``device`` (its own JSON beside ours)."""
    argv = ["--device", str(device), "--out", str(out_dir / f"speed_{device.type}.json")]
    argv += ["--smoke"] if smoke else ["--rounds", "5", "--round-seconds", str(round_seconds)]
    return speed.main(argv)["rows"]


def vmonf_job(k: int, data: torch.Tensor, hidden: int) -> speed.Job:
    def build():
        d = data.shape[1]
        return VariationalMixtureOfFlows(
            d, k, "maf", num_layers=5, hidden_dims=[hidden], encoder_hidden_dims=[512, 512]
        )

    enum = TraceEnum_ELBO(max_plate_nesting=1)
    return speed.Job(build, data, 128, speed.vmonf_loss, enum, lr=1e-4)


def run_vmonf_scaling(device: torch.device, smoke: bool) -> dict:
    """Seconds per step of VMoNF at 784-d against K (ours and the hand-written loop)."""
    side, hidden, ks = (7, 64, (1, 2)) if smoke else (28, 1024, (1, 2, 5, 10, 20))
    data = speed.mnist_unit(512 if smoke else 10_000, side, device)
    rows = {}
    for k in ks:
        reset_peak(device)
        row = speed.time_job(vmonf_job(k, data, hidden), device, rounds=2 if smoke else 3,
                             steps=2 if smoke else None, round_seconds=0.5, epoch_size=128,
                             runners=("torch", "ours"))  # fmt: skip
        rows[f"K={k}"] = {"seconds_per_step_ours": row["ours"]["median"],
                          "seconds_per_step_torch": row["torch"]["median"],
                          "ours_over_torch": row["ours_over_torch"]["median"],
                          "peak_mib": peak_mib(device)}  # fmt: skip
        base = rows["K=1"]["seconds_per_step_ours"]
        rows[f"K={k}"]["over_K1"] = rows[f"K={k}"]["seconds_per_step_ours"] / base
    return rows


def run_vae_epochs(device: torch.device, smoke: bool) -> dict:
    """Seconds for one whole epoch of binarized MNIST through ``fit`` at batch 1024.

    Each encoder is timed eagerly and, on CUDA, with ``cuda_graph=True`` (the capture
    inside the epoch's time; ``graph_notes`` says why a step ran eagerly, if one did).
    """
    n, side, z, hidden = (512, 7, 8, [16]) if smoke else (60_000, 28, 50, [400])
    data = speed.mnist_binary(n, side, device)
    batch = min(1024, n // 2)
    rows = {}
    for flow in (None, "iaf", "pcp"):
        row = rows[flow or "gaussian"] = {"steps": n // batch}
        for graphed in (False, True) if device.type == "cuda" else (False,):
            torch.manual_seed(0)
            vae = FlowVAE(z, side * side, flow, hidden_dims=hidden).to(device)
            run = speed.ours_runner(vae, data, batch, Trace_ELBO(), device, 1e-3, graphed)
            run(4)  # warm-up (kernels, allocator)
            reset_peak(device)
            suffix = "_graph" if graphed else ""
            row[f"epoch_seconds{suffix}"] = speed.timed(run, n // batch, device)[0]
            row[f"peak_mib{suffix}"] = peak_mib(device)
            if graphed:
                row["graph_notes"] = sorted(run.notes)
    return rows


def run_anchors(script: str, device: torch.device, out_dir: Path) -> dict:
    """The shared stock-Pyro anchor script (plain torch, stock Pyro, zuko), side by side."""
    out = out_dir / "anchors.json"
    data = os.environ.get("PYRO_MANIFOLD_DATA", "")
    cmd = [sys.executable, script, "--device", str(device), "--data", data, "--reps", "2",
           "--subset", "20000", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(out.read_text())


def print_table(result: dict) -> None:
    info = result["info"]
    print(f"\n== device_check: {info['device']}, torch {info['torch']}, pyro {info['pyro']}, "
          f"commit {info['commit'][:12]}{' (dirty)' if info['dirty'] else ''}")  # fmt: skip
    for name, section in result["sections"].items():
        status = section.get("status")
        print(f"-- {name}: {status} ({section.get('seconds', 0):.1f} s)")
        if status != "ok":
            print(f"   {section.get('error', '')}")
            continue
        body = section["result"]
        if name == "tests":
            print(f"   {body['counts']}  {' '.join(body['failures'])}")
        elif name == "speed":
            speed.print_header()
            for job, row in body.items():
                speed.print_row(job, row)
                if "zuko_over_ours" in row:
                    print(f"{'':<22}zuko/ours {speed.fmt(row['zuko_over_ours'])}")
            mem = {j: {r: row[r].get("peak_extra_mib") for r in speed.RUNNERS if r in row}
                   for j, row in body.items()}  # fmt: skip
            if any(v for m in mem.values() for v in m.values()):
                print("   peak extra MiB: " + json.dumps(mem))
        elif name == "vmonf_k":
            for k, row in body.items():
                print(f"   {k:<5} ours {row['seconds_per_step_ours'] * 1e3:8.2f} ms/step  "
                      f"torch {row['seconds_per_step_torch'] * 1e3:8.2f}  "
                      f"ours/torch {row['ours_over_torch']:.2f}  /K=1 {row['over_K1']:.2f}  "
                      f"peak {row['peak_mib']} MiB")  # fmt: skip
        elif name == "vae_epoch":
            for flow, row in body.items():
                graphed = row.get("epoch_seconds_graph")
                print(f"   {flow:<9} {row['epoch_seconds']:.3f} s/epoch ({row['steps']} steps)"
                      f"  peak {row['peak_mib']} MiB"
                      + (f"; cuda_graph {graphed:.3f} s/epoch" if graphed else ""))  # fmt: skip
                for note in row.get("graph_notes", ()):
                    print(f"   {'':<9} graph: {note}")
        elif name == "anchors":
            for k, v in body["rows"].items():
                print(f"   {k:<40} {v if isinstance(v, str) else f'{v:8.3f} s'}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a check that it runs)")
    p.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds; sections that would start later are skipped",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=None,
        help="a subset of: tests speed vmonf_k vae_epoch anchors",
    )
    p.add_argument("--round-seconds", type=float, default=0.5, help="speed.py's --round-seconds")
    p.add_argument("--anchor-script", default=None, help="shared/gpu/stock_pyro_baseline.py")
    p.add_argument("--out", default="benchmarks/results/device_check.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = {
        "tests": lambda: run_tests(device, args.smoke),
        "speed": lambda: run_speed(device, args.smoke, out.parent, args.round_seconds),
        "vmonf_k": lambda: run_vmonf_scaling(device, args.smoke),
        "vae_epoch": lambda: run_vae_epochs(device, args.smoke),
    }
    if args.anchor_script:
        sections["anchors"] = lambda: run_anchors(args.anchor_script, device, out.parent)
    unknown = sorted(set(args.sections or ()) - set(sections) - {"anchors"})
    if unknown:
        p.error(f"--sections: unknown {unknown}; expected some of {sorted(sections)}")
    result = {"info": speed.describe(device), "args": vars(args), "sections": {}}
    start = time.perf_counter()
    for name, run in sections.items():
        if args.sections and name not in args.sections:
            continue
        used = time.perf_counter() - start
        if used > args.budget:
            result["sections"][name] = {
                "status": "skipped",
                "error": f"budget spent ({used:.0f} s)",
            }
            continue
        print(f"== {name} (at {used:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            result["sections"][name] = {"status": "ok", "result": run()}
        except Exception as e:  # a failed section is recorded; the next one still runs
            traceback.print_exc()
            result["sections"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        result["sections"][name]["seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(result, indent=2))  # what finished survives a timeout
    result["seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    return result


def failed(result: dict) -> bool:
    """Whether a section failed or a device test did not pass."""
    tests = result["sections"].get("tests", {})
    return any(s["status"] == "failed" for s in result["sections"].values()) or (
        tests.get("status") == "ok" and tests["result"]["returncode"] != 0
    )


if __name__ == "__main__":
    if failed(main()):
        print("device_check: some sections failed (see above)", file=sys.stderr)
        sys.exit(1)
