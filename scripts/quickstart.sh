#!/usr/bin/env bash
# Sets everything up and runs the main job offline: make a shapes dataset, train a tiny CLIP on the CPU,
# evaluate it on the held-out split. Extra arguments go to `clipforge quickstart` (e.g. --steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,eval
export HF_HUB_OFFLINE=1
exec .venv/bin/clipforge quickstart "$@"
