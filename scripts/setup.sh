#!/usr/bin/env bash
# Create (once) and activate the project's virtual environment, then install mmctx into it.
#   source scripts/setup.sh
# The environment lives outside the clone, keyed by the hash of constraints.txt, so repeated
# runs reuse it; a machine without it builds it from the package index (torch is several GB).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
KEY="$(cat "$ROOT/constraints.txt" | sha256sum | cut -c1-12)"
VENV="${MMCTX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mmctx/venv-$KEY}"
if [ ! -f "$VENV/.complete" ]; then
    echo "setup: creating $VENV (first run downloads torch and friends; several minutes)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip "setuptools==81.0.0" "wheel==0.48.0"
    "$VENV/bin/python" -m pip install -q -r "$ROOT/constraints.txt"
    touch "$VENV/.complete"
fi
# Always (re)point the environment at this checkout; quick when nothing changed.
"$VENV/bin/python" -m pip install -q --no-build-isolation -c "$ROOT/constraints.txt" -e "$ROOT[dev]"
"$VENV/bin/python" -c "import mmctx.encoders, mmctx.pipelines" # fails loudly if the install did not take
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
set +euo pipefail
