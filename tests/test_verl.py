"""VeRL export and adapter (issue 3).

The writer tests run in the toolkit's environment. The ``slow`` tests build (or reuse) VeRL 0.9.1's own environment
with ``recipes/install_verl.sh`` (a few minutes on first use), build a tiny Qwen3 tokenizer offline
(``cm2data/export/tiny_model.py``) and run real VeRL code through ``tests/verl_probe.py``: ``RLHFDataset`` with our
dataset class, ``load_all_tools`` with our tool, our agent loop driven by a scripted policy server, VeRL's ``naive``
reward manager calling our ``compute_score``, the ``cm2_turn``/``cm2_step`` advantage estimators through VeRL's
``compute_advantage`` (and the credit record the agent loop writes), and ``DRY_RUN=1 recipes/rl_qwen.sh`` for every
``CREDIT`` level. Set ``CM2DATA_SKIP_VERL=1`` to skip those in a quick local loop (CI never sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cm2data.cli import app
from cm2data.export.verl import AGENT_NAME, export_verl
from cm2data.formats import FORMATS
from cm2data.formats.rows import iter_rows
from cm2data.schema import Dialogue
from cm2data.sources import load

ROOT = Path(__file__).resolve().parents[1]
REF_PARQUET = ROOT / "tests" / "fixtures" / "cm2-reference" / "checklist_annotated_forverl.parquet"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _sample() -> list[Dialogue]:
    records, rejects = load(ROOT / "cm2data" / "data" / "sample" / "dialogues.json", "cm2")
    assert records and not rejects
    return records


# --------------------------------------------------------------------------------------------------- the writer


def test_export_schema_and_json_strings(tmp_path: Path) -> None:
    records = _sample()
    result = export_verl(records, tmp_path, val_size=5, seed=7)
    assert result.train_rows + result.val_rows == len(records) and result.val_rows == 5
    table = pq.read_table(tmp_path / "train.parquet")
    assert set(table.column_names) == {"data_source", "agent_name", "prompt", "ability", "reward_model", "extra_info"}
    row = table.to_pylist()[0]
    assert row["agent_name"] == AGENT_NAME and row["prompt"][-1]["role"] == "user"
    assert all(m["role"] in ("system", "user") for m in row["prompt"])
    # free-form dicts are JSON strings (the Arrow trap): no null-filled keys from other rows
    extra = row["extra_info"]
    for key in ("messages", "tools", "tools_kwargs", "tool_selection"):
        assert isinstance(extra[key], str), key
    gt = json.loads(row["reward_model"]["ground_truth"])
    assert gt["num_turns"] == sum(m["role"] == "user" for m in json.loads(extra["messages"]))
    assert len(gt["checklists"][0]) == gt["num_turns"]
    assert extra["split"] == "train" and row["reward_model"]["style"] == "model"


def test_validation_split_is_seeded(tmp_path: Path) -> None:
    records = _sample()
    ids = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        export_verl(records, tmp_path / name, val_size=6, seed=seed)
        ids.append(sorted(r["extra_info"]["uuid"] for r in pq.read_table(tmp_path / name / "val.parquet").to_pylist()))
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_records_without_checklist_are_rejected(tmp_path: Path) -> None:
    records = _sample()
    bare = records[0].model_copy(update={"checklists": [], "id": "bare"})
    result = export_verl([bare, *records[:3]], tmp_path)
    assert result.train_rows == 3 and [r.rule for r in result.rejects] == ["no_checklist"]
    assert "no_checklist" in (tmp_path / "rejects.jsonl").read_text()


def test_round_trip_through_the_verl_reader(tmp_path: Path) -> None:
    records = _sample()
    export_verl(records, tmp_path)
    by_id = {d.id: d for d in records}
    for _, row in iter_rows(tmp_path / "train.parquet"):
        back = FORMATS["verl"].read(row)
        orig = by_id[back.id]
        assert [m.model_dump() for m in back.messages] == [m.model_dump() for m in orig.messages]
        assert back.checklists == orig.checklists and back.tools == orig.tools


def test_reference_parquet_is_ingestible_and_exportable(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", str(REF_PARQUET), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "verl", str(tmp_path / "ds"), "--out", str(tmp_path / "verl")])
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "verl" / "train.parquet").num_rows == 1


# ------------------------------------------------------------------------------------------- real VeRL (slow)


@pytest.fixture(scope="session")
def verl_python() -> Path:
    if os.environ.get("CM2DATA_SKIP_VERL") == "1":
        pytest.skip("CM2DATA_SKIP_VERL=1")
    venv = subprocess.run(
        ["bash", str(ROOT / "recipes" / "install_verl.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(venv) / "bin" / "python"


@pytest.fixture(scope="session")
def verl_inputs(verl_python: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("verl")
    export_verl(_sample(), base / "data", val_size=4)
    tok = base / "tiny-qwen3"
    subprocess.run(
        [str(verl_python), str(ROOT / "cm2data" / "export" / "tiny_model.py"), "--out", str(tok), "--family", "qwen3"],
        check=True,
        capture_output=True,
        env={**os.environ, **OFFLINE},
    )
    return base / "data" / "train.parquet", tok


def probe(python: Path, *args: str, timeout: int = 600, env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT), **(env or {})}
    for k in ("CM2DATA_JUDGE_BASE_URL", "CM2DATA_LLM_BASE_URL", "CM2DATA_SIM_BASE_URL"):
        env.pop(k, None)
    proc = subprocess.run(
        [str(python), str(ROOT / "tests" / "verl_probe.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[len("PROBE ") :])


@pytest.mark.slow
def test_rlhf_dataset_with_our_class(verl_python: Path, verl_inputs: tuple[Path, Path]) -> None:
    out = probe(verl_python, "dataset", *verl_inputs)
    assert out["class"] == "CM2RLDataset" and out["len"] == out["rows"] > 0
    assert out["raw_prompt_roles"][-1] == "user" and out["tools_decoded"] and out["tools_kwargs_decoded"]
    assert out["tool_in_prompt"] and out["ends_with_generation_prompt"]


@pytest.mark.slow
def test_load_all_tools_replays_validates_mocks(verl_python: Path, verl_inputs: tuple[Path, Path]) -> None:
    out = probe(verl_python, "tools", verl_inputs[0])
    assert out["loaded"] == "CM2SimulatedTool"
    assert out["replay"] == "replay" and out["replay_matches"]
    assert out.get("missing_required", "SCHEMA_VALIDATION_FAILED") == "SCHEMA_VALIDATION_FAILED"
    assert out["unexpected"] == "SCHEMA_VALIDATION_FAILED" and out["unknown_tool"] == "TOOL_NOT_AVAILABLE"
    assert out["mock"] == "mock" and out["second"] == "cache" and out["same_result"] and out["mock_requests"] == 1


@pytest.mark.slow
def test_naive_reward_manager_calls_compute_score(verl_python: Path, verl_inputs: tuple[Path, Path]) -> None:
    out = probe(verl_python, "reward", *verl_inputs)
    assert out["all_true_reward"] == 1.0 and out["all_true"]["judge_failures"] == 0
    assert out["all_true"]["items_passed"] == out["all_true"]["items_total"] > 0
    assert out["garbage"]["score"] == 0.0 and out["garbage"]["judge_failures"] > 0 and out["garbage"]["error"] == ""
    assert out["no_conversation"]["score"] == 0.0 and out["no_conversation"]["error"]


@pytest.mark.slow
def test_agent_loop_with_scripted_policy(verl_python: Path, verl_inputs: tuple[Path, Path]) -> None:
    out = probe(verl_python, "agent", *verl_inputs)
    n = out["reference_turns"]
    replay = out["replay"]
    assert replay["stop"] == "end" and replay["judged_turns"] == n and replay["judge_failures"] == 0
    assert replay["roles"].count("user") == n and replay["roles"][-1] == "assistant"
    assert sum(replay["turn_scores"]) == pytest.approx(1.0)  # R_t / L per turn, all items passed
    assert replay["len_ok"] and replay["mask_ones"] > 0 and replay["mask_zeros"] > 0
    assert replay["policy_tokens_have_tool_call"] and replay["context_has_tool_response"]
    assert replay["context_has_user"]
    assert out["unknown_tool"]["stop"] == "unknown_tool" and out["unknown_tool"]["judged_turns"] == 0
    garbage = out["garbage_judge"]
    assert garbage["stop"] in ("gate_failed", "end") and garbage["judge_failures"] > 0
    assert all(s == 0.0 for s in garbage["turn_scores"])


@pytest.mark.slow
def test_agent_loop_with_the_embedded_judge(verl_python: Path, verl_inputs: tuple[Path, Path], embedded_llm) -> None:
    out = probe(verl_python, "agent", *verl_inputs, "--judge-url", embedded_llm.base_url)
    replay = out["replay"]
    assert replay["stop"] in ("end", "gate_failed") and replay["judged_turns"] >= 1
    assert replay["judge_failures"] == 0 and replay["len_ok"]


def _dry_run(python: Path, *extra: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "DRY_RUN": "1", "VERL_PYTHON": str(python), "DATA": str(tmp)}
    return subprocess.run(
        ["bash", str(ROOT / "recipes" / "rl_qwen.sh"), *extra], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_rl_recipe_dry_run(verl_python: Path, tmp_path: Path) -> None:
    ok = _dry_run(verl_python, tmp=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "validated against verl's ppo_trainer" in ok.stdout and "verl.trainer.main_ppo" in ok.stdout
    summary = json.loads(ok.stdout.split("ppo_trainer\n", 1)[1].split("\nDRY_RUN: would run", 1)[0])
    assert summary["adv_estimator"] == "grpo" and summary["norm_adv_by_std_in_grpo"] is False
    assert summary["credit"] == {"level": "trajectory"}
    assert summary["rollout"]["n"] == 48 and summary["rollout"]["multi_turn"] is True
    env_sized = subprocess.run(
        ["bash", str(ROOT / "recipes" / "rl_qwen.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE, "DRY_RUN": "1", "VERL_PYTHON": str(verl_python), "GROUP": "8", "GPUS": "2"},
        timeout=300,
    )
    assert env_sized.returncode == 0 and '"n": 8' in env_sized.stdout
    bad = _dry_run(verl_python, "actor_rollout_ref.rollout.nn=4", tmp=tmp_path)
    assert bad.returncode != 0 and "invalid" in bad.stderr


@pytest.mark.slow
def test_turn_and_step_credit_through_verl(verl_python: Path, verl_inputs: tuple[Path, Path]) -> None:
    out = probe(verl_python, "credit", *verl_inputs)
    # registered by loading the dataset class file the way the trainer does (data.custom_cls.path)
    assert out["registered_before"] == []
    assert out["registered"] == {
        "cm2_turn": "adapters.verl.credit.compute_turn_advantage",
        "cm2_step": "adapters.verl.credit.compute_step_advantage",
    }
    # VeRL's compute_advantage on hand-built rows: per-turn advantages on the turn's policy tokens, 0 on tool/user
    # tokens and padding, 0 for a turn not reached, 0 where 4 or fewer samples reached a turn, 0 without a record
    turn = out["turn"]
    assert turn["max_error"] < 1e-5 and turn["context_tokens_zero"]
    assert turn["reward_sum_error"] < 1e-15 and turn["grpo_unchanged"] == 0.0
    assert all(err < 1e-6 for err in out["step"].values()), out["step"]  # plain, eta decay, normalized
    assert out["turn_on_step_records"] and out["overflow"] is False
    assert "no row carries a CM2 credit record" in out["step_on_turn_records"]
    assert "no row carries a CM2 credit record" in out["no_records"]
    # the real agent loop + compute_score + VeRL's AgentLoopOutput.as_dict: the record the estimator reads
    loop = out["loop"]
    for name in ("all_true", "all_false"):
        run = loop[name]
        assert run["status"] == run["mode"] == "step"
        assert run["turns"] == run["judged_turns"] >= 1 and run["scores_match"]
        assert run["steps"] == run["verdict_steps"]  # one span per judged assistant step
        assert run["policy_tokens_covered"] and run["spans_hold_tool_calls"] and run["rm_sum_error"] < 1e-15
    assert loop["all_true"]["reward"] == 1.0 and loop["all_false"]["reward"] == 0.0
    group = loop["group"]
    assert group["passing_min"] >= 0 and group["passing_max"] > 0 and group["failing_max"] < 0
    assert group["context_zero"]


@pytest.mark.slow
@pytest.mark.parametrize(("credit", "estimator"), [("turn", "cm2_turn"), ("step", "cm2_step")])
def test_rl_recipe_dry_run_credit_levels(verl_python: Path, tmp_path: Path, credit: str, estimator: str) -> None:
    env = {
        **os.environ,
        **OFFLINE,
        "DRY_RUN": "1",
        "VERL_PYTHON": str(verl_python),
        "DATA": str(tmp_path),
        "CREDIT": credit,
    }
    ok = subprocess.run(
        ["bash", str(ROOT / "recipes" / "rl_qwen.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    summary = json.loads(ok.stdout.split("ppo_trainer\n", 1)[1].split("\nDRY_RUN: would run", 1)[0])
    assert summary["adv_estimator"] == estimator
    assert summary["credit"]["level"] == credit and summary["credit"]["registered_by"] == "CM2RLDataset"
    assert summary["credit"]["estimator"].startswith("adapters.verl.credit.")
    assert f"algorithm.adv_estimator={estimator}" in ok.stdout
    # what the estimators cannot work with is refused before launching anything
    bad = {"turn": {"GROUP": "4"}, "step": {"ETA": "1.5"}}[credit]
    refused = subprocess.run(
        ["bash", str(ROOT / "recipes" / "rl_qwen.sh")], capture_output=True, text=True, env={**env, **bad}, timeout=300
    )
    assert refused.returncode != 0 and "invalid" in refused.stderr
    assert ("rollout.n=4" if credit == "turn" else "CM2DATA_CREDIT_ETA") in refused.stderr


def test_rl_recipe_refuses_unknown_credit_level(tmp_path: Path) -> None:
    env = {**os.environ, "DRY_RUN": "1", "VERL_PYTHON": "/nonexistent/python", "CREDIT": "token"}
    out = subprocess.run(
        ["bash", str(ROOT / "recipes" / "rl_qwen.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 2 and "trajectory, turn or step" in out.stderr
