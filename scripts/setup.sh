#!/usr/bin/env bash
# Idempotent set-up: a .venv with the CPU build of torch first, then the project and its dev and ray
# extras (Ray, so CI runs the distributed tests; it brings no torch of its own).
# Installing torch==2.13.0 before anything else keeps sae-lens from pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${NP_MIRROR_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.np-mirror-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0 (CPU build)" >&2
  "$VENV/bin/python" -m pip install -q torch==2.13.0
fi
echo "setup: installing np-mirror and its dev and ray extras" >&2
"$VENV/bin/python" -m pip install -q -e ".[dev,ray]"
echo "$want" > "$stamp"
