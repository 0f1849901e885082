"""The Argilla review dataset: one Argilla record per checklist item (docs/review.md, "Dataset design").

What a record carries:

* **id** — :func:`record_id`: a hash of ``(dialogue id, variant, turn, item id)``, so pushing again updates the same
  record in place instead of adding a copy.
* **field** ``item`` — a :class:`argilla.CustomField` in advanced mode whose HTML/JS template is
  ``ui/argilla/item_template.html`` (:func:`load_template`). Its value (:func:`item_value`) is the dialogue up to the
  end of the turn under review, split into numbered turns and steps, thinking and tool calls and results in their
  own parts with the item's evidence snippets located in advance (``segments``), plus the item itself and the other
  items of its turn.
* **questions** — ``verdict`` (keep / fix / drop), ``problems`` (what is wrong, several allowed),
  ``rewrite_question`` and ``rewrite_pass_condition`` (optional, for *fix*), ``missing_criterion`` (optional: a
  criterion the turn lacks, format in :data:`MISSING_CRITERION_HELP`).
* **metadata** — for filtering: ``domain``, ``source``, ``turn``, ``focus_on``, ``must_pass``, ``weight``,
  ``labeller_model``, ``changed_since_review``; hidden from annotators: ``dialogue_id``, ``variant``, ``item_id``,
  ``content_hash`` (what the reviewer sees), ``payload_hash`` (everything pushed) and ``stale_responses``
  (responses given before the content last changed).
* **suggestions** — the labeller's own output: ``verdict = keep`` from agent ``labeller_model``.

Every string that goes into a field or a metadata value passes through :func:`encode_text` (``& < >`` as HTML
entities). Argilla's web UI pastes the record as raw ``JSON.stringify`` output into a ``<script>`` element of the
custom field's frame, so a ``</script>`` inside a tool result would otherwise end that element and run whatever
follows; the template decodes the entities and writes every value with ``textContent``.

Building the values needs only the schema; :func:`build_settings` imports argilla.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.schema import ChecklistItem, Dialogue, Message, TurnChecklist, canonical_json, segment

if TYPE_CHECKING:
    import argilla as rg

#: The one field of a record.
FIELD = "item"
Q_VERDICT = "verdict"
Q_PROBLEMS = "problems"
Q_REWRITE_QUESTION = "rewrite_question"
Q_REWRITE_PASS = "rewrite_pass_condition"
Q_MISSING = "missing_criterion"
QUESTIONS = (Q_VERDICT, Q_PROBLEMS, Q_REWRITE_QUESTION, Q_REWRITE_PASS, Q_MISSING)

VERDICTS: dict[str, str] = {"keep": "keep", "fix": "fix (rewrite below)", "drop": "drop"}
#: What can be wrong with an item (method §3's labeller rules, turned around).
PROBLEMS: dict[str, str] = {
    "not_observable": "not observable",
    "not_atomic": "not atomic",
    "wrong_evidence": "wrong evidence",
    "wrong_weight": "wrong weight",
    "missing_dependency": "missing dependency",
    "style_only": "style only",
    "mentions_indices": "mentions turn or step indices",
    "other": "other",
}

#: How to write the ``missing_criterion`` answer (also shown in the question's description).
MISSING_CRITERION_HELP = (
    "Optional: a criterion this TURN lacks (answer it on any one item of the turn). Either JSON, an object or a "
    'list of objects: {"question": "...", "pass_condition": "...", "focus_on": "assistant.tool_calls", '
    '"weight": 0.2, "required_for_next_turn": false, "failure_examples": ["..."]}, or lines "key: value" with '
    "the same keys (question, pass_condition and focus_on are required; focus_on is one of assistant.tool_calls, "
    "assistant.content.thinking, assistant.content.user_visible_reply, tool.content)."
)

# metadata property names
M_DOMAIN, M_SOURCE, M_TURN, M_FOCUS = "domain", "source", "turn", "focus_on"
M_MUST_PASS, M_WEIGHT = "must_pass", "weight"
M_LABELLER, M_CHANGED = "labeller_model", "changed_since_review"
M_DIALOGUE, M_VARIANT, M_ITEM = "dialogue_id", "variant", "item_id"
M_CONTENT_HASH, M_PAYLOAD_HASH, M_STALE = "content_hash", "payload_hash", "stale_responses"
#: metadata that push maintains itself (not part of the payload hash)
BOOKKEEPING = (M_CHANGED, M_PAYLOAD_HASH, M_STALE)

GUIDELINES = """\
### Reviewing checklist items

Each record is **one checklist item** of one user turn, shown under the dialogue up to the end of that turn
(turns and steps are numbered as the item's evidence counts them; the evidence snippets are highlighted).

1. **verdict** — *keep* if the item is a good criterion as written; *fix* if it is right in spirit but needs a new
   wording (fill in the rewrite questions); *drop* if it should not be a criterion at all. The labeller's output is
   pre-filled as the suggestion *keep*.
2. **what is wrong** — tick every problem you see (also when you keep the item).
3. **rewrite** — for *fix*: the new question and/or pass condition. Leave a box empty to keep that text.
4. **missing criterion** — optional, once per turn: a criterion the turn lacks (format in the question's help).

A good item is binary and observable in the dialogue, atomic, points at the right evidence, is not about style
only, allows other routes to the same verifiable result, and never mentions turn or step indices in its text.
Weights of a turn are re-normalised after a drop; ties between reviewers are left for a third review.
"""


# ------------------------------------------------------------------------------------------------ escaping, ids


def encode_text(text: str) -> str:
    """``text`` with ``&``, ``<`` and ``>`` as HTML entities (see the module docstring); the template decodes it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def decode_text(text: str) -> str:
    """Inverse of :func:`encode_text` (the template's ``decode`` does the same in JavaScript)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _encode(value: Any) -> Any:
    if isinstance(value, str):
        return encode_text(value)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _hash(value: Any, n: int = 32) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:n]


@dataclass(frozen=True, slots=True)
class ItemKey:
    """Where an item lives: dialogue id, checklist variant, turn, item id."""

    dialogue_id: str
    variant: int
    turn: int
    item_id: str

    @property
    def record_id(self) -> str:
        return record_id(self.dialogue_id, self.variant, self.turn, self.item_id)


def record_id(dialogue_id: str, variant: int, turn: int, item_id: str) -> str:
    """The Argilla record id of an item: ``cm2-`` and 32 hex digits of a SHA-256 of the four parts."""
    return "cm2-" + _hash([dialogue_id, variant, turn, item_id])


# -------------------------------------------------------------------------------------------------- the template


def template_path() -> Path | None:
    """Where the template file is: ``$CM2DATA_REVIEW_TEMPLATE``, the checkout's ``ui/argilla/``, else ``None``
    (then :func:`load_template` reads the copy installed with the package)."""
    env = os.environ.get("CM2DATA_REVIEW_TEMPLATE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "ui" / "argilla" / "item_template.html"
    return repo if repo.is_file() else None


def load_template() -> str:
    """The HTML/JS of the ``item`` field (``ui/argilla/item_template.html``; installed as package data too)."""
    path = template_path()
    if path is not None:
        return path.read_text(encoding="utf-8")
    return resources.files("cm2data.review").joinpath("item_template.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ the field's value


def _pretty_json(text: str) -> str:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text
    if not isinstance(value, (dict, list)):
        return text
    return json.dumps(value, indent=2, ensure_ascii=False)


def _squeeze(text: str) -> tuple[str, list[int]]:
    """``text`` without whitespace, and for each kept character its index in ``text``."""
    kept = [(i, c) for i, c in enumerate(text) if not c.isspace()]
    return "".join(c for _, c in kept), [i for i, _ in kept]


def find_snippet(text: str, snippet: str) -> tuple[int, int] | None:
    """``(start, end)`` of ``snippet`` in ``text``: exact first, then ignoring whitespace (so that a snippet of
    compact JSON is found in its pretty-printed form); ``None`` when absent."""
    snippet = snippet.strip()
    if not snippet:
        return None
    at = text.find(snippet)
    if at >= 0:
        return at, at + len(snippet)
    flat_text, where = _squeeze(text)
    flat_snippet, _ = _squeeze(snippet)
    if not flat_snippet:
        return None
    at = flat_text.find(flat_snippet)
    if at < 0:
        return None
    return where[at], where[at + len(flat_snippet) - 1] + 1


def segments(text: str, marks: list[tuple[int, str]], alternates: Sequence[str] = ()) -> list[list[Any]]:
    """Split ``text`` into ``[[piece, evidence index or -1], …]`` at the places where the snippets ``marks``
    (``(evidence index, snippet)``) occur; overlapping marks keep the first. A snippet found only in one of the
    ``alternates`` (other renderings of the same content, e.g. a tool call as ``"name": …, "arguments": …``)
    marks the whole text."""
    spans: list[tuple[int, int, int]] = []
    for idx, snippet in marks:
        found = find_snippet(text, snippet)
        if found is None and text and any(find_snippet(alt, snippet) is not None for alt in alternates):
            found = (0, len(text))
        if found is not None and all(found[1] <= s or found[0] >= e for s, e, _ in spans):
            spans.append((found[0], found[1], idx))
    spans.sort()
    out: list[list[Any]] = []
    pos = 0
    for start, end, idx in spans:
        if start > pos:
            out.append([text[pos:start], -1])
        out.append([text[start:end], idx])
        pos = end
    if pos < len(text) or not out:
        out.append([text[pos:], -1])
    return out


_PART_SOURCES = {
    "content": ("user.content", "assistant.content.user_visible_reply", "tool.content"),
    "thinking": ("assistant.content.thinking",),
    "tool_call": ("assistant.tool_calls",),
}


def _message_value(m: Message, marks: list[tuple[int, str, str]], found: set[int]) -> dict[str, Any]:
    """One message as ``{role, name, parts: [{kind, label, segments}]}``; ``marks`` are ``(index, from, snippet)``
    of the evidence that points at this message's step."""
    parts: list[dict[str, Any]] = []

    def part(kind: str, label: str, text: str, alternates: Sequence[str] = ()) -> None:
        wanted = [(i, s) for i, src, s in marks if src in _PART_SOURCES[kind]]
        segs = segments(text, wanted, alternates)
        found.update(idx for _, idx in segs if idx >= 0)
        parts.append({"kind": kind, "label": label, "segments": segs})

    if m.thinking:
        part("thinking", "thinking", m.thinking)
    if m.content or not (m.thinking or m.tool_calls):
        part(
            "content",
            "tool result" if m.role == "tool" else m.role,
            _pretty_json(m.content) if m.role == "tool" else m.content,
        )
    for call in m.tool_calls:
        part(
            "tool_call",
            call.name,
            _pretty_json(call.arguments),
            (
                f'"name": "{call.name}", "arguments": {call.arguments}',
                json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False),
            ),
        )
    return {"role": m.role, "name": m.name or "", "parts": parts}


def _item_dict(it: ChecklistItem) -> dict[str, Any]:
    return {
        "id": it.id,
        "question": it.question,
        "pass_condition": it.pass_condition,
        "focus_on": it.focus_on,
        "failure_examples": list(it.failure_examples),
        "weight": it.weight,
        "required_for_next_turn": it.required_for_next_turn,
        "depends_on": list(it.depends_on),
        "evidence": [e.to_dict() for e in it.evidence],
    }


def item_value(d: Dialogue, variant: int, block: TurnChecklist, item: ChecklistItem) -> dict[str, Any]:
    """The ``item`` field's value (before :func:`encode_text`): the dialogue up to the end of ``block.turn``, the
    item (with ``found`` per evidence entry) and the other items of the turn."""
    turns = segment(d.messages)
    evidence = [(i, e) for i, e in enumerate(item.evidence)]
    found: set[int] = set()
    turn_values = []
    for turn in turns[: block.turn + 1]:
        steps = []
        for step in turn.steps:
            marks = [(i, e.from_, e.snippet) for i, e in evidence if e.turn == turn.index and e.step == step.index]
            steps.append(
                {
                    "index": step.index,
                    "kind": step.kind,
                    "messages": [_message_value(d.messages[k], marks, found) for k in step.message_indices],
                }
            )
        turn_values.append({"index": turn.index, "complete": turn.complete, "steps": steps})
    system = "\n\n".join(
        m.content for m in d.messages[: turns[0].start if turns else len(d.messages)] if m.role == "system"
    )
    value_item = _item_dict(item)
    for i, ev in enumerate(value_item["evidence"]):
        ev["found"] = i in found
    return {
        "dialogue_id": d.id,
        "variant": variant,
        "turn": block.turn,
        "num_turns": len(turns),
        "domain": str(d.metadata.get("domain") or ""),
        "source": d.source,
        "tools": d.tool_names,
        "system": system,
        "turns": turn_values,
        "item": value_item,
        "siblings": [
            {
                "id": o.id,
                "question": o.question,
                "focus_on": o.focus_on,
                "weight": o.weight,
                "required_for_next_turn": o.required_for_next_turn,
                "depends_on": list(o.depends_on),
            }
            for o in block.items
            if o.id != item.id
        ],
    }


def content_hash(d: Dialogue, block: TurnChecklist, item: ChecklistItem) -> str:
    """A hash of what a reviewer judges: the item (less its weight) and the messages up to the end of its turn, and
    the tools. Push compares it to flag items whose content changed after they were reviewed."""
    turns = segment(d.messages)
    end = turns[block.turn].end if block.turn < len(turns) else len(d.messages)
    judged = _item_dict(item)
    del judged["weight"]  # re-normalised after every drop: a new weight alone does not void a review
    return _hash(
        {
            "item": judged,
            "messages": [m.model_dump(mode="json") for m in d.messages[:end]],
            "tools": [t.to_openai() for t in d.tools],
        }
    )


# ------------------------------------------------------------------------------------------------ review items


@dataclass
class ReviewItem:
    """What push sends for one checklist item, independent of the SDK: id, field value (encoded), metadata (encoded,
    without the bookkeeping keys), the suggested verdict and the hashes."""

    key: ItemKey
    value: dict[str, Any]
    metadata: dict[str, Any]
    suggestion_agent: str
    content_hash: str
    payload_hash: str = field(default="")

    @property
    def record_id(self) -> str:
        return self.key.record_id


def review_items(d: Dialogue, variants: list[int] | None = None) -> list[ReviewItem]:
    """One :class:`ReviewItem` per checklist item of ``d`` (all variants unless ``variants`` names some)."""
    out: list[ReviewItem] = []
    labeller = d.provenance.labeller_model or ""
    domain = str(d.metadata.get("domain") or "")
    for v, variant in enumerate(d.checklists):
        if variants is not None and v not in variants:
            continue
        for block in variant:
            for it in block.items:
                key = ItemKey(d.id, v, block.turn, it.id)
                value = _encode(item_value(d, v, block, it))
                meta: dict[str, Any] = {
                    M_DOMAIN: encode_text(domain or "unknown"),
                    M_SOURCE: encode_text(d.source or "unknown"),
                    M_TURN: block.turn,
                    M_FOCUS: encode_text(it.focus_on),
                    M_MUST_PASS: "yes" if it.required_for_next_turn else "no",
                    M_WEIGHT: float(it.weight),
                    M_LABELLER: encode_text(labeller or "unknown"),
                    M_DIALOGUE: encode_text(d.id),
                    M_VARIANT: v,
                    M_ITEM: encode_text(it.id),
                }
                chash = content_hash(d, block, it)
                meta[M_CONTENT_HASH] = chash
                agent = encode_text(labeller or "labeller")
                item = ReviewItem(key, value, meta, agent, chash)
                item.payload_hash = _hash({"value": value, "metadata": meta, "agent": agent})
                out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------- settings


def build_settings(min_submitted: int = 2, template: str | None = None) -> rg.Settings:
    """The dataset's :class:`argilla.Settings`: the ``item`` custom field, the five questions, the metadata
    properties and an overlap task distribution of ``min_submitted`` submitted responses per record."""
    import argilla as rg

    if min_submitted < 1:
        raise ValueError(f"min_submitted must be at least 1, got {min_submitted}")
    return rg.Settings(
        guidelines=GUIDELINES,
        fields=[
            rg.CustomField(
                name=FIELD,
                title="Checklist item in its dialogue",
                template=template or load_template(),
                advanced_mode=True,
                required=True,
            )
        ],
        questions=[
            rg.LabelQuestion(
                name=Q_VERDICT,
                title="Verdict",
                labels=VERDICTS,
                required=True,
                description="keep as is, fix (give the rewrite below), or drop the item",
            ),
            rg.MultiLabelQuestion(
                name=Q_PROBLEMS,
                title="What is wrong?",
                labels=PROBLEMS,
                required=False,
                description="every problem you see; leave empty when nothing is wrong",
            ),
            rg.TextQuestion(
                name=Q_REWRITE_QUESTION,
                title="Rewrite: question",
                required=False,
                description="for fix: the new yes/no question (empty keeps the current one)",
            ),
            rg.TextQuestion(
                name=Q_REWRITE_PASS,
                title="Rewrite: pass condition",
                required=False,
                description="for fix: the new objective pass condition (empty keeps the current one)",
            ),
            rg.TextQuestion(
                name=Q_MISSING,
                title="Missing criterion for this turn",
                required=False,
                description=MISSING_CRITERION_HELP,
            ),
        ],
        metadata=[
            rg.TermsMetadataProperty(name=M_DOMAIN, title="domain"),
            rg.TermsMetadataProperty(name=M_SOURCE, title="source"),
            rg.IntegerMetadataProperty(name=M_TURN, title="turn", min=0),
            rg.TermsMetadataProperty(name=M_FOCUS, title="focus_on"),
            rg.TermsMetadataProperty(name=M_MUST_PASS, title="must pass (required for next turn)"),
            rg.FloatMetadataProperty(name=M_WEIGHT, title="weight"),
            rg.TermsMetadataProperty(name=M_LABELLER, title="labeller model"),
            rg.TermsMetadataProperty(name=M_CHANGED, title="changed since review"),
            rg.TermsMetadataProperty(name=M_DIALOGUE, title="dialogue id", visible_for_annotators=False),
            rg.IntegerMetadataProperty(name=M_VARIANT, title="variant", min=0, visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_ITEM, title="item id", visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_CONTENT_HASH, title="content hash", visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_PAYLOAD_HASH, title="payload hash", visible_for_annotators=False),
            rg.TermsMetadataProperty(
                name=M_STALE, title="responses older than the content", visible_for_annotators=False
            ),
        ],
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )
