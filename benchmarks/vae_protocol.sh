#!/usr/bin/env bash
# The VAE protocol's queue (benchmarks/vae_protocol.py's docstring, issue 21), in run order:
#
#   bash benchmarks/vae_protocol.sh candidates  # 3 Gaussian recipes, seed 0     (~3 CPU h)
#   bash benchmarks/vae_protocol.sh select      # the rule on validation          (a minute)
#   bash benchmarks/vae_protocol.sh finals      # every final run's training     (~20 CPU h)
#   bash benchmarks/vae_protocol.sh test        # IWAE-5000 on the test images   (~14 CPU h)
#   bash benchmarks/vae_protocol.sh report      # vae_protocol_test.json, figures (minutes)
#   bash benchmarks/vae_protocol.sh all         # the five above, in order
#   DEVICE=cuda bash benchmarks/vae_protocol.sh gpu-pcp  # PCP-Map at full width and budget
#
# One thread per job, checkpointed every epoch under $RUNS/NAME (NAME = ENCODER_RECIPE_seedS);
# a job whose JSON exists is skipped, an interrupted one resumes (training from its
# checkpoint, a test evaluation from its finished blocks). Start the same command in two
# shells to use both cores: a job another queue is running is skipped (flock), and a queue
# that finds nothing it can start stops (start it again later for the stages after).
# The test stage scores a run only after select wrote the selection, and each run once.
# Needs PYRO_MANIFOLD_DATA. Settings: DEVICE (cpu), PYTHON (python), RESULTS
# (benchmarks/results), FIGURES (benchmarks/figures), RUNS (runs/vae_protocol), SMOKE=1
# (tiny sizes, seconds per job).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
DEVICE=${DEVICE:-cpu}
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-benchmarks/results}
FIGURES=${FIGURES:-benchmarks/figures}
RUNS=${RUNS:-runs/vae_protocol}
common=(--device "$DEVICE" --results "$RESULTS" --figures "$FIGURES" --runs "$RUNS")
if [[ $DEVICE == cpu ]]; then common+=(--threads 1); fi
if [[ ${SMOKE:-0} == 1 ]]; then common+=(--smoke); fi

protocol() { "$PYTHON" benchmarks/vae_protocol.py "$@" "${common[@]}"; }

# run_locked NAME COMMAND...: COMMAND unless another queue holds NAME's lock
run_locked() {
    local name=$1 fd
    shift
    mkdir -p "$RUNS/.queue"
    exec {fd}>"$RUNS/.queue/$name.lock"
    if flock -n "$fd"; then
        "$@"
    else
        echo "$name: running in another queue, skipped"
    fi
    exec {fd}>&-
}

train_job() {  # ENCODER RECIPE SEED
    local name=$1_$2_seed$3 resume=()
    local out=$RESULTS/vae_protocol_runs/$name.json
    if [[ -f $out ]]; then echo "$name: trained ($out)"; return; fi
    if [[ -f $RUNS/$name/checkpoint.pt ]]; then resume=(--resume); fi
    echo "$name: training" "${resume[@]}"
    protocol --stage train --encoder "$1" --recipe "$2" --seed "$3" "${resume[@]}"
}

test_job() {  # ENCODER RECIPE SEED
    local name=$1_$2_seed$3
    local out=$RESULTS/vae_protocol_runs/${name}_test.json
    if [[ -f $out ]]; then echo "$name: tested ($out)"; return; fi
    if [[ ! -f $RESULTS/vae_protocol_runs/$name.json ]]; then
        echo "$name: not trained yet, skipped"
        return
    fi
    echo "$name: scoring the test images"
    protocol --stage test --encoder "$1" --recipe "$2" --seed "$3"
}

each() {  # JOB WHICH: JOB for every line "ENCODER RECIPE SEED" of the plan
    local job=$1 encoder recipe seed plan
    plan=$(protocol --stage plan --which "$2")  # fails (and stops) without a selection
    while read -r encoder recipe seed; do
        run_locked "${encoder}_${recipe}_seed$seed" "$job" "$encoder" "$recipe" "$seed" </dev/null
    done <<<"$plan"
}

select_stage() {
    if [[ -f $RESULTS/vae_protocol_selection.json ]]; then
        echo "selection: done ($RESULTS/vae_protocol_selection.json)"
        return
    fi
    local encoder recipe seed plan
    plan=$(protocol --stage plan --which candidates)
    while read -r encoder recipe seed; do
        if [[ ! -f $RESULTS/vae_protocol_runs/${encoder}_${recipe}_seed$seed.json ]]; then
            echo "selection: waiting for ${encoder}_${recipe}_seed$seed; run this again later"
            exit 0
        fi
    done <<<"$plan"
    protocol --stage select
}

case ${1:-} in
    candidates) each train_job candidates ;;
    select) select_stage ;;
    finals) each train_job finals ;;
    test) each test_job finals ;;
    report) protocol --stage report ;;
    all)
        each train_job candidates
        select_stage
        each train_job finals
        each test_job finals
        protocol --stage report
        ;;
    gpu-pcp)
        each train_job gpu
        each test_job gpu
        protocol --stage report
        ;;
    *)
        echo "usage: bash benchmarks/vae_protocol.sh candidates|select|finals|test|report|all|gpu-pcp" >&2
        exit 2
        ;;
esac
