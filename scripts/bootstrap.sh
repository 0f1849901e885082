#!/usr/bin/env bash
# Build (or reuse) the toolkit's virtual environment and install cm2data into it; print the venv path on stdout.
#
# The environment lives outside the checkout, in $CM2DATA_CACHE (default ~/.cache/cm2data), keyed by a hash of
# requirements/core.txt and the Python version, so a clean clone reuses it when present and builds it when not.
# Everything it needs comes from the package registries through requirements/core.txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "cm2data needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
key="$( { cat "$here/requirements/core.txt"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
venv="$cache/venvs/core-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "cm2data: building the toolkit environment in $venv (first run only)…" >&2
  rm -rf "$venv.partial"
  mkdir -p "$cache/venvs"
  "$py" -m venv "$venv.partial"
  # (pip's notes about the machine's local index folders are noise: drop them, keep everything else)
  { "$venv.partial/bin/python" -m pip install --quiet --upgrade pip
    "$venv.partial/bin/python" -m pip install --quiet -r "$here/requirements/core.txt"; } 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  # a venv's scripts hard-code its path: rewrite them after the move
  sed -i "s|$venv.partial|$venv|g" "$venv"/bin/* 2>/dev/null || true
  touch "$venv/.complete"
fi
# install this checkout (editable, no dependencies: they are pinned above) unless it is already the one installed
# (asked from / so that a checkout in the current directory cannot answer for the installed package)
where="$(cd / && "$venv/bin/python" -c 'import cm2data, os; print(os.path.dirname(os.path.dirname(cm2data.__file__)))' 2>/dev/null || true)"
if [ "$where" != "$here" ]; then
  "$venv/bin/python" -m pip install --quiet --no-deps -e "$here" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
fi
echo "$venv"
