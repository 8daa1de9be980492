#!/usr/bin/env bash
# GPU benchmark of the llmjax train step (scaling_gpu ladder, ~125M / 350M / 1B): a thin wrapper
# around experiments/bench/gpu_mfu.py, which does the work (see its docstring and
# experiments/bench/README.md). Meant for one NVIDIA H200 (or H100), no network, <= 8 minutes.
#
#   bash experiments/bench/gpu.sh [--sizes 14,20,28] [--steps 10] [--batch 28=16] ...
#   bash experiments/bench/gpu.sh --smoke        # CPU, toy sizes, < 60 s
#
# Environment:
#   PYTHON          interpreter (default: python3; the GPU image's python3 holds jax)
#   OUT             where gpu_bench.json / .md / .log go (default: the current directory)
#   BENCH_WHEELS    folder of carried wheels (default: experiments/bench/wheels, then .whl):
#                   a wheel is installed (pip --no-index --no-deps --target) only when its
#                   package does not import; BENCH_WHEELS_OVERRIDE=1 installs all of them first
#                   on the path (e.g. a carried flax wheel, if the image's flax breaks).
#   BENCH_XLA_FLAGS replaces the XLA flags added below (set it empty to add none).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
SMOKE=0
for a in "$@"; do [[ "$a" == "--smoke" ]] && SMOKE=1; done

echo "== gpu.sh: $(date -u +%FT%TZ) on ${HOSTNAME:-?}; repo $REPO ($(git rev-parse --short HEAD \
  2>/dev/null || echo no-git)); python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,\
power.draw,power.limit,temperature.gpu,utilization.gpu --format=csv || true
else
  echo "nvidia-smi: not found"
fi

# ---- carried wheels (ml-collections is not on the GPU image) -----------------------------------
SITE="${TMPDIR:-/tmp}/llmjax_bench_site.$$"  # this run's installs only; removed at exit
trap 'rm -rf "$SITE"' EXIT
WHEEL_DIRS=("${BENCH_WHEELS:-$HERE/wheels}" "$REPO/.whl")
module_of() {  # wheel file name -> import name (ml_collections-1.1.0-py3-none-any.whl -> ...)
  local base; base="$(basename "$1")"; base="${base%%-*}"
  case "$base" in
    ml_collections) echo ml_collections ;;
    orbax_checkpoint) echo orbax.checkpoint ;;
    absl_py) echo absl ;;
    *) echo "${base,,}" ;;
  esac
}
install_wheel() {
  mkdir -p "$SITE"
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --disable-pip-version-check --upgrade --target "$SITE" "$1" >/dev/null 2>&1; then
    echo "   pip could not install $(basename "$1"): putting the wheel itself on PYTHONPATH"
    export PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}"
  fi
}
for dir in "${WHEEL_DIRS[@]}"; do
  [[ -d "$dir" ]] || continue
  for whl in "$dir"/*.whl; do
    [[ -e "$whl" ]] || continue
    mod="$(module_of "$whl")"
    if [[ "${BENCH_WHEELS_OVERRIDE:-0}" == 1 ]] || ! "$PYTHON" -c "import $mod" 2>/dev/null; then
      echo "== installing carried wheel $(basename "$whl") (module $mod) into $SITE"
      install_wheel "$whl"
    fi
  done
done
if [[ -d "$SITE" ]]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi
if ! err="$("$PYTHON" -c "import ml_collections" 2>&1)"; then
  echo "gpu.sh: FAILED: ml_collections does not import ($(tail -n 1 <<<"$err")); wheels looked" \
    "for in ${WHEEL_DIRS[*]} (here: mkdir -p experiments/bench/wheels && .venv/bin/pip" \
    "download ml-collections==1.1.0 --no-deps -d experiments/bench/wheels; carry that folder)"
  exit 1
fi

# ---- XLA settings ------------------------------------------------------------------------------
# Latency-hiding scheduler: NVIDIA's JAX-Toolbox and the JAX GPU performance tips recommend it
# for H100-class GPUs (it mostly matters with several GPUs; harmless on one). 90% of the GPU
# memory for XLA's allocator (JAX-Toolbox: "typically 0.9"; the default is 0.75).
DEFAULT_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"
ADD_FLAGS="${BENCH_XLA_FLAGS-$DEFAULT_XLA_FLAGS}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
if [[ "$SMOKE" == 1 ]]; then export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"; fi
if [[ -n "$ADD_FLAGS" ]]; then
  # An XLA that no longer knows a flag aborts at start: check once, drop them if so.
  if XLA_FLAGS="${XLA_FLAGS:-} $ADD_FLAGS" "$PYTHON" -c \
      "import jax; jax.numpy.zeros(1).block_until_ready()" >/dev/null 2>&1; then
    export XLA_FLAGS="${XLA_FLAGS:-} $ADD_FLAGS"
  else
    echo "== XLA rejected '$ADD_FLAGS' (or jax failed to start): running without them"
  fi
fi
echo "== XLA_FLAGS='${XLA_FLAGS:-}' XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"

set +e
"$PYTHON" "$HERE/gpu_mfu.py" "$@" 2>&1 | tee "$OUT_DIR/gpu_bench.log"
rc=${PIPESTATUS[0]}
set -e
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=memory.used,clocks.sm,power.draw,temperature.gpu --format=csv || true
fi
echo "== gpu.sh: exit $rc"
exit "$rc"
