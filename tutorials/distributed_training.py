r"""
Data-parallel training with ``torchrun``
========================================

``pyro_manifold.infer.fit`` (and so ``python -m pyro_manifold fit``) trains
data-parallel on several GPUs or machines. This tutorial starts 2 CPU processes with the
gloo backend, so it runs anywhere: it trains a flow on the pinwheel in the two
processes, resumes the checkpoint in a single process and evaluates it.

How to run (headless; the run directory and the figure go to ``DIR``, default
``tutorial_output/distributed_training``)::

    python tutorials/distributed_training.py [--smoke] [--out DIR]

``--smoke`` takes a few steps only (the test suite runs it).
"""

# %%
# What data parallelism does here
# -------------------------------
#
# ``fit`` trains data-parallel when it runs under ``torchrun``, or when a
# ``torch.distributed`` process group is initialised and ``distributed=True``. With
# :math:`R` processes and ``--batch-size B`` (per process):
#
# * every process draws the same seeded permutation of the data and takes its own slice
#   of each global batch of :math:`RB` points;
# * each process evaluates the ELBO on its :math:`B` points and runs backward; the
#   gradients are then averaged over the processes by an all-reduce, so
#
#   .. math::
#
#       \frac{1}{R}\sum_{r=1}^{R} \nabla \frac{1}{B}\mathcal L(x_{B_r})
#       = \nabla \frac{1}{RB}\mathcal L(x_{B_1 \cup \dots \cup B_R}),
#
#   i.e. one step on :math:`R` processes is one step on the global batch (the package's
#   tests check this to 1e-10 in float64);
# * process 0 writes checkpoints, history and figures and shows the progress bar; a
#   checkpoint written by :math:`R` processes resumes in one process, and vice versa.
#
# The backend is NCCL on GPUs and gloo on CPUs. Nothing in the model or guide changes:
# the same Pyro programs run in every process.
#
# The commands
# ------------
#
# One machine, 4 GPUs::
#
#     torchrun --nproc-per-node 4 -m pyro_manifold fit flow --dataset pinwheel
#
# Two machines with 4 GPUs each (run the same line on both; ``HOST`` is an address of
# the first machine that the second can reach, ``run1`` any name shared by the job)::
#
#     torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \
#         --rdzv-endpoint HOST:29500 --rdzv-id run1 -m pyro_manifold fit flow --dataset pinwheel
#
# From Python, start the processes with ``torchrun your_script.py`` and call
# ``fit(model, guide, data, distributed=True)`` in the script.
#
# Below we start 2 processes on this machine's CPU, train a flow on the pinwheel, resume
# the checkpoint in a single process and evaluate it.

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from pyro_manifold.plotting import plot_training_curve

parser = argparse.ArgumentParser(description="Data-parallel training tutorial")
parser.add_argument("--smoke", action="store_true", help="a few steps only")
parser.add_argument("--out", default="tutorial_output/distributed_training")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
steps = 30 if args.smoke else 1500
run = out / "run"
env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes, one core each
common = ["fit", "flow", "--dataset", "pinwheel", "--device", "cpu", "--run-dir", str(run)]
common += ["--num-samples", "2000", "--batch-size", "128", "--validate-every", "10"]


def pyro_manifold(launcher, *argv):
    """Run ``launcher -m pyro_manifold argv`` (``launcher``: a Python or torchrun)."""
    cmd = [*launcher, "-m", "pyro_manifold", *argv]
    print("$", shlex.join(["python", *cmd[1:]]), flush=True)
    subprocess.run(cmd, env=env, check=True)


# %%
# Two processes
# -------------
#
# ``torch.distributed.run`` is what the ``torchrun`` command runs; ``--standalone`` sets
# up a rendezvous on this machine. Each process gets 128 points per step: the global
# batch is 256.

torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
pyro_manifold(torchrun, *common, "--steps", str(steps // 2))

# %%
# Resume in one process
# ---------------------
#
# The checkpoint holds the step, the data order and the RNG states; a single process
# continues the run where the two left it (``--steps`` is the new total), then
# ``evaluate`` scores the run's best validation state on the test split.

pyro_manifold([sys.executable], *common, "--steps", str(steps), "--resume")
pyro_manifold([sys.executable], "evaluate", str(run))
metrics = json.loads((run / "metrics.json").read_text())
print({k: v for k, v in metrics.items() if not isinstance(v, dict | list)})
history = json.loads((run / "history.json").read_text())
plot_training_curve(history, out / "training_curve.png")
print(f"figures in {out}")
