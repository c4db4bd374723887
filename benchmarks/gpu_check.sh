#!/usr/bin/env bash
# The prepared one-GPU check of issue 13 (logic and figures: benchmarks/gpu_check.py,
# docs/benchmarks.md). Under 5 minutes on one H100/H200; a dry run where JAX sees no GPU.
#   bash benchmarks/gpu_check.sh [--dry_run] [--json_out FILE] [...]   (--help lists all)
# Python: $PYTHON, else the project's .venv, else python3 (a GPU image's own JAX).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
