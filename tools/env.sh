#!/usr/bin/env bash
# Creates .venv (or reuses it while setup.cfg is unchanged) and installs the package with all extras.
# Another venv, Python or set of extras (CI's Python 3.12 smoke job, without torch):
#   VENV=.venv312 PYTHON=python3.12 EXTRAS=test bash tools/env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test,hf,t5x}
PY=${PYTHON:-python3.11}
# pyenv's shims exist for every installed Python but fail until a version is selected.
if ! "$PY" --version >/dev/null 2>&1 && command -v pyenv >/dev/null 2>&1; then
  PYENV_VERSION=$(pyenv versions --bare | grep -E "^${PY#python}\.[0-9]+$" | tail -1) || true
  export PYENV_VERSION
fi
if ! "$PY" --version >/dev/null 2>&1; then
  [ -z "${PYTHON:-}" ] || { echo "env.sh: $PY not found" >&2; exit 1; }
  PY=python3
fi
t5x=0
case ",$EXTRAS," in *,t5x,*) t5x=1 ;; esac
# The stamp covers everything installed: a rerun with nothing changed costs nothing.
stamp=$VENV/.installed-$( (cat setup.cfg; echo "$EXTRAS") | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # setuptools' note on every editable install of a flat layout ("be careful with folders
  # named like your package") needs no action here: silenced, so a clean install is silent.
  PYTHONWARNINGS="ignore:Editable installation" \
    "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
  rm -f "$VENV"/.installed-* "$VENV"/.t5x-*
  touch "$stamp"
fi
# The real t5x (not on PyPI): from $T5X_SOURCES or GitHub at pinned commits. It has its own
# stamp, so a machine without either still trains, tests (the t5x tests skip, except under CI)
# and picks t5x up on a later run that has T5X_SOURCES.
if [ $t5x = 1 ]; then
  bash tools/install_t5x.sh "$VENV/bin/python" \
    || echo "env.sh: continuing without t5x (docs/t5x.md)" >&2
fi
