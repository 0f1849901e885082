"""Supervising the detached local servers cm2data starts: the embedded model server (:mod:`cm2data.llm.server`) and
the components of the local Argilla stack (:mod:`cm2data.review.stack`).

What both need, in one place:

* :func:`launch` starts a command detached (its own session and process group: it outlives the command that started
  it and gets no terminal signals), its output in a log file whose previous content is kept as ``<log>.1``; with
  ``die_with_parent`` (Linux) the kernel sends it SIGTERM when the starting thread dies (:func:`death_signal`).
* :func:`alive` tells a running process from a gone one, a zombie, or a recycled process id (its command line must
  contain a marker); :func:`terminate` sends SIGTERM to the process group, then SIGKILL to what is left.
* :func:`locked` serialises starts and stops between processes (``flock`` on ``<folder>/lock``);
  :func:`read_state` / :func:`write_state` keep a dataclass as a JSON state file (written atomically).
* :func:`log_tail`, :func:`free_port`, :func:`http_status` and :func:`wait_for` for start-up and error messages.

Standard library only: the modules that use it work without the toolkit's dependencies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

#: The processes this process started (pid → Popen): :func:`alive` polls them (a dead child of ours is a zombie
#: until reaped), :func:`terminate` reaps them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# ---------------------------------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """``$CM2DATA_CACHE``, default ``~/.cache/cm2data``: environments, models, the servers' state and caches."""
    return Path(os.environ.get("CM2DATA_CACHE") or Path.home() / ".cache" / "cm2data")


def checkout() -> Path:
    """The cm2data checkout this module belongs to (where ``scripts/`` lives)."""
    return Path(__file__).resolve().parents[1]


def run_installer(script: Path, *args: str) -> tuple[int, str | None]:
    """Run ``bash script *args`` (its progress on our stderr) and return its exit status and the last line it
    printed on stdout (the path of the environment it built), or None when it printed nothing."""
    done = subprocess.run(
        ["bash", str(script), *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, (lines[-1] if lines else None)


# ---------------------------------------------------------------------------------------------------- processes


def death_signal() -> Callable[[], Any]:
    """A function for the child between fork and exec: PR_SET_PDEATHSIG, so that the kernel sends it SIGTERM when
    the thread that started it dies. libc is looked up here, in the parent (no dynamic loading in the forked
    child)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)


def launch(
    cmd: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    die_with_parent: bool = False,
    header: str = "",
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached, stdout and stderr into ``log`` (a previous ``log`` is moved to ``<log>.1``; the new
    one starts with ``# cm2data: <cmd>`` and ``header``). ``die_with_parent``: SIGTERM when this thread dies
    (Linux only; elsewhere ignored)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))
    with open(log, "wb") as fh:
        fh.write(f"# cm2data: {' '.join(cmd)}\n{header}".encode())
        fh.flush()
        # its own session: it outlives this process and gets no terminal signals; terminate() signals the group
        proc = subprocess.Popen(
            list(cmd),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=death_signal() if die_with_parent and sys.platform == "linux" else None,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def alive(pid: int, marker: bytes) -> bool:
    """The process exists, is not a zombie, and its command line contains ``marker`` (guards against a recycled
    process id). Where ``/proc`` is missing, existing is enough."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if proc.joinpath("stat").read_text().split(") ", 1)[1].startswith("Z"):
                return False
            return marker in proc.joinpath("cmdline").read_bytes()
        except (OSError, IndexError):
            return False
    return True


def terminate(pid: int, marker: bytes, timeout: float) -> bool:
    """SIGTERM the process group of ``pid``, wait until the process is gone (:func:`alive` with ``marker``), then
    SIGKILL what is left of the group (stragglers: forked workers, engine cores); True when the process ended
    within ``timeout``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    clean = False
    while time.monotonic() < deadline:
        child = _CHILDREN.get(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.1)
        if not alive(pid, marker):
            clean = True
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    return clean


def wait_for(
    ready: Callable[[], bool], exited: Callable[[], bool], timeout: float, poll: float = 0.1
) -> Literal["ready", "exited", "timeout"]:
    """Poll until ``ready()`` (``"ready"``), ``exited()`` (checked first: ``"exited"``) or ``timeout`` seconds
    (``"timeout"``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited():
            return "exited"
        if ready():
            return "ready"
        time.sleep(poll)
    return "timeout"


# ------------------------------------------------------------------------------------------------ lock and state


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<folder>/lock`` (created with the folder when missing); blocks until free."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state(path: Path, cls: type[T], derived: Sequence[str] = ()) -> T | None:
    """The dataclass ``cls`` from the JSON object in ``path`` (keys in ``derived``, written for readers but not
    fields, are left out); None when the file is missing, unreadable or does not fit ``cls``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            return None
        return cls(**{k: v for k, v in data.items() if k not in derived})
    except (OSError, ValueError, TypeError):
        return None


def write_state(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (a temporary file beside it, then moved)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------------ helpers


def log_tail(path: str | Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ("" when unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1", prefer: int | None = None) -> int:
    """A port on ``host`` that nothing listens on right now: ``prefer`` when it is free, else any. Raises
    ``OSError`` when there is none."""
    for wanted in (prefer, 0) if prefer else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no obstacle
            try:
                s.bind((host, wanted))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free port on {host}")


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 2.0) -> int | None:
    """The HTTP status of ``GET url`` (None when nothing answers)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})), timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError, ValueError):
        return None
