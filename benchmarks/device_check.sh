#!/usr/bin/env bash
# The GPU check in one call: `pack` here, `run` on the device machine.
#
#   bash benchmarks/device_check.sh pack   # here: fills .device/ (git-ignored) with what the
#                                          # GPU image lacks: the pyro-ppl, pyro-api and zuko
#                                          # wheels, MNIST gzipped, the shared anchor script and
#                                          # the commit; prints the device command
#   bash benchmarks/device_check.sh run [device_check.py options]
#                                          # there: installs the wheels into /tmp/site, unpacks
#                                          # MNIST into /tmp/mnist, runs benchmarks/device_check.py
#                                          # on cuda and writes device_check.json and its log
#                                          # under $OUT (else benchmarks/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
  rm -rf .device && mkdir -p .device/wheels .device/mnist
  python3 -m pip download -q --no-deps --only-binary=:all: -d .device/wheels \
    pyro-ppl==1.9.2 pyro-api==0.1.2 zuko==1.6.0
  data="${PYRO_MANIFOLD_DATA:-../shared/data}"
  for f in "$data"/MNIST/raw/*-ubyte; do gzip -c "$f" > ".device/mnist/$(basename "$f").gz"; done
  anchor=../shared/gpu/stock_pyro_baseline.py
  if [ -f "$anchor" ]; then cp "$anchor" .device/; fi
  commit=$(git rev-parse HEAD)
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then commit="$commit+dirty"; fi
  echo "$commit" > .device/COMMIT
  du -sh .device
  echo 'device command (carry [".device"]): bash benchmarks/device_check.sh run'
  ;;
run)
  shift
  [ -d .device/wheels ] || { echo "device_check.sh: .device/ is missing: run 'pack' first and carry it" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl
  export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
  mkdir -p /tmp/mnist/MNIST/raw
  for f in .device/mnist/*.gz; do gunzip -c "$f" > "/tmp/mnist/MNIST/raw/$(basename "$f" .gz)"; done
  export PYRO_MANIFOLD_DATA=/tmp/mnist PYRO_MANIFOLD_COMMIT="$(cat .device/COMMIT)"
  out="${OUT:-benchmarks/results}"
  anchors=()
  if [ -f .device/stock_pyro_baseline.py ]; then anchors=(--anchor-script .device/stock_pyro_baseline.py); fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
  set -o pipefail
  python3 benchmarks/device_check.py --device cuda --out "$out/device_check.json" "${anchors[@]}" "$@" \
    2>&1 | tee "$out/device_check.log"
  ;;
*)
  echo "usage: bash benchmarks/device_check.sh pack | run [device_check.py options]" >&2
  exit 2
  ;;
esac
