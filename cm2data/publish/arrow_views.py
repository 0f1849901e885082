"""What publish derives from the records, computed from their Arrow rows without building a record.

Input: a table (or record batch) of :data:`cm2data.store.DIALOGUE_SCHEMA` rows — what ``cm2data.store`` writes.
Output, equal to the record-based versions on the same rows (``tests/test_publish_columnar.py`` proves it on the
shipped sample, the broken-input corpus and synthetic datasets):

* :func:`checklist_items` — the ``checklist_items`` config, as :func:`cm2data.publish.tree.checklist_items_table`
  builds it from records;
* :func:`add_to_summary` — the card's statistics, as :meth:`cm2data.card.Summary.add` accumulates them.

The work is done by Arrow's list kernels (flatten, parent indices, value lengths) and numpy reductions over the
flattened messages, tool calls, blocks and items. The JSON columns are parsed only where a figure needs them
(candidate tools, the metadata's domain, provenance history, review agreement), each distinct string once: a
dataset's rows mostly share their tool catalogue and history.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cm2data.schema.records import Provenance, Review

if TYPE_CHECKING:
    from cm2data.card import Summary

_PROVENANCE_DEFAULTS = {k: f.default for k, f in Provenance.model_fields.items()}
_REVIEW_STATUS_DEFAULT = Review.model_fields["status"].default


def _table(rows: pa.Table | pa.RecordBatch) -> pa.Table:
    return (pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows).combine_chunks()


def _np(array: pa.Array | pa.ChunkedArray, fill: Any = 0) -> np.ndarray:
    return np.asarray(pc.fill_null(array, fill).to_numpy(zero_copy_only=False))


def _parents(lists: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)


def _lengths(lists: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _np(pc.list_value_length(lists)).astype(np.int64)


def _per_distinct(column: pa.ChunkedArray, parse: Callable[[str | None], Any]) -> list[Any]:
    """``parse`` of every value of a string column, computed once per distinct value."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    values = [parse(v) for v in encoded.dictionary.to_pylist()]
    null = parse(None)
    return [null if i is None else values[i] for i in encoded.indices.to_pylist()]


def _struct_field(table: pa.Table, column: str, field: str) -> pa.ChunkedArray:
    return pc.struct_field(table.column(column), field)


# ------------------------------------------------------------------------------------------ checklist items


def checklist_items(rows: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """One flat row per checklist item (every variant, every turn), in row order, with ``schema``
    (:data:`cm2data.publish.tree.CHECKLIST_ITEM_SCHEMA`)."""
    t = _table(rows)
    checklists = t.column("checklists")
    variants = pc.list_flatten(checklists)  # one list of blocks per variant
    variant_dialogue = _parents(checklists)
    blocks = pc.list_flatten(variants)  # struct<turn, items>
    block_variant = _parents(variants)
    items_lists = pc.struct_field(blocks, "items")
    items = pc.list_flatten(items_lists)
    item_block = _parents(items_lists)
    item_variant = block_variant[item_block]
    item_dialogue = variant_dialogue[item_variant]
    first_variant = np.concatenate([[0], np.cumsum(_lengths(checklists))])[:-1]
    take = pa.array(item_dialogue, pa.int64())

    domains = _per_distinct(t.column("metadata"), _domain)
    evidence_json = evidence_column(pc.struct_field(items, "evidence"))
    sources = pc.fill_null(t.column("source"), "")
    columns = {
        "dialogue_id": pc.take(t.column("id"), take),
        "variant": pa.array(item_variant - first_variant[item_dialogue], pa.int64()),
        "turn": pc.take(pc.struct_field(blocks, "turn"), pa.array(item_block, pa.int64())),
        "item_id": pc.struct_field(items, "id"),
        "question": pc.struct_field(items, "question"),
        "pass_condition": pc.struct_field(items, "pass_condition"),
        "focus_on": pc.struct_field(items, "focus_on"),
        "weight": pc.struct_field(items, "weight"),
        "required_for_next_turn": pc.struct_field(items, "required_for_next_turn"),
        "depends_on": pc.fill_null(pc.struct_field(items, "depends_on"), pa.scalar([], pa.list_(pa.string()))),
        "evidence": evidence_json,
        "failure_examples": pc.fill_null(
            pc.struct_field(items, "failure_examples"), pa.scalar([], pa.list_(pa.string()))
        ),
        "domain": pc.take(pa.array(domains, pa.string()), take),
        "source": pc.take(sources, take),
        "extra_info": pc.struct_field(items, "extra_info"),
    }
    return pa.table([columns[f.name].cast(f.type) for f in schema], schema=schema)


# json.dumps(..., ensure_ascii=False) escapes only these (and other control characters, which go the slow way)
_JSON_ESCAPES = (
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\b", "\\b"),
    ("\f", "\\f"),
)
_OTHER_CONTROL = "[\\x00-\\x07\\x0b\\x0e-\\x1f]"


def _json_string(strings: pa.Array) -> pa.Array:
    """``json.dumps(s, ensure_ascii=False)`` of every string (none null, none with rare control characters)."""
    for raw, escaped in _JSON_ESCAPES:
        strings = pc.replace_substring(strings, raw, escaped)
    return pc.binary_join_element_wise('"', strings, '"', "")


def evidence_column(evidence: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each item's evidence list as the JSON text :mod:`cm2data.store` writes for it (``_dumps`` of
    ``[e.to_dict() …]``: sorted keys, ``ensure_ascii=False``), built with Arrow string kernels; entries with a null
    field or a rare control character are encoded by ``json.dumps`` itself."""
    lists = evidence.combine_chunks() if isinstance(evidence, pa.ChunkedArray) else evidence
    lists = pc.fill_null(lists, pa.scalar([], lists.type))
    entries = pc.list_flatten(lists)
    fields = {name: pc.struct_field(entries, name) for name in ("from", "snippet", "step", "turn")}
    odd = pc.or_(
        pc.or_(pc.is_null(fields["from"]), pc.is_null(fields["snippet"])),
        pc.or_(pc.is_null(fields["step"]), pc.is_null(fields["turn"])),
    )
    for name in ("from", "snippet"):
        odd = pc.or_(odd, pc.fill_null(pc.match_substring_regex(fields[name], _OTHER_CONTROL), False))
    safe = {name: pc.fill_null(fields[name], "") for name in ("from", "snippet")}
    text = pc.binary_join_element_wise(
        '{"from": ',
        _json_string(safe["from"]),
        ', "snippet": ',
        _json_string(safe["snippet"]),
        ', "step": ',
        pc.cast(pc.fill_null(fields["step"], 0), pa.string()),
        ', "turn": ',
        pc.cast(pc.fill_null(fields["turn"], 0), pa.string()),
        "}",
        "",
    )
    if pc.any(odd).as_py():
        slow = np.flatnonzero(odd.to_numpy(zero_copy_only=False))
        values = text.to_pylist()
        for i, entry in zip(slow.tolist(), entries.take(pa.array(slow)).to_pylist(), strict=True):
            values[i] = json.dumps(entry, ensure_ascii=False, sort_keys=True)
        text = pa.array(values, pa.string())
    offsets = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    rebuilt = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(offsets)]), pa.int32()), text)
    return pc.binary_join_element_wise("[", pc.binary_join(rebuilt, ", "), "]", "")


def _domain(metadata: str | None) -> str | None:
    """The metadata's domain as the ``checklist_items`` column holds it (absent or null: None)."""
    if not metadata or '"domain"' not in metadata:
        return None
    value = json.loads(metadata).get("domain")
    return None if value is None else str(value)


def _card_domain(metadata: str | None) -> str | None:
    """The metadata's domain as the card counts it: ``str`` of the value whenever the key is present."""
    if not metadata or '"domain"' not in metadata:
        return None
    data = json.loads(metadata)
    return str(data["domain"]) if "domain" in data else None


# -------------------------------------------------------------------------------------------- card summary


def add_to_summary(summary: Summary, rows: pa.Table | pa.RecordBatch) -> None:
    """Add ``rows`` to ``summary`` exactly as ``summary.add(records)`` would add their records."""
    t = _table(rows)
    n = t.num_rows
    if n == 0:
        return
    stats = dialogue_stats(t)
    for name, values in stats.items():
        summary.hist[name].update(values.tolist())

    checklists = t.column("checklists")
    n_variants = _lengths(checklists)
    variants = pc.list_flatten(checklists)
    blocks = pc.list_flatten(variants)
    items_lists = pc.struct_field(blocks, "items")
    items = pc.list_flatten(items_lists)
    summary.dialogues += n
    summary.variants.update(n_variants.tolist())
    summary.annotated += int(np.count_nonzero(n_variants))
    summary.items_per_turn.update(_lengths(items_lists).tolist())
    summary.items_total += len(items)
    summary.must_pass += int(_np(pc.struct_field(items, "required_for_next_turn"), False).sum())
    summary.with_deps += int(np.count_nonzero(_lengths(pc.struct_field(items, "depends_on"))))
    summary.counters["focus_on"].update(_counts(pc.struct_field(items, "focus_on")))

    sources = pc.fill_null(t.column("source"), "")
    summary.counters["sources"].update(_counts(sources))
    status = pc.fill_null(_struct_field(t, "review", "status"), _REVIEW_STATUS_DEFAULT)
    summary.counters["review_status"].update(_counts(status))
    summary.counters["domains"].update(d for d in _per_distinct(t.column("metadata"), _card_domain) if d is not None)

    prov_source = _struct_field(t, "provenance", "source")
    prov_source = pc.if_else(pc.equal(pc.fill_null(prov_source, ""), ""), sources, prov_source)
    summary.counters["source"].update(_counts(prov_source))
    for key in ("generator_model", "labeller_model", "prompt_version"):
        values = _struct_field(t, "provenance", key)
        default = _PROVENANCE_DEFAULTS[key]
        summary.counters[key].update(_counts(values if default is None else pc.fill_null(values, default)))
    for stages in _per_distinct(_struct_field(t, "provenance", "history"), _stages):
        summary.counters["stages"].update(stages)
    for agreement in _per_distinct(_struct_field(t, "review", "agreement"), _agreement):
        for key, value in agreement:
            summary.agreement.setdefault(key, []).append(value)


def _counts(array: pa.ChunkedArray | pa.Array) -> Counter[Any]:
    """Value counts, nulls counted as None (as the record-based counters count a None field)."""
    out: Counter[Any] = Counter()
    for entry in pc.value_counts(array).to_pylist():
        out[entry["values"]] += entry["counts"]
    return out


def _stages(history: str | None) -> frozenset[str]:
    if not history or history == "[]":
        return frozenset()
    return frozenset(str(h.get("stage")) for h in json.loads(history) if isinstance(h, dict))


def _agreement(agreement: str | None) -> tuple[tuple[str, float], ...]:
    if not agreement or agreement == "{}":
        return ()
    return tuple(
        (str(k), float(v))
        for k, v in json.loads(agreement).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )


def dialogue_stats(rows: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
    """The seven statistics of :func:`cm2data.schema.dialogue_stats` for every row, as arrays in row order."""
    t = _table(rows)
    n = t.num_rows
    messages = t.column("messages")
    flat = pc.list_flatten(messages)
    parent = _parents(messages)
    role = pc.struct_field(flat, "role")
    is_user = _np(pc.equal(role, "user"), False).astype(bool)
    is_assistant = _np(pc.equal(role, "assistant"), False).astype(bool)
    tool_calls = pc.struct_field(flat, "tool_calls")
    calls = np.where(is_assistant, _lengths(tool_calls), 0)

    max_parallel = np.zeros(n, np.int64)
    np.maximum.at(max_parallel, parent, calls)

    # distinct tool names the assistant called, per dialogue
    call_message = _parents(tool_calls)
    keep = is_assistant[call_message]
    names = pc.struct_field(pc.list_flatten(tool_calls), "name").filter(pa.array(keep))
    pairs = pa.table({"d": pa.array(parent[call_message][keep], pa.int64()), "n": names})
    distinct = pairs.group_by(["d", "n"]).aggregate([]).column("d").to_numpy()
    selected = np.bincount(distinct, minlength=n) if len(distinct) else np.zeros(n, np.int64)

    # assistant messages per turn: a turn is numbered by the running count of user messages, which is unique across
    # the table; messages before a dialogue's first user message belong to no turn
    running = np.cumsum(is_user)
    start = np.concatenate([[0], np.cumsum(_lengths(messages))])[:-1]
    before = np.where(start > 0, running[np.maximum(start - 1, 0)], 0)  # users before each dialogue's first message
    in_turn = running > before[parent]
    keys, per_turn = np.unique(running[is_assistant & in_turn], return_counts=True)
    turn_dialogue = np.zeros(int(running[-1]) + 1 if len(running) else 1, np.int64)
    turn_dialogue[running[is_user]] = parent[is_user]
    max_steps = np.zeros(n, np.int64)
    np.maximum.at(max_steps, turn_dialogue[keys], per_turn)

    return {
        "num_turns": np.bincount(parent[is_user], minlength=n),
        "tool_calls_total": np.bincount(parent, weights=calls, minlength=n).astype(np.int64),
        "max_parallel_tool_calls": max_parallel,
        "num_candidate_tools": np.array(_per_distinct(t.column("tools"), _n_tools), np.int64),
        "num_selected_tools": selected,
        "max_assistant_steps": max_steps,
        "num_assistant_messages": np.bincount(parent[is_assistant], minlength=n),
    }


def _n_tools(tools: str | None) -> int:
    return len(json.loads(tools)) if tools else 0
