#!/usr/bin/env bash
# Build (or reuse) this checkout's Ray environment; print its path on stdout (docs/scale.md).
#
#   RAY_VENV=$(bash scripts/install_ray.sh)
#   "$RAY_VENV/bin/ray" start --head ...                       # a Ray node that runs this checkout's cm2data
#   "$RAY_VENV/bin/cm2data" run pipeline.yaml --ray auto ...   # the driver
#
# Layers, all in $CM2DATA_CACHE/venvs (default ~/.cache/cm2data/venvs), outside the checkout:
#
#   checkout-…          the toolkit environment of this checkout (scripts/bootstrap.sh: core packages + cm2data)
#   ray-<key>           the packages of requirements/ray.txt that the toolkit lacks (ray and 8 small ones),
#                       installed with `pip install --no-deps --target`; keyed by a hash of requirements/ray.txt,
#                       requirements/core.txt and the Python version, shared by every checkout on the machine
#   ray-checkout-<hash of this checkout's path>-<key>
#                       a venv without pip whose .pth file adds ray-<key> and then the checkout environment's
#                       site-packages (which brings the core packages and this checkout's editable cm2data), with
#                       `ray` and `cm2data` commands run by its interpreter. This is the path printed. Ray starts
#                       its workers with the interpreter that ran `ray start`, so workers of a node started from
#                       here import this checkout's cm2data.
#
# Each is built under a temporary name or marked complete (.complete) only at the end: an interrupted build is never
# reused; a lock lets parallel callers wait for one build. Progress goes to stderr.
#
# Environment: PYTHON (default python3, 3.11+), CM2DATA_CACHE.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
req="$here/requirements/ray.txt"
checkout="$(bash "$here/scripts/bootstrap.sh")"
key="$( { cat "$req" "$here/requirements/core.txt"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
pkgs="$cache/venvs/ray-$key"
venv="$cache/venvs/ray-checkout-$(printf '%s' "$here" | sha256sum | cut -c1-12)-$key"
quiet() { { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2; }
mkdir -p "$cache/venvs"

# ---- the shared Ray packages
if [ ! -f "$pkgs/.complete" ]; then
  exec 8>"$cache/venvs/.ray-$key.lock"
  flock 8
  if [ ! -f "$pkgs/.complete" ]; then
    echo "install_ray: installing requirements/ray.txt into $pkgs (first run only, about a minute)…" >&2
    start=$(date +%s)
    rm -rf "$pkgs.partial"
    # the checkout environment runs the core environment's pip; --no-deps: the list is complete and exact
    "$checkout/bin/python" -m pip install --quiet --no-deps --no-compile --target "$pkgs.partial/site-packages" \
      -r "$req" 2>&1 | quiet
    rm -rf "$pkgs"
    mv "$pkgs.partial" "$pkgs"
    touch "$pkgs/.complete"
    echo "install_ray: packages ready in $(( $(date +%s) - start )) s ($(du -sh "$pkgs" | cut -f1))" >&2
  fi
  exec 8>&-
fi

# ---- this checkout's Ray environment
checkout_site="$("$checkout/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
stamp="checkout=$here env=$checkout ray=$key"
current() {  # complete, made for this checkout, and imports ray and this checkout's cm2data (asked from /)
  [ -f "$venv/.complete" ] && [ "$(cat "$venv/.complete")" = "$stamp" ] \
    && [ "$(cd / && "$venv/bin/python" -c 'import os, ray, cm2data; print(os.path.realpath(os.path.dirname(os.path.dirname(cm2data.__file__))))' 2>/dev/null)" = "$here" ]
}
if ! current; then
  exec 9>"$venv.lock"
  flock 9
  if ! current; then
    echo "install_ray: setting up this checkout's Ray environment in $venv…" >&2
    rm -rf "$venv"
    "$py" -m venv --without-pip "$venv"
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    # one line of code in a .pth file runs at start-up; addsitedir also runs the .pth files of the checkout
    # environment (its link to the core environment, the editable install of this checkout)
    printf 'import site; site.addsitedir(%s); site.addsitedir(%s)\n' \
      "$("$py" -c 'import sys; print(repr(sys.argv[1]))' "$pkgs/site-packages")" \
      "$("$py" -c 'import sys; print(repr(sys.argv[1]))' "$checkout_site")" > "$site/_cm2data_ray_env.pth"
    for cmd in "ray:ray.scripts.scripts" "cm2data:cm2data.cli"; do
      printf '#!%s\nimport sys\nfrom %s import main\nsys.exit(main())\n' "$venv/bin/python" "${cmd#*:}" > "$venv/bin/${cmd%%:*}"
      chmod +x "$venv/bin/${cmd%%:*}"
    done
    # smoke check: ray, distilabel's Ray pipeline and this checkout's cm2data import together
    (cd / && HF_HUB_OFFLINE=1 "$venv/bin/python" -c 'import ray, ray.util.queue, distilabel.pipeline.ray, cm2data.pipelines') \
      || { echo "install_ray: $venv does not import ray + distilabel + cm2data" >&2; exit 1; }
    printf '%s' "$stamp" > "$venv/.complete"
    current || { echo "install_ray: $venv does not import cm2data from $here" >&2; exit 1; }
  fi
  exec 9>&-
fi
echo "$venv"
