"""Checklist rules that need the dialogue itself (method §3).

The column-level rules (enums, non-empty text, weight sums, unique ids) run vectorised in the pandera gate
(:mod:`cm2data.validate.tables`); the rules here relate a checklist to its dialogue's turns and steps, and are also
used on single records (for example to validate a labeller's output before retrying it).

A rule takes the record and the number of steps of each of its user turns (:func:`steps_per_turn`, the shape of
:func:`cm2data.schema.segment` without building its objects) and returns one message per violation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from cm2data.schema import Dialogue, Message, TurnChecklist, segment, step_text
from cm2data.validate.evidence import grounded, normalize, similarity


def steps_per_turn(messages: Sequence[Message]) -> list[int]:
    """``[len(turn.steps) for turn in segment(messages)]``, computed in one pass.

    A user message opens a turn (its step 0); every later message is a step of its own, except a tool message right
    after a tool message, which joins the same tool step. Messages before the first user message belong to no turn.
    """
    counts: list[int] = []
    previous = None
    for m in messages:
        role = m.role
        if role == "user":
            counts.append(1)
        elif counts and not (role == "tool" and previous == "tool"):
            counts[-1] += 1
        previous = role
    return counts


def block_count(d: Dialogue, steps: Sequence[int]) -> list[str]:
    """One block per user turn, sorted by turn, numbered 0..L-1."""
    out = []
    for v, variant in enumerate(d.checklists):
        if len(variant) != len(steps):
            out.append(f"variant {v}: {len(variant)} checklist blocks for {len(steps)} user turns")
        positions = [b.turn for b in variant]
        if positions != list(range(len(variant))):
            out.append(f"variant {v}: block turns {positions} are not 0..{len(variant) - 1}")
    return out


def dependencies(d: Dialogue, steps: Sequence[int]) -> list[str]:
    """Every id something depends on is an item of the same turn with ``focus_on == "tool.content"``, not itself."""
    out: list[str] = []
    for v, variant in enumerate(d.checklists):
        for block in variant:
            _block_dependencies(block, f"variant {v} turn {block.turn}", out)
    return out


def _block_dependencies(block: TurnChecklist, where: str, out: list[str]) -> None:
    focus: dict[str, str] | None = None  # built at the first dependency: most items have none
    for it in block.items:
        for dep in it.depends_on:
            if focus is None:
                focus = {x.id: x.focus_on for x in block.items}
            if dep == it.id:
                out.append(f"{where} {it.id}: depends on itself")
            elif dep not in focus:
                out.append(f"{where} {it.id}: depends on unknown item {dep!r}")
            elif focus[dep] != "tool.content":
                out.append(f"{where} {it.id}: depends on {dep}, whose focus_on is {focus[dep]!r}, not 'tool.content'")


def evidence_pointers(d: Dialogue, steps: Sequence[int]) -> list[str]:
    """Evidence points at a turn and step that exist in the dialogue."""
    out = []
    n_turns = len(steps)
    for v, variant in enumerate(d.checklists):
        for block in variant:
            for it in block.items:
                for ev in it.evidence:
                    if ev.turn >= n_turns:
                        out.append(f"variant {v} turn {block.turn} {it.id}: evidence turn {ev.turn} does not exist")
                    elif ev.step >= steps[ev.turn]:
                        out.append(f"variant {v} turn {block.turn} {it.id}: evidence step {ev.step} does not exist "
                                   f"in turn {ev.turn} ({steps[ev.turn]} steps)")
    return out


#: The kind of step each evidence ``from`` value must point at.
SOURCE_STEP_KIND: dict[str, str] = {
    "user.content": "user",
    "assistant.content.thinking": "assistant",
    "assistant.content.user_visible_reply": "assistant",
    "assistant.tool_calls": "assistant",
    "tool.content": "tool",
}


def evidence_grounded(d: Dialogue, steps: Sequence[int]) -> list[str]:
    """Every item has evidence (except a criterion a reviewer added in review, which has none), and every evidence
    entry is a quote of the dialogue: its ``from`` names a part of the
    kind of step it points at (``tool.content`` → a tool step, ``assistant.*`` → an assistant step,
    ``user.content`` → the user message), and its snippet occurs in that part's text — the message content, the
    thinking, or the tool calls' names and arguments — after :func:`cm2data.validate.evidence.normalize`
    (whitespace, case and JSON quoting), or is a near-quote of it (similarity ≥
    :data:`~cm2data.validate.evidence.SIMILARITY_FLOOR`). Pointers at steps that do not exist are
    ``checklist_evidence_pointers``' and unknown ``from`` values ``evidence_from_enum``'s: not repeated here."""
    out: list[str] = []
    n_turns = len(steps)
    turns = None
    texts: dict[tuple[int, int, str], str] = {}
    for v, variant in enumerate(d.checklists):
        for block in variant:
            for it in block.items:
                where = f"variant {v} turn {block.turn} {it.id}"
                if not it.evidence and not _added_in_review(it.extra_info):
                    out.append(f"{where}: no evidence (an item must point at the steps that support it)")
                for k, ev in enumerate(it.evidence):
                    kind = SOURCE_STEP_KIND.get(ev.from_)
                    if kind is None or ev.turn >= n_turns or ev.step >= steps[ev.turn]:
                        continue
                    if turns is None:
                        turns = segment(d.messages)
                    step = turns[ev.turn].steps[ev.step]
                    at = f"{where} evidence {k}"
                    if step.kind != kind:
                        out.append(f"{at}: from {ev.from_!r}, but turn {ev.turn} step {ev.step} is the "
                                   f"{step.kind}'s step")
                        continue
                    key = (ev.turn, ev.step, ev.from_)
                    text = texts.get(key)
                    if text is None:
                        text = texts[key] = normalize(step_text(d.messages, step, ev.from_))
                    snippet = normalize(ev.snippet)
                    if not snippet:
                        out.append(f"{at}: the snippet is empty")
                    elif not text:
                        out.append(f"{at}: the {ev.from_} of turn {ev.turn} step {ev.step} is empty, so it cannot "
                                   f"hold the snippet {ev.snippet!r:.80}")
                    elif not grounded(snippet, text, normalized=True):
                        out.append(f"{at}: the snippet {ev.snippet!r:.80} is not in the {ev.from_} of turn "
                                   f"{ev.turn} step {ev.step} (closest quote similarity "
                                   f"{similarity(snippet, text, normalized=True):.2f})")
    return out


def _example_key(text: str) -> str:
    """How item texts are compared with the prompt's: normalised, end punctuation dropped."""
    return normalize(text).rstrip(".?!")


def _added_in_review(extra_info: dict[str, Any]) -> bool:
    """A criterion a human reviewer added (``cm2data review pull``): written from the dialogue, with its provenance
    in ``extra_info.review``, but without evidence pointers (the review form asks for none)."""
    review = extra_info.get("review") if isinstance(extra_info, dict) else None
    return isinstance(review, dict) and review.get("decision") == "add"


@cache
def _prompt_example_texts() -> dict[str, dict[str, str]]:
    """``{field: {normalised text: prompt tag}}`` for the question, pass condition, failure examples and evidence
    snippets of every example of the labeller prompt (current and retired)."""
    from cm2data.prompts import load_prompt

    prompt = load_prompt("annotate")
    found: dict[str, dict[str, str]] = {"question": {}, "pass_condition": {}, "failure_example": {}, "snippet": {}}

    def items(value: Any) -> list[dict[str, Any]]:
        if isinstance(value, dict):
            return [value] if "question" in value else [x for v in value.values() for x in items(v)]
        if isinstance(value, list):
            return [x for v in value for x in items(v)]
        return []

    for i, example in enumerate(prompt.examples):
        tag = prompt.tag if i == 0 and prompt.example is not None else f"{prompt.name}, an earlier version"
        for item in items(example):
            for name in ("question", "pass_condition"):
                if isinstance(item.get(name), str) and _example_key(item[name]):
                    found[name][_example_key(item[name])] = tag
            for text in item.get("failure_examples") or []:
                if isinstance(text, str) and _example_key(text):
                    found["failure_example"][_example_key(text)] = tag
            for ev in item.get("evidence") or []:
                if isinstance(ev, dict) and isinstance(ev.get("snippet"), str) and normalize(ev["snippet"]):
                    found["snippet"][normalize(ev["snippet"])] = tag
    return found


def copied_from_prompt(d: Dialogue, steps: Sequence[int]) -> list[str]:
    """No item repeats the labeller prompt's example (or an earlier version's): its question, pass condition or a
    failure example equal to the example's, or an evidence snippet equal to an example's snippet that the dialogue
    does not hold (compared after :func:`~cm2data.validate.evidence.normalize`)."""
    known = _prompt_example_texts()
    out: list[str] = []
    full_text: str | None = None
    for v, variant in enumerate(d.checklists):
        for block in variant:
            for it in block.items:
                where = f"variant {v} turn {block.turn} {it.id}"
                for name, text in (("question", it.question), ("pass_condition", it.pass_condition),
                                   *(("failure_example", f) for f in it.failure_examples)):
                    tag = known[name].get(_example_key(text))
                    if tag is not None:
                        out.append(f"{where}: the {name.replace('_', ' ')} {text!r:.80} is copied from the example "
                                   f"in the labeller prompt ({tag}), not written about this dialogue")
                for ev in it.evidence:
                    snippet = normalize(ev.snippet)
                    tag = known["snippet"].get(snippet)
                    if tag is None:
                        continue
                    if full_text is None:
                        full_text = normalize("\n".join(
                            part for m in d.messages for part in (m.content, m.thinking or "",
                                                                  *(c.arguments for c in m.tool_calls))))
                    if snippet not in full_text:
                        out.append(f"{where}: the snippet {ev.snippet!r:.80} is copied from the example in the "
                                   f"labeller prompt ({tag}); this dialogue does not contain it")
    return out


def variant_clear(variant: Sequence[TurnChecklist], steps: Sequence[int]) -> bool:
    """True only if :func:`block_count`, :func:`dependencies` and :func:`evidence_pointers` certainly report nothing
    for this checklist variant: the gate's fast path, one pass over the items; any doubt (or exception) is False
    and the gate then runs the exact rules, which alone write messages.

    Field values are read from the models' ``__dict__``, where pydantic keeps them: quicker than attribute reads,
    which go through ``BaseModel.__getattr__``'s hook.
    """
    try:
        n_turns = len(steps)
        if len(variant) != n_turns:
            return False
        for t, block in enumerate(variant):
            fields = block.__dict__
            if fields["turn"] != t:
                return False
            items = fields["items"]
            focus: dict[str, str] | None = None
            for it in items:
                item = it.__dict__
                deps = item["depends_on"]
                if deps:
                    if focus is None:
                        focus = {x.id: x.focus_on for x in items}
                    iid = item["id"]
                    for dep in deps:
                        if dep == iid or focus.get(dep) != "tool.content":
                            return False
                for ev in item["evidence"]:
                    pointer = ev.__dict__
                    turn = pointer["turn"]
                    if turn >= n_turns or pointer["step"] >= steps[turn]:
                        return False
        return True
    except Exception:  # not proven: the exact rules decide
        return False


def checklists_clear(d: Dialogue, steps: Sequence[int]) -> bool:
    """:func:`variant_clear` for every variant of ``d``."""
    return all(variant_clear(variant, steps) for variant in d.checklists)


ChecklistRule = Callable[[Dialogue, Sequence[int]], list[str]]

CHECKLIST_RULES: dict[str, ChecklistRule] = {
    "checklist_block_count": block_count,
    "checklist_dependencies": dependencies,
    "checklist_evidence_pointers": evidence_pointers,
    "evidence_grounded": evidence_grounded,
    "checklist_copied_from_prompt": copied_from_prompt,
}
#: The rules that :func:`variant_clear` (and the gate's table gathering) screen; the others run on every record that
#: has checklists.
SCREENED_CHECKLIST_RULES = ("checklist_block_count", "checklist_dependencies", "checklist_evidence_pointers")


def check_checklists(d: Dialogue) -> dict[str, list[str]]:
    """Run every record-level checklist rule; ``{rule: [violations]}`` for the rules that failed."""
    steps = steps_per_turn(d.messages)
    result = {}
    for name, rule in CHECKLIST_RULES.items():
        found = rule(d, steps)
        if found:
            result[name] = found
    return result
