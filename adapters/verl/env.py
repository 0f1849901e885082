"""The simulated tool environment the VeRL tool calls (method §6), behind a small interface.

:class:`ToolEnvironment` is what ``adapters.verl.tool`` needs: ``await env.call(dialogue_id, reference_messages,
tools, name, arguments) -> ToolResult``. When ``cm2data.simulator`` (the pipelines work's simulator with its
persistent, process-safe cache) is importable, :func:`default_environment` wraps it (:class:`SimulatorEnvironment`);
otherwise this module's own :class:`LocalToolEnvironment` does replay → schema check → LLM mock with a SQLite cache
(process-safe, shared by workers on one machine). Both answer an ``error_tool_call`` as
``{"code", "message", "details"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cm2data.schema import canonical_json

MOCK_SCHEMA = {
    "title": "tool_execution", "type": "object",
    "properties": {"analysis": {"type": "string", "maxLength": 400},
                   "execution_result": {"type": ["object", "array"]}},
    "required": ["analysis", "execution_result"], "additionalProperties": False,
}
MOCK_SYSTEM = ("You are a silent, precise tool executor. Given a tool's schema, examples of earlier calls of this "
               "conversation with their results, and new arguments, return the result the tool would return. Keep "
               "every fact consistent with the examples. Answer with JSON: {\"analysis\": short, "
               "\"execution_result\": the result object or array}.")


@dataclass
class ToolResult:
    text: str
    error: bool = False
    source: str = "replay"  # replay | mock | cache | schema | error


class ToolEnvironment(Protocol):
    async def call(self, dialogue_id: str, reference: list[dict[str, Any]], tools: list[dict[str, Any]], name: str,
                   arguments: Any) -> ToolResult: ...


def error_tool_call(code: str, message: str, **details: Any) -> ToolResult:
    body = {"code": code, "message": message, "details": details}
    return ToolResult(json.dumps(body, ensure_ascii=False), error=True, source="schema")


def _tool_schema(tools: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        if fn.get("name") == name:
            return fn
    return None


_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "array": (list,),
          "object": (dict,), "null": (type(None),)}


def _type_ok(value: Any, expected: Any) -> bool:
    if expected is None:
        return True
    names = expected if isinstance(expected, list) else [expected]
    for n in names:
        kinds = _TYPES.get(n)
        if kinds is None:
            return True  # unknown type name: do not judge
        if isinstance(value, bool) and n in ("integer", "number"):
            continue  # a bool is not a number
        if isinstance(value, kinds):
            return True
    return False


def check_call(tools: list[dict[str, Any]], name: str, arguments: Any) -> tuple[dict[str, Any] | None,
                                                                                  ToolResult | None]:
    """(parsed arguments, None) or (None, an error_tool_call result)."""
    fn = _tool_schema(tools, name)
    if fn is None:
        return None, error_tool_call("TOOL_NOT_AVAILABLE", f"tool {name!r} is not available",
                                     available=[(t.get("function", t) or {}).get("name") for t in tools])
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return None, error_tool_call("INVALID_PARAMETERS", f"arguments are not valid JSON: {exc.msg}")
    if not isinstance(arguments, dict):
        return None, error_tool_call("INVALID_PARAMETERS", "arguments must be a JSON object")
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    missing = [k for k in params.get("required") or [] if k not in arguments]
    unexpected = [k for k in arguments if props and k not in props]
    wrong = [k for k, v in arguments.items() if k in props and not _type_ok(v, props[k].get("type"))]
    bad_enum = [k for k, v in arguments.items() if k in props and props[k].get("enum") is not None
                and v not in props[k]["enum"]]
    if missing or unexpected or wrong or bad_enum:
        return None, error_tool_call("SCHEMA_VALIDATION_FAILED", f"arguments of {name!r} do not match its schema",
                                     missing=missing, unexpected=unexpected, wrong_type=wrong, not_in_enum=bad_enum)
    return arguments, None


def recorded_calls(reference: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], str]]:
    """(name, arguments, response text) of every call of the reference dialogue, matched by id or position."""
    out = []
    for i, m in enumerate(reference):
        calls = m.get("tool_calls") or [] if m.get("role") == "assistant" else []
        if not calls:
            continue
        answers = []
        j = i + 1
        while j < len(reference) and reference[j].get("role") == "tool":
            answers.append(reference[j])
            j += 1
        by_id = {a.get("tool_call_id"): a for a in answers if a.get("tool_call_id")}
        for k, c in enumerate(calls):
            fn = c.get("function", c)
            args = fn.get("arguments")
            try:
                args = json.loads(args) if isinstance(args, str) else (args or {})
            except json.JSONDecodeError:
                continue
            answer = by_id.get(c.get("id")) or (answers[k] if k < len(answers) else None)
            if answer is not None and isinstance(args, dict):
                out.append((fn.get("name"), args, str(answer.get("content") or "")))
    return out


class SQLiteCache:
    """A process-safe persistent key → text cache (one SQLite file, WAL mode)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        return conn

    def get(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        self._conn().execute("INSERT OR IGNORE INTO results (key, value) VALUES (?, ?)", (key, value))


class LocalToolEnvironment:
    """Replay → schema check → LLM mock (``llm``: a :class:`cm2data.llm.LLMClient`, or None: no mock, an
    ``SIMULATION_FAILED`` error instead), with ``cache`` (a :class:`SQLiteCache`, a dict, or None)."""

    def __init__(self, llm: Any = None, cache: Any = None):
        self.llm = llm
        self.cache = cache if cache is not None else {}

    @staticmethod
    def key(dialogue_id: str, name: str, args: dict[str, Any]) -> str:
        return hashlib.sha256(f"{dialogue_id}\x00{name}\x00{canonical_json(args)}".encode()).hexdigest()

    async def call(self, dialogue_id: str, reference: list[dict[str, Any]], tools: list[dict[str, Any]], name: str,
                   arguments: Any) -> ToolResult:
        try:
            return await self._call(dialogue_id, reference, tools, name, arguments)
        except Exception as exc:  # never an exception into the trainer
            return ToolResult(json.dumps({"code": "SIMULATION_FAILED", "message": str(exc)[:300], "details": {}}),
                              error=True, source="error")

    async def _call(self, dialogue_id, reference, tools, name, arguments) -> ToolResult:
        args, err = check_call(tools, name, arguments)
        recorded = recorded_calls(reference)
        if args is None:
            # replay still wins for a recorded call whose schema is stricter than the data
            if isinstance(arguments, dict | str):
                try:
                    raw = json.loads(arguments) if isinstance(arguments, str) else arguments
                except json.JSONDecodeError:
                    raw = None
                for n, a, text in recorded:
                    if n == name and isinstance(raw, dict) and canonical_json(a) == canonical_json(raw):
                        return ToolResult(text, source="replay")
            assert err is not None
            return err
        canon = canonical_json(args)
        for n, a, text in recorded:
            if n == name and canonical_json(a) == canon:
                return ToolResult(text, source="replay")
        key = self.key(dialogue_id, name, args)
        hit = self.cache.get(key)
        if hit is not None:
            return ToolResult(hit, source="cache")
        if self.llm is None:
            return ToolResult(json.dumps({"code": "SIMULATION_FAILED", "message": "no simulator configured",
                                          "details": {}}), error=True, source="error")
        fn = _tool_schema(tools, name) or {}
        shots = [{"name": n, "arguments": a, "result": text} for n, a, text in recorded]
        prompt = [{"role": "system", "content": MOCK_SYSTEM},
                  {"role": "user", "content": json.dumps({"tool": fn, "examples": shots, "arguments": args},
                                                         ensure_ascii=False)}]
        result = await self.llm.chat(prompt, stage="simulate", schema=MOCK_SCHEMA, temperature=0.0, max_tokens=512)
        data = result.data if isinstance(result.data, dict) else {}
        text = json.dumps(data.get("execution_result", {}), ensure_ascii=False)
        if isinstance(self.cache, dict):
            self.cache[key] = text
        else:
            await asyncio.get_running_loop().run_in_executor(None, self.cache.set, key, text)
        return ToolResult(text, source="mock")


class SimulatorEnvironment:
    """:class:`ToolEnvironment` over ``cm2data.simulator.ToolSimulator`` (the pipelines' simulator, with its
    process-safe ``MockCache``): converts the row's OpenAI dicts to records and its ``ToolResult`` to ours."""

    def __init__(self, simulator: Any):
        self.simulator = simulator

    async def call(self, dialogue_id: str, reference: list[dict[str, Any]], tools: list[dict[str, Any]], name: str,
                   arguments: Any) -> ToolResult:
        try:
            from cm2data.schema import Tool
            from cm2data.simulator import RecordedCall

            recorded = [RecordedCall(n, canonical_json(a), text) for n, a, text in recorded_calls(reference)]
            schemas = [Tool.from_openai(t) for t in tools]
            r = await self.simulator.call(dialogue_id, schemas, name, arguments, recorded)
            return ToolResult(r.content, error=r.error is not None, source=r.source)
        except Exception as exc:  # never an exception into the trainer
            return ToolResult(json.dumps({"code": "SIMULATION_FAILED", "message": str(exc)[:300], "details": {}}),
                              error=True, source="error")


_default: ToolEnvironment | None = None


def default_environment() -> ToolEnvironment:
    """The process-wide environment: ``CM2DATA_SIM_BASE_URL`` (else ``CM2DATA_LLM_BASE_URL``) for the mock,
    ``CM2DATA_SIM_CACHE`` (a SQLite file) for the cache."""
    global _default
    if _default is None:
        from cm2data.llm import LLMClient, LLMConfig

        base = os.environ.get("CM2DATA_SIM_BASE_URL") or os.environ.get("CM2DATA_LLM_BASE_URL")
        model = os.environ.get("CM2DATA_SIM_MODEL") or os.environ.get("CM2DATA_LLM_MODEL") or None
        llm = LLMClient(LLMConfig(base_url=base, model=model)) if base else None
        cache_path = os.environ.get("CM2DATA_SIM_CACHE")
        try:
            from cm2data.simulator import ToolSimulator
        except ImportError:  # an older checkout without the pipelines' simulator
            _default = LocalToolEnvironment(llm, SQLiteCache(cache_path) if cache_path else None)
        else:
            _default = SimulatorEnvironment(ToolSimulator(llm, cache_path or None))
    return _default
