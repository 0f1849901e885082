"""Checklist rules that need the dialogue itself (method §3).

The column-level rules (enums, non-empty text, weight sums, unique ids) run vectorised in the pandera gate
(:mod:`cm2data.validate.tables`); the rules here relate a checklist to its dialogue's turns and steps, and are also
used on single records (for example to validate a labeller's output before retrying it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cm2data.schema import Dialogue, Turn, TurnChecklist, segment


def block_count(d: Dialogue, turns: Sequence[Turn]) -> list[str]:
    """One block per user turn, sorted by turn, numbered 0..L-1."""
    out = []
    for v, variant in enumerate(d.checklists):
        if len(variant) != len(turns):
            out.append(f"variant {v}: {len(variant)} checklist blocks for {len(turns)} user turns")
        positions = [b.turn for b in variant]
        if positions != list(range(len(variant))):
            out.append(f"variant {v}: block turns {positions} are not 0..{len(variant) - 1}")
    return out


def dependencies(d: Dialogue, turns: Sequence[Turn]) -> list[str]:
    """Every id something depends on is an item of the same turn with ``focus_on == "tool.content"``, not itself."""
    out = []
    for v, variant in enumerate(d.checklists):
        for block in variant:
            out.extend(_block_dependencies(block, f"variant {v} turn {block.turn}"))
    return out


def _block_dependencies(block: TurnChecklist, where: str) -> list[str]:
    out = []
    focus = {it.id: it.focus_on for it in block.items}
    for it in block.items:
        for dep in it.depends_on:
            if dep == it.id:
                out.append(f"{where} {it.id}: depends on itself")
            elif dep not in focus:
                out.append(f"{where} {it.id}: depends on unknown item {dep!r}")
            elif focus[dep] != "tool.content":
                out.append(f"{where} {it.id}: depends on {dep}, whose focus_on is {focus[dep]!r}, not 'tool.content'")
    return out


def evidence_pointers(d: Dialogue, turns: Sequence[Turn]) -> list[str]:
    """Evidence points at a turn and step that exist in the dialogue."""
    out = []
    for v, variant in enumerate(d.checklists):
        for block in variant:
            for it in block.items:
                for ev in it.evidence:
                    if ev.turn >= len(turns):
                        out.append(f"variant {v} turn {block.turn} {it.id}: evidence turn {ev.turn} does not exist")
                    elif ev.step >= len(turns[ev.turn].steps):
                        out.append(f"variant {v} turn {block.turn} {it.id}: evidence step {ev.step} does not exist "
                                   f"in turn {ev.turn} ({len(turns[ev.turn].steps)} steps)")
    return out


ChecklistRule = Callable[[Dialogue, Sequence[Turn]], list[str]]

CHECKLIST_RULES: dict[str, ChecklistRule] = {
    "checklist_block_count": block_count,
    "checklist_dependencies": dependencies,
    "checklist_evidence_pointers": evidence_pointers,
}


def check_checklists(d: Dialogue) -> dict[str, list[str]]:
    """Run every record-level checklist rule; ``{rule: [violations]}`` for the rules that failed."""
    turns = segment(d.messages)
    result = {}
    for name, rule in CHECKLIST_RULES.items():
        found = rule(d, turns)
        if found:
            result[name] = found
    return result
