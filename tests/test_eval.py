"""``cm2data eval``: BFCL v4 multi-turn through bfcl-eval's own loop and checker against loopback fake servers
(``bfcl_fake.py``: a model that never calls tools, one that replays the ground truth, one that sends garbage calls),
the fault paths (unreachable endpoint, a server failing half-way, a killed run), the embedded model end to end, the
summary and ``compare``.

The benchmark environment is built by the project's own script (``scripts/install_eval.sh bfcl``; ~2-3 minutes the
first time, cached by its requirements hash after); tests that need it are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from bfcl_fake import BfclFake
from typer.testing import CliRunner

from cm2data.cli import app
from cm2data.eval.bfcl import CATEGORIES, EvalError, parse_categories, read_ids, summarize
from cm2data.eval.compare import compare_runs
from cm2data.eval.env import bfcl_data_dir, ensure_env
from cm2data.eval.report import render_bfcl

ROOT = Path(__file__).resolve().parents[1]
#: two entries per category whose conversations start differently (so the replaying server can tell them apart)
SUBSET = [
    "multi_turn_base_0",
    "multi_turn_base_1",
    "multi_turn_miss_func_2",
    "multi_turn_miss_func_3",
    "multi_turn_miss_param_4",
    "multi_turn_miss_param_5",
    "multi_turn_long_context_6",
    "multi_turn_long_context_7",
]
#: the three smallest-prompt base entries (one tool class, two turns): what the 135M embedded model can hold
EMBEDDED_IDS = ["multi_turn_base_100", "multi_turn_base_104", "multi_turn_base_105"]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_ids(path: Path, ids: list[str]) -> Path:
    path.write_text("\n".join(ids) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bfcl_python() -> Path:
    """The bfcl benchmark environment's interpreter, built by scripts/install_eval.sh (cached)."""
    return ensure_env("bfcl")


@pytest.fixture(scope="session")
def bfcl_data(bfcl_python: Path) -> Path:
    return bfcl_data_dir(bfcl_python)


# --------------------------------------------------------------------------------------- inputs (no environment)


def test_categories_and_ids_files(tmp_path: Path) -> None:
    assert parse_categories(None) == CATEGORIES
    assert parse_categories(["miss_param,multi_turn_base", "base"]) == ("multi_turn_base", "multi_turn_miss_param")
    with pytest.raises(EvalError, match="unknown category 'simple'"):
        parse_categories(["simple"])
    plain = tmp_path / "ids.txt"
    plain.write_text("# chosen\nmulti_turn_base_3\n\nmulti_turn_miss_func_1  # why\nmulti_turn_base_3\n")
    assert read_ids(plain) == ["multi_turn_base_3", "multi_turn_miss_func_1"]
    as_json = tmp_path / "ids.json"
    as_json.write_text('["multi_turn_long_context_9", "multi_turn_base_0"]')
    assert read_ids(as_json) == ["multi_turn_long_context_9", "multi_turn_base_0"]
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text('{"id": "multi_turn_miss_param_2", "outcome": "fail"}\n')
    assert read_ids(outcomes) == ["multi_turn_miss_param_2"]
    bad = tmp_path / "bad.txt"
    bad.write_text("simple_3\nmulti_turn_base_x\n")
    with pytest.raises(EvalError, match=r"not BFCL v4 multi-turn entry ids.*simple_3, multi_turn_base_x"):
        read_ids(bad)


def test_unreachable_endpoint_fails_before_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cm2data.llm.server import free_port

    # an interpreter that does not exist: the endpoint check must come first, before any environment is built
    monkeypatch.setenv("CM2DATA_EVAL_BFCL_PYTHON", str(tmp_path / "no-python"))
    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    result = invoke("eval", "bfcl", "--base-url", url, "--model", "m", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert f"cannot reach the model server at {url}" in result.output
    assert "Nothing was run" in result.output
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "run").exists()


def test_model_not_served_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CM2DATA_EVAL_BFCL_PYTHON", str(tmp_path / "no-python"))
    data = tmp_path / "data"  # the fake only needs BFCL's files for replies; an empty subset here
    (data / "possible_answer").mkdir(parents=True)
    with BfclFake(data, [], "silent", model="served-model") as fake:
        result = invoke("eval", "bfcl", "--base-url", fake.base_url, "--model", "other", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "model 'other' is not served" in result.output and "it serves: served-model" in result.output
    assert fake.requests == []


def _outcome(entry_id: str, outcome: str, error_type: str | None = None) -> dict[str, Any]:
    return {
        "id": entry_id,
        "category": entry_id.rsplit("_", 1)[0],
        "outcome": outcome,
        "error_type": error_type,
        "tool_calls": 2,
        "input_tokens": 10,
        "output_tokens": 3,
    }


def test_summary_accuracy_is_bfcls_unweighted_mean_and_errors_are_listed() -> None:
    rows = [
        _outcome("multi_turn_base_0", "pass"),
        _outcome("multi_turn_base_1", "fail", "no_tool_calls"),
        _outcome("multi_turn_base_2", "pass"),
        _outcome("multi_turn_base_3", "error", "inference_error"),
        _outcome("multi_turn_miss_func_0", "pass"),
    ]
    s = summarize(rows)
    assert s["categories"]["multi_turn_base"] == {
        "entries": 4,
        "passed": 2,
        "failed": 1,
        "errors": 1,
        "accuracy": 0.5,
        "error_types": {"no_tool_calls": 1, "inference_error": 1},
    }
    assert s["overall"]["accuracy"] == 0.75  # (0.5 + 1.0) / 2, not 3/5
    assert s["overall"]["micro_accuracy"] == 0.6
    assert s["error_rows"] == ["multi_turn_base_3"] and s["complete"] is False
    page = render_bfcl(s, rows)
    assert "<td class='error'>error</td>" in page and "75.00 %" in page and "data:image/png;base64," in page


def _fake_run(folder: Path, rows: list[dict[str, Any]], model: str) -> Path:
    folder.mkdir()
    (folder / "outcomes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({**summarize(rows), "model": model}))
    return folder


def test_compare_counts_flips_on_common_entries(tmp_path: Path) -> None:
    a = _fake_run(
        tmp_path / "a",
        [
            _outcome("multi_turn_base_0", "pass"),
            _outcome("multi_turn_base_1", "fail", "no_tool_calls"),
            _outcome("multi_turn_base_2", "error", "inference_error"),
            _outcome("multi_turn_miss_func_0", "pass"),
            _outcome("multi_turn_miss_func_9", "pass"),
        ],
        "sft",
    )
    b = _fake_run(
        tmp_path / "b",
        [
            _outcome("multi_turn_base_0", "fail", "multi_turn:instance_state_mismatch"),
            _outcome("multi_turn_base_1", "pass"),
            _outcome("multi_turn_base_2", "pass"),
            _outcome("multi_turn_miss_func_0", "pass"),
            _outcome("multi_turn_long_context_0", "pass"),
        ],
        "rl",
    )
    c = compare_runs(a, b)
    assert [f["id"] for f in c["flips"]["fixed"]] == ["multi_turn_base_1", "multi_turn_base_2"]
    assert [f["id"] for f in c["flips"]["broken"]] == ["multi_turn_base_0"]
    base = next(r for r in c["categories"] if r["category"] == "multi_turn_base")
    assert (base["entries"], base["a"], base["b"], base["delta"]) == (3, 0.3333, 0.6667, 0.3334)
    assert c["overall"]["entries"] == 4
    assert c["only_in_a"] == ["multi_turn_miss_func_9"] and c["only_in_b"] == ["multi_turn_long_context_0"]
    result = invoke("eval", "compare", str(a), str(b), "--json", str(tmp_path / "c.json"))
    assert result.exit_code == 0, result.output
    assert "pass → fail (B broke): 1" in result.output and "multi_turn_base_0" in result.output
    assert json.loads((tmp_path / "c.json").read_text())["flips"] == c["flips"]


# ------------------------------------------------------------------------------ BFCL itself, against fake models


def run_cli(fake: BfclFake, out: Path, *extra: str) -> Any:
    return invoke("eval", "bfcl", "--base-url", fake.base_url, "--out", str(out), *extra)


@pytest.mark.slow
def test_replaying_the_ground_truth_scores_100(tmp_path: Path, bfcl_data: Path) -> None:
    with BfclFake(bfcl_data, SUBSET, "replay") as fake:
        result = run_cli(fake, tmp_path / "run", "--ids", str(write_ids(tmp_path / "ids.txt", SUBSET)))
    assert result.exit_code == 0, result.output
    assert fake.failures == []
    assert {r.entry for r in fake.requests} == set(SUBSET)  # every entry was really asked, by BFCL's own client
    assert all(r.body.get("tools") for r in fake.requests)  # function-calling mode: the tools go with the request
    outcomes = jsonl(tmp_path / "run" / "outcomes.jsonl")
    assert [o["id"] for o in outcomes] == SUBSET
    assert [o["outcome"] for o in outcomes] == ["pass"] * len(SUBSET)
    assert all(o["tool_calls"] > 0 and o["undecodable_steps"] == 0 for o in outcomes)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["overall"] == {"entries": 8, "passed": 8, "accuracy": 1.0, "micro_accuracy": 1.0}
    assert {c: s["accuracy"] for c, s in summary["categories"].items()} == dict.fromkeys(CATEGORIES, 1.0)
    assert summary["error_rows"] == [] and summary["error_types"] == {}
    assert summary["bfcl_eval"] == "2026.3.23" and summary["model"] == "fake-bfcl"
    assert "multi_turn_long_context" in (tmp_path / "run" / "report.html").read_text()
    assert "overall (mean of" in result.output


@pytest.mark.slow
def test_a_model_that_never_calls_tools_scores_0_without_error_rows(tmp_path: Path, bfcl_data: Path) -> None:
    wanted = ["multi_turn_base_0", "multi_turn_base_1", "multi_turn_miss_param_0", "multi_turn_miss_param_1"]
    with BfclFake(bfcl_data, wanted, "silent") as fake:
        result = run_cli(fake, tmp_path / "run", "--limit", "2", "--categories", "base,miss_param")
    assert result.exit_code == 0, result.output
    outcomes = jsonl(tmp_path / "run" / "outcomes.jsonl")
    assert [o["id"] for o in outcomes] == wanted  # --limit: the first 2 of each category asked for
    assert {(o["outcome"], o["error_type"], o["tool_calls"]) for o in outcomes} == {("fail", "no_tool_calls", 0)}
    assert all(o["turns"] >= 2 for o in outcomes)  # every turn was asked, none ended in an error
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["overall"]["accuracy"] == 0.0 and summary["error_rows"] == []
    assert summary["error_types"] == {"no_tool_calls": 4}


@pytest.mark.slow
def test_garbage_tool_calls_are_an_error_type_and_never_run(tmp_path: Path, bfcl_data: Path) -> None:
    marker = tmp_path / "INJECTED"
    wanted = ["multi_turn_base_0", "multi_turn_base_1", "multi_turn_base_2", "multi_turn_base_3"]
    with BfclFake(bfcl_data, wanted, "garbage", marker=marker) as fake:
        result = run_cli(fake, tmp_path / "run", "--ids", str(write_ids(tmp_path / "ids.txt", wanted)))
    assert result.exit_code == 0, result.output
    assert not marker.exists()  # the tool name that is Python code was never evaluated
    outcomes = jsonl(tmp_path / "run" / "outcomes.jsonl")
    assert [o["id"] for o in outcomes] == wanted
    assert {(o["outcome"], o["error_type"]) for o in outcomes} == {("fail", "undecodable_tool_call")}
    assert all(o["undecodable_steps"] == o["turns"] > 0 for o in outcomes)  # one garbage call per turn, each refused
    reasons = " ".join(o["error_message"] for o in outcomes)
    for why in ("refused tool name", "tool arguments are not a JSON object", "JSONDecodeError"):
        assert why in reasons
    assert len(fake.requests) == sum(o["turns"] for o in outcomes)


@pytest.mark.slow
def test_a_server_failing_half_way_gives_error_rows_that_a_rerun_retries(tmp_path: Path, bfcl_data: Path) -> None:
    wanted = SUBSET[:4]
    ids = write_ids(tmp_path / "ids.txt", wanted)
    with BfclFake(bfcl_data, wanted, "replay") as fake:
        fake.fail_ids = {"multi_turn_base_1"}
        first = run_cli(fake, tmp_path / "run", "--ids", str(ids))
        assert first.exit_code == 1, first.output
        assert "1 entries hit request errors" in first.output
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["error_rows"] == ["multi_turn_base_1"]
        assert summary["categories"]["multi_turn_base"]["errors"] == 1
        bad = next(o for o in jsonl(tmp_path / "run" / "outcomes.jsonl") if o["id"] == "multi_turn_base_1")
        assert bad["outcome"] == "error" and bad["error_type"] == "inference_error"
        assert "InternalServerError" in bad["error_message"]
        fake.fail_ids = set()
        asked_before = len(fake.requests)
        second = run_cli(fake, tmp_path / "run", "--ids", str(ids))
    assert second.exit_code == 0, second.output
    assert {r.entry for r in fake.requests[asked_before:]} == {"multi_turn_base_1"}  # only the error row ran again
    rows = jsonl(tmp_path / "run" / "results.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(wanted)  # replaced, not duplicated
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["overall"]["passed"] == 4 and summary["error_rows"] == [] and summary["retried_error_rows"] == 1


@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicates(tmp_path: Path, bfcl_data: Path) -> None:
    out = tmp_path / "run"
    ids = write_ids(tmp_path / "ids.txt", SUBSET)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with BfclFake(bfcl_data, SUBSET, "replay", delay=0.15) as fake:
        cmd = [
            sys.executable,
            "-c",
            "from cm2data.cli import main; main()",
            "eval",
            "bfcl",
            "--base-url",
            fake.base_url,
            "--ids",
            str(ids),
            "--out",
            str(out),
            "--concurrency",
            "2",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 240
        results = out / "results.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        runner_pid = int((out / "runner.log").read_text().split("pid ", 1)[1].split()[0])
        os.kill(runner_pid, signal.SIGKILL)  # the benchmark subprocess, mid-run
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 2, output
        assert "the BFCL runner was killed (signal 9)" in output and "run the same command to resume" in output
        kept = {r["id"] for r in jsonl(results)}
        assert 2 <= len(kept) < len(SUBSET)
        assert not (out / "outcomes.jsonl").exists()
        with results.open("a") as fh:  # a write torn by the kill
            fh.write('{"id": "multi_turn_base_0", "result": [[')
        asked_before = len(fake.requests)
        again = run_cli(fake, out, "--ids", str(ids), "--concurrency", "2")
    assert again.exit_code == 0, again.output
    assert f"resuming: {len(kept)} of 8 entries already done" in again.output
    assert "1 torn line(s) of a killed run dropped" in again.output
    asked_again = {r.entry for r in fake.requests[asked_before:]}
    assert asked_again == set(SUBSET) - kept  # nothing done before was generated again
    rows = [r["id"] for r in jsonl(results)]
    assert sorted(rows) == sorted(SUBSET)  # every entry once
    outcomes = jsonl(out / "outcomes.jsonl")
    assert [o["outcome"] for o in outcomes] == ["pass"] * 8
    assert json.loads((out / "summary.json").read_text())["resumed_entries"] == len(kept)


@pytest.mark.slow
def test_a_folder_of_another_model_is_not_resumed(tmp_path: Path, bfcl_data: Path) -> None:
    ids = write_ids(tmp_path / "ids.txt", ["multi_turn_base_0"])
    with BfclFake(bfcl_data, ["multi_turn_base_0"], "silent", model="model-a") as fake:
        assert run_cli(fake, tmp_path / "run", "--ids", str(ids)).exit_code == 0
    with BfclFake(bfcl_data, ["multi_turn_base_0"], "silent", model="model-b") as fake:
        result = run_cli(fake, tmp_path / "run", "--ids", str(ids))
        assert result.exit_code == 2
        assert "holds results of another run (model 'model-a' there, 'model-b' now)" in result.output
        assert fake.requests == []
        fresh = run_cli(fake, tmp_path / "run", "--ids", str(ids), "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model"] == "model-b"


@pytest.mark.slow
def test_the_embedded_model_end_to_end(tmp_path: Path, bfcl_python: Path, embedded_llm) -> None:
    ids = write_ids(tmp_path / "ids.txt", EMBEDDED_IDS)
    result = invoke(
        "eval",
        "bfcl",
        "--base-url",
        embedded_llm.base_url,
        "--ids",
        str(ids),
        "--max-tokens",
        "48",
        "--concurrency",
        "3",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code == 0, result.output
    outcomes = jsonl(tmp_path / "run" / "outcomes.jsonl")
    assert [o["id"] for o in outcomes] == EMBEDDED_IDS
    assert all(o["outcome"] in ("pass", "fail") for o in outcomes)  # no error rows: every request answered
    assert all(o["turns"] == 2 and o["input_tokens"] > 1000 for o in outcomes)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "SmolLM2-135M-Instruct" and summary["error_rows"] == []
    assert summary["overall"]["passed"] == sum(o["outcome"] == "pass" for o in outcomes)


# ---------------------------------------------------------------------------------------------------------- tau2


@pytest.mark.slow
def test_tau2_scores_the_model_beside_a_do_nothing_baseline(tmp_path: Path) -> None:
    from tau2_fake import Tau2Fake, load_tasks

    from cm2data.eval.env import site_packages

    tasks = load_tasks(site_packages(ensure_env("tau2")) / "inspect_evals" / "tau2" / "data", "airline")
    first = {tid: tasks[tid] for tid in ("0", "1", "2")}
    with Tau2Fake("user", first) as user, Tau2Fake("agent", first, mode="replay") as agent:
        result = invoke(
            "eval",
            "tau2",
            "--domain",
            "airline",
            "--base-url",
            agent.base_url,
            "--user-base-url",
            user.base_url,
            "--limit",
            "3",
            "--message-limit",
            "6",
            "--out",
            str(tmp_path / "run"),
        )
    assert result.exit_code == 0, result.output
    outcomes = jsonl(tmp_path / "run" / "outcomes.jsonl")
    baseline = jsonl(tmp_path / "run" / "baseline" / "outcomes.jsonl")
    assert [o["task"] for o in outcomes] == [o["task"] for o in baseline] == ["0", "1", "2"]
    assert [o["outcome"] for o in outcomes] == ["pass"] * 3  # the expected actions, then what must be said

    def harmless(task: dict[str, Any]) -> bool:  # a do-nothing agent can only pass these
        criteria = task["evaluation_criteria"]
        reads = ("get_", "search_", "list_", "calculate")
        return not criteria.get("communicate_info") and all(
            a["name"].startswith(reads) for a in criteria.get("actions") or []
        )

    assert [o["outcome"] == "pass" for o in baseline] == [harmless(first[t]) for t in ("0", "1", "2")]
    assert any(o["outcome"] == "pass" for o in baseline) and not all(o["outcome"] == "pass" for o in baseline)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    passed_baseline = sum(o["outcome"] == "pass" for o in baseline)
    assert summary["score"]["accuracy"] == 1.0
    assert summary["baseline"]["accuracy"] == round(passed_baseline / 3, 4)
    assert summary["above_baseline"] == round(1.0 - passed_baseline / 3, 4)
    assert summary["user_model"] == "fake-user" and summary["model"] == "fake-agent"
    # the user simulator ran on its own endpoint, the agent on the other: no request crossed over
    assert user.requests and all(not body.get("tools") for _, body in user.requests)
    assert agent.requests and all(body.get("tools") for _, body in agent.requests)
    assert {t for t, _ in agent.requests} == {"0", "1", "2"}
    assert "do-nothing baseline" in result.output


@pytest.mark.slow
def test_the_gpu_recipe_serves_then_evaluates(tmp_path: Path, bfcl_data: Path) -> None:
    """recipes/eval_bfcl.sh with a stand-in for `vllm serve` (the fake model on the port the recipe asks for)."""
    from cm2data.llm.server import free_port

    wanted = ["multi_turn_base_0", "multi_turn_base_1"]
    stub = tmp_path / "vllm"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        "# vllm serve MODEL --served-model-name NAME --host H --port P …\n"
        'args=("$@"); for i in "${!args[@]}"; do\n'
        '  case "${args[$i]}" in --served-model-name) name="${args[$i+1]}";; --port) port="${args[$i+1]}";;'
        " esac; done\n"
        f'echo "$@" > {tmp_path}/vllm-args\n'
        f'exec {sys.executable} {ROOT}/tests/bfcl_fake.py {bfcl_data} replay "$port" "$name" ' + " ".join(wanted) + "\n"
    )
    stub.chmod(0o755)
    port = free_port()
    env = {
        **os.environ,
        "VLLM": str(stub),
        "CM2DATA": str(Path(sys.executable).with_name("cm2data")),
        "READY_TIMEOUT": "60",
    }
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "recipes" / "eval_bfcl.sh"),
            "/ckpt/cm2-rl/",
            "--port",
            str(port),
            "--out",
            str(tmp_path / "run"),
            "--ids",
            str(write_ids(tmp_path / "ids.txt", wanted)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    args = (tmp_path / "vllm-args").read_text()
    assert args.startswith("serve /ckpt/cm2-rl/ --served-model-name cm2-rl ")
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in args
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "cm2-rl" and summary["overall"]["passed"] == 2
    time.sleep(0.5)
    with pytest.raises(OSError):  # the recipe stopped its server
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
