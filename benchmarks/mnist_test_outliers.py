"""Mean against median test bits/dim of MNIST runs, and the test image each model likes least.

A mean bits/dim can be moved by a single test image that a model puts far off its
density; this prints, for each run of `mnist_flows.py` (best checkpoint, the same
dequantization as its test figure), the mean and median bits/dim and log-likelihood
(logit space, nats), the means without the worst image, and that image's index and
log-likelihood. The JSON records the command, commit and machine.

Run:  PYRO_MANIFOLD_DATA=../shared/data python benchmarks/mnist_test_outliers.py \
          runs/mnist_maf runs/mnist_nif64
Smoke:  python benchmarks/mnist_test_outliers.py --smoke --out /tmp/outliers.json \
            runs/smoke/mnist_maf   (a run of mnist_flows.py --smoke; 256 test images)
"""

import argparse
import json
import os
from pathlib import Path

import torch
from mnist_flows import SMOKE_TEST_IMAGES, per_image  # benchmarks/ is the script's directory
from nif_mnist_eval import load_run
from provenance import provenance

from pyro_manifold.datasets import load_mnist


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories of mnist_flows.py")
    p.add_argument("--data", default=os.environ.get("PYRO_MANIFOLD_DATA"))
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--smoke", action="store_true", help="the first 256 test images")
    args = p.parse_args()
    test = load_mnist(args.data, "test").data
    if args.smoke:
        test = test[:SMOKE_TEST_IMAGES]
    print(f"{'run':40s} {'mean':>7s} {'median':>7s} {'w/o worst':>9s} {'worst':>6s} {'log p':>10s}")
    report = {}
    for run in args.runs:
        lp, bpd = per_image(load_run(run), test)
        worst = int(lp.argmin())
        rest = torch.cat([bpd[:worst], bpd[worst + 1 :]])
        lp_rest = torch.cat([lp[:worst], lp[worst + 1 :]])
        report[run] = {
            "bits_per_dim_mean": bpd.mean().item(),
            "bits_per_dim_median": bpd.median().item(),
            "bits_per_dim_mean_without_worst": rest.mean().item(),
            "log_likelihood_logit_mean": lp.mean().item(),
            "log_likelihood_logit_median": lp.median().item(),
            "log_likelihood_logit_mean_without_worst": lp_rest.mean().item(),
            "worst_index": worst,
            "worst_log_likelihood_logit": lp[worst].item(),
        }
        print(
            f"{run:40s} {bpd.mean():7.4f} {bpd.median():7.4f} {rest.mean():9.4f} {worst:6d}"
            f" {lp[worst]:10.0f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        report = {**provenance(), "test_images": len(test), "runs": report}
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
