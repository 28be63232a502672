#!/usr/bin/env bash
# Sets everything up and runs the main job offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/clipforge models
.venv/bin/clipforge info ViT-B-32
