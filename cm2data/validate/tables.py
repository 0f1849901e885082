"""The pandera gate over flattened views of a dataset (polars backend, all failures collected at once).

Two tables: one row per dialogue (:func:`dialogue_frame`) and one row per checklist item (:func:`item_frame`).
Per-group quantities (a turn's weight sum, how often an id occurs in its turn) are computed as window columns, so
every check is a column check whose failures point at rows, and rows point at dialogue ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

import pandera.polars as pa
import polars as pl

from cm2data.schema import EVIDENCE_SOURCES, FOCUS_VALUES, REVIEW_STATES, ChecklistItem, Dialogue

WEIGHT_TOLERANCE = 1e-6


def _non_blank(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col(data.key).str.strip_chars().str.len_chars() > 0)


def _check(fn, name: str, error: str) -> pa.Check:  # type: ignore[no-untyped-def]
    return pa.Check(fn, name=name, error=error)


DIALOGUE_SCHEMA = pa.DataFrameSchema(
    {
        "dialogue_id": pa.Column(
            str,
            [
                _check(_non_blank, "dialogue_id_present", "the record id is empty"),
                _check(lambda d: d.lazyframe.select(~pl.col(d.key).is_duplicated()), "unique_dialogue_ids",
                       "the record id occurs more than once in the dataset"),
            ],
        ),
        "num_turns": pa.Column(
            pl.Int64, _check(lambda d: d.lazyframe.select(pl.col(d.key) >= 1), "has_user_turn",
                             "the dialogue has no user message")
        ),
        "review_status": pa.Column(
            str, _check(lambda d: d.lazyframe.select(pl.col(d.key).is_in(list(REVIEW_STATES))), "review_status_enum",
                        f"review status must be one of {list(REVIEW_STATES)}")
        ),
    },
    strict=False,
)

ITEM_SCHEMA = pa.DataFrameSchema(
    {
        "item_id": pa.Column(str, _check(_non_blank, "item_id_present", "the item has no id")),
        "focus_on": pa.Column(
            str, _check(lambda d: d.lazyframe.select(pl.col(d.key).is_in(list(FOCUS_VALUES))), "focus_on_enum",
                        f"focus_on must be one of {list(FOCUS_VALUES)}")
        ),
        "question": pa.Column(str, _check(_non_blank, "non_empty_question", "the question is empty")),
        "pass_condition": pa.Column(
            str, _check(_non_blank, "non_empty_pass_condition", "the pass condition is empty")
        ),
        "weight": pa.Column(
            float, _check(lambda d: d.lazyframe.select(pl.col(d.key).is_between(0.0, 1.0)), "weight_range",
                          "weights must lie in [0, 1]")
        ),
        "turn_weight_sum": pa.Column(
            float,
            _check(lambda d: d.lazyframe.select((pl.col(d.key) - 1.0).abs() <= WEIGHT_TOLERANCE), "weights_sum_to_one",
                   f"the weights of a turn must sum to 1 (±{WEIGHT_TOLERANCE:g})"),
        ),
        "id_count": pa.Column(
            pl.Int64, _check(lambda d: d.lazyframe.select(pl.col(d.key) == 1), "unique_item_ids",
                             "item ids must be unique within a turn")
        ),
        "bad_evidence_from": pa.Column(
            pl.Int64, _check(lambda d: d.lazyframe.select(pl.col(d.key) == 0), "evidence_from_enum",
                             f"evidence 'from' must be one of {list(EVIDENCE_SOURCES)}")
        ),
    },
    strict=False,
)

_DIALOGUE_TYPES = {"dialogue_id": pl.String, "num_turns": pl.Int64, "review_status": pl.String}
_ITEM_TYPES = {"dialogue_id": pl.String, "variant": pl.Int64, "turn": pl.Int64, "item_id": pl.String,
               "focus_on": pl.String, "question": pl.String, "pass_condition": pl.String, "weight": pl.Float64,
               "bad_evidence_from": pl.Int64}
_ALLOWED_FROM = frozenset(EVIDENCE_SOURCES)
_ITEM_FIELDS = {"item_id": attrgetter("id"), "focus_on": attrgetter("focus_on"), "question": attrgetter("question"),
                "pass_condition": attrgetter("pass_condition")}
_WEIGHT = attrgetter("weight")


class TableRows:
    """The columns of both tables, gathered one record at a time.

    The gate adds each record right after running its rules on it, while the record's objects are still in the CPU
    cache: a separate pass over 100k loaded records costs more in cache misses than the gathering itself. Columns
    are plain lists of strings and numbers (no per-row tuples), so gathering adds no work for the cyclic GC.
    """

    def __init__(self) -> None:
        self.dialogues: dict[str, list] = {c: [] for c in _DIALOGUE_TYPES}
        self.items: dict[str, list] = {c: [] for c in _ITEM_TYPES}

    def add(self, d: Dialogue) -> None:
        dcols, icols = self.dialogues, self.items
        dcols["dialogue_id"].append(d.id)
        dcols["num_turns"].append([m.role for m in d.messages].count("user"))
        dcols["review_status"].append(d.review.status)
        for v, variant in enumerate(d.checklists):
            items: list[ChecklistItem] = []
            for block in variant:
                icols["turn"] += [block.turn] * len(block.items)
                items += block.items
            k = len(items)
            icols["dialogue_id"] += [d.id] * k
            icols["variant"] += [v] * k
            for column, get in _ITEM_FIELDS.items():
                icols[column] += map(get, items)
            icols["weight"] += map(float, map(_WEIGHT, items))
            if _ALLOWED_FROM.issuperset([e.from_ for it in items for e in it.evidence]):
                icols["bad_evidence_from"] += [0] * k  # the usual case: nothing to count per item
            else:
                icols["bad_evidence_from"] += [sum(1 for e in it.evidence if e.from_ not in _ALLOWED_FROM)
                                               for it in items]

    def dialogue_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.dialogues, schema=_DIALOGUE_TYPES)

    def item_frame(self) -> pl.DataFrame:
        """One row per checklist item, with the window columns the checks need."""
        group = ["dialogue_id", "variant", "turn"]
        return pl.DataFrame(self.items, schema=_ITEM_TYPES).with_columns(
            pl.col("weight").sum().over(group).alias("turn_weight_sum"),
            pl.len().over([*group, "item_id"]).cast(pl.Int64).alias("id_count"),
        )

    def failures(self) -> list[TableFailure]:
        """Validate both tables; one :class:`TableFailure` per (dialogue, rule)."""
        return (_failures(DIALOGUE_SCHEMA, self.dialogue_frame(), _no_place)
                + _failures(ITEM_SCHEMA, self.item_frame(), _item_place))


def _rows(records: Iterable[Dialogue]) -> TableRows:
    rows = TableRows()
    for d in records:
        rows.add(d)
    return rows


def dialogue_frame(records: Sequence[Dialogue]) -> pl.DataFrame:
    return _rows(records).dialogue_frame()


def item_frame(records: Sequence[Dialogue]) -> pl.DataFrame:
    """One row per checklist item, with the window columns the checks need."""
    return _rows(records).item_frame()


@dataclass(frozen=True, slots=True)
class TableFailure:
    dialogue_id: str
    rule: str
    message: str


def _failures(schema: pa.DataFrameSchema, frame: pl.DataFrame,
              describe: Callable[[pl.DataFrame], list[str]]) -> list[TableFailure]:
    """Validate ``frame``; one failure per (dialogue, rule), listing up to four places (``describe`` of the rows)."""
    if frame.height == 0:
        return []
    try:
        schema.validate(frame, lazy=True)
        return []
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    # map (column, check_number) to the check's name and error text
    names: dict[tuple[str, int], tuple[str, str]] = {}
    for col_name, col in schema.columns.items():
        for k, chk in enumerate(col.checks):
            names[(col_name, k)] = (chk.name or f"{col_name}_{k}", chk.error or chk.name or "")
    row_indices: list[int] = []
    row_rules: list[str] = []
    messages: dict[str, str] = {}
    for idx, col, check, num in cases.select("index", "column", "check", "check_number").iter_rows():
        if num is None:
            rule, error = f"{col}_{check}", f"{col}: {check}"
        else:
            rule, error = names.get((col, num), (f"{col}_{check}", str(check)))
        messages[rule] = error
        if idx is None:  # a whole-column failure (wrong dtype): charge every row
            row_indices.extend(range(frame.height))
            row_rules.extend([rule] * frame.height)
        else:
            row_indices.append(idx)
            row_rules.append(rule)
    failing = frame[row_indices]  # the failing rows in one gather, not one lookup per case
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for did, rule, where in zip(failing["dialogue_id"].to_list(), row_rules, describe(failing), strict=True):
        grouped[(did, rule)].append(where)
    out = []
    for (did, rule), where in grouped.items():
        shown = ", ".join(sorted(set(where))[:4]) + (f" (+{len(set(where)) - 4} more)" if len(set(where)) > 4 else "")
        out.append(TableFailure(did, rule, f"{messages[rule]}: {shown}" if shown else messages[rule]))
    return out


def _no_place(rows: pl.DataFrame) -> list[str]:
    return [""] * rows.height


def _item_place(rows: pl.DataFrame) -> list[str]:
    return [f"variant {v} turn {t} {i or '<no id>'}"
            for v, t, i in rows.select("variant", "turn", "item_id").iter_rows()]


def table_failures(records: Sequence[Dialogue]) -> list[TableFailure]:
    """Validate both flattened tables; one :class:`TableFailure` per (dialogue, rule)."""
    return _rows(records).failures()
