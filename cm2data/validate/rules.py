"""The rule filters of method §2.2, each a named validator over one :class:`~cm2data.schema.Dialogue`.

A validator takes the record (and the :class:`RuleConfig`) and returns a list of messages, one per violation; an
empty list means the record passes. :data:`RULE_FILTERS` lists them in the order they run. Unlike the reference,
``tool_schema`` really checks JSON types: a boolean is neither an integer nor a number (the checker,
:mod:`cm2data.schema.jsonschema`, is shared with the tool simulator).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

from cm2data.schema import Dialogue
from cm2data.schema.jsonschema import check_object, json_type

ThinkingPolicy = Literal["auto", "required", "forbidden"]


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Settings of the rule filters.

    ``thinking``: ``required`` — every assistant message has exactly one ``<think>`` block; ``forbidden`` — none;
    ``auto`` — required in a dialogue where any assistant message has one.

    ``min_words``: see :func:`degenerate_message`.
    """

    thinking: ThinkingPolicy = "auto"
    #: ``degenerate_message``: user messages and assistant replies need at least this many words (1 lets one-word
    #: answers such as "yes" through; 0 switches the word count off).
    min_words: int = 2


# ---------------------------------------------------------------------------------------------- JSON parsing

_DECODER = json.JSONDecoder()


def parse_json(text: str) -> Any:
    """``json.loads(text)``, same result and same errors, with a quicker path for the usual case.

    ``JSONDecoder.raw_decode`` skips ``json.loads``'s wrapper frames and whitespace regexes; it is only trusted
    when the document fills the whole string, anything else (leading or trailing text, errors) goes to ``json.loads``.
    """
    try:
        value, end = _DECODER.raw_decode(text)
        if end == len(text):
            return value
    except json.JSONDecodeError:
        pass
    return json.loads(text)


# ---------------------------------------------------------------------------------------------------- the rules


def tool_schema(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """Every call names a candidate tool; its arguments are a JSON object that fits the tool's parameters."""
    out: list[str] = []
    tools = {t.name: t for t in d.tools}
    for i, m in enumerate(d.messages):
        for call in m.tool_calls:
            where = f"message {i} call {call.name!r}"
            tool = tools.get(call.name)
            if tool is None:
                out.append(f"{where}: not a candidate tool (candidates: {', '.join(tools) or 'none'})")
                continue
            try:
                args = parse_json(call.arguments) if call.arguments.strip() else {}
            except json.JSONDecodeError as exc:
                out.append(f"{where}: arguments are not JSON ({exc.msg})")
                continue
            if not isinstance(args, dict):
                out.append(f"{where}: arguments must be a JSON object, got {json_type(args)}")
                continue
            check_object(args, tool.parameters, where, out)
    return out


_NEXT = {
    "user": ("assistant",),
    "assistant": ("tool", "user"),
    "tool": ("tool", "assistant"),
    "system": ("user",),
}


def role_order(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """System only first; user→assistant; assistant→tool|user; tool→tool|assistant; calls are answered by tool
    messages and replies are not; the dialogue starts with a user turn and ends with an assistant reply."""
    out: list[str] = []
    msgs = d.messages
    roles = [m.role for m in msgs]
    if "system" in roles[1:]:
        out.extend(
            f"message {i}: system message not at the start"
            for i, role in enumerate(roles)
            if role == "system" and i != 0
        )
    body = roles[1:] if roles and roles[0] == "system" else roles
    if not body or body[0] != "user":
        out.append("the first non-system message is not a user message")
    for i, (ra, rb) in enumerate(pairwise(roles)):
        if rb not in _NEXT.get(ra, ()):
            out.append(f"message {i + 1}: {ra} followed by {rb}")
        elif ra == "assistant":
            calls = msgs[i].tool_calls
            if calls and rb != "tool":
                out.append(f"message {i}: assistant calls tools but is followed by {rb}")
            elif not calls and rb == "tool":
                out.append(f"message {i + 1}: tool message after an assistant message without tool calls")
    if msgs and not (roles[-1] == "assistant" and not msgs[-1].tool_calls):
        out.append("the dialogue does not end with an assistant reply")
    return out


def tool_call_response_match(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """N calls are followed by exactly N tool messages (whose ids, when given, answer those calls)."""
    out: list[str] = []
    msgs = d.messages
    roles = [m.role for m in msgs]
    n = len(msgs)
    i = 0
    while i < n:
        m = msgs[i]
        if m.tool_calls and roles[i] == "assistant":
            j = i + 1
            while j < n and roles[j] == "tool":
                j += 1
            n_calls, n_resp = len(m.tool_calls), j - i - 1
            if n_calls != n_resp:
                out.append(f"message {i}: {n_calls} tool calls answered by {n_resp} tool messages")
            else:
                call_ids = [c.id for c in m.tool_calls]
                resp_ids = [r.tool_call_id for r in msgs[i + 1 : j]]
                # equal lists (the usual case) cannot differ once sorted: skip the sorting
                if (
                    call_ids != resp_ids
                    and all(call_ids)
                    and all(resp_ids)
                    and (
                        sorted(call_ids) != sorted(resp_ids)  # type: ignore[type-var]
                    )
                ):
                    out.append(f"message {i}: tool_call_ids {resp_ids} do not answer calls {call_ids}")
            i = j
        else:
            i += 1
    orphans = sum(
        1 for i, role in enumerate(roles) if role == "tool" and (i == 0 or roles[i - 1] not in ("assistant", "tool"))
    )
    if orphans:
        out.append(f"{orphans} tool messages without a preceding call")
    return out


_RESPONSE_MARKERS = ("<tool_response>", "</tool_response>", "<|im_start|>", "<|im_end|>")
_MARKERS_RE = re.compile("|".join(re.escape(k) for k in _RESPONSE_MARKERS))


def no_tool_response_in_assistant_message(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """Assistant text must not contain tool responses or chat-template markers (a model writing its own results)."""
    out: list[str] = []
    for i, m in enumerate(d.messages):
        if m.role != "assistant":
            continue
        for text in (m.content, m.thinking or ""):
            if _MARKERS_RE.search(text) is None:  # one C-level scan; list the markers only when there is one
                continue
            hits = [k for k in _RESPONSE_MARKERS if k in text]
            out.append(f"message {i}: assistant text contains {', '.join(hits)}")
            break
    return out


def non_empty_content(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """User, system and tool messages and assistant replies have non-blank content (a call step may be empty)."""
    out: list[str] = []
    for i, m in enumerate(d.messages):
        if m.role == "assistant" and m.tool_calls:
            continue
        if not m.content.strip():
            kind = "assistant reply" if m.role == "assistant" else f"{m.role} message"
            out.append(f"message {i}: empty {kind}")
    return out


#: A word: a run of letters or digits, or one CJK ideograph, kana or hangul syllable (scripts written without spaces
#: between words count a character each, so a Chinese sentence is not "one word").
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
_NOT_ALNUM = re.compile(r"[\W_]+")
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")
_SPACE = re.compile(r"\s+")


def degenerate_text(text: str, min_words: int = 2) -> str | None:
    """Why ``text`` is not a real message (``None`` when it is): blank, fewer than ``min_words`` words, or mostly
    non-text (fewer than half of its visible characters are letters or digits: ``"!!!"``, ``"<<>>"``, emoji)."""
    stripped = text.strip()
    if not stripped:
        return "it is empty"
    # The usual case first, with plain ASCII patterns (the gate runs this on every message): the words and letters of
    # the text's ASCII characters. Dropping the other characters can only merge words and lose letters, so when this
    # already passes, the whole text passes; for ASCII text it is the whole answer.
    ascii_only = stripped.isascii()
    runs = _ASCII_WORD.findall(stripped if ascii_only else stripped.encode("ascii", "ignore").decode("ascii"))
    words, alnum = len(runs), sum(map(len, runs))
    visible = len(stripped) - sum(map(stripped.count, " \n\t\r\f\v"))
    if words >= min_words and 2 * alnum >= visible:
        return None
    if ascii_only:
        if words < min_words:
            return f"it has {words} word{'s' if words != 1 else ''} ({stripped[:40]!r}; at least {min_words} needed)"
        return f"it is mostly non-text ({alnum} of {visible} visible characters are letters or digits)"
    words = len(_WORD.findall(stripped))
    if words < min_words:
        return f"it has {words} word{'s' if words != 1 else ''} ({stripped[:40]!r}; at least {min_words} needed)"
    visible = len(_SPACE.sub("", stripped))
    alnum = len(_NOT_ALNUM.sub("", stripped))
    if 2 * alnum < visible:
        return f"it is mostly non-text ({alnum} of {visible} visible characters are letters or digits)"
    return None


def degenerate_message(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """User messages and assistant replies are real text: at least ``cfg.min_words`` words, at least half of their
    visible characters letters or digits. Blank ones are ``non_empty_content``'s (one rule per defect); tool-calling
    steps may be empty and thinking is not checked."""
    out: list[str] = []
    for i, m in enumerate(d.messages):
        if (m.role == "user" or (m.role == "assistant" and not m.tool_calls)) and not m.content.isspace():
            if not m.content:
                continue
            why = degenerate_text(m.content, cfg.min_words)
            if why is not None:
                kind = "user message" if m.role == "user" else "assistant reply"
                out.append(f"message {i}: degenerate {kind}: {why}")
    return out


def think_tags(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """Exactly one leading ``<think>…</think>`` per assistant message when thinking is required, none elsewhere."""
    out: list[str] = []
    required = cfg.thinking == "required" or (
        cfg.thinking == "auto" and any(m.thinking is not None and m.role == "assistant" for m in d.messages)
    )
    for i, m in enumerate(d.messages):
        stray = "<think>" in m.content or "</think>" in m.content
        if m.role == "assistant":
            if stray:
                out.append(f"message {i}: misplaced or repeated <think> tags in assistant content")
            elif required and m.thinking is None:
                out.append(f"message {i}: assistant message without a <think> block")
            elif cfg.thinking == "forbidden" and m.thinking is not None:
                out.append(f"message {i}: <think> block where thinking is forbidden")
        elif stray:
            out.append(f"message {i}: <think> tags in a {m.role} message")
    return out


def tool_response_json_valid(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """Tool message contents parse as JSON."""
    out: list[str] = []
    for i, m in enumerate(d.messages):
        if m.role == "tool":
            try:
                parse_json(m.content)
            except json.JSONDecodeError as exc:
                out.append(f"message {i}: tool content is not JSON ({exc.msg} at column {exc.colno})")
    return out


def duplicate_tools_by_name(d: Dialogue, cfg: RuleConfig) -> list[str]:
    """Candidate tool names are unique."""
    names = [t.name for t in d.tools]
    if len(set(names)) == len(names):
        return []
    seen: set[str] = set()
    dupes: list[str] = []
    for t in d.tools:
        if t.name in seen and t.name not in dupes:
            dupes.append(t.name)
        seen.add(t.name)
    return [f"tool {name!r} is listed more than once" for name in dupes]


Rule = Callable[[Dialogue, RuleConfig], list[str]]

#: The rule filters in the order they run, keyed by the names used in reports and ``--rules``.
RULE_FILTERS: dict[str, Rule] = {
    "tool_schema": tool_schema,
    "role_order": role_order,
    "tool_call_response_match": tool_call_response_match,
    "no_tool_response_in_assistant_message": no_tool_response_in_assistant_message,
    "non_empty_content": non_empty_content,
    "degenerate_message": degenerate_message,
    "think_tags": think_tags,
    "tool_response_json_valid": tool_response_json_valid,
    "duplicate_tools_by_name": duplicate_tools_by_name,
}
