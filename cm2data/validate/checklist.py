"""Checklist rules that need the dialogue itself (method §3).

The column-level rules (enums, non-empty text, weight sums, unique ids) run vectorised in the pandera gate
(:mod:`cm2data.validate.tables`); the rules here relate a checklist to its dialogue's turns and steps, and are also
used on single records (for example to validate a labeller's output before retrying it).

A rule takes the record and the number of steps of each of its user turns (:func:`steps_per_turn`, the shape of
:func:`cm2data.schema.segment` without building its objects) and returns one message per violation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cm2data.schema import Dialogue, Message, TurnChecklist


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
}


def check_checklists(d: Dialogue) -> dict[str, list[str]]:
    """Run every record-level checklist rule; ``{rule: [violations]}`` for the rules that failed."""
    steps = steps_per_turn(d.messages)
    result = {}
    for name, rule in CHECKLIST_RULES.items():
        found = rule(d, steps)
        if found:
            result[name] = found
    return result
