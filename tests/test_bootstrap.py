"""Two clones on one machine each run their own code (scripts/bootstrap.sh; docs/install.md).

The bootstrap shares one dependency environment (``$CM2DATA_CACHE/venvs/core-<key>``) between checkouts and gives
each checkout its own thin environment on top of it, where ``import cm2data`` means that checkout. This test clones
the repository twice, marks each clone's ``cm2data`` differently, bootstraps clone A, then clone B, and only then
asks both environments which ``cm2data`` they import: the order in which the former single shared editable install
answered with clone B's code in clone A's environment.

What is tested is this working tree's ``scripts/bootstrap.sh``, the file next to this test, not the committed one: a
``git clone`` copies the committed HEAD, so the script (and ``requirements/core.txt``, so that the clones key the
same shared environment as this run) is copied from the working tree into each clone before it runs. Set
``CM2DATA_TEST_BOOTSTRAP=/path/to/bootstrap.sh`` to test another script instead — for example the one before the
per-checkout environments, which fails here (give it a ``CM2DATA_CACHE`` of its own: it installs the clones into the
shared environment).

The shared environment is reused, never built: ``CM2DATA_CACHE``, else the cache this test run's own environment
lives in, else ``~/.cache/cm2data``; the test is skipped when that cache has no complete environment for this
``requirements/core.txt`` and Python. The clones' own environments are deleted afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = Path(os.environ.get("CM2DATA_TEST_BOOTSTRAP") or ROOT / "scripts" / "bootstrap.sh")

pytestmark = pytest.mark.slow  # two editable installs: about 15 s


def _cache() -> Path:
    if os.environ.get("CM2DATA_CACHE"):
        return Path(os.environ["CM2DATA_CACHE"])
    prefix = Path(sys.prefix)
    if prefix.parent.name == "venvs" and prefix.name.startswith(("checkout-", "core-")):
        return prefix.parent.parent
    return Path.home() / ".cache" / "cm2data"


def _core_key() -> str:
    """The bootstrap's key: sha256 of requirements/core.txt followed by the interpreter's ``sys.version`` line."""
    data = (ROOT / "requirements" / "core.txt").read_bytes() + (sys.version + "\n").encode()
    return hashlib.sha256(data).hexdigest()[:12]


def _clone(dest: Path, marker: str) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True, capture_output=True)
    shutil.copy2(BOOTSTRAP, dest / "scripts" / "bootstrap.sh")
    shutil.copy2(ROOT / "requirements" / "core.txt", dest / "requirements" / "core.txt")
    with open(dest / "cm2data" / "__init__.py", "a") as f:
        f.write(f"\nCLONE_MARKER = {marker!r}\n")
    return dest.resolve()


def _bootstrap(clone: Path, env: dict[str, str]) -> Path:
    proc = subprocess.run(
        ["bash", str(clone / "scripts" / "bootstrap.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "building the toolkit environment" not in proc.stderr, "the shared environment was rebuilt, not reused"
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # one venv path on stdout, progress on stderr
    return Path(lines[0])


def _imported(venv: Path, env: dict[str, str]) -> tuple[str, str]:
    """(directory of the imported cm2data, its CLONE_MARKER), asked from / so that no checkout is the cwd."""
    code = "import cm2data, os; print(os.path.realpath(cm2data.__file__)); print(getattr(cm2data, 'CLONE_MARKER', ''))"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return out[0], out[1]


def test_two_clones_import_their_own_code(tmp_path: Path) -> None:
    cache = _cache()
    if not (cache / "venvs" / f"core-{_core_key()}" / ".complete").is_file():
        pytest.skip(
            f"no shared toolkit environment for this requirements/core.txt in {cache}: run "
            "scripts/bootstrap.sh first (this test reuses it rather than building one)"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(CM2DATA_CACHE=str(cache), PYTHON=getattr(sys, "_base_executable", "") or sys.executable)
    clone_a = _clone(tmp_path / "clone-a", "A")
    clone_b = _clone(tmp_path / "clone-b", "B")
    try:
        venv_a = _bootstrap(clone_a, env)
        venv_b = _bootstrap(clone_b, env)

        # after both bootstraps: each environment imports its own clone
        file_a, marker_a = _imported(venv_a, env)
        file_b, marker_b = _imported(venv_b, env)
        assert (file_a, marker_a) == (str(clone_a / "cm2data" / "__init__.py"), "A"), (
            f"clone A's environment {venv_a} imports {file_a} (marker {marker_a!r})"
        )
        assert (file_b, marker_b) == (str(clone_b / "cm2data" / "__init__.py"), "B"), (
            f"clone B's environment {venv_b} imports {file_b} (marker {marker_b!r})"
        )
        assert venv_a != venv_b

        # the shared environment's console scripts run with the clone's interpreter (scripts/test.sh runs ruff and
        # pytest from the printed environment): pytest in A's environment imports A's cm2data
        probe = tmp_path / "probe" / "test_probe.py"
        probe.parent.mkdir()
        probe.write_text("import cm2data\n\n\ndef test_marker():\n    assert cm2data.CLONE_MARKER == 'A'\n")
        proc = subprocess.run(
            [str(venv_a / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", str(probe)],
            env=env,
            cwd=probe.parent,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ruff = subprocess.run([str(venv_a / "bin" / "ruff"), "--version"], env=env, capture_output=True, text=True)
        assert ruff.returncode == 0, ruff.stderr
        head = (venv_a / "bin" / "cm2data").read_text().splitlines()[0]
        assert head == f"#!{venv_a}/bin/python", head
    finally:  # the clones' own environments and their lock files (checkout-<hash of the path>-…), never the shared one
        for clone in (clone_a, clone_b):
            for path in (cache / "venvs").glob(f"checkout-{hashlib.sha256(str(clone).encode()).hexdigest()[:12]}-*"):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
