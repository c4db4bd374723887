#!/usr/bin/env bash
# Creates .venv (or reuses it while setup.cfg is unchanged) and installs the package with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.installed-$(sha1sum setup.cfg | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,hf,t5x]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The real t5x (not on PyPI): from $T5X_SOURCES or GitHub at pinned commits; idempotent.
bash tools/install_t5x.sh .venv/bin/python
