"""A deterministic checklist judge behind :class:`fake_llm.RoutedOpenAI`: it reads the criteria out of each judge
prompt (one per call, or several in grouped mode) and answers each with ``rule(question)``, so that a test knows
every verdict in advance. ``grouped_rule`` (default: ``rule``) answers grouped calls: a second judge that disagrees
on known items."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from fake_llm import schema_of
from scripted_openai import Reply

Rule = Callable[[str], bool]

_SINGLE = re.compile(r"^## Criterion\nQuestion: (.*)$", re.MULTILINE)
_GROUPED = re.compile(r"^### Criterion (\S+)\nQuestion: (.*)$", re.MULTILINE)


def hashed_rule(question: str) -> bool:
    """Fails about a third of the questions, always the same ones."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:4], 16) % 3 != 0


def judge_route(rule: Rule = hashed_rule, grouped_rule: Rule | None = None) -> Callable[[dict[str, Any]], Reply]:
    grouped_rule = grouped_rule or rule

    def route(body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        schema = schema_of(body) or {}
        if "answer" in (schema.get("properties") or {}):
            (question,) = _SINGLE.findall(text)
            return Reply(content=json.dumps({"answer": rule(question)}))
        verdicts = {cid: grouped_rule(q) for cid, q in _GROUPED.findall(text)}
        assert set(verdicts) == set(schema.get("required") or []), (verdicts, schema)
        return Reply(content=json.dumps(verdicts))

    return route
