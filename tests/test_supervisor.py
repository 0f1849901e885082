"""cm2data.supervisor, on real processes: launch detached, alive (and the recycled-pid guard), terminate (SIGTERM to
the group, SIGKILL when ignored), the parent-death signal, the lock between processes, the state file, log tail,
free ports, HTTP status, wait_for."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from cm2data import supervisor as sv

ROOT = Path(__file__).resolve().parents[1]


def _wait_until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ", 1)[1].startswith("Z")  # a zombie nobody reaped yet
    except OSError:
        return True


def test_launch_alive_terminate(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "sleep.log"
    proc = sv.launch(["sleep", "30"], log=log, cwd=tmp_path, header="# second line\n")
    try:
        assert sv.alive(proc.pid, b"sleep")
        assert not sv.alive(proc.pid, b"something-else")  # a recycled pid running another program
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # detached: its own process group
        assert log.read_text().splitlines() == ["# cm2data: sleep 30", "# second line"]
    finally:
        clean = sv.terminate(proc.pid, b"sleep", timeout=10)
    assert clean and proc.returncode == -15  # ended by SIGTERM within the timeout, and reaped
    assert not sv.alive(proc.pid, b"sleep")
    # a second launch on the same log keeps the first as <log>.1
    proc = sv.launch(["sleep", "31"], log=log)
    assert (log.parent / "sleep.log.1").read_text().startswith("# cm2data: sleep 30")
    assert log.read_text().startswith("# cm2data: sleep 31")
    sv.terminate(proc.pid, b"sleep", timeout=10)


def test_terminate_kills_the_group_and_what_ignores_sigterm(tmp_path: Path) -> None:
    # the leader ignores SIGTERM and has a child in its group: SIGKILL after the timeout takes both
    code = textwrap.dedent("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "30"])
        print("PID" + "=" + str(child.pid), flush=True)
        time.sleep(30)
    """)
    log = tmp_path / "stubborn.log"
    proc = sv.launch([sys.executable, "-c", code], log=log)
    assert _wait_until(lambda: "PID=" in log.read_text())
    child = int(log.read_text().split("PID=", 1)[1].split()[0])
    started = time.monotonic()
    assert sv.terminate(proc.pid, b"SIG_IGN", timeout=0.5) is False  # not within the timeout: killed
    assert time.monotonic() - started < 5
    assert proc.returncode == -9
    assert _wait_until(lambda: _gone(child))


def test_die_with_parent(tmp_path: Path) -> None:
    # an intermediate process launches `sleep` with die_with_parent and exits: the kernel ends the sleep
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; from cm2data import supervisor;"
        f"p = supervisor.launch(['sleep', '30'], log=Path({str(tmp_path / 'orphan.log')!r}), "
        "die_with_parent=True); print(p.pid)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    pid = int(out.stdout.strip())
    assert _wait_until(lambda: _gone(pid)), "the orphan outlived its parent"


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    release = tmp_path / "release"
    holder = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from cm2data import supervisor
        with supervisor.locked(Path({str(tmp_path / "state")!r})):
            print("held", flush=True)
            while not Path({str(release)!r}).exists():
                time.sleep(0.02)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        got = threading.Event()

        def take() -> None:
            with sv.locked(tmp_path / "state"):
                got.set()

        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert not got.wait(0.5), "the lock was taken while another process held it"
        release.touch()
        assert got.wait(10), "the lock was not free after the other process let it go"
        t.join(5)
    finally:
        release.touch()
        proc.wait(10)


@dataclass
class _State:
    pid: int
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def test_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert sv.read_state(path, _State) is None  # missing
    state = _State(pid=123, port=8000)
    sv.write_state(path, {**asdict(state), "url": state.url})
    assert json.loads(path.read_text())["url"] == "http://127.0.0.1:8000"
    assert not path.with_suffix(".tmp").exists()
    assert sv.read_state(path, _State, derived=("url",)) == state
    assert sv.read_state(path, _State) is None  # an unknown key does not fit the class
    for bad in ("{not json", "[1, 2]", '{"pid": 1}'):
        path.write_text(bad)
        assert sv.read_state(path, _State, derived=("url",)) is None, bad


def test_log_tail(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(40)))
    assert sv.log_tail(path).splitlines() == [f"line {i}" for i in range(15, 40)]
    assert sv.log_tail(path, 2) == "line 38\nline 39"
    assert sv.log_tail(tmp_path / "missing.log") == ""


def test_free_port_and_http_status() -> None:
    port = sv.free_port()
    assert sv.free_port(prefer=port) == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert sv.free_port(prefer=busy) != busy

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert sv.http_status(f"{base}/ok") == 200
        assert sv.http_status(f"{base}/nope") == 404
    finally:
        server.shutdown()
        server.server_close()
    assert sv.http_status(f"http://127.0.0.1:{sv.free_port()}/", timeout=1) is None


def test_wait_for() -> None:
    assert sv.wait_for(lambda: True, lambda: False, 1) == "ready"
    assert sv.wait_for(lambda: True, lambda: True, 1) == "exited"  # exited is checked first
    started = time.monotonic()
    assert sv.wait_for(lambda: False, lambda: False, 0.2, poll=0.05) == "timeout"
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("module", ["cm2data.llm.server", "cm2data.review.stack"])
def test_servers_share_the_supervisor(module: str) -> None:
    """Both supervised modules keep their helpers' names, now the supervisor's."""
    import importlib

    mod = importlib.import_module(module)
    assert mod.log_tail is sv.log_tail and mod.cache_dir is sv.cache_dir
    for name in ("_locked", "_terminate", "_death_signal", "_CHILDREN"):
        assert not hasattr(mod, name), f"{module}.{name} duplicates cm2data.supervisor"
