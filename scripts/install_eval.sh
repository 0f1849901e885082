#!/usr/bin/env bash
# Build (or reuse) the environment of a benchmark run by `cm2data eval`; print its path on stdout.
#
#   BFCL_VENV=$(bash scripts/install_eval.sh bfcl)     # BFCL v4 (bfcl-eval 2026.3.23), requirements/eval-bfcl.txt
#   TAU2_VENV=$(bash scripts/install_eval.sh tau2)     # tau2 via inspect-evals 0.26.0, requirements/eval-tau2.txt
#   bash scripts/install_eval.sh bfcl --plan           # where it would go and the pip command; build nothing
#
# Where: ${CM2DATA_CACHE:-~/.cache/cm2data}/venvs/eval-<kind>-<hash>, outside the checkout; the hash covers the
# requirements file and the Python version, so a changed pin builds a new environment beside the old one and a clean
# clone reuses an existing one. Built under "<dir>.partial" and moved into place only when complete (marker file
# .complete), so an interrupted build is never reused; a lock lets parallel callers wait for one build.
#
# Each requirements file is the complete, exactly pinned list of what the environment holds, installed with
# `pip install --no-deps`: nothing is resolved at build time, so a rebuild gets the same environment, and
# bfcl-eval's declared-but-unused sentence-transformers/faiss-cpu (torch and ~2 GB more, only for its memory
# categories) stay out. No torch in either environment. Progress goes to stderr.
#
# Environment: PYTHON (default python3, 3.11+), CM2DATA_CACHE.
set -euo pipefail
usage() { echo "usage: bash scripts/install_eval.sh bfcl|tau2 [--plan]" >&2; exit 2; }
kind="${1:-}"
plan=0
case "${2:-}" in --plan) plan=1 ;; "") ;; *) usage ;; esac
case "$kind" in
  bfcl) smoke='import bfcl_eval.constants.model_config, bfcl_eval.eval_checker.eval_runner, bfcl_eval.utils, openai' ;;
  tau2) smoke='import inspect_ai, inspect_evals.tau2, openai' ;;
  *) usage ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$here/requirements/eval-$kind.txt"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "install_eval: needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
key="$( { cat "$req"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
venv="$cache/venvs/eval-$kind-$key"
quiet() { { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2; }
if [ "$plan" = 1 ]; then
  echo "environment: $venv ($( [ -f "$venv/.complete" ] && echo "complete: a run reuses it" || echo "not built yet"))"
  echo "$venv/bin/python -m pip install --quiet --no-deps -r $req"
  exit 0
fi
mkdir -p "$cache/venvs"
exec 9>"$cache/venvs/.eval-$kind-install.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "install_eval: building the $kind benchmark environment in $venv (first run only, 1-3 minutes)…" >&2
  start=$(date +%s)
  rm -rf "$venv.partial"
  "$py" -m venv "$venv.partial"
  vpy="$venv.partial/bin/python"
  # a `set -o pipefail` pipeline: pip's exit status is kept through the filter
  "$vpy" -m pip install --quiet --no-deps -r "$req" 2>&1 | quiet
  # smoke check: the benchmark imports (BFCL creates its result folders at import: point it at a scratch folder)
  scratch="$(mktemp -d)"
  (cd "$scratch" && BFCL_PROJECT_ROOT="$scratch" HF_HUB_OFFLINE=1 INSPECT_LOG_DIR="$scratch" "$vpy" -c "$smoke") \
    || { rm -rf "$scratch"; echo "install_eval: the $kind environment does not import; left in $venv.partial" >&2; exit 1; }
  rm -rf "$scratch"
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  # a venv's scripts hard-code its path: rewrite them after the move
  for f in "$venv"/bin/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -Iq . "$f" 2>/dev/null; then sed -i "s|$venv.partial|$venv|g" "$f"; fi
  done
  sed -i "s|$venv.partial|$venv|g" "$venv/pyvenv.cfg"
  echo "install_eval: $kind environment built in $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1))" >&2
  touch "$venv/.complete"
fi
echo "$venv"
