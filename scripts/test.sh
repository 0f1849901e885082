#!/usr/bin/env bash
# README command 2: set everything up and run the tests (lint first, then pytest). Offline by design.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/bootstrap.sh")"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1
cd "$here"
"$venv/bin/ruff" check cm2data adapters tests benchmarks scripts
exec "$venv/bin/python" -m pytest "$@"
