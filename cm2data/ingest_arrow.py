"""Store-layout rows on their way into an ingested dataset, kept in Arrow: which rows may skip the record, and
ingest's provenance stamps applied to the Arrow columns.

A row of :data:`cm2data.store.DIALOGUE_SCHEMA` may be written without building its pydantic record when it
certainly reads (the columnar gate's readability screen) *and* :func:`canonical_mask` proves it already has the
form ``store.to_row(store.from_row(row))`` would give it: then the record path would change nothing in it but the
stamps, which :func:`stamp_batch` applies exactly as :func:`cm2data.ingest.stamp_ingested` does to a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cm2data import store


def _null(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_null(), dtype=np.bool_)


def _flatten(lists: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The values of a list array and each value's parent index (null lists contribute nothing)."""
    return pc.list_flatten(lists), np.asarray(pc.list_parent_indices(lists), dtype=np.int64)


def _any(mask: np.ndarray, parent: np.ndarray, n: int) -> np.ndarray:
    """Per parent: whether any of its children has ``mask``."""
    if not mask.any():
        return np.zeros(n, dtype=np.bool_)
    return np.bincount(parent[mask], minlength=n) > 0


def _each_distinct(col: pa.Array, ok: Callable[[str], bool]) -> np.ndarray:
    """``ok`` per non-null cell, each distinct value tested once; null cells give False."""
    encoded = pc.dictionary_encode(col)
    verdicts = np.array([ok(v) for v in encoded.dictionary.to_pylist()] + [False], dtype=np.bool_)
    idx = np.asarray(encoded.indices.fill_null(len(encoded.dictionary)), dtype=np.int64)
    return verdicts[idx]


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _dict_json(text: str) -> bool:
    """``metadata``: ``from_row`` decodes it, ``to_row`` re-encodes it with sorted keys."""
    value = _parsed(text)
    return isinstance(value, dict) and store._dumps(value) == text


def _dicts_json(text: str) -> bool:
    """``review.decisions``: a list of objects, as stored."""
    value = _parsed(text)
    return isinstance(value, list) and all(isinstance(v, dict) for v in value) and store._dumps(value) == text


def _floats_json(text: str) -> bool:
    """``review.agreement``: pydantic turns an integer value into a float, which is written back as ``1.0``."""
    value = _parsed(text)
    return isinstance(value, dict) and all(type(v) is float for v in value.values()) and store._dumps(value) == text


def _tools_json(text: str) -> bool:
    """``tools``: ``from_row`` keeps each function's name, description and parameters; ``to_row`` writes them back
    as OpenAI function schemas."""
    value = _parsed(text)
    if not isinstance(value, list):
        return False
    try:
        canonical = [
            {
                "type": "function",
                "function": {
                    "name": t["function"]["name"],
                    "description": t["function"].get("description", ""),
                    "parameters": t["function"].get("parameters") or {},
                },
            }
            for t in value
        ]
    except (KeyError, TypeError, AttributeError):
        return False
    return store._dumps(canonical) == text


def _extra_info_json(text: str) -> bool:
    """An item's ``extra_info``: an empty object is written back as null."""
    value = _parsed(text)
    return isinstance(value, dict) and bool(value) and store._dumps(value) == text


def canonical_mask(batch: pa.RecordBatch) -> np.ndarray:
    """Per row of ``batch`` (store layout), True where reading it and writing it back would give the same row, if it
    reads at all (which this does not check: the columnar gate's screen does).

    What the record path changes, and where this looks: a null ``source``, message ``content``, call ``arguments``,
    ``checklists``, ``failure_examples``/``depends_on``, ``provenance`` or ``review`` struct, review ``status`` or
    ``reviewers`` (pydantic's defaults replace them); checklist blocks out of turn order (sorted); JSON strings not
    in ``json.dumps(sort_keys=True)`` form, tool schemas other than ``{type, function: {name, description,
    parameters}}``, agreement figures that are not floats, an empty ``extra_info`` object. ``provenance.history`` is
    rewritten by the stamps anyway (:func:`stamp_batch`)."""
    n = batch.num_rows
    bad = _null(batch.column("source"))
    bad |= ~_each_distinct(batch.column("tools"), _tools_json)
    bad |= ~_each_distinct(batch.column("metadata"), _dict_json)

    msgs, m_row = _flatten(batch.column("messages"))
    bad |= _any(_null(pc.struct_field(msgs, "content")), m_row, n)
    calls, c_msg = _flatten(pc.struct_field(msgs, "tool_calls"))
    bad |= _any(_null(pc.struct_field(calls, "arguments")), m_row[c_msg], n)

    checklists = batch.column("checklists")
    bad |= _null(checklists)
    variants, v_row = _flatten(checklists)
    blocks, b_var = _flatten(variants)
    b_row = v_row[b_var]
    turn = np.asarray(pc.struct_field(blocks, "turn").fill_null(0), dtype=np.int64)
    unsorted = (b_var[1:] == b_var[:-1]) & (turn[1:] < turn[:-1])  # Dialogue sorts each variant's blocks by turn
    bad |= _any(unsorted, b_row[1:], n)
    items, i_block = _flatten(pc.struct_field(blocks, "items"))
    i_row = b_row[i_block]
    for name in ("failure_examples", "depends_on"):
        bad |= _any(_null(pc.struct_field(items, name)), i_row, n)
    extra = pc.struct_field(items, "extra_info")
    present = ~_null(extra)
    if present.any():
        ok = _each_distinct(extra, _extra_info_json)
        bad |= _any(present & ~ok, i_row, n)

    prov = batch.column("provenance")
    review = batch.column("review")
    bad |= _null(prov) | _null(review)
    bad |= _null(pc.struct_field(review, "status")) | _null(pc.struct_field(review, "reviewers"))
    bad |= ~_each_distinct(pc.struct_field(review, "decisions"), _dicts_json)
    bad |= ~_each_distinct(pc.struct_field(review, "agreement"), _floats_json)
    return ~bad


def stamped_history(history: str | None, source: str, at: str) -> str:
    """A stored ``provenance.history`` with ingest's entry appended unless it has one (as
    :meth:`cm2data.schema.Provenance.stamp` appends it), in the store's JSON form."""
    entries: list[dict[str, Any]] = json.loads(history) if history else []
    if not any(h.get("stage") == "ingest" for h in entries):
        entries.append({"stage": "ingest", "at": at, "input": source})
    return store._dumps(entries)


def stamp_batch(batch: pa.RecordBatch, source: str, now: str, at: str) -> pa.RecordBatch:
    """``batch`` (store layout, rows :func:`canonical_mask` cleared) with ingest's stamps: an empty provenance source
    becomes the row's ``source`` or else ``source``; a null ``created_at`` becomes ``now``; the history gets an
    ``ingest`` entry at ``at`` unless it has one."""
    prov = batch.column("provenance")
    prov_source = pc.struct_field(prov, "source")
    row_source = batch.column("source")
    fallback = pc.if_else(pc.equal(row_source, ""), pa.scalar(source), row_source)
    empty = pc.fill_null(pc.equal(prov_source, ""), True)
    history = [stamped_history(h, source, at) for h in pc.struct_field(prov, "history").to_pylist()]
    fields = list(prov.type)
    arrays = {f.name: pc.struct_field(prov, f.name) for f in fields}
    arrays["source"] = pc.if_else(empty, fallback, prov_source)
    arrays["created_at"] = pc.fill_null(arrays["created_at"], now)
    arrays["history"] = pa.array(history, pa.string())
    stamped = pa.StructArray.from_arrays([arrays[f.name] for f in fields], fields=fields)
    columns = [stamped if name == "provenance" else batch.column(name) for name in store.DIALOGUE_SCHEMA.names]
    return pa.RecordBatch.from_arrays(columns, schema=store.DIALOGUE_SCHEMA)
