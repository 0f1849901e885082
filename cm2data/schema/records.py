"""Canonical typed records: a tool-use dialogue with its tools, checklists and provenance.

This module imports only the standard library and pydantic, because trainer-side adapters load it inside
LLaMA-Factory and VeRL processes. Every external format converts to and from these records (``cm2data.formats``).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]

#: Values allowed in ``ChecklistItem.focus_on`` (method §3).
FOCUS_VALUES: tuple[str, ...] = (
    "assistant.tool_calls",
    "assistant.content.thinking",
    "assistant.content.user_visible_reply",
    "tool.content",
)
#: Values allowed in ``Evidence.from_`` (method §3): the focus values plus the user's words.
EVIDENCE_SOURCES: tuple[str, ...] = ("user.content", *FOCUS_VALUES)

REVIEW_STATES: tuple[str, ...] = ("unreviewed", "in_review", "reviewed", "rejected")

_THINK_RE = re.compile(r"^\s*<think>(.*?)</think>(.*)\Z", re.DOTALL)


def canonical_json(value: Any) -> str:
    """Canonical JSON used for hashing and comparing arguments (method §6)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def split_thinking(content: str) -> tuple[str | None, str]:
    """Split a leading ``<think>…</think>`` block off ``content``.

    Returns ``(thinking, visible)``. Follows Qwen3's chat template: the newline right after ``<think>`` and right
    before ``</think>`` is dropped, leading newlines of the visible part are dropped. Content with no leading block,
    or with more than one block, is returned unchanged (``thinking`` is ``None``) so that the ``think_tags`` rule can
    see the stray tags.
    """
    match = _THINK_RE.match(content)
    if match is None:
        return None, content
    thinking, rest = match.group(1), match.group(2)
    if "<think>" in thinking or "<think>" in rest or "</think>" in rest:
        return None, content
    return thinking.strip("\n"), rest.lstrip("\n")


def join_thinking(thinking: str | None, content: str) -> str:
    """Inverse of :func:`split_thinking`: put thinking back inline as ``<think>\\n…\\n</think>``."""
    if thinking is None:
        return content
    head = f"<think>\n{thinking}\n</think>"
    return f"{head}\n\n{content}" if content else head


class _Record(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", validate_assignment=False)


class Tool(_Record):
    """An OpenAI function schema ``{type: "function", function: {name, description, parameters}}``."""

    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @classmethod
    def from_openai(cls, data: dict[str, Any]) -> Tool:
        """Accept both ``{type, function: {...}}`` and a bare ``{name, description, parameters}``."""
        if not isinstance(data, dict):
            raise ValueError(f"tool schema must be an object, got {type(data).__name__}")
        fn = data.get("function", data)
        if not isinstance(fn, dict):
            raise ValueError("tool 'function' must be an object")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        return cls(name=fn.get("name", ""), description=fn.get("description") or "", parameters=params)

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolCall(_Record):
    """One function call of an assistant action. ``arguments`` stays a JSON string (the Arrow trap)."""

    id: str | None = None
    name: str
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_string(cls, value: Any) -> str:
        if value is None:
            return "{}"
        if isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)

    @property
    def args(self) -> dict[str, Any]:
        """Parsed arguments; raises ``ValueError`` when they are not a JSON object."""
        parsed = json.loads(self.arguments)
        if not isinstance(parsed, dict):
            raise ValueError(f"arguments of {self.name!r} are not a JSON object")
        return parsed

    def canonical_arguments(self) -> str:
        return canonical_json(self.args)

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            out = {"id": self.id, **out}
        return out


class Message(_Record):
    """One chat message. Assistant thinking is split out of ``content`` into ``thinking``."""

    role: Role
    content: str = ""
    thinking: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_text(cls, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, list):  # OpenAI content parts: keep the text parts
            return "".join(p.get("text", "") for p in value if isinstance(p, dict))
        return value

    @property
    def is_final_reply(self) -> bool:
        """An assistant message with no tool calls ends a turn (method §1)."""
        return self.role == "assistant" and not self.tool_calls

    def content_with_thinking(self) -> str:
        return join_thinking(self.thinking, self.content)


class Evidence(_Record):
    """A pointer into the reference dialogue that supports a checklist item."""

    turn: int = Field(ge=0)
    step: int = Field(ge=0)
    from_: str = Field(alias="from")
    snippet: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"turn": self.turn, "step": self.step, "from": self.from_, "snippet": self.snippet}


class ChecklistItem(_Record):
    """One binary, evidence-grounded criterion of a turn (method §3).

    Older field names are accepted on input: ``dependence``/``dependency`` for ``depends_on``,
    ``must_pass_to_continue`` for ``required_for_next_turn`` and ``strictness`` for ``weight``.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    id: str
    evidence: list[Evidence] = Field(default_factory=list)
    focus_on: str
    question: str
    pass_condition: str
    failure_examples: list[str] = Field(default_factory=list)
    required_for_next_turn: bool = Field(
        default=False, validation_alias=AliasChoices("required_for_next_turn", "must_pass_to_continue")
    )
    depends_on: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("depends_on", "dependence", "dependency")
    )
    weight: float = Field(default=0.0, validation_alias=AliasChoices("weight", "strictness"))
    extra_info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _deps_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        return value

    @field_validator("failure_examples", mode="before")
    @classmethod
    def _examples_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("extra_info", mode="before")
    @classmethod
    def _extra_dict(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, str):
            return json.loads(value) if value else {}
        return value


class TurnChecklist(_Record):
    """The checklist of one user turn: its items with their weights and dependencies merged in."""

    turn: int = Field(ge=0)
    items: list[ChecklistItem] = Field(default_factory=list)

    @property
    def dependence(self) -> dict[str, list[str]]:
        return {item.id: list(item.depends_on) for item in self.items}

    @property
    def weight(self) -> dict[str, float]:
        return {item.id: item.weight for item in self.items}


#: A checklist variant: one ``TurnChecklist`` per user turn, sorted by turn.
Checklist = list[TurnChecklist]


class Provenance(_Record):
    """Where a record came from and which models and prompts touched it."""

    source: str = ""
    source_id: str | None = None
    generator_model: str | None = None
    labeller_model: str | None = None
    prompt_version: str | None = None
    created_at: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)

    def stamp(self, stage: str, **details: Any) -> None:
        """Append one processing step (stage name, UTC time, details) to ``history``."""
        self.history.append({"stage": stage, "at": datetime.now(UTC).isoformat(), **details})


class Review(_Record):
    """Human review state of a record's checklists.

    ``status`` is one of :data:`REVIEW_STATES`; ``reviewers`` the usernames that answered; ``decisions`` one free-form
    entry per reviewed item and round (``cm2data review pull`` writes ``dataset``, ``at``, ``variant``, ``turn``,
    ``item_id``, ``action`` keep/fix/drop/add/tie/pending/stale, ``applied``, ``votes``, ``by``: each reviewer's
    answer and its time, ``flags``, ``before``/``after`` for a fix); ``agreement`` figures such as
    ``verdict_percent`` and the round's ``round_verdict_alpha`` (docs/review.md).
    """

    status: str = "unreviewed"
    reviewers: list[str] = Field(default_factory=list)
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    agreement: dict[str, float] = Field(default_factory=dict)


class Dialogue(_Record):
    """The canonical record: one tool-use dialogue with its candidate tools and checklist variants."""

    id: str
    source: str = ""
    tools: list[Tool] = Field(default_factory=list)
    messages: list[Message]
    checklists: list[Checklist] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance = Field(default_factory=Provenance)
    review: Review = Field(default_factory=Review)

    @model_validator(mode="after")
    def _sort_turns(self) -> Dialogue:
        for variant in self.checklists:
            variant.sort(key=lambda block: block.turn)
        return self

    @property
    def tool_names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    def tool(self, name: str) -> Tool | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        return None


def stable_id(messages: list[dict[str, Any]] | list[Message], tools: list[Any] | None = None) -> str:
    """A content hash used as the record id when a source has none (16 hex chars of SHA-256)."""
    payload = [m.model_dump(mode="json") if isinstance(m, Message) else m for m in messages]
    tool_payload = [t.model_dump(mode="json") if isinstance(t, Tool) else t for t in (tools or [])]
    digest = hashlib.sha256(canonical_json({"messages": payload, "tools": tool_payload}).encode("utf-8"))
    return digest.hexdigest()[:16]
