"""The local Argilla stack for human review: Redis, an in-memory OpenSearch and argilla-server 2.8.0, on loopback.

:func:`start` brings up, each on a free ``127.0.0.1`` port and each detached in its own process group:

1. ``redis-server`` (Debian's; ``scripts/argilla_stack.sh install`` apt-installs it when missing), no persistence;
2. ``osmem-server`` (the static binary of the PyPI package ``osmem-server``: an in-memory OpenSearch-compatible
   search engine);
3. the Argilla server, run by ``argilla_server_patch.py serve`` from its own environment
   (``$CM2DATA_CACHE/venvs/argilla-<hash of requirements/argilla-server.txt + Python version>``, built on first use):
   one process that registers the read-modify-write search engine (so the web UI's response endpoints work on
   osmem), migrates the SQLite database, creates or updates the owner user, reindexes every dataset (osmem forgets
   everything when it stops) and then serves the API and the web UI;
4. ``workers`` Argilla background-job workers (rq), unless 0.

Ready means ``GET /api/v1/status`` answers 200 (the server reaches its search engine) and ``GET /api/v1/me``
accepts the owner's API key. All state lives in one folder (:func:`stack_dir`: ``$CM2DATA_ARGILLA_DIR``, default
``$CM2DATA_CACHE/argilla``; mode 0700): ``argilla.db`` (the SQLite database, kept across stop/start unless ``fresh``),
``credentials.json`` (owner username, password, API key, workspace; mode 0600, kept across starts),
``stack.json`` (ports and process ids), ``last_port``, ``logs/<component>.log`` (previous one kept as
``.log.1``) and ``tmp/`` (the server's copy of the web UI's files). A lock file serialises starts and stops.

:func:`stop` sends SIGTERM to each component's process group (workers, server, osmem, Redis), then SIGKILL after
``timeout``. :func:`status` reports what runs.

Starting, stopping, the lock and the state file go through :mod:`cm2data.supervisor`, shared with the embedded model
server. This module imports only the standard library and :mod:`cm2data.supervisor`: it works without argilla
installed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cm2data import supervisor
from cm2data.supervisor import cache_dir, log_tail  # also this module's own API, as before

HOST = "127.0.0.1"
STATE_FILE = "stack.json"
CREDENTIALS_FILE = "credentials.json"
DB_FILE = "argilla.db"
LAST_PORT_FILE = "last_port"
DEFAULT_USERNAME = "owner"
DEFAULT_WORKSPACE = "cm2data"
#: start order; stop goes the other way
COMPONENTS = ("redis", "osmem", "server", "worker")
#: what each component's command line contains (guards against a recycled process id)
_MARKERS = {
    "redis": b"redis-server",
    "osmem": b"osmem-server",
    "server": b"argilla_server_patch",
    "worker": b"argilla_server_patch",
}
_PATCH = Path(__file__).with_name("argilla_server_patch.py")


class StackError(RuntimeError):
    """The stack could not be built, started or stopped; the message says which log to read (and its end)."""


@dataclass
class Credentials:
    """The owner user the stack creates: web UI login (``username``/``password``) and SDK key (``api_key``)."""

    username: str
    password: str
    api_key: str
    workspace: str


@dataclass
class ArgillaStack:
    """A running (or starting) stack, as recorded in ``stack.json``."""

    state_dir: str
    port: int
    redis_port: int
    osmem_port: int
    python: str
    username: str
    workspace: str
    started_at: float
    pids: dict[str, int] = field(default_factory=dict)
    host: str = HOST
    ready_seconds: float | None = None

    @property
    def api_url(self) -> str:
        """The server's URL (API under ``/api/v1``, the web UI at ``/``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def credentials(self) -> Credentials:
        """The owner's credentials, read from ``credentials.json``."""
        return read_credentials(Path(self.state_dir))

    @property
    def api_key(self) -> str:
        return self.credentials.api_key

    def log(self, component: str) -> Path:
        """The log file of ``component`` (one of :data:`COMPONENTS`)."""
        return Path(self.state_dir) / "logs" / f"{component}.log"

    def alive(self) -> dict[str, bool]:
        """Each recorded component → whether its process runs."""
        return {name: _alive(pid, name) for name, pid in self.pids.items()}

    def healthy(self, timeout: float = 2.0) -> bool:
        """The server answers ``/api/v1/status`` with 200 (it reaches its search engine)."""
        return supervisor.http_status(f"{self.api_url}/api/v1/status", timeout=timeout) == 200

    def env(self) -> dict[str, str]:
        """``ARGILLA_API_URL`` and ``ARGILLA_API_KEY`` (the variables ``argilla.Argilla()`` reads)."""
        return {"ARGILLA_API_URL": self.api_url, "ARGILLA_API_KEY": self.api_key}

    def export_lines(self) -> str:
        """Shell ``export`` lines for :meth:`env` (``eval "$(cm2data review stack start)"``)."""
        return "\n".join(f"export {k}={v}" for k, v in self.env().items())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "api_url": self.api_url}


# ---------------------------------------------------------------------------------------------------- locations


def stack_dir(state_dir: str | Path | None = None) -> Path:
    """The stack's state folder: ``state_dir``, else ``$CM2DATA_ARGILLA_DIR``, else ``<cache>/argilla``."""
    if state_dir is not None:
        return Path(state_dir).absolute()
    return Path(os.environ.get("CM2DATA_ARGILLA_DIR") or cache_dir() / "argilla").absolute()


def install() -> Path:
    """The Argilla server environment's interpreter, building the environment first when needed and apt-installing
    ``redis-server`` when missing (``scripts/argilla_stack.sh install``: ~30 s the first time, instant after).
    ``CM2DATA_ARGILLA_PYTHON`` names an existing interpreter with argilla-server and osmem-server instead."""
    python = os.environ.get("CM2DATA_ARGILLA_PYTHON")
    if python:
        return Path(python)
    script = supervisor.checkout() / "scripts" / "argilla_stack.sh"
    if not script.is_file():
        raise StackError(
            f"{script} not found: build the Argilla server's environment from a cm2data checkout "
            "(bash scripts/argilla_stack.sh install), or set CM2DATA_ARGILLA_PYTHON"
        )
    returncode, last = supervisor.run_installer(script, "install")  # progress goes to our stderr, the path to stdout
    if returncode != 0 or last is None:
        raise StackError(
            f"building the Argilla stack's environment failed (exit {returncode}, {script} "
            "install); see its messages above"
        )
    return Path(last) / "bin" / "python"


def redis_binary() -> str:
    """``$CM2DATA_REDIS_SERVER``, else ``redis-server`` on PATH, else ``/usr/bin/redis-server``."""
    found = os.environ.get("CM2DATA_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(found, os.X_OK):
        raise StackError(
            "redis-server not found: apt-get install redis-server (bash scripts/argilla_stack.sh "
            "install does it as root), or set CM2DATA_REDIS_SERVER"
        )
    return found


def osmem_binary(python: Path) -> str:
    """``$OSMEM_SERVER_BIN``, else the binary inside the ``osmem_server`` package of ``python``'s environment."""
    if os.environ.get("OSMEM_SERVER_BIN"):
        return os.environ["OSMEM_SERVER_BIN"]
    for lib in ("lib", "lib64"):
        for found in sorted((python.parent.parent / lib).glob("python3*/site-packages/osmem_server/bin/osmem-server")):
            return str(found)
    raise StackError(
        f"osmem-server not found in the environment of {python}: rebuild it "
        "(bash scripts/argilla_stack.sh install) or set OSMEM_SERVER_BIN"
    )


# -------------------------------------------------------------------------------------------------- credentials


def read_credentials(state_dir: Path) -> Credentials:
    """The owner's credentials from ``<state_dir>/credentials.json``."""
    path = state_dir / CREDENTIALS_FILE
    try:
        return Credentials(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise StackError(f"no usable credentials in {path} ({e}): start the stack first") from e


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from creation, then moved into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def ensure_credentials(state_dir: Path, username: str | None = None, workspace: str | None = None) -> Credentials:
    """The stack's owner credentials: those in ``credentials.json`` (so that a restarted stack keeps its API key),
    else new random ones (password and API key from :mod:`secrets`). ``username``/``workspace`` given and different
    from the stored ones replace them (the password and key are kept). The file is written with mode 0600."""
    path = state_dir / CREDENTIALS_FILE
    try:
        creds = Credentials(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        creds = Credentials(
            username=username or DEFAULT_USERNAME,
            password=secrets.token_urlsafe(12),
            api_key="cm2-" + secrets.token_urlsafe(24),
            workspace=workspace or DEFAULT_WORKSPACE,
        )
    creds.username = username or creds.username
    creds.workspace = workspace or creds.workspace
    _write_private(path, json.dumps(asdict(creds), indent=2))
    return creds


# ------------------------------------------------------------------------------------------------------ helpers


def free_port(host: str = HOST, prefer: int | None = None) -> int:
    """A port on ``host`` that nothing listens on right now: ``prefer`` when it is free, else any."""
    try:
        return supervisor.free_port(host, prefer)
    except OSError as e:
        raise StackError(str(e)) from None


def _last_port(d: Path) -> int | None:
    """The server's port at the previous start (``<state>/last_port``), so that a restarted stack keeps its URL."""
    try:
        return int((d / LAST_PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _alive(pid: int, component: str) -> bool:
    """The process exists, is not a zombie, and its command line is that of ``component``."""
    return supervisor.alive(pid, _MARKERS[component])


def _read_state(d: Path) -> ArgillaStack | None:
    return supervisor.read_state(d / STATE_FILE, ArgillaStack, derived=("api_url",))


def _write_state(stack: ArgillaStack) -> None:
    supervisor.write_state(Path(stack.state_dir) / STATE_FILE, stack.as_dict())


def _server_env(d: Path, redis_port: int, osmem_port: int) -> dict[str, str]:
    """The Argilla server's environment: SQLite in the state folder, this stack's Redis and osmem, no telemetry,
    temporary files (its copy of the web UI) in ``<state>/tmp``; the toolkit's environment does not leak in."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    env.update(
        ARGILLA_HOME_PATH=str(d),
        ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{d / DB_FILE}",
        ARGILLA_REDIS_URL=f"redis://{HOST}:{redis_port}/0",
        ARGILLA_SEARCH_ENGINE="opensearch",
        ARGILLA_ELASTICSEARCH=f"http://{HOST}:{osmem_port}",
        ARGILLA_ENABLE_SHARE_YOUR_PROGRESS="false",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        TMPDIR=str(d / "tmp"),
        PYTHONUNBUFFERED="1",
        COLUMNS="160",
    )  # the workers log through rich: wide lines, not wrapped at 80
    return env


def _launch(
    stack: ArgillaStack, component: str, cmd: list[str], env: dict[str, str] | None, die_with_parent: bool
) -> subprocess.Popen[bytes]:
    proc = supervisor.launch(
        cmd, log=stack.log(component), env=env, cwd=stack.state_dir, die_with_parent=die_with_parent
    )
    stack.pids[component] = proc.pid
    _write_state(stack)
    return proc


def _wait(
    stack: ArgillaStack, component: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float
) -> None:
    outcome = supervisor.wait_for(ready, lambda: proc.poll() is not None, timeout)
    if outcome == "exited":
        raise StackError(
            f"{component} exited during start-up (exit {proc.returncode}); its log "
            f"{stack.log(component)} ends:\n{log_tail(stack.log(component))}"
        )
    if outcome == "timeout":
        raise StackError(
            f"{component} was not ready within {timeout:g} s; its log {stack.log(component)} ends:\n"
            + log_tail(stack.log(component))
        )


# ------------------------------------------------------------------------------------------------------- the API


def status(state_dir: str | Path | None = None) -> ArgillaStack | None:
    """The recorded stack if any of its processes runs (check ``.alive()`` and ``.healthy()``), else None; a stale
    state file (everything gone) is removed."""
    d = stack_dir(state_dir)
    stack = _read_state(d)
    if stack is None:
        return None
    if not any(stack.alive().values()):
        (d / STATE_FILE).unlink(missing_ok=True)
        return None
    return stack


def _stop_components(stack: ArgillaStack, timeout: float) -> None:
    for component in reversed(COMPONENTS):
        pid = stack.pids.get(component)
        if pid is not None:
            supervisor.terminate(pid, _MARKERS[component], timeout)


def _start_once(
    d: Path,
    python: Path,
    port: int,
    username: str | None,
    workspace: str | None,
    workers: int,
    timeout: float,
    die_with_parent: bool,
) -> ArgillaStack:
    creds = ensure_credentials(d, username, workspace)
    stack = ArgillaStack(
        state_dir=str(d),
        port=port,
        redis_port=free_port(),
        osmem_port=free_port(),
        python=str(python),
        username=creds.username,
        workspace=creds.workspace,
        started_at=time.time(),
    )
    t0 = time.monotonic()
    try:
        proc = _launch(
            stack,
            "redis",
            [
                redis_binary(),
                "--bind",
                HOST,
                "--port",
                str(stack.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(d),
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            None,
            die_with_parent,
        )
        _wait(stack, "redis", proc, lambda: _redis_ping(stack.redis_port), 20)
        proc = _launch(
            stack,
            "osmem",
            [osmem_binary(python), "--addr", f"{HOST}:{stack.osmem_port}", "--no-stdin-watch"],
            None,
            die_with_parent,
        )
        _wait(stack, "osmem", proc, lambda: supervisor.http_status(f"http://{HOST}:{stack.osmem_port}/") == 200, 20)
        env = _server_env(d, stack.redis_port, stack.osmem_port)
        proc = _launch(
            stack,
            "server",
            [
                str(python),
                str(_PATCH),
                "serve",
                "--host",
                HOST,
                "--port",
                str(port),
                "--credentials",
                str(d / CREDENTIALS_FILE),
            ],
            env,
            die_with_parent,
        )
        _wait(stack, "server", proc, lambda: stack.healthy(1.0), timeout)
        me = supervisor.http_status(f"{stack.api_url}/api/v1/me", {"X-Argilla-Api-Key": creds.api_key})
        if me != 200:
            raise StackError(
                f"the server does not accept the owner's API key (GET /api/v1/me: {me}); its log "
                f"{stack.log('server')} ends:\n{log_tail(stack.log('server'))}"
            )
        if workers > 0:
            _launch(
                stack,
                "worker",
                [str(python), str(_PATCH), "worker", "--num-workers", str(workers)],
                env,
                die_with_parent,
            )
    except BaseException:
        _stop_components(stack, 5)
        (d / STATE_FILE).unlink(missing_ok=True)
        raise
    stack.ready_seconds = round(time.monotonic() - t0, 1)
    _write_state(stack)
    return stack


def start(
    state_dir: str | Path | None = None,
    *,
    port: int | None = None,
    fresh: bool = False,
    workers: int = 1,
    username: str | None = None,
    workspace: str | None = None,
    timeout: float = 120.0,
    die_with_parent: bool = False,
) -> ArgillaStack:
    """Start the stack in ``state_dir`` (default :func:`stack_dir`) and wait until it is ready; reuse it when it is
    already running and healthy (a partly running one is stopped and started again).

    ``port``: the server's port (None: the previous start's port when it is free, so the URL stays the same,
    else a free one). ``fresh``: delete the database first (the credentials are
    kept); otherwise datasets, records and responses survive a stop/start (the search index is rebuilt from the
    database). ``workers``: background-job workers (0: none). ``username``/``workspace``: the owner user and its
    workspace (default ``owner``/``cm2data``, or what ``credentials.json`` holds). ``die_with_parent`` (Linux):
    every component gets SIGTERM when this process dies, for test sessions; by default the stack outlives the
    command that started it. Builds the server's environment first when needed (:func:`install`). Raises
    :class:`StackError` with the failing component's log tail."""
    d = stack_dir(state_dir)
    with supervisor.locked(d):
        running = status(d)
        if running is not None:
            if all(running.alive().values()) and running.healthy():
                if port is not None and running.port != port:
                    raise StackError(
                        f"the Argilla stack in {d} already runs at {running.api_url}; stop it first "
                        "(cm2data review stack stop) to use another port"
                    )
                return running
            _stop_components(running, 10)
            (d / STATE_FILE).unlink(missing_ok=True)
        python = install()
        os.chmod(d, 0o700)  # the database holds the API key in clear: this user's eyes only
        if fresh:
            for suffix in ("", "-wal", "-shm", "-journal"):
                (d / (DB_FILE + suffix)).unlink(missing_ok=True)
        tmp = d / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for attempt in range(2):
            try:
                chosen = port or free_port(prefer=_last_port(d) if attempt == 0 else None)
                stack = _start_once(d, python, chosen, username, workspace, workers, timeout, die_with_parent)
                (d / LAST_PORT_FILE).write_text(f"{chosen}\n")
                return stack
            except StackError as e:
                # someone took a free port in between: once more with others
                if attempt == 0 and port is None and "address already in use" in str(e).lower():
                    continue
                raise
    raise AssertionError("unreachable")


def stop(state_dir: str | Path | None = None, timeout: float = 15.0) -> ArgillaStack | None:
    """Stop the stack in ``state_dir`` (SIGTERM to each component's process group, SIGKILL after ``timeout``);
    return what was stopped, or None when nothing ran. The database and credentials stay."""
    d = stack_dir(state_dir)
    with supervisor.locked(d):
        stack = status(d)
        if stack is None:
            return None
        _stop_components(stack, timeout)
        (d / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(d / "tmp", ignore_errors=True)
        return stack
