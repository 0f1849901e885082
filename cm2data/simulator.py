"""The simulated tool environment (method §6): replay → schema check → LLM mock, with a persistent cache.

Every tool call of a simulated dialogue (``cm2data synthesize``) or of an RL rollout (the VeRL adapter) goes
through :meth:`ToolSimulator.call`, in this order:

1. **Replay.** When the name and canonical arguments (``json.dumps(args, sort_keys=True, separators=(",", ":"))``)
   match a recorded call of the same dialogue, the recorded response is returned.
2. **Schema check.** Unknown tool, arguments that are not a JSON object, missing required fields, wrong primitive
   types (a bool is not a number; ``3.0`` is an integer), values outside an enum, unexpected fields → an
   ``error_tool_call`` ``{"code", "message", "details"}`` (:data:`ERROR_CODES`); the caller ends the rollout.
3. **LLM mock.** An LLM acting as a silent, precise tool executor gets the dialogue's recorded calls and results as
   examples, the tool's schema and the arguments, and answers ``{"analysis", "execution_result"}`` under a JSON
   schema. Unlike the reference, the result is **cached** (:class:`MockCache`, SQLite) under
   ``(dialogue id, tool name, canonical arguments)``: the same call in the same dialogue always gets the same result,
   across rollouts, processes and runs, and is paid for once. Concurrent misses of one key in one process share one
   LLM call; across processes the first stored answer wins and every process returns that one.

This module imports only the standard library, :mod:`cm2data.schema`, :mod:`cm2data.llm` and :mod:`cm2data.prompts`
(PyYAML), so trainer environments can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cm2data.schema import Dialogue, Tool, canonical_json
from cm2data.schema.jsonschema import check_object

#: ``error_tool_call`` codes. ``TOOL_NOT_AVAILABLE``: the name is not a candidate tool; ``INVALID_PARAMETERS``: the
#: arguments are not a JSON object; ``SCHEMA_VALIDATION_FAILED``: the object does not fit the parameters' schema;
#: ``SIMULATION_FAILED``: the LLM mock gave no valid result (server down, invalid answers).
ERROR_CODES = ("TOOL_NOT_AVAILABLE", "INVALID_PARAMETERS", "SCHEMA_VALIDATION_FAILED", "SIMULATION_FAILED")

#: The mock's answer schema (method §6).
MOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "analysis": {"type": "string", "maxLength": 160},
        "execution_result": {"type": ["object", "array"]},
    },
    "required": ["analysis", "execution_result"],
    "additionalProperties": False,
}

_LEAF: dict[str, Any] = {
    "anyOf": [{"type": "string", "maxLength": 60}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]
}
_LEVEL2: dict[str, Any] = {
    "anyOf": [
        _LEAF,
        {"type": "object", "maxProperties": 8, "propertyNames": {"maxLength": 32}, "additionalProperties": _LEAF},
        {"type": "array", "maxItems": 8, "items": _LEAF},
    ]
}
#: A bounded variant for small mock models (at most two levels, 8 keys or items per level, short keys and strings):
#: a 135M model under the free schema often loops on repeated keys until ``max_tokens``; the bound ends it. Real
#: results can be larger than this, so it is opt-in (``ToolSimulator(schema=BOUNDED_MOCK_SCHEMA)``).
BOUNDED_MOCK_SCHEMA: dict[str, Any] = {
    **MOCK_SCHEMA,
    "properties": {
        "analysis": {"type": "string", "maxLength": 160},
        "execution_result": {
            "anyOf": [
                {
                    "type": "object",
                    "maxProperties": 8,
                    "propertyNames": {"maxLength": 32},
                    "additionalProperties": _LEVEL2,
                },
                {"type": "array", "maxItems": 8, "items": _LEVEL2},
            ]
        },
    },
}


def error_tool_call(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The ``error_tool_call`` payload ``{"code", "message", "details"}`` (method §6)."""
    return {"code": code, "message": message, "details": details if details is not None else []}


# ---------------------------------------------------------------------------------------------- schema check


def check_call(tools: Sequence[Tool], name: str, arguments: str | Mapping[str, Any]) -> dict[str, Any] | None:
    """Step 2 of method §6: ``None`` when the call fits a candidate tool, else its ``error_tool_call``.

    The same checker as the gate's ``tool_schema`` rule (:mod:`cm2data.schema.jsonschema`), without importing the
    gate: the same verdicts and the same messages (in ``details``).
    """
    by_name = {t.name: t for t in tools}
    tool = by_name.get(name)
    if tool is None:
        return error_tool_call("TOOL_NOT_AVAILABLE", f"tool {name!r} is not available", {"available": sorted(by_name)})
    if isinstance(arguments, str):
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return error_tool_call(
                "INVALID_PARAMETERS", f"arguments of {name!r} are not JSON: {exc.msg}", {"arguments": arguments[:500]}
            )
    else:
        args = arguments
    if not isinstance(args, dict):
        return error_tool_call(
            "INVALID_PARAMETERS", f"arguments of {name!r} must be a JSON object", {"arguments": args}
        )
    problems: list[str] = []
    check_object(args, tool.parameters, name, problems)
    if problems:
        return error_tool_call("SCHEMA_VALIDATION_FAILED", f"arguments of {name!r} do not fit its schema", problems)
    return None


# ------------------------------------------------------------------------------------------------- recorded calls


@dataclass(frozen=True)
class RecordedCall:
    """A call seen in a dialogue and the content of the tool message that answered it."""

    name: str
    arguments: str  # canonical JSON
    result: str


def recorded_calls(dialogue: Dialogue) -> list[RecordedCall]:
    """The calls of ``dialogue`` paired with their responses (by ``tool_call_id`` when given, else by order)."""
    out: list[RecordedCall] = []
    msgs = dialogue.messages
    for i, m in enumerate(msgs):
        if not m.tool_calls:
            continue
        answers = []
        j = i + 1
        while j < len(msgs) and msgs[j].role == "tool":
            answers.append(msgs[j])
            j += 1
        by_id = {a.tool_call_id: a for a in answers if a.tool_call_id}
        for k, call in enumerate(m.tool_calls):
            answer = by_id.get(call.id) if call.id else None
            if answer is None and k < len(answers):
                answer = answers[k]
            if answer is None:
                continue
            try:
                canonical = call.canonical_arguments()
            except ValueError:
                continue
            out.append(RecordedCall(call.name, canonical, answer.content))
    return out


# ------------------------------------------------------------------------------------------------------- cache


class MockCache:
    """Mocked tool results in SQLite, keyed by ``(dialogue_id, tool, canonical arguments)``.

    Process-safe: every operation opens its own connection (WAL journal, 30 s busy timeout), and :meth:`put` is
    ``INSERT OR IGNORE`` followed by a read, so when two processes mock the same call at once both get the answer
    that was stored first.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS mock (dialogue_id TEXT NOT NULL, tool TEXT NOT NULL, "
                "arguments TEXT NOT NULL, result TEXT NOT NULL, analysis TEXT, created REAL, "
                "PRIMARY KEY (dialogue_id, tool, arguments))"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    def get(self, dialogue_id: str, tool: str, arguments: str) -> str | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT result FROM mock WHERE dialogue_id=? AND tool=? AND arguments=?", (dialogue_id, tool, arguments)
            ).fetchone()
        return row[0] if row else None

    def put(self, dialogue_id: str, tool: str, arguments: str, result: str, analysis: str = "") -> str:
        """Store ``result`` unless the key is taken; return the stored result (the first writer's)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO mock VALUES (?, ?, ?, ?, ?, ?)",
                (dialogue_id, tool, arguments, result, analysis, time.time()),
            )
            row = db.execute(
                "SELECT result FROM mock WHERE dialogue_id=? AND tool=? AND arguments=?", (dialogue_id, tool, arguments)
            ).fetchone()
        return row[0]

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM mock").fetchone()[0])


# --------------------------------------------------------------------------------------------------- simulator


@dataclass
class ToolResult:
    """The answer to one call. ``content`` is the tool message's content (JSON text): the result, or the
    ``error_tool_call`` when ``error`` is set. ``source``: where it came from."""

    content: str
    source: Literal["replay", "cache", "mock", "error"]
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class SimulatorStats:
    replay: int = 0
    cache: int = 0
    mock: int = 0
    error: int = 0
    codes: dict[str, int] = field(default_factory=dict)


class ToolSimulator:
    """Replay → schema check → cached LLM mock (module docstring).

    ``llm`` is a :class:`cm2data.llm.LLMClient` (None: no mock, a cache miss is ``SIMULATION_FAILED``); ``cache`` a
    :class:`MockCache` or a path for one (None: no persistence, but still one answer per key in this process).
    """

    def __init__(
        self,
        llm: Any = None,
        cache: MockCache | str | Path | None = None,
        *,
        stage: str = "tool_mock",
        max_tokens: int = 400,
        temperature: float = 0.0,
        seed: int | None = None,
        max_examples: int = 8,
        max_example_chars: int = 600,
        schema: dict[str, Any] | None = None,
    ):
        from cm2data.prompts import load_prompt

        self.schema = schema or MOCK_SCHEMA  # the mock answer's JSON schema (MOCK_SCHEMA or BOUNDED_MOCK_SCHEMA)
        self.llm = llm
        self.cache = MockCache(cache) if isinstance(cache, str | Path) else cache
        self.stage = stage
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.max_examples = max_examples
        self.max_example_chars = max_example_chars
        self.prompt = load_prompt("tool_mock")
        self.stats = SimulatorStats()
        self._memory: dict[tuple[str, str, str], str] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Future[str]] = {}

    def _count(self, result: ToolResult) -> ToolResult:
        setattr(self.stats, result.source, getattr(self.stats, result.source) + 1)
        if result.error:
            code = result.error["code"]
            self.stats.codes[code] = self.stats.codes.get(code, 0) + 1
        return result

    async def call(
        self,
        dialogue_id: str,
        tools: Sequence[Tool],
        name: str,
        arguments: str | Mapping[str, Any],
        recorded: Sequence[RecordedCall] = (),
    ) -> ToolResult:
        """Answer one call of dialogue ``dialogue_id`` (see the module docstring for the order)."""
        error = check_call(tools, name, arguments)
        if error is not None:
            return self._count(ToolResult(json.dumps(error, ensure_ascii=False), "error", error))
        args = (
            json.loads(arguments)
            if isinstance(arguments, str) and arguments.strip()
            else (arguments if not isinstance(arguments, str) else {})
        )
        canonical = canonical_json(args)
        for rec in recorded:
            if rec.name == name and rec.arguments == canonical:
                return self._count(ToolResult(rec.result, "replay"))
        key = (dialogue_id, name, canonical)
        if key in self._memory:
            return self._count(ToolResult(self._memory[key], "cache"))
        if self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, *key)
            if hit is not None:
                self._memory[key] = hit
                return self._count(ToolResult(hit, "cache"))
        pending = self._inflight.get(key)
        if pending is not None:  # the same call is being mocked right now: share its answer
            try:
                return self._count(ToolResult(await asyncio.shield(pending), "cache"))
            except _MockFailed as exc:
                return self._count(ToolResult(json.dumps(exc.error, ensure_ascii=False), "error", exc.error))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            content = await self._mock(key, tools, name, args, recorded)
        except _MockFailed as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            return self._count(ToolResult(json.dumps(exc.error, ensure_ascii=False), "error", exc.error))
        finally:
            self._inflight.pop(key, None)
        future.set_result(content)
        self._memory[key] = content
        return self._count(ToolResult(content, "mock"))

    def _examples(self, recorded: Sequence[RecordedCall]) -> str:
        if not recorded:
            return "(none)"
        lines = []
        for rec in list(recorded)[-self.max_examples :]:
            result = (
                rec.result if len(rec.result) <= self.max_example_chars else rec.result[: self.max_example_chars] + "…"
            )
            lines.append(f"{rec.name}({rec.arguments}) -> {result}")
        return "\n".join(lines)

    def messages(
        self, tools: Sequence[Tool], name: str, args: Mapping[str, Any], recorded: Sequence[RecordedCall]
    ) -> list[dict[str, str]]:
        """The mock's prompt for one call (shared context first, the call last: prefix-cache friendly)."""
        tool = next(t for t in tools if t.name == name)
        return self.prompt.messages(
            schema=json.dumps(tool.to_openai()["function"], ensure_ascii=False),
            examples=self._examples(recorded),
            name=name,
            arguments=canonical_json(dict(args)),
        )

    async def _mock(
        self,
        key: tuple[str, str, str],
        tools: Sequence[Tool],
        name: str,
        args: Mapping[str, Any],
        recorded: Sequence[RecordedCall],
    ) -> str:
        if self.llm is None:
            raise _MockFailed(error_tool_call("SIMULATION_FAILED", f"no LLM to mock {name!r} and no cached result"))
        from cm2data.llm import LLMError

        params: dict[str, Any] = {}
        if self.seed is not None:
            params["seed"] = self.seed
        try:
            result = await self.llm.chat(
                self.messages(tools, name, args, recorded),
                stage=self.stage,
                schema=self.schema,
                validate=_valid_mock,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                **params,
            )
        except LLMError as exc:
            raise _MockFailed(
                error_tool_call("SIMULATION_FAILED", f"the tool simulator failed for {name!r}", [str(exc)[:500]])
            ) from None
        data = result.parsed
        content = json.dumps(data["execution_result"], ensure_ascii=False)
        if self.cache is not None:
            content = await asyncio.to_thread(self.cache.put, *key, content, str(data.get("analysis", "")))
        return content


class _MockFailed(Exception):
    def __init__(self, error: dict[str, Any]):
        super().__init__(error["message"])
        self.error = error


def _valid_mock(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or "execution_result" not in data:
        raise ValueError('expected {"analysis": str, "execution_result": object or array}')
    if not isinstance(data["execution_result"], dict | list):
        raise ValueError("execution_result must be a JSON object or array")
    return data
