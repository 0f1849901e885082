#!/usr/bin/env bash
# README command 2: set everything up and run the tests (lint, format check and type check first, then pytest).
# Offline by design.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/bootstrap.sh")"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1
cd "$here"
# Debian packages of the review tests (the local Argilla stack's Redis, the browser): apt-get them when missing
bash "$here/scripts/argilla_stack.sh" debs redis-server chromium \
  || echo "test.sh: redis-server/chromium could not be installed: the review tests will fail" >&2
"$venv/bin/ruff" check cm2data adapters tests benchmarks scripts
"$venv/bin/ruff" format --check --quiet cm2data adapters tests benchmarks scripts
"$venv/bin/python" -m mypy   # [tool.mypy] in pyproject.toml: cm2data and adapters
exec "$venv/bin/python" -m pytest "$@"
