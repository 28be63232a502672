#!/usr/bin/env bash
# Sets everything up and runs the test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The search page is tested in Debian's headless Chromium: installed here when missing and we may (CI runs as root).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
    >/tmp/clipforge-chromium-install.log 2>&1 || echo "installing chromium failed: see /tmp/clipforge-chromium-install.log" >&2
fi
exec .venv/bin/python -m pytest -q -n 2 "$@"
