"""``synthesize``: tool catalog → seeded coherent tool subsets → LLM scenarios → simulated dialogues.

Pipeline (distilabel): ``read_rows`` → :class:`WriteScenario` (``OpenAILLM`` task) → :class:`SimulateDialogue`
(``LLMClient`` step).

1. :func:`sample_specs` (pure, seeded): for dialogue *i*, a domain (a seeded shuffle of the catalog's domains,
   cycled, so domains are covered evenly), 2–3 tools of that domain, one distractor tool from another domain, a
   number of user turns. The same seed and catalog give the same subsets and ids.
2. :class:`WriteScenario`: persona, goal, one request per turn, facts the user knows — JSON under a schema whose
   ``turns`` has exactly the sampled number of items.
3. :class:`SimulateDialogue`: turn by turn, the **user simulator** writes the user message from the scenario, the
   **assistant** (the served model, with the tools; OpenAI ``tool_calls`` or Hermes ``<tool_call>`` text) acts,
   each call goes through the **tool simulator** (:mod:`cm2data.simulator`: replay → schema check → cached LLM mock),
   until the assistant replies without calls. The result is a canonical :class:`~cm2data.schema.Dialogue`.

Rejections (stage ``synthesize``): the scenario's JSON never valid (``malformed_json``, ``output_schema``,
``truncated_output``), an unparseable ``<tool_call>`` (``unparseable_tool_call``), an ``error_tool_call`` from the
simulator (``tool_not_available``, ``invalid_parameters``, ``schema_validation_failed``, ``simulation_failed``), an
empty reply (``empty_reply``), no reply within ``max_assistant_steps`` (``max_assistant_steps``), a failed request
(``llm_request_failed``).
"""

import hashlib
import json
import random
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from cm2data.llm import LLMError
from cm2data.pipelines.config import SynthesizeConfig
from cm2data.pipelines.registry import register_stage
from cm2data.pipelines.results import StageResult, collect, stamp
from cm2data.pipelines.rows import merge_meta, reject_json
from cm2data.pipelines.run import StageContext, run_rows
from cm2data.pipelines.steps import JSONTask, RecordStep, openai_llm
from cm2data.pipelines.text import clip, history_text, tools_brief
from cm2data.prompts import load_prompt
from cm2data.rejects import RecordError
from cm2data.schema import Dialogue, Message, Provenance, Tool, ToolCall, split_thinking
from cm2data.simulator import BOUNDED_MOCK_SCHEMA, MockCache, RecordedCall, ToolSimulator

STAGE = "synthesize"


# --------------------------------------------------------------------------------------------------- catalog


def shipped_catalog() -> Path:
    return Path(str(resources.files("cm2data").joinpath("data", "catalog", "tools.json")))


def load_catalog(path: str | Path | None = None) -> dict[str, list[Tool]]:
    """``{domain: [Tool]}`` from a catalog file: a JSON list of OpenAI function schemas, each with a ``domain``
    (entries without one go to ``general``). Raises ``ValueError`` naming the entry that is not a tool."""
    path = Path(path) if path else shipped_catalog()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the tool catalog {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of tool schemas")
    out: dict[str, list[Tool]] = {}
    seen: set[str] = set()
    for i, entry in enumerate(data):
        try:
            tool = Tool.from_openai(entry)
        except (ValueError, ValidationError) as exc:
            raise ValueError(f"{path}: entry {i} is not a tool schema: {exc}") from None
        if tool.name in seen:
            raise ValueError(f"{path}: tool {tool.name!r} appears twice")
        seen.add(tool.name)
        out.setdefault(str(entry.get("domain") or "general"), []).append(tool)
    if not out:
        raise ValueError(f"{path}: the catalog is empty")
    return out


def sample_specs(
    catalog: dict[str, list[Tool]],
    n: int,
    seed: int,
    *,
    turns: tuple[int, int] = (1, 2),
    tools: tuple[int, int] = (2, 3),
    distractors: int = 1,
    domains: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The tool subset, distractors and turn count of each dialogue to synthesize (pure and seeded: the same
    arguments give the same specs). A spec's ``tools`` are OpenAI schemas, the domain's tools first then the
    distractors, in a seeded order."""
    names = sorted(catalog) if domains is None else [d for d in domains if d in catalog]
    if not names:
        raise ValueError(f"no catalog domain to sample from (asked: {domains}; have: {', '.join(sorted(catalog))})")
    order = names[:]
    random.Random(f"{seed}:domains").shuffle(order)
    specs = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        domain = order[i % len(order)]
        pool = catalog[domain]
        k = min(len(pool), rng.randint(*tools))
        chosen = rng.sample(pool, k)
        others = [t for d in sorted(catalog) if d != domain for t in catalog[d]]
        extra = rng.sample(others, min(distractors, len(others)))
        subset = chosen + extra
        rng.shuffle(subset)
        digest = hashlib.sha256(json.dumps([domain, [t.name for t in subset]]).encode()).hexdigest()[:6]
        specs.append(
            {
                "id": f"syn-{seed}-{i:05d}-{digest}",
                "index": i,
                "seed": seed,
                "domain": domain,
                "tools": [t.to_openai() for t in subset],
                "distractors": [t.name for t in extra],
                "num_turns": rng.randint(*turns),
            }
        )
    return specs


# -------------------------------------------------------------------------------------------------- scenario


class ScenarioTurn(BaseModel):
    request: str = Field(min_length=1, max_length=400)


class Scenario(BaseModel):
    persona: str = Field(min_length=1, max_length=300)
    goal: str = Field(min_length=1, max_length=300)
    turns: list[ScenarioTurn]
    facts: list[str] = Field(default_factory=list)


def scenario_schema(num_turns: int) -> dict[str, Any]:
    """Bounded lengths: a small model otherwise repeats itself up to ``max_tokens``."""

    def text(n: int) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": n}

    return {
        "type": "object",
        "properties": {
            "persona": text(160),
            "goal": text(200),
            "turns": {
                "type": "array",
                "minItems": num_turns,
                "maxItems": num_turns,
                "items": {
                    "type": "object",
                    "properties": {"request": text(240)},
                    "required": ["request"],
                    "additionalProperties": False,
                },
            },
            "facts": {"type": "array", "maxItems": 5, "items": text(80)},
        },
        "required": ["persona", "goal", "turns", "facts"],
        "additionalProperties": False,
    }


class WriteScenario(JSONTask):
    """Write a user scenario for a tool subset (distilabel ``OpenAILLM``, prompt ``scenario``).

    Input columns: ``id``, ``spec`` (JSON: ``domain``, ``tools``, ``num_turns``, …), ``record``, ``reject``,
    ``usage``, ``meta``. Output columns: the same plus ``scenario`` (JSON: ``persona``, ``goal``,
    ``turns[{request}]``, ``facts``).
    """

    def build_messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        spec = json.loads(row["spec"])
        tools = [Tool.from_openai(t) for t in spec["tools"]]
        return load_prompt("scenario").messages(
            domain=spec["domain"], tools=tools_brief(tools), num_turns=spec["num_turns"]
        )

    def schema_for(self, row: dict[str, Any]) -> dict[str, Any]:
        return scenario_schema(json.loads(row["spec"])["num_turns"])

    def accept(self, row: dict[str, Any], data: Any) -> dict[str, Any]:
        scenario = Scenario.model_validate(data)
        wanted = json.loads(row["spec"])["num_turns"]
        if len(scenario.turns) != wanted:
            raise RecordError("scenario_turns", f"{len(scenario.turns)} turns written, {wanted} asked for")
        if not all(t.request.strip() for t in scenario.turns):
            raise RecordError("scenario_turns", "a turn's request is blank")
        return {"scenario": scenario.model_dump_json()}


# ------------------------------------------------------------------------------------------------ simulation

USER_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string", "minLength": 1, "maxLength": 300}},
    "required": ["message"],
    "additionalProperties": False,
}

_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
#: Markup that must not appear in a reply (the rule filter ``no_tool_response_in_assistant_message`` would drop it).
_MARKUP = re.compile(r"</?tool_response>|</?tool_call>|<\|im_(?:start|end)\|>")


#: Strings and arrays in the arguments of a strict tool call are bounded to this many characters / items (where
#: the tool's schema sets no bound, enum, pattern or format): a constrained small model otherwise writes an id or a
#: name until ``max_tokens`` cuts the call off (``unparseable_tool_call``).
ARGUMENT_MAX_CHARS = 120
ARGUMENT_MAX_ITEMS = 8


def bounded_parameters(schema: Any, max_chars: int = ARGUMENT_MAX_CHARS, max_items: int = ARGUMENT_MAX_ITEMS) -> Any:
    """A copy of a tool's parameter schema with ``maxLength`` on every unbounded free string and ``maxItems`` on
    every unbounded array (in properties, array items, ``anyOf``/``oneOf`` branches). Sent to the assistant only:
    the record keeps the tool's own schema, and the simulator checks calls against that one. A string with
    ``pattern`` or ``format`` is left alone (vLLM sends such a schema with a length bound to a slower backend)."""
    if isinstance(schema, list):
        return [bounded_parameters(s, max_chars, max_items) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: bounded_parameters(v, max_chars, max_items)
        if k in ("items", "anyOf", "oneOf", "additionalProperties")
        else v
        for k, v in schema.items()
    }
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: bounded_parameters(v, max_chars, max_items) for k, v in schema["properties"].items()}
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "string" in types and not any(k in schema for k in ("maxLength", "enum", "const", "pattern", "format")):
        out["maxLength"] = max_chars
    if "array" in types and "maxItems" not in schema:
        out["maxItems"] = max_items
    return out


class AssistantAction(BaseModel):
    thinking: str | None = None
    content: str = ""
    calls: list[ToolCall] = Field(default_factory=list)


def parse_assistant(text: str, tool_calls: list[dict[str, Any]], call_prefix: str) -> AssistantAction:
    """An assistant answer → thinking, visible text and calls: the server's parsed OpenAI ``tool_calls`` when
    there are any, else Hermes ``<tool_call>{"name", "arguments"}</tool_call>`` blocks in the text (which are then
    removed from it). Raises ``RecordError("unparseable_tool_call")`` for a block that is not a call."""
    calls: list[ToolCall] = []
    for k, tc in enumerate(tool_calls):
        fn = tc.get("function") or {}
        calls.append(
            ToolCall(
                id=tc.get("id") or f"{call_prefix}{k}", name=fn.get("name") or "", arguments=fn.get("arguments") or "{}"
            )
        )
    body = text or ""
    if not calls and "<tool_call>" in body:
        for k, match in enumerate(_HERMES.finditer(body)):
            chunk = match.group(1).strip()
            try:
                data = json.loads(chunk)
                name = data["name"]
                args = data.get("arguments", data.get("parameters", {}))
                if isinstance(args, str):
                    args = json.loads(args)
                if not isinstance(name, str) or not isinstance(args, dict):
                    raise TypeError("name must be a string and arguments an object")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise RecordError(
                    "unparseable_tool_call", f"<tool_call> block is not a call ({exc}): {clip(chunk, 200)!r}"
                ) from None
            calls.append(ToolCall(id=f"{call_prefix}{k}", name=name, arguments=json.dumps(args, ensure_ascii=False)))
        body = _HERMES.sub("", body)
    thinking, visible = split_thinking(body.strip())
    return AssistantAction(thinking=thinking, content=visible.strip(), calls=calls)


def _openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "assistant":
            d: dict[str, Any] = {"role": "assistant", "content": m.content_with_thinking()}
            if m.tool_calls:
                d["tool_calls"] = [c.to_openai() for c in m.tool_calls]
            out.append(d)
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class _Reject(Exception):
    def __init__(self, rule: str, message: str, location: str | None = None):
        super().__init__(message)
        self.rule, self.message, self.location = rule, message, location


class SimulateDialogue(RecordStep):
    """Simulate one dialogue per row from its scenario (``LLMClient``; prompts ``user_simulator``, ``assistant``,
    ``tool_mock``).

    Input columns: ``id``, ``spec``, ``scenario``, ``record`` (empty), ``reject``, ``usage``, ``meta``.
    Output columns: the same, with ``record`` the canonical dialogue (JSON) or ``reject`` set. ``settings`` holds the
    :class:`~cm2data.pipelines.config.SynthesizeConfig` values; the mock cache is ``<work_dir>/simulator.sqlite``.
    """

    _simulator: Any = PrivateAttr(None)

    def prompt_tags(self) -> list[str]:
        return [load_prompt(n).tag for n in ("user_simulator", "assistant", "tool_mock")]

    def setup(self) -> None:
        s = self.settings
        self._simulator = ToolSimulator(
            self._client,
            MockCache(Path(self.work_dir) / "simulator.sqlite"),
            stage=f"{STAGE}.tool_mock",
            max_tokens=s.get("mock_max_tokens", 400),
            temperature=0.0,
            seed=0 if s.get("request_seeds") else None,
            schema=BOUNDED_MOCK_SCHEMA if s.get("mock_schema") == "bounded" else None,
        )

    async def handle(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            record, notes = await self._simulate(json.loads(row["spec"]), Scenario.model_validate_json(row["scenario"]))
        except _Reject as exc:
            return {"reject": reject_json(STAGE, exc.rule, exc.message, exc.location)}
        return {"record": record.model_dump_json(by_alias=True), "meta": merge_meta(row.get("meta", "{}"), **notes)}

    async def _user_message(self, scenario: Scenario, t: int, messages: list[Message], seed: int) -> tuple[str, bool]:
        s = self.settings
        prompt = load_prompt("user_simulator")
        convo = prompt.messages(
            persona=scenario.persona,
            goal=scenario.goal,
            facts="; ".join(scenario.facts) or "(none)",
            history=history_text(messages),
            request=scenario.turns[t].request,
        )
        try:
            result = await self._client.chat(
                convo,
                stage=f"{STAGE}.user",
                schema=USER_SCHEMA,
                feedback=True,
                invalid_retries=s.get("invalid_retries", 1),
                max_tokens=s.get("max_tokens", 320),
                temperature=s.get("temperature", 0.7),
                validate=_user_text,
                **_seed(s, seed),
            )
            return result.parsed, False
        except LLMError:
            # the scenario's own request is what the user wants in this turn: use it, and say so in the notes
            return scenario.turns[t].request, True

    async def _simulate(self, spec: dict[str, Any], scenario: Scenario) -> tuple[Dialogue, dict[str, Any]]:
        s = self.settings
        tools = [Tool.from_openai(t) for t in spec["tools"]]
        tool_defs = []
        for tool in tools:
            fn = tool.to_openai()
            if s.get("strict_tools", True):
                fn["function"]["strict"] = True
                fn["function"]["parameters"] = bounded_parameters(fn["function"]["parameters"])
            tool_defs.append(fn)
        system = load_prompt("assistant").messages(
            domain=spec["domain"].replace("_", " "), today=s.get("today", "2026-03-02")
        )[0]["content"]
        messages: list[Message] = [Message(role="system", content=system)]
        sources: dict[str, int] = {}
        fallbacks = 0
        base_seed = int(spec["seed"]) * 100_003 + int(spec["index"]) * 1_009
        max_steps = int(s.get("max_assistant_steps", 3))
        retries = int(s.get("reply_retries", 2))
        for t in range(len(scenario.turns)):
            text, fell_back = await self._user_message(scenario, t, messages, base_seed + t)
            fallbacks += fell_back
            messages.append(Message(role="user", content=text))
            step = resampled = 0
            while True:
                where = f"turn {t} step {step}"
                if step >= max_steps:
                    raise _Reject("max_assistant_steps", f"no reply within {max_steps} assistant steps", where)
                if step == max_steps - 1 and max_steps > 1:
                    choice = "none"  # the last step must be the reply
                elif step == 0:
                    choice = s.get("first_step_tool_choice", "required")
                else:
                    choice = "auto"
                try:
                    result = await self._client.chat(
                        _openai_messages(messages),
                        stage=f"{STAGE}.assistant",
                        tools=tool_defs,
                        tool_choice=choice,
                        max_tokens=s.get("max_tokens", 320),
                        temperature=s.get("temperature", 0.7),
                        **_seed(s, base_seed + 17 * t + step + 101 * resampled),
                    )
                except LLMError as exc:
                    raise _Reject("llm_request_failed", str(exc)[:1000], where) from None
                try:
                    action = parse_assistant(result.text, result.tool_calls, f"call_{t}_{step}_")
                except RecordError as exc:
                    raise _Reject(exc.rule, exc.message, where) from None
                if action.calls:
                    if choice == "none":
                        raise _Reject("max_assistant_steps", f"still calling tools after {max_steps} steps", where)
                    messages.append(
                        Message(
                            role="assistant", content=action.content, thinking=action.thinking, tool_calls=action.calls
                        )
                    )
                    recorded = _recorded(messages)
                    for call in action.calls:
                        res = await self._simulator.call(spec["id"], tools, call.name, call.arguments, recorded)
                        sources[res.source] = sources.get(res.source, 0) + 1
                        if not res.ok:
                            err = res.error or {}
                            raise _Reject(
                                str(err.get("code", "simulation_failed")).lower(),
                                f"{err.get('message')}: {json.dumps(err.get('details'))[:500]}",
                                where,
                            )
                        messages.append(Message(role="tool", content=res.content, tool_call_id=call.id, name=call.name))
                    step += 1
                    continue
                problem = _reply_problem(action.content)
                if problem is not None:
                    if resampled < retries:
                        resampled += 1  # sample this reply again (another seed) rather than keep a broken one
                        continue
                    raise _Reject(problem[0], problem[1], where)
                messages.append(Message(role="assistant", content=action.content, thinking=action.thinking))
                break
        model = self._client.model
        record = Dialogue(
            id=spec["id"],
            source=STAGE,
            tools=tools,
            messages=messages,
            metadata={
                "domain": spec["domain"],
                "scenario": json.loads(scenario.model_dump_json()),
                "distractor_tools": spec["distractors"],
                "seed": spec["seed"],
                "index": spec["index"],
            },
            provenance=Provenance(
                source=STAGE, source_id=spec["id"], generator_model=model, created_at=datetime.now(UTC).isoformat()
            ),
        )
        return record, {"tool_results": sources, "user_fallbacks": fallbacks}


def _seed(settings: dict[str, Any], seed: int) -> dict[str, int]:
    return {"seed": seed} if settings.get("request_seeds") else {}


def _reply_problem(content: str) -> tuple[str, str] | None:
    from cm2data.validate.rules import degenerate_text

    if not content.strip():
        return "empty_reply", "the assistant's reply is empty"
    why = degenerate_text(content)
    if why is not None:
        return "degenerate_message", f"the assistant's reply is not a real message: {why}"
    found = _MARKUP.search(content)
    if found:
        return "markup_in_reply", f"the reply contains {found.group(0)!r} (chat-template or tool markup)"
    return None


def _user_text(data: Any) -> str:
    from cm2data.validate.rules import degenerate_text

    text = str((data or {}).get("message", "")).strip()
    if not text:
        raise ValueError("the message is blank")
    why = degenerate_text(text)
    if why is not None:  # the rule filter degenerate_message would drop the dialogue: ask again (then fall back)
        raise ValueError(f"the message is not a real message: {why}; write one to three full sentences")
    return text


def _recorded(messages: list[Message]) -> list[RecordedCall]:
    from cm2data.simulator import recorded_calls

    return recorded_calls(Dialogue(id="_", messages=messages))


# -------------------------------------------------------------------------------------------------------- stage


def catalog_path(cfg: SynthesizeConfig) -> Path:
    """The tool catalog the stage reads (its input)."""
    return Path(cfg.catalog) if cfg.catalog else shipped_catalog()


@register_stage("synthesize", config=SynthesizeConfig, llm=True, source=catalog_path)
def run_synthesize(records: list[Dialogue], cfg: SynthesizeConfig, ctx: StageContext) -> StageResult:
    """Sample ``cfg.n`` tool subsets, then write and simulate one dialogue each (``records``: none; the stage reads
    its catalog)."""
    seed = ctx.seed if cfg.seed is None else cfg.seed
    catalog = load_catalog(cfg.catalog)
    specs = sample_specs(
        catalog, cfg.n, seed, turns=cfg.turns, tools=cfg.tools, distractors=cfg.distractors, domains=cfg.domains
    )
    rows = [
        {
            "id": s["id"],
            "spec": json.dumps(s, ensure_ascii=False),
            "scenario": "",
            "record": "",
            "reject": "",
            "usage": "{}",
            "meta": "{}",
        }
        for s in specs
    ]
    settings = {**cfg.model_dump(mode="json", exclude={"llm"}), "request_seeds": ctx.request_seeds}
    scenario_tag = load_prompt("scenario").tag

    def build() -> list[Any]:
        return [
            WriteScenario(
                name="write_scenario",
                stage=STAGE,
                usage_stage=f"{STAGE}.scenario",
                work_dir=str(ctx.work),
                llm=openai_llm(ctx.llm_settings, ctx.api_key),
                llm_settings=ctx.llm_settings,
                schema_form=ctx.schema_form,
                max_new_tokens=cfg.scenario_max_tokens,
                temperature=cfg.temperature,
                seed=seed,
                send_seed=ctx.request_seeds,
                invalid_retries=cfg.invalid_retries,
                settings={"turns": list(cfg.turns)},
                extra_columns=["spec", "scenario"],
                prompt_tag=scenario_tag,
                input_batch_size=ctx.batch_size,
            ),
            SimulateDialogue(
                name="simulate_dialogue",
                stage=STAGE,
                work_dir=str(ctx.work),
                llm_settings=ctx.llm_settings,
                settings=settings,
                extra_columns=["spec", "scenario"],
                input_batch_size=ctx.batch_size,
            ),
        ]

    run = run_rows(STAGE, rows, build, ctx.work, batch_size=ctx.batch_size, api_key=ctx.api_key)
    accepted, rejects, usage, resumed = collect(STAGE, run.rows)
    prompts = [scenario_tag, *(load_prompt(n).tag for n in ("user_simulator", "assistant", "tool_mock"))]
    stamp(accepted, STAGE, prompts, model=ctx.model, seed=seed, catalog=cfg.catalog or "shipped")
    sources: dict[str, int] = {}
    fallbacks = 0
    for row in run.rows:
        meta = json.loads(row.get("meta") or "{}")
        for k, v in (meta.get("tool_results") or {}).items():
            sources[k] = sources.get(k, 0) + v
        fallbacks += int(meta.get("user_fallbacks") or 0)
    details = {
        "seed": seed,
        "domains": sorted({s["domain"] for s in specs}),
        "tool_results": sources,
        "user_fallbacks": fallbacks,
        "pipeline_seconds": round(run.pipeline_seconds, 2),
    }
    return StageResult(STAGE, len(specs), accepted, rejects, usage, run.seconds, resumed, details)
