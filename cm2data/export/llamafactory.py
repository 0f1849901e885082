"""LLaMA-Factory export: canonical records → a folder LLaMA-Factory registers and trains on (method §7).

::

    OUT/dataset_info.json   LLaMA-Factory's dataset registration (entries of other datasets already there are kept)
    OUT/<name>.json         the rows: ``{"messages": [{"role", "content"}, …], "tools": "<JSON string>"}``
    OUT/rejects.jsonl       every dialogue dropped or truncated, with the rule and the reason (see cm2data.rejects)
    OUT/export.json         what was exported, how, and the counts

Both styles use LLaMA-Factory's ``sharegpt`` formatting with role/content tags (``user``, ``assistant``,
``system``, ``observation``); consecutive tool messages become one ``observation`` joined the way LLaMA-Factory's own
OpenAI converter joins them (``"\\n</tool_response>\\n<tool_response>\\n"``, which the Qwen templates wrap into one
``<tool_response>`` block per result, exactly as the official chat templates render them).

* ``inline`` (the reference layout): tool calls are written into the assistant text as
  ``<tool_call>\\n{"name":…, "arguments":…}\\n</tool_call>`` after the ``<think>`` block, one block per call. On the
  CM2 reference record this reproduces the reference's ``*_llamafactory_qwen3.json`` byte for byte (with
  ``indent=4``). ``call_format="qwen"`` writes ``{"name": …`` with the space the official Qwen chat templates put
  there (the reference omits it; see docs/llamafactory.md).
* ``native``: a tool-calling step becomes LLaMA-Factory's own ``function_call`` turn whose content is the JSON call
  ``{"name", "arguments"}`` (a list for parallel calls), preceded by the ``<think>`` block when thinking is kept, so
  that LLaMA-Factory's template renders the calls itself. A step with visible text besides its calls is written as
  ``<think>…</think>\\n\\ntext\\n<tool_call>[calls]</tool_call>``, the one form LLaMA-Factory's function formatter
  parses without losing the text.

Templates: ``qwen3`` keeps thinking (keep-think, method §1); ``history_thinking="drop"`` removes it from the
assistant messages before the last user turn of each row, as the official Qwen3 template does at inference.
``qwen3_nothink`` and ``qwen`` (Qwen2.5) are non-thinking templates: all thinking is dropped.

LLaMA-Factory needs rows that alternate (user|observation, assistant|function_call, …, ending on the assistant side,
an optional system message first) and skips the ones that do not *silently*. This exporter checks every dialogue
while converting and reports what it had to change in ``rejects.jsonl``: a broken dialogue is truncated to its
complete turns before the break (``on_broken="truncate"``, the default) or dropped (``"drop"``); one with no complete
turn before the break is always dropped.

This module imports only the standard library and cm2data's records (pyarrow only inside :func:`hub_table`, the
``sft`` config of ``cm2data publish --with sft``): no torch, no LLaMA-Factory.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.rejects import Reject, write_rejects
from cm2data.schema import Dialogue, Message

if TYPE_CHECKING:
    import pyarrow as pa


class Style(StrEnum):
    """How tool calls are written: ``<tool_call>`` text in the assistant turn, or LLaMA-Factory's own turns."""

    inline = "inline"
    native = "native"


class Template(StrEnum):
    """The LLaMA-Factory template the rows are written for."""

    qwen3 = "qwen3"
    qwen3_nothink = "qwen3_nothink"
    qwen = "qwen"


class HistoryThinking(StrEnum):
    """Thinking of the turns before a row's last turn (qwen3)."""

    keep = "keep"
    drop = "drop"


class OnBroken(StrEnum):
    """A dialogue LLaMA-Factory cannot alternate: keep its complete turns before the break, or drop it."""

    truncate = "truncate"
    drop = "drop"


class CallFormat(StrEnum):
    """Inline calls as ``{"name":…`` (the reference) or ``{"name": …`` (the Qwen chat templates)."""

    reference = "reference"
    qwen = "qwen"


# The accepted values as plain tuples (ExportOptions holds strings; the CLI builds its choices from the enums)
STYLES = tuple(m.value for m in Style)
TEMPLATES = tuple(m.value for m in Template)
#: Templates whose assistant turns carry ``<think>`` blocks; the others get no thinking at all.
THINKING_TEMPLATES = frozenset({"qwen3"})
HISTORY_THINKING = tuple(m.value for m in HistoryThinking)
ON_BROKEN = tuple(m.value for m in OnBroken)
CALL_FORMATS = tuple(m.value for m in CallFormat)

STAGE = "export"
DATA_INFO = "dataset_info.json"
MANIFEST = "export.json"
REJECTS = "rejects.jsonl"
#: How LLaMA-Factory's own OpenAI converter merges consecutive tool results into one observation.
OBSERVATION_JOINER = "\n</tool_response>\n<tool_response>\n"

#: Rules a dialogue can break here (rule → what it means); the reject's message says where.
RULES: dict[str, str] = {
    "system_not_first": "a system message after the first message (LLaMA-Factory takes a system prompt only first)",
    "first_not_user": "an assistant or tool message before the first user message",
    "consecutive_user": "two user messages in a row (no assistant reply between them)",
    "consecutive_assistant": "an assistant message right after an assistant reply",
    "empty_assistant": "an assistant message with no tool calls and no visible reply",
    "tool_result_without_call": "tool results that answer no tool call, or more results than calls",
    "missing_tool_result": "tool calls not followed by one tool message per call",
    "turn_without_reply": "a turn whose last step is tool results, not an assistant reply",
    "incomplete_turn": "the dialogue ends before the assistant's reply to the last user message",
    "tool_call_arguments": "tool-call arguments that are not a JSON object",
    "tool_call_markup_in_text": "literal <tool_call> in the text of a calling step (native style would misparse it)",
    "no_user_turn": "no user message at all",
}


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """How records become LLaMA-Factory rows (see the module docstring)."""

    style: str = "inline"
    template: str = "qwen3"
    split_turns: bool = False
    history_thinking: str = "keep"
    on_broken: str = "truncate"
    call_format: str = "reference"

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.style, STYLES, "style"),
            (self.template, TEMPLATES, "template"),
            (self.history_thinking, HISTORY_THINKING, "history_thinking"),
            (self.on_broken, ON_BROKEN, "on_broken"),
            (self.call_format, CALL_FORMATS, "call_format"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")

    @property
    def keeps_thinking(self) -> bool:
        return self.template in THINKING_TEMPLATES

    def as_dict(self) -> dict[str, Any]:
        return {
            "style": self.style,
            "template": self.template,
            "split_turns": self.split_turns,
            "history_thinking": self.history_thinking,
            "on_broken": self.on_broken,
            "call_format": self.call_format,
        }


# ------------------------------------------------------------------------------------------- parsing the dialogue


class _Broken(Exception):
    def __init__(self, rule: str, message: str, index: int | None) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.index = index


# a step: ("user", Message) | ("call", Message, [parsed args]) | ("reply", Message) | ("obs", [Message])
Step = tuple[Any, ...]


def _turns(d: Dialogue) -> tuple[str, list[list[Step]], _Broken | None]:
    """Split ``d`` into complete turns that LLaMA-Factory can alternate; stop at the first break.

    Returns the system prompt (``""`` if none), the complete turns before any break, and the break (or ``None``).
    """
    msgs = d.messages
    n = len(msgs)
    i = 0
    system = ""
    if n and msgs[0].role == "system":
        system = msgs[0].content
        i = 1
    turns: list[list[Step]] = []
    current: list[Step] = []
    state = "start"  # start | user | call | obs | reply
    pending = 0
    call_at = 0
    while i < n:
        m = msgs[i]
        role = m.role
        if role == "user":
            if state == "user":
                return (
                    system,
                    turns,
                    _Broken(
                        "consecutive_user",
                        f"message {i}: a user message follows the user "
                        f"message {i - 1} with no assistant reply between them",
                        i,
                    ),
                )
            if state == "call":
                return (
                    system,
                    turns,
                    _Broken(
                        "missing_tool_result", f"message {i}: the tool calls of message {call_at} have no results", i
                    ),
                )
            if state == "obs":
                return (
                    system,
                    turns,
                    _Broken(
                        "turn_without_reply",
                        f"message {i}: the turn before it ends with tool results, not an assistant reply",
                        i,
                    ),
                )
            current = [("user", m)]
            state = "user"
        elif role == "assistant":
            if state == "start":
                return (
                    system,
                    turns,
                    _Broken("first_not_user", f"message {i}: an assistant message before the first user message", i),
                )
            if state == "reply":
                return (
                    system,
                    turns,
                    _Broken(
                        "consecutive_assistant",
                        f"message {i}: an assistant message right after the assistant reply {i - 1}",
                        i,
                    ),
                )
            if state == "call":
                return (
                    system,
                    turns,
                    _Broken(
                        "missing_tool_result", f"message {i}: the tool calls of message {call_at} have no results", i
                    ),
                )
            if m.tool_calls:
                parsed = []
                for c in m.tool_calls:
                    try:
                        args = json.loads(c.arguments)
                    except ValueError:
                        args = None
                    if not isinstance(args, dict):
                        return (
                            system,
                            turns,
                            _Broken(
                                "tool_call_arguments",
                                f"message {i}: the arguments of {c.name!r} are not a JSON object",
                                i,
                            ),
                        )
                    parsed.append(args)
                current.append(("call", m, parsed))
                state = "call"
                pending = len(m.tool_calls)
                call_at = i
            else:
                if not m.content.strip():
                    return (
                        system,
                        turns,
                        _Broken(
                            "empty_assistant",
                            f"message {i}: an assistant message with no tool calls and no visible reply",
                            i,
                        ),
                    )
                current.append(("reply", m))
                turns.append(current)
                current = []
                state = "reply"
        elif role == "tool":
            j = i
            while j < n and msgs[j].role == "tool":
                j += 1
            if state != "call":
                where = "before the first user message" if state == "start" else "that follow no tool call"
                return system, turns, _Broken("tool_result_without_call", f"message {i}: tool results {where}", i)
            got = j - i
            if got > pending:
                return (
                    system,
                    turns,
                    _Broken(
                        "tool_result_without_call",
                        f"messages {i}-{j - 1}: {got} tool results answer the {pending} calls of message {call_at}",
                        i,
                    ),
                )
            if got < pending:
                return (
                    system,
                    turns,
                    _Broken(
                        "missing_tool_result",
                        f"messages {i}-{j - 1}: {got} tool results for the {pending} calls of message {call_at}",
                        i,
                    ),
                )
            current.append(("obs", msgs[i:j]))
            state = "obs"
            i = j
            continue
        else:  # a system message that is not the first
            return (
                system,
                turns,
                _Broken("system_not_first", f"message {i}: a system message after the first message", i),
            )
        i += 1
    if state == "start":
        return system, turns, _Broken("no_user_turn", "the dialogue has no user message", None)
    if state != "reply":
        last = {"user": "a user message", "call": "tool calls", "obs": "tool results"}[state]
        return (
            system,
            turns,
            _Broken(
                "incomplete_turn", f"message {n - 1}: the dialogue ends with {last}, not an assistant reply", n - 1
            ),
        )
    return system, turns, None


# ------------------------------------------------------------------------------------------------ rendering


def _think_head(thinking: str) -> str:
    return f"<think>\n{thinking}\n</think>"


def _with_thinking(m: Message, thinking: bool) -> str:
    """Visible content with the ``<think>`` block in front (Qwen3's layout), or the content alone."""
    if thinking and m.thinking is not None:
        head = _think_head(m.thinking)
        return f"{head}\n\n{m.content}" if m.content else head
    return m.content


class _Renderer:
    """Renders the steps of a turn as LLaMA-Factory messages for one set of options."""

    def __init__(self, options: ExportOptions) -> None:
        self.native = options.style == "native"
        self.name_prefix = '{"name":' if options.call_format == "reference" else '{"name": '

    def inline_call(self, name: str, arguments: str) -> str:
        return (
            f'<tool_call>\n{self.name_prefix}{json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}'
            "\n</tool_call>"
        )

    def call(self, m: Message, parsed: list[dict[str, Any]], thinking: bool) -> dict[str, str]:
        think = m.thinking if thinking else None
        content = m.content
        if self.native:
            calls = [{"name": c.name, "arguments": a} for c, a in zip(m.tool_calls, parsed, strict=True)]
            payload = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            if content:
                text = f"{_with_thinking(m, thinking)}\n<tool_call>{payload}</tool_call>"
            elif think is not None:
                text = f"{_think_head(think)}\n\n{payload}"
            else:
                text = payload
            return {"role": "function_call", "content": text}
        blocks = "\n".join(self.inline_call(c.name, c.arguments) for c in m.tool_calls)
        if content:
            text = f"{_with_thinking(m, thinking)}\n{blocks}"
        elif think is not None:
            text = f"{_think_head(think)}\n\n{blocks}"
        else:
            text = blocks
        return {"role": "assistant", "content": text}

    def turn(self, steps: list[Step], thinking: bool) -> list[dict[str, str]]:
        out = []
        for step in steps:
            kind = step[0]
            if kind == "user":
                out.append({"role": "user", "content": step[1].content})
            elif kind == "reply":
                out.append({"role": "assistant", "content": _with_thinking(step[1], thinking)})
            elif kind == "call":
                out.append(self.call(step[1], step[2], thinking))
            else:
                out.append({"role": "observation", "content": OBSERVATION_JOINER.join(t.content for t in step[1])})
        return out


def _markup_in_calling_text(turns: list[list[Step]]) -> int | None:
    """The first turn with a calling step whose text holds a literal ``<tool_call>`` (native style only)."""
    for t, steps in enumerate(turns):
        for step in steps:
            if step[0] == "call":
                m = step[1]
                if "<tool_call>" in m.content or (m.thinking and "<tool_call>" in m.thinking):
                    return t
    return None


def convert(
    d: Dialogue, options: ExportOptions, renderer: _Renderer | None = None, tools_json: str | None = None
) -> tuple[list[dict[str, Any]], Reject | None]:
    """One record → its LLaMA-Factory rows (one, or one per user turn with ``split_turns``) and its reject, if any.

    The reject says whether the dialogue was truncated (rows still returned) or dropped (no rows).
    """
    renderer = renderer or _Renderer(options)
    system, turns, broken = _turns(d)
    if options.style == "native" and turns:
        t = _markup_in_calling_text(turns)
        if t is not None:
            broken = _Broken(
                "tool_call_markup_in_text",
                f"turn {t}: a tool-calling step has a literal <tool_call> "
                "in its text, which LLaMA-Factory's function formatter would parse as the call",
                None,
            )
            turns = turns[:t]
    if broken is not None and options.on_broken == "drop":
        turns = []
    rows: list[dict[str, Any]] = []
    if turns:
        if tools_json is None:
            tools_json = json.dumps([t.to_openai() for t in d.tools])
        head = [{"role": "system", "content": system}] if system else []
        think = options.keeps_thinking
        drop_history = options.history_thinking == "drop"
        if options.split_turns:
            rendered: dict[tuple[int, bool], list[dict[str, str]]] = {}
            for last in range(len(turns)):
                messages = list(head)
                for t in range(last + 1):
                    key = (t, think and (t == last or not drop_history))
                    if key not in rendered:
                        rendered[key] = renderer.turn(turns[t], key[1])
                    messages += rendered[key]
                rows.append({"messages": messages, "tools": tools_json})
        else:
            messages = list(head)
            last = len(turns) - 1
            for t, steps in enumerate(turns):
                messages += renderer.turn(steps, think and (t == last or not drop_history))
            rows.append({"messages": messages, "tools": tools_json})
    reject = None
    if broken is not None:
        total = sum(1 for m in d.messages if m.role == "user")
        if rows:
            action = f"truncated: kept the first {len(turns)} of {total} turns"
        else:
            action = "dropped"
        reject = Reject(
            d.id,
            STAGE,
            broken.rule,
            f"{broken.message} ({action})",
            f"message {broken.index}" if broken.index is not None else None,
            d.model_dump(mode="json", by_alias=True),
        )
    return rows, reject


# ------------------------------------------------------------------------------------------------ the folder


def dataset_info_entry(file_name: str, style: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry LLaMA-Factory needs for a file this exporter wrote."""
    tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
        "observation_tag": "observation",
    }
    if style == "native":
        tags["function_tag"] = "function_call"
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "tools": "tools"},
        "tags": tags,
    }


@dataclass
class ExportResult:
    """What :func:`export_llamafactory` wrote and what it had to change."""

    out: Path
    data_file: Path
    name: str
    options: ExportOptions
    records: int = 0
    rows: int = 0
    exported_records: int = 0
    truncated: int = 0
    dropped: int = 0
    rejects: list[Reject] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.rule for r in self.rejects)

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data_file": self.data_file.name,
            **self.options.as_dict(),
            "records": self.records,
            "exported_records": self.exported_records,
            "rows": self.rows,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "rejects_by_rule": dict(self.counts),
        }


class _RowWriter:
    """Streams rows into a JSON array: one compact row per line, or ``indent``-ed like ``json.dump(rows, indent)``."""

    def __init__(self, path: Path, indent: int | None) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".partial")
        self.fh = self.tmp.open("w", encoding="utf-8")
        self.indent = indent
        self.n = 0

    def write(self, row: dict[str, Any]) -> None:
        if self.indent is None:
            text = json.dumps(row)
        else:
            text = textwrap.indent(json.dumps(row, indent=self.indent), " " * self.indent)
        self.fh.write((",\n" if self.n else "[\n") + text)
        self.n += 1

    def close(self) -> None:
        self.fh.write("\n]" if self.n else "[]")
        if self.indent is None:
            self.fh.write("\n")
        self.fh.close()
        self.tmp.replace(self.path)  # never leave a half-written file under the final name


def _merge_dataset_info(path: Path, name: str, entry: dict[str, Any]) -> None:
    info: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            info = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            info = {}
    info[name] = entry
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def export_llamafactory(
    records: Iterable[Dialogue],
    out: Path,
    options: ExportOptions | None = None,
    *,
    name: str = "cm2data",
    indent: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    extra_rejects: Iterable[Reject] = (),
) -> ExportResult:
    """Write ``records`` as a LLaMA-Factory dataset folder ``out`` (see the module docstring).

    ``extra_rejects`` (for example rows the reader could not parse) are written to ``rejects.jsonl`` too.
    ``on_progress(n)`` is called with the number of records done since the last call.
    """
    options = options or ExportOptions()
    out.mkdir(parents=True, exist_ok=True)
    data_file = out / f"{name}.json"
    result = ExportResult(out=out, data_file=data_file, name=name, options=options)
    renderer = _Renderer(options)
    writer = _RowWriter(data_file, indent)
    tools_cache: dict[int, tuple[list[Any], str]] = {}
    step = 0
    try:
        for d in records:
            # records built by one generator often share one tools list: dump it once
            cached = tools_cache.get(id(d.tools))
            if cached is None or cached[0] is not d.tools:
                cached = (d.tools, json.dumps([t.to_openai() for t in d.tools]))
                if len(tools_cache) > 4096:
                    tools_cache.clear()
                tools_cache[id(d.tools)] = cached
            rows, reject = convert(d, options, renderer, cached[1])
            result.records += 1
            for row in rows:
                writer.write(row)
            result.rows += len(rows)
            if rows:
                result.exported_records += 1
            if reject is not None:
                result.rejects.append(reject)
                if rows:
                    result.truncated += 1
                else:
                    result.dropped += 1
            step += 1
            if on_progress is not None and step == 256:
                on_progress(step)
                step = 0
    finally:
        writer.close()
    if on_progress is not None and step:
        on_progress(step)
    all_rejects = [*extra_rejects, *result.rejects]
    write_rejects(all_rejects, out / REJECTS)
    _merge_dataset_info(out / DATA_INFO, name, dataset_info_entry(data_file.name, options.style))
    manifest = result.manifest()
    if len(all_rejects) != len(result.rejects):
        manifest["unreadable_rows"] = len(all_rejects) - len(result.rejects)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return result


__all__ = [
    "CALL_FORMATS",
    "HISTORY_THINKING",
    "ON_BROKEN",
    "RULES",
    "STYLES",
    "TEMPLATES",
    "CallFormat",
    "ExportOptions",
    "ExportResult",
    "HistoryThinking",
    "OnBroken",
    "Style",
    "Template",
    "convert",
    "dataset_info_entry",
    "export_llamafactory",
]


# ------------------------------------------------------------------------------------ the Hub config (publish)


def hub_table(records: Sequence[Dialogue], split: str) -> pa.Table:
    """The ``sft`` config of ``cm2data publish --with sft``: LLaMA-Factory rows (sharegpt formatting, role/content
    tags, the reference's ``inline`` style and ``qwen3`` template), one row per exported dialogue, with columns
    ``dialogue_id``, ``messages``, ``tools``. Dialogues the exporter has to drop are left out; truncated ones keep
    their complete turns."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("dialogue_id", pa.string()),
            ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("tools", pa.string()),
        ]
    )
    options = ExportOptions()
    rows = []
    for d in records:
        converted, _reject = convert(d, options)
        rows += [{"dialogue_id": d.id, "messages": r["messages"], "tools": r["tools"]} for r in converted]
    return pa.Table.from_pylist(rows, schema=schema)
