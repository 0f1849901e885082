#!/usr/bin/env bash
# The local Argilla stack (docs/review.md): build its environment, install its system packages, start/stop it.
#
#   bash scripts/argilla_stack.sh install          # build (or reuse) the server's environment and make sure
#                                                  # redis-server is installed; print the environment's path
#   bash scripts/argilla_stack.sh debs PKG...      # apt-get install the Debian packages that are missing
#                                                  # (as root, or through sudo without a password)
#   bash scripts/argilla_stack.sh start|stop|status [options]   # = cm2data review stack …, in the toolkit's env
#
# The environment (argilla-server 2.8.0 with click<8.2, and osmem-server, a static in-memory OpenSearch-compatible
# binary inside a PyPI wheel) lives in $CM2DATA_CACHE/venvs/argilla-<hash of requirements/argilla-server.txt and the
# Python version> (default cache ~/.cache/cm2data), apart from the toolkit's environment. It is built in place and
# marked complete only at the end, so an interrupted build is rebuilt, never reused. Nothing is downloaded but
# packages (PyPI, Debian). Progress goes to stderr; the first build takes about 20-30 s.
#
# Environment: PYTHON (default python3, 3.11+), CM2DATA_CACHE.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
req="$here/requirements/argilla-server.txt"

quiet() {  # pip's notes about the machine's local index folders are noise: drop them, keep everything else
  "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
  return "${PIPESTATUS[0]}"
}

# apt-get install the named Debian packages whose command (or package) is missing; exit 3 with a clear message
# when that is impossible (not root and no password-less sudo, or no apt-get).
debs() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! command -v "$pkg" >/dev/null 2>&1 && ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
      missing+=("$pkg")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "argilla_stack: the Debian packages ${missing[*]} are missing and this user can neither install them" \
           "(not root, no password-less sudo): run 'sudo apt-get install ${missing[*]}' once" >&2
      exit 3
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "argilla_stack: ${missing[*]} missing and there is no apt-get here: install them with this system's" \
         "package manager" >&2
    exit 3
  fi
  echo "argilla_stack: installing ${missing[*]} (apt-get)…" >&2
  local start; start=$(date +%s)
  # the package lists may be absent (fresh machine) or stale: update once, then install
  quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    || { echo "argilla_stack: apt-get update failed" >&2; exit 3; }
  if ! quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       "${missing[@]}"; then
    echo "argilla_stack: apt-get install ${missing[*]} failed" >&2
    exit 3
  fi
  echo "argilla_stack: ${missing[*]} installed in $(( $(date +%s) - start )) s" >&2
}

install() {
  if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null; then
    echo "argilla_stack: needs Python 3.9 or newer (set PYTHON=/path/to/python3)" >&2
    exit 2
  fi
  debs redis-server
  local key venv
  key="$( { cat "$req"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
  venv="$cache/venvs/argilla-$key"
  mkdir -p "$cache/venvs"
  exec 9>"$cache/venvs/.argilla-install.lock"
  flock 9   # two callers at once (parallel test sessions): the second waits and then reuses
  if [ ! -f "$venv/.complete" ]; then
    echo "argilla_stack: building the Argilla server's environment in $venv (first run only, ~30 s)…" >&2
    local start; start=$(date +%s)
    rm -rf "$venv"
    "$py" -m venv "$venv"
    quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
    quiet "$venv/bin/python" -m pip install --quiet -r "$req" \
      || { echo "argilla_stack: pip install -r $req failed" >&2; exit 1; }
    ARGILLA_HOME_PATH="$venv/argilla-home" "$venv/bin/python" "$here/cm2data/review/argilla_server_patch.py" check >/dev/null \
      && "$venv/bin/python" -c 'import osmem_server, sys; sys.exit(0 if __import__("os").access(osmem_server.resolve_binary(), 1) else 1)' \
      || { echo "argilla_stack: the environment in $venv does not work (argilla_server or osmem)" >&2; exit 1; }
    touch "$venv/.complete"
    echo "argilla_stack: environment ready in $(( $(date +%s) - start )) s" >&2
  fi
  echo "$venv"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install) install ;;
  debs) debs "$@" ;;
  start|stop|status)
    venv="$(bash "$here/scripts/bootstrap.sh")"
    exec "$venv/bin/cm2data" review stack "$cmd" "$@" ;;
  *) echo "usage: bash scripts/argilla_stack.sh install | debs PKG... | start|stop|status [options]" >&2; exit 2 ;;
esac
