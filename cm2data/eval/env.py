"""The benchmark environments of ``cm2data eval``: one cached virtual environment per benchmark, built by
``scripts/install_eval.sh`` (``bfcl``: bfcl-eval 2026.3.23; ``tau2``: inspect-evals 0.26.0), never the toolkit's.

The toolkit only runs their interpreters (``runner_bfcl.py``, ``runner_tau2.py`` in a subprocess) and reads their
plain data files; it never imports ``bfcl_eval`` or ``inspect_ai``. ``CM2DATA_EVAL_BFCL_PYTHON`` /
``CM2DATA_EVAL_TAU2_PYTHON`` point at an existing interpreter instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("bfcl", "tau2")


class EvalError(Exception):
    """A benchmark run could not start or finish; the message says why and what to do."""


def checkout() -> Path:
    return Path(__file__).resolve().parents[2]


def install_script() -> Path:
    return checkout() / "scripts" / "install_eval.sh"


def ensure_env(kind: str) -> Path:
    """The interpreter of the ``kind`` environment, building it first when needed (a minute or two the first
    time; milliseconds after). Build messages go to stderr."""
    if kind not in KINDS:
        raise ValueError(f"unknown benchmark environment {kind!r}")
    override = os.environ.get(f"CM2DATA_EVAL_{kind.upper()}_PYTHON")
    if override:
        return Path(override)
    script = install_script()
    if not script.is_file():
        raise EvalError(
            f"{script} not found: build the {kind} environment from a cm2data checkout, or set "
            f"CM2DATA_EVAL_{kind.upper()}_PYTHON to an interpreter that has it"
        )
    done = subprocess.run(
        ["bash", str(script), kind], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise EvalError(
            f"building the {kind} benchmark environment failed (exit {done.returncode}, {script}); see "
            "its messages above"
        )
    return Path(lines[-1]) / "bin" / "python"


def site_packages(python: Path) -> Path:
    """The site-packages folder of the environment of ``python`` (a venv: ``<venv>/lib/python3.X/site-packages``)."""
    venv = python.parent.parent
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if found:
        return found[-1]
    done = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise EvalError(f"cannot ask {python} where its packages are: {done.stderr.strip()[-300:]}")
    return Path(done.stdout.strip())


def bfcl_data_dir(python: Path) -> Path:
    """BFCL's data folder (``BFCL_v4_*.json``, ``possible_answer/``) inside the bfcl environment, read as files."""
    path = site_packages(python) / "bfcl_eval" / "data"
    if not (path / "BFCL_v4_multi_turn_base.json").is_file():
        raise EvalError(f"no BFCL v4 data in {path}: is {python} the bfcl environment?")
    return path


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmark subprocess: the toolkit's environment does not leak in, no hub traffic."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(var, None)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra or {})
    return env


def _die_with_parent() -> Callable[[], None]:
    """PR_SET_PDEATHSIG for a runner: it gets SIGTERM when the command that started it dies (even by SIGKILL), so a
    killed ``cm2data eval`` leaves no run behind writing into the folder. libc is looked up here, in the parent."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)


def run_runner(
    cmd: list[str], *, env: dict[str, str], cwd: Path, on_event: Callable[[dict[str, Any]], None] | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    """Run a benchmark runner script; its stdout carries JSON event lines (each passed to ``on_event``). Returns the
    exit status (negative: killed by that signal), the events and what it wrote to stderr. An interrupt (Ctrl-C)
    stops the runner (SIGTERM, then SIGKILL) and is raised again."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=str(cwd),
        preexec_fn=_die_with_parent() if sys.platform == "linux" else None,
    )
    events: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            events.append(event)
            if on_event is not None:
                on_event(event)
        rc = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    stderr = proc.stderr.read() if proc.stderr else ""
    return rc, events, stderr


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
