#!/usr/bin/env bash
# README command 1: set everything up and run the main job on the embedded default (no GPU, network or accounts).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/bootstrap.sh")"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1
cd "$here"
exec "$venv/bin/cm2data" demo --out "${CM2DATA_DEMO_OUT:-out/demo}" "$@"
