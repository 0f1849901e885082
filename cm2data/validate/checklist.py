"""Checklist rules that need the dialogue itself (method §3).

The column-level rules (enums, non-empty text, weight sums, unique ids) run vectorised in the pandera gate
(:mod:`cm2data.validate.tables`); the rules here relate a checklist to its dialogue's turns and steps, and are also
used on single records (for example to validate a labeller's output before retrying it).

A rule takes the record and the number of steps of each of its user turns (:func:`steps_per_turn`, the shape of
:func:`cm2data.schema.segment` without building its objects) and returns one message per violation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from difflib import SequenceMatcher
from functools import cache
from typing import Any

from cm2data.schema import Dialogue, Message, TurnChecklist, segment, step_text
from cm2data.validate.evidence import SIMILARITY_FLOOR, grounded, normalize, similarity


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
                        out.append(
                            f"variant {v} turn {block.turn} {it.id}: evidence step {ev.step} does not exist "
                            f"in turn {ev.turn} ({steps[ev.turn]} steps)"
                        )
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
    raw_texts: dict[tuple[int, int, str], str] = {}
    texts: dict[tuple[int, int, str], str] = {}
    kinds = SOURCE_STEP_KIND
    for v, variant in enumerate(d.checklists):
        for block in variant:
            for it in block.items:
                fields = it.__dict__  # pydantic keeps values there; attribute reads take a slower hook
                evidence = fields["evidence"]
                if not evidence and not _added_in_review(fields["extra_info"]):
                    out.append(
                        f"variant {v} turn {block.turn} {it.id}: no evidence (an item must point at the steps "
                        f"that support it)"
                    )
                for k, ev in enumerate(evidence):
                    pointer = ev.__dict__
                    source, t, s = pointer["from_"], pointer["turn"], pointer["step"]
                    kind = kinds.get(source)
                    if kind is None or t >= n_turns or s >= steps[t]:
                        continue
                    if turns is None:
                        turns = segment(d.messages)
                    step = turns[t].steps[s]
                    if step.kind != kind:
                        out.append(
                            f"variant {v} turn {block.turn} {it.id} evidence {k}: from {source!r}, but turn {t} "
                            f"step {s} is the {step.kind}'s step"
                        )
                        continue
                    key = (t, s, source)
                    raw = raw_texts.get(key)
                    if raw is None:
                        raw = raw_texts[key] = step_text(d.messages, step, source)
                    snippet_raw = pointer["snippet"]
                    if snippet_raw in raw and not snippet_raw.isspace() and snippet_raw:
                        continue  # a verbatim quote (the usual case): no normalising needed
                    text = texts.get(key)
                    if text is None:
                        text = texts[key] = normalize(raw)
                    snippet = normalize(snippet_raw)
                    at = f"variant {v} turn {block.turn} {it.id} evidence {k}"
                    if not snippet:
                        out.append(f"{at}: the snippet is empty")
                    elif not text:
                        out.append(
                            f"{at}: the {source} of turn {t} step {s} is empty, so it cannot hold the snippet "
                            f"{snippet_raw!r:.80}"
                        )
                    elif not grounded(snippet, text, normalized=True):
                        out.append(
                            f"{at}: the snippet {snippet_raw!r:.80} is not in the {source} of turn {t} step {s} "
                            f"(closest quote similarity {similarity(snippet, text, normalized=True):.2f})"
                        )
    return out


def _example_key(text: str) -> str:
    """How item texts are compared with the prompt's: normalised, end punctuation dropped."""
    return normalize(text).rstrip(".?!")


def _added_in_review(extra_info: dict[str, Any]) -> bool:
    """A criterion a human reviewer added (``cm2data review pull``): written from the dialogue, with its provenance
    in ``extra_info.review``, but without evidence pointers (the review form asks for none)."""
    review = extra_info.get("review") if isinstance(extra_info, dict) else None
    return isinstance(review, dict) and review.get("decision") == "add"


def _prompt_example_items() -> list[tuple[str, dict[str, Any]]]:
    """``(tag, item)`` for every checklist item of the labeller prompt's examples, current first."""
    from cm2data.prompts import load_prompt

    prompt = load_prompt("annotate")

    def items(value: Any) -> list[dict[str, Any]]:
        if isinstance(value, dict):
            return [value] if "question" in value else [x for v in value.values() for x in items(v)]
        if isinstance(value, list):
            return [x for v in value for x in items(v)]
        return []

    out = []
    for i, example in enumerate(prompt.examples):
        tag = prompt.tag if i == 0 and prompt.example is not None else f"{prompt.name}, an earlier version"
        out += [(tag, item) for item in items(example)]
    return out


def _prompt_example_texts_raw(*, snippets: bool = True) -> list[str]:
    """Every text of the examples' items that :func:`copied_from_prompt` compares, as written (``snippets``: with
    the evidence snippets)."""
    out: list[str] = []
    for _, item in _prompt_example_items():
        quotes = [ev.get("snippet") for ev in item.get("evidence") or [] if isinstance(ev, dict)] if snippets else []
        out += [
            t
            for t in (item.get("question"), item.get("pass_condition"), *(item.get("failure_examples") or []), *quotes)
            if isinstance(t, str) and t.strip()
        ]
    return out


@cache
def _prompt_example_texts() -> dict[str, dict[str, str]]:
    """``{field: {normalised text: prompt tag}}`` for the question, pass condition, failure examples and evidence
    snippets of every example of the labeller prompt (current and retired)."""
    found: dict[str, dict[str, str]] = {"question": {}, "pass_condition": {}, "failure_example": {}, "snippet": {}}
    for tag, item in _prompt_example_items():
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


@cache
def _example_anchors() -> tuple[tuple[str, ...], tuple[tuple[int, tuple[str, ...]], ...]]:
    """What :func:`copied_from_prompt` looks for before comparing texts: (1) the three longest distinctive words (4+
    characters, not in the prompt's instructions, whose vocabulary — "assistant", "reply" — is in every checklist)
    of every example question, pass condition and failure example: a copy or near copy (ratio ≥ 0.9) keeps some of
    them; (2) per example snippet, all of its words and a length bound: a snippet equal to it once normalised holds
    every one and is not much longer."""
    from cm2data.prompts import load_prompt

    def words(text: str) -> list[str]:
        return sorted(set(re.findall(r"[\w-]+", text.casefold())), key=lambda w: (-len(w), w))

    common = set(words(load_prompt("annotate").system))
    anchors: set[str] = set()
    for text in _prompt_example_texts_raw(snippets=False):
        found = words(text)
        anchors.update([w for w in found if len(w) >= 4 and w not in common][:3] or found[:1])
    # with each example snippet, the longest raw text that can normalise to it (whitespace, quotes and escapes
    # around every character and then some): a longer snippet is not a copy of it
    snippet_words = {
        (3 * len(normalize(text)) + 10, tuple(words(text)))
        for text in _prompt_example_texts_raw(snippets=True)
        if text not in _prompt_example_texts_raw(snippets=False)
    }
    return tuple(sorted(anchors)), tuple(sorted(sw for sw in snippet_words if sw[1]))


def _near_example(key: str, known: dict[str, str]) -> str | None:
    """The tag of the example text that ``key`` equals or nearly equals (``SequenceMatcher`` ratio ≥
    ``SIMILARITY_FLOOR``, both normalised: "Did the assistant renew the loan of Dune, library card 4417?" copies
    "… of Dune on library card 4417?"), else None. Length and character-count bounds skip most texts unread."""
    tag = known.get(key)
    if tag is not None or not key:
        return tag
    for text, tag in known.items():
        if 2 * min(len(key), len(text)) < SIMILARITY_FLOOR * (len(key) + len(text)):
            continue  # the ratio cannot reach the floor
        matcher = SequenceMatcher(None, key, text, autojunk=False)
        if matcher.quick_ratio() >= SIMILARITY_FLOOR and matcher.ratio() >= SIMILARITY_FLOOR:
            return tag
    return None


def copied_from_prompt(d: Dialogue, steps: Sequence[int]) -> list[str]:
    """No item repeats the labeller prompt's example (or an earlier version's): its question, pass condition or a
    failure example equal or nearly equal to the example's (similarity ≥
    :data:`~cm2data.validate.evidence.SIMILARITY_FLOOR`), or an evidence snippet equal to an example's snippet that
    the dialogue does not hold (compared after :func:`~cm2data.validate.evidence.normalize`)."""
    known = _prompt_example_texts()
    anchors, snippet_words = _example_anchors()
    # Cheap tests first, so that most records cost one pass over their items: one search over all of the record's
    # item texts (most share no distinctive word with the examples; a copy keeps some), and for snippets a length
    # bound and the example snippet's words (an equal one, normalised, holds them all and is not much longer).
    # Non-ASCII text always gets the closer look (NFKC may map it onto those words).
    items = []
    texts: list[str] = []
    short: list[tuple[int, int, Any, str]] = []  # snippets short enough to equal an example snippet
    longest = max((n for n, _ in snippet_words), default=0)
    for v, variant in enumerate(d.checklists):
        for block in variant:
            for it in block.items:
                fields = it.__dict__
                items.append((v, block.turn, it))
                texts += (fields["question"], fields["pass_condition"], *fields["failure_examples"])
                for ev in fields["evidence"]:
                    raw = ev.__dict__["snippet"]
                    if len(raw) <= longest or not raw.isascii():
                        short.append((v, block.turn, it, raw))
    joined = "\n".join(texts)
    folded = joined.casefold()
    out: list[str] = []
    if not joined.isascii() or any(w in folded for w in anchors):
        for v, turn, it in items:
            fields = it.__dict__
            for name, text in (
                ("question", fields["question"]),
                ("pass_condition", fields["pass_condition"]),
                *(("failure_example", f) for f in fields["failure_examples"]),
            ):
                if text.isascii() and not any(w in text.casefold() for w in anchors):
                    continue  # shares none of the examples' distinctive words: cannot be a copy
                tag = _near_example(_example_key(text), known[name])
                if tag is not None:
                    out.append(
                        f"variant {v} turn {turn} {it.id}: the {name.replace('_', ' ')} {text!r:.80} is copied "
                        f"from the example in the labeller prompt ({tag}), not written about this dialogue"
                    )
    full_text: str | None = None
    for v, turn, it, raw in short:
        if raw.isascii():
            folded = raw.casefold()
            if not any(len(raw) <= bound and all(w in folded for w in ws) for bound, ws in snippet_words):
                continue
        snippet = normalize(raw)
        tag = known["snippet"].get(snippet)
        if tag is None:
            continue
        if full_text is None:
            full_text = normalize(
                "\n".join(
                    part
                    for m in d.messages
                    for part in (m.content, m.thinking or "", *(c.arguments for c in m.tool_calls))
                )
            )
        if snippet not in full_text:
            out.append(
                f"variant {v} turn {turn} {it.id}: the snippet {raw!r:.80} is copied from the example in "
                f"the labeller prompt ({tag}); this dialogue does not contain it"
            )
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
