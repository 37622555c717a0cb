#!/usr/bin/env bash
# The VMoNF MNIST 0-4 protocol (benchmarks/vmonf.py's docstring, part mnist; issue 21).
#
#   bash benchmarks/vmonf_mnist.sh candidates  # 5 configurations, seed 0 (~4.5 h of a thread)
#   bash benchmarks/vmonf_mnist.sh select      # validation only -> vmonf_mnist_selection.json
#   bash benchmarks/vmonf_mnist.sh seeds       # seeds 1, 2 of the chosen configurations and of
#                                              # the paper's random start (~3.5-7.5 h)
#   bash benchmarks/vmonf_mnist.sh test        # the test images, once -> vmonf_mnist_test.json
#   bash benchmarks/vmonf_mnist.sh all         # the four in order
#
# One thread per job, a checkpoint every 500 steps under runs/vmonf_mnist/RUN, validation
# figures in benchmarks/results/vmonf_mnist_runs/RUN.json (RUN = SETTING_CONFIG_seedS).
# Run again after an interruption: finished jobs are skipped, interrupted ones resume from
# their checkpoint; select and test are not redone once their JSON exists. Two workers:
# start the same stage in two shells; a job one of them holds is skipped by the other.
# Needs PYRO_MANIFOLD_DATA. The environment variables below redirect everything (the
# smoke test: VMONF_MNIST_ARGS=--smoke, VMONF_MNIST_SEEDS=1, folders in a temporary dir).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PYTHON=${PYTHON:-python}
RUNS=${VMONF_MNIST_RUNS:-runs/vmonf_mnist}
RESULTS=${VMONF_MNIST_RESULTS:-benchmarks/results}
FIGURES=${VMONF_MNIST_FIGURES:-benchmarks/figures}
read -r -a SEEDS <<< "${VMONF_MNIST_SEEDS:-1 2}"
read -r -a EXTRA <<< "${VMONF_MNIST_ARGS:-}"
SELECTION=$RESULTS/vmonf_mnist_selection.json

vmonf() {  # STAGE [ARGS...]
    nice -n 10 "$PYTHON" benchmarks/vmonf.py --part mnist --device cpu --threads 1 \
        --mnist-runs "$RUNS" --mnist-results "$RESULTS" --mnist-stage "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

job() {  # SETTING CONFIG SEED
    local name=$1_$2_seed$3
    local out=$RESULTS/vmonf_mnist_runs/$name.json run=$RUNS/$name
    mkdir -p "$RUNS"
    (
        flock -n 9 || { echo "$name: held by another worker, skipped"; exit 0; }
        if [[ -f $out ]]; then echo "$name: done ($out)"; exit 0; fi
        resume=()
        if [[ -f $run/checkpoint.pt ]]; then resume=(--resume); fi
        echo "$name: training ${resume[*]:-from the start}"
        vmonf train --mnist-setting "$1" --mnist-config "$2" --mnist-seed "$3" \
            ${resume[@]+"${resume[@]}"} < /dev/null
    ) 9> "$RUNS/$name.queue-lock"
}

candidates() {
    for config in paper kmeans kmeans_encoder; do job unsupervised "$config" 0; done
    for config in paper kmeans_encoder; do job semi100 "$config" 0; done
}

select_stage() {
    if [[ -f $SELECTION ]]; then echo "selection done ($SELECTION): not redone"; return; fi
    vmonf select
}

seeds() {
    local pairs
    [[ -f $SELECTION ]] || { echo "no $SELECTION: run the select stage first" >&2; exit 2; }
    mapfile -t pairs < <("$PYTHON" -c "import json, sys
for setting, config in json.load(open(sys.argv[1]))['mnist']['train_next']:
    print(setting, config)" "$SELECTION")
    for pair in "${pairs[@]}"; do
        read -r setting config <<< "$pair"
        for seed in "${SEEDS[@]}"; do job "$setting" "$config" "$seed"; done
    done
}

test_stage() {
    local out=$RESULTS/vmonf_mnist_test.json
    if [[ -f $out ]]; then echo "test done ($out): not redone"; return; fi
    vmonf test --mnist-seeds 0 "${SEEDS[@]}" --figures "$FIGURES"
}

case ${1:-} in
    candidates) candidates ;;
    select) select_stage ;;
    seeds) seeds ;;
    test) test_stage ;;
    all) candidates; select_stage; seeds; test_stage ;;
    *)
        echo "usage: bash benchmarks/vmonf_mnist.sh candidates|select|seeds|test|all" >&2
        exit 2
        ;;
esac
