"""The simulated tool environment the VeRL tool calls (method §6), behind a small interface.

:class:`ToolEnvironment` is what ``adapters.verl.tool`` needs: ``await env.call(dialogue_id, reference_messages,
tools, name, arguments) -> ToolResult``. :func:`default_environment` is a :class:`SimulatorEnvironment`: the
pipelines' :class:`cm2data.simulator.ToolSimulator` (replay → schema check → LLM mock, with its persistent,
process-safe cache) over the row's OpenAI-style messages and tool schemas. The schema check is the rule filters'
(:mod:`cm2data.schema.jsonschema`): a call the gate's ``tool_schema`` rule would reject is answered with an
``error_tool_call`` ``{"code", "message", "details"}``, and a call it passes is not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

from cm2data.schema import Tool, canonical_json
from cm2data.simulator import RecordedCall, ToolSimulator


@dataclass
class ToolResult:
    text: str
    error: bool = False
    source: str = "replay"  # replay | cache | mock | error


class ToolEnvironment(Protocol):
    async def call(
        self, dialogue_id: str, reference: list[dict[str, Any]], tools: list[dict[str, Any]], name: str, arguments: Any
    ) -> ToolResult: ...


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


class SimulatorEnvironment:
    """:class:`ToolEnvironment` over ``cm2data.simulator.ToolSimulator`` (the pipelines' simulator, with its
    process-safe ``MockCache``): converts the row's OpenAI dicts to records and its ``ToolResult`` to ours."""

    def __init__(self, simulator: ToolSimulator):
        self.simulator = simulator

    async def call(
        self, dialogue_id: str, reference: list[dict[str, Any]], tools: list[dict[str, Any]], name: str, arguments: Any
    ) -> ToolResult:
        try:
            recorded = [RecordedCall(n, canonical_json(a), text) for n, a, text in recorded_calls(reference)]
            schemas = [Tool.from_openai(t) for t in tools]
            r = await self.simulator.call(dialogue_id, schemas, name, arguments, recorded)
            return ToolResult(r.content, error=r.error is not None, source=r.source)
        except Exception as exc:  # never an exception into the trainer
            return ToolResult(
                json.dumps({"code": "SIMULATION_FAILED", "message": str(exc)[:300], "details": {}}),
                error=True,
                source="error",
            )


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
        _default = SimulatorEnvironment(ToolSimulator(llm, cache_path or None))
    return _default
