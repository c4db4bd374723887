#!/usr/bin/env bash
# Installs the real t5x (with airio and jestimator, which it imports) into a Python environment.
# t5x is not on PyPI: the three packages come as source at pinned upstream commits, from the
# folder $T5X_SOURCES (archives t5x-<sha>.tar.gz, airio-<sha>.tar.gz, jestimator-<sha>.tar.gz)
# or, when it is unset, from GitHub. --no-deps: their setup.py files pin flax/optax/seqio/clu
# to git URLs and tfds-nightly, which would replace the project's pins; the PyPI packages they
# really need are the `t5x` extra of setup.cfg, installed first.
# Usage: tools/install_t5x.sh [python]   (default .venv/bin/python). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
T5X=cc342d419ec3e3e9c4bf1df33c82330cafdc1e16
AIRIO=69897df7d9a427b947a9f7bb4164c7782b43e601
JESTIMATOR=326824a477feef6d92e6f44175000907a72899ca
stamp=$(dirname "$PY")/../.t5x-${T5X:0:7}-${AIRIO:0:7}-${JESTIMATOR:0:7}
[ -f "$stamp" ] && exit 0  # written below once t5x imports; removed when the venv is rebuilt
# Where the sources come from, checked before anything is installed: exit 3 when neither the
# folder nor GitHub can be had (tools/env.sh then goes on without t5x and says so).
if [ -z "${T5X_SOURCES:-}" ] \
  && ! git ls-remote https://github.com/google-research/t5x HEAD >/dev/null 2>&1; then
  echo "install_t5x: GitHub is not reachable and T5X_SOURCES is unset (a folder of t5x-${T5X:0:7}.tar.gz, airio-${AIRIO:0:7}.tar.gz, jestimator-${JESTIMATOR:0:7}.tar.gz)" >&2
  exit 3
fi
PYTHONWARNINGS="ignore:Editable installation" "$PY" -m pip install --quiet -e '.[t5x]'
if [ -n "${T5X_SOURCES:-}" ]; then
  srcs=()
  for name in t5x-${T5X:0:7} airio-${AIRIO:0:7} jestimator-${JESTIMATOR:0:7}; do
    f="$T5X_SOURCES/$name.tar.gz"
    [ -f "$f" ] || { echo "install_t5x: $f not found (T5X_SOURCES=$T5X_SOURCES)" >&2; exit 1; }
    srcs+=("$f")
  done
else
  srcs=(
    "t5x @ git+https://github.com/google-research/t5x@$T5X"
    "airio @ git+https://github.com/google/airio@$AIRIO"
    "jestimator @ git+https://github.com/google-research/jestimator@$JESTIMATOR"
  )
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation "${srcs[@]}"
if ! out=$("$PY" -c "import t5x, airio, jestimator" 2>&1); then
  echo "$out" >&2
  echo "install_t5x: t5x does not import after the install" >&2
  exit 1
fi
touch "$stamp"
