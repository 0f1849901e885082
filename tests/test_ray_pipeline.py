"""The LLM stages on Ray (cm2data/pipelines/ray.py, docs/scale.md): a local Ray head, two fake OpenAI-compatible
servers, the CLI with ``--ray`` and two ``--base-url``s.

The Ray environment comes from the project's own script (scripts/install_ray.sh: built on first use, about a
minute, then cached); the head is this module's own (``ray start --head --block`` in a new session, its files in a
temporary folder) and every process of that session is killed afterwards, pass or fail. The balancer itself is
tested without Ray at the end. Ray runs take 30-60 s each on two cores: the Ray tests are marked ``slow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_llm import RoutedOpenAI, fake_model
from scripted_openai import Slow, Status
from test_pipelines import CLI, ROOT, check_accounting, cli_env, record_of, simple_dialogue, write_input

from cm2data import store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STEP = "label_checklists"  # the annotate stage's LLM step (its journal and its Ray actors)


# ------------------------------------------------------------------------------------------------ the cluster


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # fields after the command: state ppid pgrp session


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _session_of(int(entry.name)) == sid:
            pids.append(int(entry.name))
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_venv() -> Path:
    """This checkout's Ray environment, built or found by scripts/install_ray.sh."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install_ray.sh")], capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    venv = Path(done.stdout.strip().splitlines()[-1])
    assert (venv / "bin" / "cm2data").exists() and (venv / "bin" / "ray").exists()
    return venv


@pytest.fixture(scope="module")
def ray_head(ray_venv: Path) -> Iterator[tuple[str, int]]:
    """A Ray head of this module: (address, session id of its processes). Ray replaces 127.0.0.1 by the machine's
    own address (ray._private.services.resolve_ip_for_localhost); nothing leaves the machine."""
    temp = Path(tempfile.mkdtemp(prefix="cm2ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    log = temp / "head.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [
                str(ray_venv / "bin" / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                "--port=0",
                f"--temp-dir={temp}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--ray-client-server-port={_free_port()}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        address = None
        deadline = time.monotonic() + 180
        while address is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            for line in log.read_text(errors="replace").splitlines():
                if "ray start --address='" in line:
                    address = line.split("ray start --address='", 1)[1].split("'", 1)[0]
        assert address, f"the Ray head did not start:\n{log.read_text(errors='replace')[-3000:]}"
        yield address, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)  # ray start --block stops what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        for pid in _session_pids(proc.pid):  # and whatever is left of this head's session (its workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- helpers


def _ray_cli(venv: Path) -> str:
    return str(venv / "bin" / "cm2data")


def _comparable(d: Any) -> dict[str, Any]:
    row = store.to_row(d)
    history = json.loads(row["provenance"]["history"])
    for entry in history:
        entry.pop("at", None)  # when the stage ran
    row["provenance"] = {**row["provenance"], "history": history}
    return row


def _journal_entries(work: Path) -> dict[str, str]:
    """Journal key → record id, over every journal file of the LLM step."""
    out = {}
    for path in sorted((work / "journal").glob(f"{STEP}*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                out[entry["key"]] = json.loads(entry["update"]["record"])["id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line
    return out


def _annotate_requests(*servers: RoutedOpenAI, since: tuple[int, ...] | None = None) -> Counter[str | None]:
    counts: Counter[str | None] = Counter()
    for i, server in enumerate(servers):
        for body in server.requests[since[i] if since else 0 :]:
            if body["_kind"] == "annotate":
                counts[record_of(body)] += 1
    return counts


def _kill_a_worker(work: Path, sid: int, proc: subprocess.Popen[str], at_least: int) -> tuple[int, set[str]]:
    """Wait until ``at_least`` rows are journaled, then SIGKILL replica 0 of the LLM step (a process of this
    module's head, checked); its pid and the record ids journaled at that moment."""
    deadline = time.monotonic() + 240
    while len(_journal_entries(work)) < at_least and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = [json.loads(line) for line in (work / "ray-workers.jsonl").read_text().splitlines()]
    (target,) = [w for w in workers if w["step"] == STEP and w["replica"] == 0 and w["attempt"] == 0]
    assert target["host"] == socket.gethostname() and _session_of(target["pid"]) == sid, target
    os.kill(target["pid"], signal.SIGKILL)
    return target["pid"], set(_journal_entries(work).values())


# ----------------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_ray_stage_on_two_servers_matches_the_local_run(ray_venv: Path, ray_head: tuple[str, int], tmp_path: Path):
    """``cm2data annotate --ray ADDRESS --base-url A --base-url B``: every record exactly once, both servers used,
    two replicas of the LLM step, and the same records as a local run on one server."""
    address, _ = ray_head
    n = 12
    src = write_input(tmp_path / "in", [simple_dialogue(i) for i in range(n)])

    def route(body: dict[str, Any]) -> Any:
        return Slow(0.1, fake_model(body)) if body["_kind"] == "annotate" else fake_model(body)

    with RoutedOpenAI(route) as a, RoutedOpenAI(route) as b:
        local = subprocess.run(
            [CLI, "annotate", "--in", str(src), "--out", str(tmp_path / "local"), "--base-url", a.base_url],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert local.returncode == 0, local.stderr
        before = (len(a.requests), len(b.requests))
        out = tmp_path / "ray"
        cmd = [_ray_cli(ray_venv), "annotate", "--in", str(src), "--out", str(out), "--batch-size", "3"]
        cmd += ["--base-url", a.base_url, "--base-url", b.base_url, "--ray", address]
        done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        per_server = [_annotate_requests(s, since=(k,)) for s, k in ((a, before[0]), (b, before[1]))]
        urls = [a.base_url, b.base_url]
    summary = check_accounting(out, n)
    assert summary["accepted"] == n and summary["ray"]["address"] == address and summary["ray"]["replicas"] == 2
    assert summary["llm"]["base_urls"] == urls
    # each record was asked once, and both servers got a share
    total = per_server[0] + per_server[1]
    assert sorted(total) == [f"rec-{i:02d}" for i in range(n)] and set(total.values()) == {1}
    assert all(sum(c.values()) > 0 for c in per_server), per_server
    # the LLM step ran as two Ray actors (processes other than the driver)
    workers = [json.loads(line) for line in (out / ".work" / "ray-workers.jsonl").read_text().splitlines()]
    pids = {w["pid"] for w in workers if w["step"] == STEP}
    assert len(pids) == 2
    # the same records as the local run (the stage's timestamp aside)
    ray_records = sorted((_comparable(d) for d in store.read_dataset(out)), key=lambda r: r["id"])
    local_records = sorted((_comparable(d) for d in store.read_dataset(tmp_path / "local")), key=lambda r: r["id"])
    assert ray_records == local_records


@pytest.mark.slow
def test_ray_worker_killed_then_resumed(ray_venv: Path, ray_head: tuple[str, int], tmp_path: Path):
    """``cm2data run pipeline.yaml --ray`` (endpoints as a YAML list): a step actor SIGKILLed mid-run.

    With ``--ray-retries 0`` the command stops with the lost worker named; the same command run again finishes
    without asking again for any row journaled before, every record once in the output. With the default retries
    the command restarts the pipeline by itself and finishes, the journaled rows again not redone."""
    address, sid = ray_head
    n = 16
    src = write_input(tmp_path / "in", [simple_dialogue(i) for i in range(n)])

    def route(body: dict[str, Any]) -> Any:
        return Slow(0.5, fake_model(body)) if body["_kind"] == "annotate" else fake_model(body)

    env = cli_env(CM2DATA_LLM_MAX_CONCURRENCY="1")
    with RoutedOpenAI(route) as a, RoutedOpenAI(route) as b:
        config = tmp_path / "pipeline.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "name": "ray-resume",
                    "input": str(src),
                    "batch_size": 2,
                    "llm": {"base_url": [a.base_url, b.base_url]},
                    "stages": ["annotate"],
                }
            )
        )

        def run(out: Path, *extra: str) -> subprocess.Popen[str]:
            cmd = [_ray_cli(ray_venv), "run", str(config), "--out", str(out), "--ray", address, *extra]
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # 1. no restarts: the command fails, naming the lost worker; the same command then resumes
        out = tmp_path / "out"
        work = out / "stages" / "01-annotate" / ".work"
        proc = run(out, "--ray-retries", "0")
        _kill_a_worker(work, sid, proc, at_least=4)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode != 0, stdout
        assert f"step '{STEP}'" in stderr and "was lost" in stderr and "Run the same command again" in stderr
        finished_first = set(_journal_entries(work).values())
        assert 4 <= len(finished_first) < n, "the kill should land half-way"
        since = (len(a.requests), len(b.requests))
        proc = run(out)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-4000:]
        second = _annotate_requests(a, b, since=since)
        assert set(second) == {f"rec-{i:02d}" for i in range(n)} - finished_first  # only the unfinished rows
        assert set(second.values()) == {1}
        summary = check_accounting(out / "stages" / "01-annotate", n)
        assert summary["accepted"] == n and summary["resumed"] == len(finished_first)
        assert sorted(d.id for d in store.read_dataset(out)) == [f"rec-{i:02d}" for i in range(n)]

        # 2. default retries: the command restarts the pipeline itself and finishes
        out = tmp_path / "out2"
        work = out / "stages" / "01-annotate" / ".work"
        since = (len(a.requests), len(b.requests))
        proc = run(out)
        _, journaled = _kill_a_worker(work, sid, proc, at_least=4)
        stdout, stderr = proc.communicate(timeout=600)
        (tmp_path / "restart.stderr").write_text(stderr)  # kept for a look after a failure
        assert proc.returncode == 0, stderr[-4000:]
        assert "was lost" in stderr and "restarting the pipeline" in stderr
        asked = _annotate_requests(a, b, since=since)
    summary = check_accounting(out / "stages" / "01-annotate", n)
    assert summary["accepted"] == n and summary["resumed"] >= len(journaled)
    assert sorted(asked) == [f"rec-{i:02d}" for i in range(n)]
    assert all(asked[r] == 1 for r in journaled)  # journaled before the kill: never asked again
    attempts = {json.loads(line)["attempt"] for line in (work / "ray-workers.jsonl").read_text().splitlines()}
    assert attempts == {0, 1}


def test_ray_flag_without_ray_says_how(tmp_path: Path):
    """The toolkit's own environment has no Ray: ``--ray`` fails at once and names the Ray environment's script."""
    if sys.modules.get("ray") is not None or shutil.which("ray", path=str(Path(sys.executable).parent)):
        pytest.skip("this environment has Ray")
    src = write_input(tmp_path / "in", [simple_dialogue(0)])
    done = subprocess.run(
        [CLI, "annotate", "--in", str(src), "--out", str(tmp_path / "out"), "--ray", "auto"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "scripts/install_ray.sh" in " ".join(done.stderr.split())


# ---------------------------------------------------------------------------------- balancing, without Ray


def test_balancer_least_busy_round_robin_and_cooldown():
    from cm2data.llm.balance import Balancer

    lb = Balancer(["http://a", "http://b", "http://c"], cooldown=60, seed=0)
    first = [lb.acquire() for _ in range(3)]
    assert sorted(first) == [0, 1, 2]  # one each before any gets a second
    lb.release(first[0])
    assert lb.acquire() == first[0]  # the only one with nothing in flight
    lb.release(first[1], ok=False)  # a transient fault: avoided while it cools down …
    picks = [lb.acquire() for _ in range(4)]
    assert first[1] not in picks
    for i in range(3):
        lb.release(i, ok=False)
    assert lb.all_cooling() and lb.acquire() in (0, 1, 2)  # … unless every endpoint is cooling down
    assert lb.stats()["http://b"]["sent"] >= 1


def test_several_base_urls_in_config_and_yaml():
    from cm2data.llm import LLMConfig
    from cm2data.pipelines import PipelineConfig

    assert LLMConfig(base_url=["http://a/v1/", "http://b/v1", "http://a/v1"]).endpoints == (
        "http://a/v1",
        "http://b/v1",
    )
    assert LLMConfig(base_url="http://a/v1,http://b/v1").endpoints == ("http://a/v1", "http://b/v1")
    assert LLMConfig(base_url="http://a/v1").endpoints == ("http://a/v1",)
    with pytest.raises(ValueError, match="http:// or https://"):
        LLMConfig(base_url=["http://a/v1", "b:8000"])
    config = PipelineConfig(llm={"base_url": ["http://a/v1", "http://b/v1"]}, stages=["synthesize"])
    assert config.llm == {"base_url": ["http://a/v1", "http://b/v1"]}


def test_one_failing_endpoint_loses_no_record(tmp_path: Path):
    """Two endpoints, one answering HTTP 503 to every chat request (its model list still answers), in a local run
    of filter (distilabel's OpenAILLM, balanced) then annotate (LLMClient, balanced): the failed requests are retried
    on the healthy endpoint, every record is accepted, and the healthy one got all the answers."""
    from cm2data.pipelines import run_stage
    from cm2data.pipelines.config import AnnotateConfig, FilterConfig
    from cm2data.pipelines.runner import resolve_endpoint

    n = 6
    with RoutedOpenAI(fake_model) as good, RoutedOpenAI(lambda body: Status(503, "overloaded")) as bad:
        endpoint = resolve_endpoint(
            [bad.base_url, good.base_url],
            settings={"max_retries": 3, "backoff_initial": 0.01, "backoff_max": 0.05},
            start_embedded=False,
        )
        assert endpoint.config.endpoints == (bad.base_url, good.base_url)
        src = write_input(tmp_path / "in", [simple_dialogue(i) for i in range(n)])
        run_stage("filter", FilterConfig(), tmp_path / "f", src=src, endpoint=endpoint)
        run_stage("annotate", AnnotateConfig(), tmp_path / "a", src=tmp_path / "f", endpoint=endpoint)
        kinds_bad = Counter(b["_kind"] for b in bad.requests)
        kinds_good = Counter(b["_kind"] for b in good.requests)
    assert check_accounting(tmp_path / "f", n)["accepted"] == n
    assert check_accounting(tmp_path / "a", n)["accepted"] == n
    assert kinds_bad["judge"] > 0 and kinds_bad["annotate"] > 0  # both paths tried the failing endpoint …
    assert kinds_good["judge"] == n and kinds_good["annotate"] == n  # … and every answer came from the good one


def test_an_endpoint_down_at_start(tmp_path: Path):
    """Before a run (``resolve_endpoint``) every endpoint must answer: the one that does not is named. Inside a running
    stage (the client's check on first use, e.g. a restarted Ray worker) a dead endpoint only cools down and the
    requests go to the live one."""
    import asyncio

    from cm2data.llm import LLMClient, LLMConfig, LLMUnreachableError
    from cm2data.pipelines.runner import resolve_endpoint

    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with RoutedOpenAI(fake_model) as good:
        with pytest.raises(LLMUnreachableError, match=dead.replace(".", r"\.")):
            resolve_endpoint([good.base_url, dead], start_embedded=False)

        async def ask() -> list[str]:
            async with LLMClient(LLMConfig(base_url=[dead, good.base_url], max_retries=2)) as client:
                answers = [await client.chat([{"role": "user", "content": "hi"}], stage="t") for _ in range(4)]
                assert client.balancer.stats()[dead]["failed"] >= 1
                return [a.text for a in answers]

        assert len(asyncio.run(ask())) == 4
        assert len(good.requests) == 4


def test_journal_files_of_several_processes_and_a_torn_line(tmp_path: Path):
    """A replica's journal reads the step's other files too; a torn last line (a kill mid-write) is ended at load, so
    the next entry is not glued to it and lost."""
    from cm2data.pipelines.journal import Journal

    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "step.hostA-1.jsonl").write_text('{"key": "a", "update": {"x": 1}}\n{"key": "b", "upd')
    (folder / "step.jsonl").write_text('{"key": "c", "update": {"x": 3}}\n')
    mine = Journal(folder / "step.hostA-1.jsonl", (folder / "step.jsonl",))
    assert mine.load() == {"c": {"x": 3}, "a": {"x": 1}}
    mine.append("d", {"x": 4})
    assert Journal(folder / "step.hostB-2.jsonl", tuple(folder.glob("step.*.jsonl"))).load() == {
        "a": {"x": 1},
        "d": {"x": 4},
    }
