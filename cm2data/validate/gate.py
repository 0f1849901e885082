"""The validation gate: rule filters, record-level checklist rules and the pandera tables, in one pass.

``run_gate(records)`` returns the accepted records, one :class:`~cm2data.rejects.Reject` per (record, rule) that
failed, and a count of failing records per rule (every rule listed, zeros included, so reports show what ran).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cm2data.rejects import Reject
from cm2data.schema import Dialogue
from cm2data.validate.checklist import CHECKLIST_RULES, steps_per_turn
from cm2data.validate.rules import RULE_FILTERS, RuleConfig
from cm2data.validate.tables import DIALOGUE_SCHEMA, ITEM_SCHEMA, TableRows

STAGES = ("rules", "checklist", "tables")


def table_rule_names() -> list[str]:
    names = []
    for schema in (DIALOGUE_SCHEMA, ITEM_SCHEMA):
        for col in schema.columns.values():
            names.extend(chk.name for chk in col.checks if chk.name)
    return names


def rule_names(stages: Sequence[str] = STAGES) -> list[str]:
    out: list[str] = []
    if "rules" in stages:
        out += list(RULE_FILTERS)
    if "checklist" in stages:
        out += list(CHECKLIST_RULES)
    if "tables" in stages:
        out += table_rule_names()
    return out


@dataclass
class GateResult:
    accepted: list[Dialogue]
    rejects: list[Reject]
    counts: Counter[str]
    checked: int
    rules: list[str] = field(default_factory=list)
    rejected: list[Dialogue] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.rejects

    @property
    def rejected_ids(self) -> set[str]:
        return {r.record_id for r in self.rejects if r.record_id}


def run_gate(
    records: Iterable[Dialogue],
    *,
    config: RuleConfig | None = None,
    stages: Sequence[str] = STAGES,
    rules: Sequence[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GateResult:
    """Validate ``records``. ``stages`` picks rule filters / checklist rules / tables; ``rules`` narrows further."""
    cfg = config or RuleConfig()
    unknown = set(rules or ()) - set(rule_names())
    if unknown:
        raise ValueError(f"unknown rules: {', '.join(sorted(unknown))}; known: {', '.join(rule_names())}")
    selected = [r for r in rule_names(stages) if rules is None or r in rules]
    record_rules = [(n, f) for n, f in RULE_FILTERS.items() if n in selected]
    checklist_rules = [(n, f) for n, f in CHECKLIST_RULES.items() if n in selected]
    recs = list(records)
    # Everything that reads a record happens in this one loop, while the record is in the CPU cache; the
    # tables only gather columns here and are validated, vectorised, after the loop.
    rows = TableRows() if "tables" in stages else None
    failed: dict[str, list[Reject]] = {}
    ids: list[str] = []
    for i, d in enumerate(recs):
        ids.append(d.id)
        found: list[Reject] = []
        for name, fn in record_rules:
            problems = fn(d, cfg)
            if problems:
                found.append(Reject(d.id, "validate", name, "; ".join(problems[:5]) + _more(problems)))
        if checklist_rules and d.checklists:
            steps = steps_per_turn(d.messages)
            for name, fn in checklist_rules:
                problems = fn(d, steps)
                if problems:
                    found.append(Reject(d.id, "validate", name, "; ".join(problems[:5]) + _more(problems)))
        if found:
            failed.setdefault(d.id, []).extend(found)
        if rows is not None:
            rows.add(d)
        if on_progress is not None and (i + 1) % 1000 == 0:
            on_progress(1000)
    if on_progress is not None:
        on_progress(len(recs) % 1000)
    if rows is not None:
        wanted = set(selected)
        table_rules = set(table_rule_names())
        for f in rows.failures():
            if f.rule in wanted or f.rule not in table_rules:
                failed.setdefault(f.dialogue_id, []).append(Reject(f.dialogue_id, "validate", f.rule, f.message))
    rejects = [r for rs in failed.values() for r in rs]
    counts: Counter[str] = Counter({name: 0 for name in selected})
    for rs in failed.values():
        for rule in {r.rule for r in rs}:
            counts[rule] += 1
    if not failed:
        return GateResult(recs, rejects, counts, len(recs), selected, [])
    accepted = [d for d, did in zip(recs, ids, strict=True) if did not in failed]
    rejected = [d for d, did in zip(recs, ids, strict=True) if did in failed]
    return GateResult(accepted, rejects, counts, len(recs), selected, rejected)


def _more(problems: list[str]) -> str:
    return f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
