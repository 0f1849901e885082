"""The local Argilla stack (cm2data.review.stack): start, SDK, the web UI's response endpoints on the patched
search engine, restart, the CLI, and faults. The stack runs on loopback only; see docs/review.md."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cm2data.cli import app
from cm2data.review import stack as st

pytestmark = pytest.mark.slow


def _dataset(client, name: str, workspace: str):
    import argilla as rg

    settings = rg.Settings(
        fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="label", labels=["yes", "no"])]
    )
    return rg.Dataset(name=name, workspace=workspace, settings=settings, client=client).create()


def _record_server_id(dataset, external_id: str) -> str:
    for record in dataset.records:
        if record.id == external_id:
            return str(record._server_id)
    raise AssertionError(f"record {external_id} not found")


def _submitted(dataset) -> list[str]:
    """Ids of the records that the search index lists as having a submitted response (what the UI's 'Submitted'
    view and progress read): proves the index was updated, not only the database."""
    import argilla as rg

    query = rg.Query(filter=rg.Filter([("response.status", "==", "submitted")]))
    return [r.id for r in dataset.records(query=query)]


# ------------------------------------------------------------------------------------------- no server needed


def test_stack_module_imports_without_argilla() -> None:
    code = (
        "import sys; sys.modules['argilla'] = None; sys.modules['argilla_server'] = None\n"
        "import cm2data.review.stack, cm2data.review.commands\n"
        "assert 'argilla' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_credentials_private_and_kept(tmp_path: Path) -> None:
    first = st.ensure_credentials(tmp_path)
    path = tmp_path / st.CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.username == st.DEFAULT_USERNAME and first.workspace == st.DEFAULT_WORKSPACE
    assert len(first.password) >= 8 and len(first.api_key) >= 8
    again = st.ensure_credentials(tmp_path, workspace="other")
    assert (again.api_key, again.password, again.workspace) == (first.api_key, first.password, "other")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_status_and_stop_when_nothing_runs(tmp_path: Path) -> None:
    assert st.status(tmp_path) is None
    assert st.stop(tmp_path) is None
    result = CliRunner().invoke(app, ["review", "stack", "status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "not running" in result.output


def test_free_port_prefers_the_previous_one() -> None:
    port = st.free_port()
    assert st.free_port(prefer=port) == port
    import socket

    with socket.socket() as busy:
        busy.bind((st.HOST, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert st.free_port(prefer=taken) != taken


# -------------------------------------------------------------------------------------- the session's stack


def test_stack_runs_and_reports(argilla_stack_handle) -> None:
    stack = argilla_stack_handle
    assert stack.healthy()
    assert all(stack.alive().values()), stack.alive()
    assert set(stack.pids) == {"redis", "osmem", "server", "worker"}
    assert stack.api_url.startswith("http://127.0.0.1:")
    status = httpx.get(f"{stack.api_url}/api/v1/status", timeout=10).json()
    assert status["version"] == "2.8.0" and status["search_engine"]["cluster_name"] == "osmem"
    creds = Path(stack.state_dir) / st.CREDENTIALS_FILE
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(stack.state_dir).stat().st_mode) == 0o700  # argilla.db holds the API key
    assert stack.env() == {"ARGILLA_API_URL": stack.api_url, "ARGILLA_API_KEY": stack.credentials.api_key}
    # the CLI sees the same stack
    result = CliRunner().invoke(app, ["review", "stack", "status", "--state-dir", stack.state_dir, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["healthy"] is True
    # start on a running stack reuses it and prints the export lines
    result = CliRunner().invoke(app, ["review", "stack", "start", "--state-dir", stack.state_dir])
    assert result.exit_code == 0, result.output
    assert f"export ARGILLA_API_URL={stack.api_url}" in result.stdout
    assert f"export ARGILLA_API_KEY={stack.credentials.api_key}" in result.stdout
    assert st.status(stack.state_dir).pids == stack.pids


def test_sdk_record_and_ui_response_endpoints(argilla_stack, argilla_stack_handle) -> None:
    """The SDK connects and logs a record; the web UI's own endpoints (single response create/update/delete, bulk)
    work on osmem thanks to the read-modify-write engine; the SDK reads the response back."""
    import argilla as rg

    api_url, api_key = argilla_stack
    client = rg.Argilla(api_url=api_url, api_key=api_key)
    assert client.me.username == argilla_stack_handle.credentials.username
    ds = _dataset(client, f"stack-{uuid.uuid4().hex[:8]}", argilla_stack_handle.workspace)
    ds.records.log([{"id": "r1", "text": "hello"}, {"id": "r2", "text": "world"}])
    r1, r2 = _record_server_id(ds, "r1"), _record_server_id(ds, "r2")
    headers = {"X-Argilla-Api-Key": api_key}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as http:
        created = http.post(
            f"/api/v1/records/{r1}/responses", json={"values": {"label": {"value": "yes"}}, "status": "submitted"}
        )
        assert created.status_code == 201, created.text
        response_id = created.json()["id"]
        assert _submitted(ds) == ["r1"]
        updated = http.put(
            f"/api/v1/responses/{response_id}", json={"values": {"label": {"value": "no"}}, "status": "submitted"}
        )
        assert updated.status_code == 200, updated.text
        by_id = {r.id: r for r in ds.records(with_responses=True)}
        assert [(a.question_name, a.value, a.status) for a in by_id["r1"].responses] == [("label", "no", "submitted")]
        assert http.delete(f"/api/v1/responses/{response_id}").status_code == 200
        assert _submitted(ds) == []
        bulk = http.post(
            "/api/v1/me/responses/bulk",
            json={
                "items": [
                    {"record_id": r1, "values": {"label": {"value": "yes"}}, "status": "submitted"},
                    {"record_id": r2, "values": {"label": {"value": "no"}}, "status": "draft"},
                ]
            },
        )
        assert bulk.status_code == 200, bulk.text
        assert all(item["error"] is None for item in bulk.json()["items"]), bulk.text
    assert _submitted(ds) == ["r1"]
    by_id = {r.id: r for r in ds.records(with_responses=True)}
    assert [(a.value, a.status) for a in by_id["r1"].responses] == [("yes", "submitted")]
    assert [(a.value, a.status) for a in by_id["r2"].responses] == [("no", "draft")]
    assert ds.progress()["completed"] == 1


def test_wrong_api_key_is_a_clear_error(argilla_stack) -> None:
    import argilla as rg
    from argilla._exceptions import ArgillaCredentialsError

    api_url, _ = argilla_stack
    with pytest.raises(ArgillaCredentialsError, match="invalid"):
        rg.Argilla(api_url=api_url, api_key="not-the-key")
    answer = httpx.get(f"{api_url}/api/v1/me", headers={"X-Argilla-Api-Key": "not-the-key"}, timeout=10)
    assert answer.status_code == 401


# ---------------------------------------------------------------------------------------- a stack of its own


def test_restart_keeps_url_credentials_and_data(tmp_path: Path) -> None:
    """Stop, then start again: same URL and API key, and the records and responses are found again (osmem
    forgot them; the server reindexed them from the database). --fresh starts from an empty database."""
    import argilla as rg

    if os.environ.get("CM2DATA_SKIP_REVIEW_STACK") == "1":
        pytest.skip("CM2DATA_SKIP_REVIEW_STACK=1")
    first = st.start(tmp_path, workers=0, die_with_parent=True)
    try:
        assert set(first.pids) == {"redis", "osmem", "server"}
        client = rg.Argilla(api_url=first.api_url, api_key=first.api_key)
        ds = _dataset(client, "restart", first.workspace)
        ds.records.log([{"id": "a", "text": "kept"}])
        answer = httpx.post(
            f"{first.api_url}/api/v1/records/{_record_server_id(ds, 'a')}/responses",
            headers={"X-Argilla-Api-Key": first.api_key},
            timeout=30,
            json={"values": {"label": {"value": "yes"}}, "status": "submitted"},
        )
        assert answer.status_code == 201, answer.text
        stopped = st.stop(tmp_path)
        assert stopped is not None and not any(stopped.alive().values())
        assert st.status(tmp_path) is None
        t0 = time.monotonic()
        second = st.start(tmp_path, workers=0, die_with_parent=True)
        assert time.monotonic() - t0 < 60
        assert (second.api_url, second.api_key) == (first.api_url, first.api_key)
        assert "reindexed 1 datasets, 1 records" in second.log("server").read_text()
        client = rg.Argilla(api_url=second.api_url, api_key=second.api_key)
        again = client.datasets("restart", workspace=second.workspace)
        assert _submitted(again) == ["a"]
        st.stop(tmp_path)
        third = st.start(tmp_path, workers=0, fresh=True, die_with_parent=True)
        client = rg.Argilla(api_url=third.api_url, api_key=third.api_key)
        assert [d.name for d in client.datasets] == []
    finally:
        st.stop(tmp_path)
    assert st.status(tmp_path) is None


def test_broken_server_environment_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter without argilla_server: start raises StackError quoting the server's log, and nothing is
    left running."""
    if os.environ.get("CM2DATA_SKIP_REVIEW_STACK") == "1":
        pytest.skip("CM2DATA_SKIP_REVIEW_STACK=1")
    good = st.install()
    monkeypatch.setenv("OSMEM_SERVER_BIN", st.osmem_binary(good))
    monkeypatch.setenv("CM2DATA_ARGILLA_PYTHON", sys.executable)  # the toolkit's: no argilla_server in it
    with pytest.raises(st.StackError, match=r"server exited during start-up(.|\n)*argilla_server"):
        st.start(tmp_path, workers=0, die_with_parent=True, timeout=60)
    assert st.status(tmp_path) is None
    assert not (tmp_path / st.STATE_FILE).exists()
