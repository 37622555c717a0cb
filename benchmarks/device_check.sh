#!/usr/bin/env bash
# The GPU check in one call: `pack` here, `run` on the device machine.
#
#   bash benchmarks/device_check.sh pack   # here: fills .device/ (git-ignored) with what the
#                                          # GPU image lacks: the pyro-ppl, pyro-api and zuko
#                                          # wheels, MNIST gzipped, the shared anchor script,
#                                          # and the committed code (git archive HEAD, so the
#                                          # figures belong to one commit, whatever else is
#                                          # edited meanwhile); prints the device command
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
  mkdir -p .device/src
  git archive HEAD pyro_manifold benchmarks/speed.py benchmarks/device_check.py \
    benchmarks/device_check.sh tests conftest.py setup.cfg pyproject.toml | tar -x -C .device/src
  git rev-parse HEAD > .device/COMMIT
  du -sh .device
  echo 'device command (carry [".device"]): bash benchmarks/device_check.sh run'
  ;;
run)
  shift
  [ -d .device/src ] || { echo "device_check.sh: .device/ is missing: run 'pack' first and carry it" >&2; exit 2; }
  out="${OUT:-$PWD/benchmarks/results}"
  cp .device/stock_pyro_baseline.py /tmp/ 2>/dev/null || true
  cp -r .device/wheels .device/mnist .device/COMMIT /tmp/
  cd .device/src
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl
  export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
  mkdir -p /tmp/mnist/MNIST/raw
  for f in /tmp/mnist/*.gz; do gunzip -c "$f" > "/tmp/mnist/MNIST/raw/$(basename "$f" .gz)"; done
  export PYRO_MANIFOLD_DATA=/tmp/mnist PYRO_MANIFOLD_COMMIT="$(cat /tmp/COMMIT)"
  anchors=()
  if [ -f /tmp/stock_pyro_baseline.py ]; then anchors=(--anchor-script /tmp/stock_pyro_baseline.py); fi
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
