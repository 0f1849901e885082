"""The validation gate: rule filters, record-level checklist rules and the pandera tables, in one pass.

``run_gate(records)`` returns a :class:`GateResult`: the accepted records, one :class:`~cm2data.rejects.Reject` per
(record, rule) that failed, and a count of failing records per rule (every rule listed, zeros included, so reports
show what ran). ``run_gate_stream(records)`` returns the same result without the records (the same rejects and
counts while holding none of them).

Every record is checked by every selected rule. A quick one-pass screen (:mod:`cm2data.validate.screen`, and the
checklist screen while the table columns are gathered) clears the records that certainly pass the rule filters and
the record-level checklist rules; the exact rules run on every other record and alone decide failures and their
messages. The pandera tables always validate every row.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cm2data.rejects import Reject
from cm2data.schema import Dialogue
from cm2data.validate import tables
from cm2data.validate.checklist import CHECKLIST_RULES, SCREENED_CHECKLIST_RULES, checklists_clear, steps_per_turn
from cm2data.validate.rules import RULE_FILTERS, RuleConfig
from cm2data.validate.screen import screen
from cm2data.validate.tables import DIALOGUE_SCHEMA, ITEM_SCHEMA, TableRows

STAGES = ("rules", "checklist", "tables")


def table_rule_names() -> list[str]:
    names: list[str] = []
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
    """What the gate found: one reject per (record, rule) that failed, the count of failing records per selected rule
    (zeros included), how many records were checked and which rules ran; and, from :func:`run_gate`, the records
    themselves, split into ``accepted`` and ``rejected``. :func:`run_gate_stream` holds no records: there both are
    ``None``."""

    rejects: list[Reject]
    counts: Counter[str]
    checked: int
    rules: list[str] = field(default_factory=list)
    accepted: list[Dialogue] | None = None
    rejected: list[Dialogue] | None = None

    @property
    def passed(self) -> bool:
        return not self.rejects

    @property
    def rejected_ids(self) -> set[str]:
        return {r.record_id for r in self.rejects if r.record_id}


class _Gate:
    """The per-record part of the gate, shared by :func:`run_gate` and :func:`run_gate_stream`."""

    def __init__(
        self, config: RuleConfig | None, stages: Sequence[str], rules: Sequence[str] | None, duplicated: set[str] | None
    ) -> None:
        self.cfg = config or RuleConfig()
        _check_rule_names(rules)
        self.selected = [r for r in rule_names(stages) if rules is None or r in rules]
        self.record_rules = [(n, f) for n, f in RULE_FILTERS.items() if n in self.selected]
        self.checklist_rules = [(n, f) for n, f in CHECKLIST_RULES.items() if n in self.selected]
        # the checklist rules no screen clears (quote matching, the prompt's examples): run on every record with
        # checklists
        self.text_rules = [(n, f) for n, f in self.checklist_rules if n not in SCREENED_CHECKLIST_RULES]
        # The tables only gather columns per record; each chunk of item rows is validated, vectorised, as it fills.
        self.rows = TableRows(tables.CHUNK_RECORDS, duplicated) if "tables" in stages else None
        self.failed: dict[str, list[Reject]] = {}

    def check(self, d: Dialogue) -> None:
        """Everything that reads the record, in one visit while its objects are in the CPU cache.

        The record goes first through the screens (one pass over its messages, one over its checklist items while
        gathering the table columns), which only prove that rules pass; the exact rules run on every record a screen
        does not clear, and they alone decide failures and write the messages."""
        cfg, record_rules, checklist_rules = self.cfg, self.record_rules, self.checklist_rules
        found: list[Reject] = []
        if record_rules:
            steps = screen(d, cfg)  # None: not proven
        else:
            steps = steps_per_turn(d.messages) if checklist_rules else None
        if steps is None:
            for name, fn in record_rules:
                problems = fn(d, cfg)
                if problems:
                    found.append(Reject(d.id, "validate", name, "; ".join(problems[:5]) + _more(problems)))
        if self.rows is not None:
            clear = self.rows.add(d, steps if checklist_rules else None)
        else:
            clear = steps is not None and checklists_clear(d, steps)
        if checklist_rules and d.checklists:
            if steps is None:
                steps = steps_per_turn(d.messages)
            for name, check in self.text_rules if clear else checklist_rules:
                problems = check(d, steps)
                if problems:
                    found.append(Reject(d.id, "validate", name, "; ".join(problems[:5]) + _more(problems)))
        if found:
            self.failed.setdefault(d.id, []).extend(found)

    def finish(self) -> tuple[list[Reject], Counter[str]]:
        """The table failures, then every reject (grouped by record, records in order of their first reject) and
        the count of failing records per selected rule."""
        failed = self.failed
        if self.rows is not None:
            wanted = set(self.selected)
            table_rules = set(table_rule_names())
            for f in self.rows.failures():
                if f.rule in wanted or f.rule not in table_rules:
                    failed.setdefault(f.dialogue_id, []).append(Reject(f.dialogue_id, "validate", f.rule, f.message))
        rejects = [r for rs in failed.values() for r in rs]
        counts: Counter[str] = Counter({name: 0 for name in self.selected})
        for rs in failed.values():
            for rule in {r.rule for r in rs}:
                counts[rule] += 1
        return rejects, counts


def run_gate(
    records: Iterable[Dialogue],
    *,
    config: RuleConfig | None = None,
    stages: Sequence[str] = STAGES,
    rules: Sequence[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GateResult:
    """Validate ``records``. ``stages`` picks rule filters / checklist rules / tables; ``rules`` narrows further."""
    _check_rule_names(rules)
    recs = list(records)
    ids = [d.id for d in recs]
    gate = _Gate(config, stages, rules, _duplicated(ids))
    check = gate.check
    for i, d in enumerate(recs):
        check(d)
        if on_progress is not None and (i + 1) % 1000 == 0:
            on_progress(1000)
    if on_progress is not None:
        on_progress(len(recs) % 1000)
    rejects, counts = gate.finish()
    failed = gate.failed
    if not failed:
        return GateResult(rejects, counts, len(recs), gate.selected, accepted=recs, rejected=[])
    accepted = [d for d, did in zip(recs, ids, strict=True) if did not in failed]
    rejected = [d for d, did in zip(recs, ids, strict=True) if did in failed]
    return GateResult(rejects, counts, len(recs), gate.selected, accepted=accepted, rejected=rejected)


def run_gate_stream(
    records: Iterable[Dialogue],
    *,
    config: RuleConfig | None = None,
    stages: Sequence[str] = STAGES,
    rules: Sequence[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GateResult:
    """The gate over a stream of records, holding none of them: the same rejects and counts as :func:`run_gate` on
    the same records, in the same order, but no accepted or rejected record objects (both ``None``).

    Each record is checked and let go (pass e.g. :func:`cm2data.store.iter_dataset`, which reads a batch at a time),
    so memory is one batch of records plus the gate's own: the dialogue table's three columns, one chunk of item
    rows, and for the window checks of ids that several records may share, five compact columns per item row
    (about 50 bytes each). Dataset-wide rules (``unique_dialogue_ids``, windows over a shared id) are decided at
    the end, so a stream's verdict is only known once it is exhausted.
    """
    gate = _Gate(config, stages, rules, None)
    check = gate.check
    n = 0
    # Records come and go by the thousand; they hold no reference cycles, so reference counting frees them. Full
    # collections would walk every live object again and again for nothing (they took most of the time of a
    # stream from store.iter_dataset): hold them off while the stream runs, as the store does while loading.
    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0], threshold[1], 2**30)
    try:
        for d in records:
            check(d)
            n += 1
            if on_progress is not None and n % 1000 == 0:
                on_progress(1000)
    finally:
        gc.set_threshold(*threshold)
    if on_progress is not None:
        on_progress(n % 1000)
    rejects, counts = gate.finish()
    return GateResult(rejects, counts, n, gate.selected)


def _check_rule_names(rules: Sequence[str] | None) -> None:
    unknown = set(rules or ()) - set(rule_names())
    if unknown:
        raise ValueError(f"unknown rules: {', '.join(sorted(unknown))}; known: {', '.join(rule_names())}")


def _duplicated(ids: list[str]) -> set[str]:
    """The ids that occur more than once."""
    seen: set[str] = set()
    shared: set[str] = set()
    for did in ids:
        if did in seen:
            shared.add(did)
        else:
            seen.add(did)
    return shared


def _more(problems: list[str]) -> str:
    return f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
