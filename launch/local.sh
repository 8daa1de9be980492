#!/usr/bin/env bash
# Start one training run on this machine.
#   launch/local.sh CONFIG[:ARG] WORKDIR [--config.key=value ...]
# Example: launch/local.sh experiments/configs/tiny.py runs/tiny --config.steps=200
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:ARG] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
config="$1"; workdir="$2"; shift 2
py="${LLMJAX_PYTHON:-$root/.venv/bin/python}"
exec "$py" -m llmjax train --config="$config" --workdir="$workdir" "$@"
