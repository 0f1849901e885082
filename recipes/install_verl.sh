#!/usr/bin/env bash
# Build (or reuse) VeRL's own virtual environment and print its path on stdout.
#
# Where: ${CM2DATA_CACHE:-~/.cache/cm2data}/venvs/verl-<hash>, outside the checkout; the hash covers
# recipes/requirements-verl.txt, the trl template wheel and the Python version. Built under "<dir>.partial" and moved
# into place only when complete (marker .complete), so an interrupted build is never reused. cm2data itself is not
# installed: adapters/verl and the tests put the checkout on PYTHONPATH (only cm2data.schema, .reward, .judge and
# .llm are imported there, which need pydantic, openai and tenacity).
#
# This is the CPU test environment (no vllm: verl 0.9.1 runs no rollout on CPU). For GPUs see docs/rl.md.
# Fixes (platform notes): CUDA builds of torchvision/torchaudio pulled beside the CPU torch fail to import and break
# transformers: uninstalled where they do not import.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$here/recipes/requirements-verl.txt"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
trl_templates="${CM2DATA_TRL_TEMPLATES:-trl==1.13.0}"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "VeRL's environment needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
key="$( { cat "$req"; echo "$trl_templates"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
venv="$cache/venvs/verl-$key"
quiet() { { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2; }
mkdir -p "$cache/venvs"
exec 9>"$cache/venvs/.verl-install.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "cm2data: building VeRL's environment in $venv (first run only, several minutes)…" >&2
  start=$(date +%s)
  rm -rf "$venv.partial"
  "$py" -m venv "$venv.partial"
  vpy="$venv.partial/bin/python"
  extra=()
  if [ -n "${CM2DATA_TORCH_INDEX_URL:-}" ]; then extra=(--extra-index-url "$CM2DATA_TORCH_INDEX_URL"); fi
  { "$vpy" -m pip install --quiet --upgrade pip
    "$vpy" -m pip install --quiet "${extra[@]}" -r "$req"; } 2>&1 | quiet
  for mod in torchvision torchaudio torchcodec; do
    if ! "$vpy" -c "import $mod" >/dev/null 2>&1; then
      "$vpy" -m pip uninstall --quiet --yes "$mod" 2>&1 | quiet || true
    fi
  done
  mkdir -p "$venv.partial/share/cm2data"
  "$vpy" -m pip download --quiet --no-deps "$trl_templates" -d "$venv.partial/share/cm2data" 2>&1 | quiet
  HF_HUB_OFFLINE=1 "$vpy" -c 'import torch, transformers, verl, ray, hydra, tensordict, cachetools, fastapi, openai, tenacity
from verl.experimental.agent_loop import agent_loop  # noqa
from verl.tools.base_tool import BaseTool  # noqa' \
    || { echo "VeRL's environment does not import; left in $venv.partial" >&2; exit 1; }
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  for f in "$venv"/bin/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -Iq . "$f" 2>/dev/null; then sed -i "s|$venv.partial|$venv|g" "$f"; fi
  done
  "$venv/bin/python" -m pip freeze > "$venv/share/cm2data/freeze.txt" 2>/dev/null || true
  echo "cm2data: VeRL's environment built in $(( $(date +%s) - start )) s" >&2
  touch "$venv/.complete"
fi
echo "$venv"
