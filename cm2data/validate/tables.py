"""The pandera gate over flattened views of a dataset (polars backend, all failures collected at once).

Two tables: one row per dialogue (:func:`dialogue_frame`) and one row per checklist item (:func:`item_frame`).
Per-group quantities (a turn's weight sum, how often an id occurs in its turn) are computed as window columns, so
every check is a column check whose failures point at rows, and rows point at dialogue ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandera.polars as pa
import polars as pl

from cm2data.schema import EVIDENCE_SOURCES, FOCUS_VALUES, REVIEW_STATES, Dialogue, TurnChecklist

WEIGHT_TOLERANCE = 1e-6


def _non_blank(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col(data.key).str.strip_chars().str.len_chars() > 0)


def _check(fn, name: str, error: str) -> pa.Check:
    return pa.Check(fn, name=name, error=error)


DIALOGUE_SCHEMA = pa.DataFrameSchema(
    {
        "dialogue_id": pa.Column(
            str,
            [
                _check(_non_blank, "dialogue_id_present", "the record id is empty"),
                _check(
                    lambda d: d.lazyframe.select(~pl.col(d.key).is_duplicated()),
                    "unique_dialogue_ids",
                    "the record id occurs more than once in the dataset",
                ),
            ],
        ),
        "num_turns": pa.Column(
            pl.Int64,
            _check(
                lambda d: d.lazyframe.select(pl.col(d.key) >= 1), "has_user_turn", "the dialogue has no user message"
            ),
        ),
        "review_status": pa.Column(
            str,
            _check(
                lambda d: d.lazyframe.select(pl.col(d.key).is_in(list(REVIEW_STATES))),
                "review_status_enum",
                f"review status must be one of {list(REVIEW_STATES)}",
            ),
        ),
    },
    strict=False,
)

ITEM_SCHEMA = pa.DataFrameSchema(
    {
        "item_id": pa.Column(str, _check(_non_blank, "item_id_present", "the item has no id")),
        "focus_on": pa.Column(
            str,
            _check(
                lambda d: d.lazyframe.select(pl.col(d.key).is_in(list(FOCUS_VALUES))),
                "focus_on_enum",
                f"focus_on must be one of {list(FOCUS_VALUES)}",
            ),
        ),
        "question": pa.Column(str, _check(_non_blank, "non_empty_question", "the question is empty")),
        "pass_condition": pa.Column(str, _check(_non_blank, "non_empty_pass_condition", "the pass condition is empty")),
        "weight": pa.Column(
            float,
            _check(
                lambda d: d.lazyframe.select(pl.col(d.key).is_between(0.0, 1.0)),
                "weight_range",
                "weights must lie in [0, 1]",
            ),
        ),
        "turn_weight_sum": pa.Column(
            float,
            _check(
                lambda d: d.lazyframe.select((pl.col(d.key) - 1.0).abs() <= WEIGHT_TOLERANCE),
                "weights_sum_to_one",
                f"the weights of a turn must sum to 1 (±{WEIGHT_TOLERANCE:g})",
            ),
        ),
        "id_count": pa.Column(
            pl.Int64,
            _check(
                lambda d: d.lazyframe.select(pl.col(d.key) == 1),
                "unique_item_ids",
                "item ids must be unique within a turn",
            ),
        ),
        "bad_evidence_from": pa.Column(
            pl.Int64,
            _check(
                lambda d: d.lazyframe.select(pl.col(d.key) == 0),
                "evidence_from_enum",
                f"evidence 'from' must be one of {list(EVIDENCE_SOURCES)}",
            ),
        ),
    },
    strict=False,
)

_DIALOGUE_TYPES = {"dialogue_id": pl.String, "num_turns": pl.Int64, "review_status": pl.String}
#: The item table as validated. ``dialogue`` is the position of the first record with the item's dialogue id, so
#: that grouping by it is grouping by id (records that share an id share their groups) without a string column;
#: :meth:`TableRows.item_frame` adds the ids themselves.
_ITEM_TYPES = {
    "dialogue": pl.Int64,
    "variant": pl.Int64,
    "turn": pl.Int64,
    "item_id": pl.String,
    "focus_on": pl.String,
    "question": pl.String,
    "pass_condition": pl.String,
    "weight": pl.Float64,
    "bad_evidence_from": pl.Int64,
}
_ALLOWED_FROM = frozenset(EVIDENCE_SOURCES)

#: Records per chunk of the item table. The gate builds, validates and drops one chunk at a time, so its own memory
#: stays bounded (in the benchmark, under 70 MiB above the records at 100k dialogues, where one whole table took
#: 700) and the allocator reuses the same buffers instead of touching fresh pages (the page faults of one whole
#: table of 100k dialogues cost over a CPU second).
CHUNK_RECORDS = 4096

_GROUP = ["dialogue", "variant", "turn"]
_WINDOW_COLUMNS = ("turn_weight_sum", "id_count")
#: The window columns' checks alone (the same ``Check`` objects as in :data:`ITEM_SCHEMA`), run again over the rows
#: of ids that several records share, whose groups may span chunks.
_WINDOW_SCHEMA = pa.DataFrameSchema({c: ITEM_SCHEMA.columns[c] for c in _WINDOW_COLUMNS}, strict=False)


def _with_windows(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.with_columns(
        pl.col("weight").sum().over(_GROUP).alias("turn_weight_sum"),
        pl.len().over([*_GROUP, "item_id"]).cast(pl.Int64).alias("id_count"),
    )


class TableRows:
    """The columns of both tables, gathered one record at a time, the item table validated chunk by chunk.

    The gate adds each record right after running its rules on it, while the record's objects are still in the CPU
    cache: a separate pass over 100k loaded records costs more in cache misses than the gathering itself. Columns
    are plain lists of strings and numbers (no per-row tuples), so gathering adds no work for the cyclic GC.

    Given the record's ``steps`` (:func:`~cm2data.validate.checklist.steps_per_turn`), :meth:`add` also screens the
    record-level checklist rules (:func:`~cm2data.validate.checklist.variant_clear`) while the items are at hand,
    and returns True only when all three certainly pass; the gate runs the exact rules otherwise.

    Every ``chunk_records`` records (``None``: never) the item rows gathered so far are validated and dropped; the
    dialogue table (three short columns) is validated once, in :meth:`failures`. The result is the same as one
    validation of the whole item table: rows are checked alone except for the window columns, whose groups belong
    to one dialogue id, so they are exact within a chunk for an id that only one record has. For ids that several
    records share (``duplicated``, when known in advance; otherwise every id is kept in view) the rows needed by the
    windows are kept, compactly, and their window checks run again over all of them at the end. Failures are merged
    per (dialogue, rule) and listed in the order of one whole-table validation.
    """

    def __init__(self, chunk_records: int | None = CHUNK_RECORDS, duplicated: set[str] | None = None) -> None:
        self.dialogues: dict[str, list] = {c: [] for c in _DIALOGUE_TYPES}
        self.items: dict[str, list] = {c: [] for c in _ITEM_TYPES}
        self._first: dict[str, int] = {}  # dialogue id -> position of its first record
        self._n_items = 0  # item rows in the current chunk
        self._chunk = chunk_records
        self._duplicated = duplicated
        self._pending = 0  # records in the current chunk
        self._rows_done = 0  # item rows of the chunks validated so far
        self._chunks = 0
        self._kept: list[pl.DataFrame] = []  # window rows of possibly shared ids, with their global row numbers
        self._found: dict[tuple[str, str], list] = {}  # (dialogue id, rule) -> [order, places]
        self._messages: dict[str, str] = {}

    def add(self, d: Dialogue, steps: Sequence[int] | None = None) -> bool:
        dcols = self.dialogues
        ids = dcols["dialogue_id"]
        did = d.id
        code = self._first.setdefault(did, len(ids))
        ids.append(did)
        dcols["num_turns"].append(len(steps) if steps is not None else [m.role for m in d.messages].count("user"))
        dcols["review_status"].append(d.review.status)
        clear = steps is not None
        checklists = d.checklists
        if checklists:
            try:
                clear = self._add_items(code, checklists, steps)
            except Exception:  # an odd record (a model built without validation): gather it plainly, screen nothing
                for column in self.items.values():
                    del column[self._n_items :]
                self._add_items_plainly(code, checklists)
                clear = False
        self._pending += 1
        if self._pending == self._chunk:
            self._flush()
        return clear

    def _add_items(self, code: int, checklists: list[list[TurnChecklist]], steps: Sequence[int] | None) -> bool:
        """Gather the item columns, one pass over the items; screen the checklist rules on the way when ``steps``
        is given (the same conditions as :func:`~cm2data.validate.checklist.variant_clear`). An exception here
        (a field missing or of the wrong type) makes :meth:`add` gather the record again through attribute reads and
        leave the checklist rules to the exact path, which then behaves as it always did.

        Field values are read from the models' ``__dict__``, where pydantic keeps them: ``BaseModel`` defines
        ``__getattr__``, which sends every attribute read through a slower hook, and this loop makes millions."""
        icols = self.items
        col_turn, col_variant, col_code = icols["turn"], icols["variant"], icols["dialogue"]
        col_id, col_focus = icols["item_id"], icols["focus_on"]
        add_id, add_focus = col_id.append, col_focus.append
        add_question, add_pass = icols["question"].append, icols["pass_condition"].append
        add_weight, col_bad_from = icols["weight"].append, icols["bad_evidence_from"]
        allowed = _ALLOWED_FROM
        clear = steps is not None
        n_turns = len(steps) if clear else 0  # type: ignore[arg-type]
        for v, variant in enumerate(checklists):
            if len(variant) != n_turns:
                clear = False
            for t, block in enumerate(variant):
                fields = block.__dict__
                turn = fields["turn"]
                items = fields["items"]
                k = len(items)
                col_turn += [turn] * k
                col_code += [code] * k
                col_variant += [v] * k
                if turn != t:
                    clear = False
                start = len(col_id)
                depending: list[tuple[str, list[str]]] = []
                sources_ok = True
                for it in items:
                    item = it.__dict__
                    iid = item["id"]
                    add_id(iid)
                    add_focus(item["focus_on"])
                    add_question(item["question"])
                    add_pass(item["pass_condition"])
                    weight = item["weight"]
                    add_weight(weight if type(weight) is float else float(weight))
                    deps = item["depends_on"]
                    if deps:
                        depending.append((iid, deps))
                    for ev in item["evidence"]:
                        pointer = ev.__dict__
                        if pointer["from_"] not in allowed:
                            sources_ok = False
                        if clear:  # checklist_evidence_pointers
                            turn_ = pointer["turn"]
                            if turn_ >= n_turns or pointer["step"] >= steps[turn_]:  # type: ignore[index]
                                clear = False
                if sources_ok:  # the usual case: nothing to count per item
                    col_bad_from += [0] * k
                else:
                    col_bad_from += [sum(1 for e in it.evidence if e.from_ not in allowed) for it in items]
                if depending and clear:  # checklist_dependencies, against the block's ids as gathered
                    focus = dict(zip(col_id[start:], col_focus[start:], strict=True))
                    for iid, deps in depending:
                        for dep in deps:
                            if dep == iid or focus.get(dep) != "tool.content":
                                clear = False
        self._n_items = len(col_code)
        return clear

    def _add_items_plainly(self, code: int, checklists: list[list[TurnChecklist]]) -> None:
        """The item columns of one record through attribute reads (any error they raise is the record's own)."""
        icols = self.items
        for v, variant in enumerate(checklists):
            items = [it for block in variant for it in block.items]
            icols["turn"] += [block.turn for block in variant for _ in block.items]
            icols["dialogue"] += [code] * len(items)
            icols["variant"] += [v] * len(items)
            icols["item_id"] += [it.id for it in items]
            icols["focus_on"] += [it.focus_on for it in items]
            icols["question"] += [it.question for it in items]
            icols["pass_condition"] += [it.pass_condition for it in items]
            icols["weight"] += [float(it.weight) for it in items]
            icols["bad_evidence_from"] += [sum(1 for e in it.evidence if e.from_ not in _ALLOWED_FROM) for it in items]
        self._n_items = len(icols["dialogue"])

    def dialogue_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.dialogues, schema=_DIALOGUE_TYPES)

    def _item_table(self) -> pl.DataFrame:
        """The item rows gathered since the last chunk was validated, with the window columns the checks need."""
        return _with_windows(pl.DataFrame(self.items, schema=_ITEM_TYPES))

    def item_frame(self) -> pl.DataFrame:
        """The item rows not yet validated (all of them with ``chunk_records=None``), with their ``dialogue_id`` and
        the window columns the checks need."""
        return self._with_ids(self._item_table())

    def _with_ids(self, rows: pl.DataFrame) -> pl.DataFrame:
        ids = pl.Series("dialogue_id", self.dialogues["dialogue_id"], dtype=pl.String)
        return rows.with_columns(ids.gather(rows["dialogue"])).select("dialogue_id", pl.exclude("dialogue_id"))

    def _flush(self) -> None:
        """Validate the item rows of the current chunk and drop them."""
        self._pending = 0
        if not self._n_items:
            return
        table = self._item_table()
        self._chunks += 1
        self._collect(ITEM_SCHEMA, table, self._rows_done)
        keep = table.select(*_GROUP, "item_id", "weight").with_row_index("row", offset=self._rows_done)
        if self._duplicated is not None:
            codes = [self._first[i] for i in self._duplicated if i in self._first]
            keep = keep.filter(pl.col("dialogue").is_in(codes)) if codes else keep.clear()
        if keep.height:
            self._kept.append(keep)
        self._rows_done += table.height
        for column in self.items.values():
            column.clear()
        self._n_items = 0

    def _collect(self, schema: pa.DataFrameSchema, frame: pl.DataFrame, row0: int) -> None:
        """Validate ``frame`` (rows numbered from ``row0`` in the whole table) and merge its failures."""
        described = _failing(schema, frame)
        if described is None:
            return
        failing, rules, orders, local_rows, messages = described
        self._messages.update(messages)
        if "dialogue" in failing.columns:
            places = _item_place(failing)
            failing = self._with_ids(failing)
        else:
            places = _no_place(failing)
        for did, rule, order, row, where in zip(
            failing["dialogue_id"].to_list(), rules, orders, local_rows, places, strict=True
        ):
            entry = self._found.get((did, rule))
            if entry is None:
                self._found[(did, rule)] = [(*order, row0 + row), [where]]
            else:
                entry[1].append(where)

    def failures(self) -> list[TableFailure]:
        """Validate what is left of the item rows and the dialogue table; one :class:`TableFailure` per (dialogue,
        rule), in the order of one whole-table validation: dialogue rules first, then item rules by column, check
        and first failing row."""
        self._flush()
        items = self._found
        self._found = {}
        self._collect(DIALOGUE_SCHEMA, self.dialogue_frame(), 0)
        dialogue_failures = self._found
        self._found = items
        if self._chunks > 1 and self._kept:
            self._recheck_windows()
        out = []
        for found in (dialogue_failures, self._found):
            for (did, rule), (_, where) in sorted(found.items(), key=lambda kv: kv[1][0]):
                places = sorted(set(where))
                shown = ", ".join(places[:4]) + (f" (+{len(places) - 4} more)" if len(places) > 4 else "")
                message = self._messages[rule]
                out.append(TableFailure(did, rule, f"{message}: {shown}" if shown else message))
        return out

    def _recheck_windows(self) -> None:
        """Window checks over all rows of the ids that several records share (their groups may span chunks)."""
        ids = self.dialogues["dialogue_id"]
        counts: dict[str, int] = {}
        for did in ids:
            counts[did] = counts.get(did, 0) + 1
        shared = {self._first[did] for did, n in counts.items() if n > 1}
        if not shared:
            return
        window_rules = {chk.name for c in _WINDOW_COLUMNS for chk in ITEM_SCHEMA.columns[c].checks}
        for key in [k for k in self._found if k[1] in window_rules and self._first[k[0]] in shared]:
            del self._found[key]
        rows = pl.concat(self._kept).filter(pl.col("dialogue").is_in(list(shared)))
        if not rows.height:
            return
        table = _with_windows(rows)
        described = _failing(_WINDOW_SCHEMA, table, ITEM_SCHEMA)
        if described is None:
            return
        failing, rules, orders, _, messages = described
        self._messages.update(messages)
        places = _item_place(failing)
        global_rows = failing["row"].to_list()
        self._merge(self._with_ids(failing)["dialogue_id"].to_list(), rules, orders, global_rows, places)

    def _merge(self, ids: list[Any], rules: list[str], orders: list[Any], rows: list[int], places: list[Any]) -> None:
        """Add failures whose rows are numbered in the whole item table, in any order: each (dialogue, rule) keeps
        its first failing position and every place."""
        for did, rule, order, row, where in zip(ids, rules, orders, rows, places, strict=True):
            key = (*order, row)
            entry = self._found.get((did, rule))
            if entry is None:
                self._found[(did, rule)] = [key, [where]]
            else:
                entry[0] = min(entry[0], key)
                entry[1].append(where)


def _rows(records: Iterable[Dialogue]) -> TableRows:
    rows = TableRows(chunk_records=None)
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


def _failing(
    schema: pa.DataFrameSchema, frame: pl.DataFrame, order_schema: pa.DataFrameSchema | None = None
) -> tuple[pl.DataFrame, list[str], list[tuple[int, int]], list[int], dict[str, str]] | None:
    """Validate ``frame``: ``None`` when it passes, else the failing rows (one per failing (row, rule), gathered in
    one go), their rules, the order of each rule's check (column position, check number; ``order_schema``'s
    positions when given), their row numbers in ``frame`` and each rule's error text."""
    if frame.height == 0:
        return None
    try:
        schema.validate(frame, lazy=True)
        return None
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    # map (column, check_number) to the check's name and error text
    names: dict[tuple[str, int], tuple[str, str]] = {}
    for col_name, col in schema.columns.items():
        for k, chk in enumerate(col.checks):
            names[(col_name, k)] = (chk.name or f"{col_name}_{k}", chk.error or chk.name or "")
    positions = {c: i for i, c in enumerate((order_schema or schema).columns)}
    row_indices: list[int] = []
    row_rules: list[str] = []
    row_orders: list[tuple[int, int]] = []
    messages: dict[str, str] = {}
    for idx, col, check, num in cases.select("index", "column", "check", "check_number").iter_rows():
        if num is None:
            rule, error = f"{col}_{check}", f"{col}: {check}"
        else:
            rule, error = names.get((col, num), (f"{col}_{check}", str(check)))
        messages[rule] = error
        order = (positions.get(col, -1), -1 if num is None else num)
        if idx is None:  # a whole-column failure (wrong dtype): charge every row
            row_indices.extend(range(frame.height))
            row_rules.extend([rule] * frame.height)
            row_orders.extend([order] * frame.height)
        else:
            row_indices.append(idx)
            row_rules.append(rule)
            row_orders.append(order)
    return frame[row_indices], row_rules, row_orders, row_indices, messages


def _no_place(rows: pl.DataFrame) -> list[str]:
    return [""] * rows.height


def _item_place(rows: pl.DataFrame) -> list[str]:
    return [
        f"variant {v} turn {t} {i or '<no id>'}" for v, t, i in rows.select("variant", "turn", "item_id").iter_rows()
    ]


def table_failures(records: Sequence[Dialogue]) -> list[TableFailure]:
    """Validate both flattened tables; one :class:`TableFailure` per (dialogue, rule)."""
    rows = TableRows(CHUNK_RECORDS)
    for d in records:
        rows.add(d)
    return rows.failures()
