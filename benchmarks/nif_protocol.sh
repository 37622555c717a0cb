#!/usr/bin/env bash
# Training runs of the NIF protocol (benchmarks/nif_protocol.py's docstring, issue 21).
#
#   bash benchmarks/nif_protocol.sh candidates   # the six NIF-64 runs, seed 0
#   bash benchmarks/nif_protocol.sh seeds        # seeds 1, 2 of the chosen run (after select)
#
# One thread each, checkpointed every epoch under runs/nif_protocol/NAME_seedS, validation
# figures in benchmarks/results/nif_protocol_runs/NAME_seedS.json (--evaluate validation:
# no run reads the test images; nif_protocol.py --stage test scores the chosen ones once).
# Run again after an interruption: finished jobs are skipped, interrupted ones resume.
# Needs PYRO_MANIFOLD_DATA.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1

job() {  # NAME SEED
    local name=$1 seed=$2 map noise resume=()
    map=$(echo "$name" | cut -d_ -f2)
    noise=$(echo "$name" | sed 's/.*_noise//; s/^0/0./')
    local out=benchmarks/results/nif_protocol_runs/${name}_seed$seed.json
    local run=runs/nif_protocol/${name}_seed$seed
    if [[ -f $out ]]; then echo "$name seed $seed: done ($out)"; return; fi
    if [[ -f $run/checkpoint.pt ]]; then resume=(--resume); fi
    python benchmarks/mnist_flows.py --model nif --latent 64 --nif-map "$map" \
        --init-noise "$noise" --seed "$seed" --evaluate validation \
        --run-dir "$run" --out "$out" "${resume[@]}"
}

case ${1:-} in
    candidates)
        for map in image dense; do
            for noise in 1 04 01; do job "nif64_${map}_noise$noise" 0; done
        done
        ;;
    seeds)
        chosen=$(python -c "import json; print(json.load(open(
            'benchmarks/results/nif_protocol_selection.json'))['chosen'].split('+')[0])")
        job "$chosen" 1
        job "$chosen" 2
        ;;
    *)
        echo "usage: bash benchmarks/nif_protocol.sh candidates|seeds" >&2
        exit 2
        ;;
esac
