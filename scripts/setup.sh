#!/usr/bin/env bash
# Creates .venv (if missing) and installs clipforge with the given extras. Idempotent; works offline once
# the wheels are in pip's cache. Usage: bash scripts/setup.sh [extras, default "dev"]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python3 -m venv .venv 2>/dev/null || true
PY=.venv/bin/python
stamp=".venv/.clipforge-installed-$extras-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # torch first, pinned to the versions this project is tested with (CPU machines use the same wheels).
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2> >(grep -v "is ignored: it is neither" >&2)
  $PY -m pip install -q -e ".[$extras]" 2> >(grep -v "is ignored: it is neither" >&2)
  if [[ ",$extras," == *",dev,"* ]]; then  # test reference for the TFDS sets; its declared deps are not needed
    $PY -m pip install -q --no-deps "task-adaptation==0.1" 2> >(grep -v "is ignored: it is neither" >&2)
  fi
  touch "$stamp"
fi
