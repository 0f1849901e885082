"""The pandera gate over flattened views of a dataset (polars backend, all failures collected at once).

Two tables: one row per dialogue (:func:`dialogue_frame`) and one row per checklist item (:func:`item_frame`).
Per-group quantities (a turn's weight sum, how often an id occurs in its turn) are computed as window columns, so
every check is a column check whose failures point at rows, and rows point at dialogue ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pandera.polars as pa
import polars as pl

from cm2data.schema import EVIDENCE_SOURCES, FOCUS_VALUES, REVIEW_STATES, Dialogue

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

_ITEM_COLUMNS = ("dialogue_id", "variant", "turn", "item_id", "focus_on", "question", "pass_condition", "weight",
                 "bad_evidence_from")


def dialogue_frame(records: Sequence[Dialogue]) -> pl.DataFrame:
    ids, turns, status = [], [], []
    for d in records:
        ids.append(d.id)
        turns.append(sum(1 for m in d.messages if m.role == "user"))
        status.append(d.review.status)
    return pl.DataFrame({"dialogue_id": ids, "num_turns": turns, "review_status": status},
                        schema={"dialogue_id": pl.String, "num_turns": pl.Int64, "review_status": pl.String})


def item_frame(records: Sequence[Dialogue]) -> pl.DataFrame:
    """One row per checklist item, with the window columns the checks need."""
    cols: dict[str, list] = {c: [] for c in _ITEM_COLUMNS}
    allowed = frozenset(EVIDENCE_SOURCES)
    for d in records:
        for v, variant in enumerate(d.checklists):
            for block in variant:
                for it in block.items:
                    cols["dialogue_id"].append(d.id)
                    cols["variant"].append(v)
                    cols["turn"].append(block.turn)
                    cols["item_id"].append(it.id)
                    cols["focus_on"].append(it.focus_on)
                    cols["question"].append(it.question)
                    cols["pass_condition"].append(it.pass_condition)
                    cols["weight"].append(float(it.weight))
                    cols["bad_evidence_from"].append(sum(1 for e in it.evidence if e.from_ not in allowed))
    frame = pl.DataFrame(
        cols,
        schema={"dialogue_id": pl.String, "variant": pl.Int64, "turn": pl.Int64, "item_id": pl.String,
                "focus_on": pl.String, "question": pl.String, "pass_condition": pl.String, "weight": pl.Float64,
                "bad_evidence_from": pl.Int64},
    )
    group = ["dialogue_id", "variant", "turn"]
    return frame.with_columns(
        pl.col("weight").sum().over(group).alias("turn_weight_sum"),
        pl.len().over([*group, "item_id"]).cast(pl.Int64).alias("id_count"),
    )


@dataclass(frozen=True, slots=True)
class TableFailure:
    dialogue_id: str
    rule: str
    message: str


def _failures(schema: pa.DataFrameSchema, frame: pl.DataFrame, describe) -> list[TableFailure]:  # type: ignore[no-untyped-def]
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
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    messages: dict[str, str] = {}
    for row in cases.iter_rows(named=True):
        idx, col, num = row["index"], row["column"], row["check_number"]
        if num is None:
            rule, error = f"{col}_{row['check']}", f"{col}: {row['check']}"
        else:
            rule, error = names.get((col, num), (f"{col}_{row['check']}", str(row["check"])))
        messages[rule] = error
        if idx is None:  # a whole-column failure (wrong dtype): charge every row
            for i in range(frame.height):
                grouped[(frame["dialogue_id"][i], rule)].append(describe(i))
            continue
        grouped[(frame["dialogue_id"][idx], rule)].append(describe(idx))
    out = []
    for (did, rule), where in grouped.items():
        shown = ", ".join(sorted(set(where))[:4]) + (f" (+{len(set(where)) - 4} more)" if len(set(where)) > 4 else "")
        out.append(TableFailure(did, rule, f"{messages[rule]}: {shown}" if shown else messages[rule]))
    return out


def table_failures(records: Sequence[Dialogue]) -> list[TableFailure]:
    """Validate both flattened tables; one :class:`TableFailure` per (dialogue, rule)."""
    dframe = dialogue_frame(records)
    iframe = item_frame(records)

    def dialogue_where(i: int) -> str:
        return ""

    def item_where(i: int) -> str:
        row = iframe.row(i, named=True)
        return f"variant {row['variant']} turn {row['turn']} {row['item_id'] or '<no id>'}"

    return _failures(DIALOGUE_SCHEMA, dframe, dialogue_where) + _failures(ITEM_SCHEMA, iframe, item_where)

