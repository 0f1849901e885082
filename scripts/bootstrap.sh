#!/usr/bin/env bash
# Build (or reuse) this checkout's toolkit environment; print its path on stdout.
#
# Two layers, both in $CM2DATA_CACHE/venvs (default ~/.cache/cm2data/venvs), outside the checkout:
#
#   core-<key>   the dependencies of requirements/core.txt, keyed by a hash of that file and the Python version and
#                shared by every checkout on the machine: a clean clone reuses it when present and builds it when not
#                (a few minutes, from the package registries). cm2data itself is never installed there.
#   checkout-<hash of this checkout's absolute path>-<key>
#                this checkout's own thin environment (a venv without pip, built in seconds): a .pth file makes the
#                core environment's packages visible, this checkout is installed in editable mode, and the core
#                environment's console scripts (pytest, ruff, pip, …) are there too, run by this environment's
#                interpreter. This is the path printed: `import cm2data` there always means this checkout, so two
#                clones on one machine never run each other's code.
#
# Both are marked complete (.complete) only at the end, so an interrupted build is never reused. Deleting any
# checkout-* environment is always safe: the next run rebuilds it in seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cache="${CM2DATA_CACHE:-$HOME/.cache/cm2data}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "cm2data needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
quiet() {  # pip's notes about the machine's local index folders are noise: drop them, keep everything else
  "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
  return "${PIPESTATUS[0]}"
}
key="$( { cat "$here/requirements/core.txt"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
core="$cache/venvs/core-$key"
mkdir -p "$cache/venvs"

# ---- the shared dependency environment
if [ ! -f "$core/.complete" ]; then
  exec 8>"$cache/venvs/.core-$key.lock"
  flock 8   # two bootstraps at once: the second waits and then reuses
  if [ ! -f "$core/.complete" ]; then
    echo "cm2data: building the toolkit environment in $core (first run only)…" >&2
    rm -rf "$core.partial"
    "$py" -m venv "$core.partial"
    quiet "$core.partial/bin/python" -m pip install --quiet --upgrade pip
    quiet "$core.partial/bin/python" -m pip install --quiet -r "$here/requirements/core.txt"
    rm -rf "$core"
    mv "$core.partial" "$core"
    # a venv's scripts hard-code its path: rewrite them after the move
    sed -i "s|$core.partial|$core|g" "$core"/bin/* 2>/dev/null || true
    touch "$core/.complete"
  fi
  exec 8>&-
fi

# ---- this checkout's environment
venv="$cache/venvs/checkout-$(printf '%s' "$here" | sha256sum | cut -c1-12)-$key"
stamp="checkout=$here pyproject=$(sha256sum "$here/pyproject.toml" | cut -c1-12)"
current() {  # the environment is complete, made for this pyproject.toml, and finds cm2data in this checkout
  # (asked from / so that a checkout in the current directory cannot answer for the installed package; found, not
  # imported, so that a checkout whose code does not import yet still gets its environment)
  [ -f "$venv/.complete" ] && [ "$(cat "$venv/.complete")" = "$stamp" ] \
    && [ "$(cd / && "$venv/bin/python" -c 'import importlib.util as u, os; print(os.path.realpath(os.path.dirname(os.path.dirname(u.find_spec("cm2data").origin))))' 2>/dev/null)" = "$here" ]
}
if ! current; then
  exec 9>"$venv.lock"
  flock 9
  if ! current; then
    if [ ! -x "$venv/bin/python" ]; then
      echo "cm2data: setting up this checkout's environment in $venv (on top of $core)…" >&2
      rm -rf "$venv"
      "$py" -m venv --without-pip "$venv"
    fi
    rm -f "$venv/.complete"
    # the link to the core environment, and the core environment's console scripts run by this interpreter
    "$venv/bin/python" - "$core" "$venv" <<'PY'
import os
import sys
import sysconfig

core, venv = sys.argv[1:3]
here_sp = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
core_sp = sorted({sysconfig.get_path(k, vars={"base": core, "platbase": core}) for k in ("purelib", "platlib")})
module = f'''"""Written by cm2data's scripts/bootstrap.sh: runs the .pth files of the shared dependency environment
{core}, whose site-packages _cm2data_core_env.pth puts on sys.path after this environment's own, except editable
installs of cm2data (a core environment built by an older bootstrap.sh may hold one, pointing at another checkout)."""
import os
import site
import sys

CORE_SITE_PACKAGES = {core_sp!r}


def _run_pth_files():
    known = {{os.path.normcase(p) for p in sys.path}}
    for sp in CORE_SITE_PACKAGES:
        if os.path.isdir(sp):
            for name in sorted(os.listdir(sp)):
                if name.endswith(".pth") and not name.startswith(("__editable__.cm2data-", "cm2data")):
                    site.addpackage(sp, name, known)


_run_pth_files()
'''
# plain path lines (not code) so that pip's isolated build environments, which re-read this environment's .pth files
# to find what to hide, hide the core environment too
for sp in here_sp:
    with open(os.path.join(sp, "_cm2data_core_env.py"), "w") as f:
        f.write(module)
    with open(os.path.join(sp, "_cm2data_core_env.pth"), "w") as f:
        f.write("".join(f"{p}\n" for p in core_sp) + "import _cm2data_core_env\n")
PY
    quiet "$venv/bin/python" -m pip install --quiet --no-deps -e "$here"
    "$venv/bin/python" - "$core" "$venv" <<'PY'
import os
import sys

core, venv = sys.argv[1:3]
old, new = f"{core}/bin/python", f"{venv}/bin/python"
for name in sorted(os.listdir(f"{core}/bin")):
    src, dst = f"{core}/bin/{name}", f"{venv}/bin/{name}"
    if name.startswith(("python", "activate", "Activate")) or os.path.lexists(dst) or not os.path.isfile(src):
        continue  # this venv's own interpreter and activate scripts; what the editable install wrote (cm2data)
    with open(src, "rb") as f:
        data = f.read()
    if b"\0" in data[:8192]:  # a compiled program (ruff): the same binary
        os.symlink(src, dst)
        continue
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith(f"#!{old}\n") and len(new) + 2 > 127:  # too long for a shebang line: pip's sh trampoline
        text = f"#!/bin/sh\n'''exec' \"{new}\" \"$0\" \"$@\"\n' '''\n" + text.split("\n", 1)[1]
    with open(dst, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text.replace(old, new))
    os.chmod(dst, 0o755)
PY
    printf '%s' "$stamp" > "$venv/.complete"
    current || { echo "cm2data: $venv does not import cm2data from $here" >&2; exit 1; }
  fi
  exec 9>&-
fi
echo "$venv"
