#!/usr/bin/env bash
# Training queue of the VQ-Flows MNIST protocol (benchmarks/vq_protocol.py's docstring, issue 21).
#
#   bash benchmarks/vq_protocol.sh train    # 12 VQ candidates, then the 6 plain baselines
#   bash benchmarks/vq_protocol.sh status   # each job: done, started or waiting
#
# Start `train` twice, side by side (two workers, one thread each): a worker takes the
# next job that is neither done nor held by the other worker (a lock file per job). Order:
# per seed 0, 1, 2 the VQ-RealNVP and VQ-MAF candidates (beta 1, 0.25), then per seed the
# RealNVP and MAF baselines. Each job checkpoints every 500 steps under
# runs/vq_protocol/NAME_seedS; run `train` again after an interruption: finished jobs
# (their JSON in benchmarks/results/vq_protocol_runs/) are skipped, started ones resume
# (--resume). No job reads the test images. Then:
#   python benchmarks/vq_protocol.py --stage select
#   python benchmarks/vq_protocol.py --stage test
# Needs PYRO_MANIFOLD_DATA. For tests: VQ_PROTOCOL_ARGS (e.g. --smoke), VQ_PROTOCOL_SEEDS,
# VQ_PROTOCOL_FAMILIES, VQ_PROTOCOL_RUNS and VQ_PROTOCOL_RESULTS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
RUNS=${VQ_PROTOCOL_RUNS:-runs/vq_protocol}
RESULTS=${VQ_PROTOCOL_RESULTS:-benchmarks/results/vq_protocol_runs}
read -r -a SEEDS <<< "${VQ_PROTOCOL_SEEDS:-0 1 2}"
read -r -a FAMILIES <<< "${VQ_PROTOCOL_FAMILIES:-realnvp maf}"
read -r -a EXTRA <<< "${VQ_PROTOCOL_ARGS:-}"
PYTHON=${PYTHON:-python}

queue() {  # one line per job, in queue order: KIND SEED [BETA]
    for seed in "${SEEDS[@]}"; do
        for family in "${FAMILIES[@]}"; do
            for beta in 1 0.25; do echo "vq_$family $seed $beta"; done
        done
    done
    for seed in "${SEEDS[@]}"; do
        for family in "${FAMILIES[@]}"; do echo "$family $seed"; done
    done
}

name_of() {  # KIND [BETA]
    if [[ -n ${2:-} ]]; then echo "${1}_beta$2"; else echo "${1}_matched"; fi
}

train_job() {  # KIND SEED [BETA]
    local kind=$1 seed=$2 beta=${3:-} name resume=() commitment=()
    name=$(name_of "$kind" "$beta")
    local out=$RESULTS/${name}_seed$seed.json run=$RUNS/${name}_seed$seed
    if [[ -f $out ]]; then echo "$name seed $seed: done ($out)"; return; fi
    mkdir -p "$RUNS"
    exec {lock}>"$RUNS/${name}_seed$seed.lock"
    if ! flock -n "$lock"; then
        echo "$name seed $seed: held by another worker"
        exec {lock}>&-
        return
    fi
    if [[ -f $out ]]; then echo "$name seed $seed: done ($out)"; exec {lock}>&-; return; fi
    if [[ -d $run ]]; then resume=(--resume); fi
    if [[ -n $beta ]]; then commitment=(--commitment "$beta"); fi
    echo "$name seed $seed: training ${resume[*]}"
    "$PYTHON" benchmarks/vq_protocol.py --stage train --kind "$kind" "${commitment[@]}" \
        --seed "$seed" --runs "$RUNS" --results "$RESULTS" "${resume[@]}" "${EXTRA[@]}" </dev/null
    exec {lock}>&-
}

case ${1:-} in
    train)
        queue | while read -r kind seed beta; do train_job "$kind" "$seed" "$beta"; done
        ;;
    status)
        queue | while read -r kind seed beta; do
            name=$(name_of "$kind" "$beta")
            if [[ -f $RESULTS/${name}_seed$seed.json ]]; then state=done
            elif [[ -d $RUNS/${name}_seed$seed ]]; then state=started
            else state=waiting; fi
            echo "$name seed $seed: $state"
        done
        ;;
    *)
        echo "usage: bash benchmarks/vq_protocol.sh train|status" >&2
        exit 2
        ;;
esac
