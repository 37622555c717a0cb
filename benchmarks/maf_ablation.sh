#!/usr/bin/env bash
# The MAF baseline's seeds and its ablation against the paper's recipe (issue 21, items 2-3).
#
#   bash benchmarks/maf_ablation.sh A    # queue A: seed 1, static dequantization, 10 epochs
#   bash benchmarks/maf_ablation.sh B    # queue B: seed 2, the paper's schedule, seed 0
#
# Each job is one thread (OMP_NUM_THREADS=1), checkpointed every epoch under runs/NAME and
# written to benchmarks/results/NAME.json. Run a queue again after an interruption: a job
# whose JSON exists is skipped, one with a checkpoint resumes (--resume), others start.
# Needs PYRO_MANIFOLD_DATA. The factors (mnist_flows.py docstring), one at a time from ours:
#   mnist_maf_seed{0,1,2}     ours: cosine lr 5e-4, batch 256, dynamic dequantization, 30 epochs
#   mnist_maf_static          training images dequantized once (the paper's data loader)
#   mnist_maf_paper_schedule  constant lr 1e-4, batch 100 (the paper's optimiser settings)
#   mnist_maf_epochs10        10 epochs
# Every run also reports its figures with batch-norm statistics of the whole training set.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1

job() {  # NAME ARGS...
    local name=$1
    shift
    local out=benchmarks/results/$name.json run=runs/$name resume=()
    if [[ -f $out ]]; then echo "$name: done ($out)"; return; fi
    if [[ -f $run/checkpoint.pt ]]; then resume=(--resume); fi
    python benchmarks/mnist_flows.py --model maf --run-dir "$run" --out "$out" "$@" "${resume[@]}"
}

case ${1:-} in
    A)
        job mnist_maf_seed1 --seed 1
        job mnist_maf_static --dequantization static
        job mnist_maf_epochs10 --epochs 10
        ;;
    B)
        job mnist_maf_seed2 --seed 2
        job mnist_maf_paper_schedule --lr-schedule constant --lr 1e-4 --batch-size 100
        job mnist_maf_seed0 --seed 0
        ;;
    *)
        echo "usage: bash benchmarks/maf_ablation.sh A|B" >&2
        exit 2
        ;;
esac
