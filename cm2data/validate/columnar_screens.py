"""The columnar gate's screens: one Arrow record batch of the store's dialogue rows in, per-row "not proven" masks out.

:func:`screen_batch` flattens the nested list columns of a batch (messages, tool calls, checklist variants, blocks,
items, evidence) into flat arrays with parent indices and evaluates, with ``pyarrow.compute``, polars and numpy,
conservative screens of

* **reading**: that :func:`cm2data.store.from_row` certainly builds the record (no null where pydantic wants a
  value, known roles, non-negative turns and steps, the JSON-string columns of the right JSON types);
* **every rule filter and record-level checklist rule**: one mask per rule, True where the rule is not proven to
  pass;
* **the item table's checks**: True where a row of the record's items may fail a pandera check.

A screen only ever *clears* (proves that a rule passes); a True in a mask means "run the exact rule", which decides.
Anything unusual — a null, a non-ASCII text where a check is ASCII-only, a JSON document deeper than the regexes
follow, a tool schema outside :func:`~cm2data.validate.json_shapes.args_shape`'s subset (those go through the
per-record screen of :mod:`cm2data.validate.screen` instead) — is "not proven". The batch must have exactly
:data:`cm2data.store.DIALOGUE_SCHEMA` (:func:`schema_ok`); the gate reads other batches row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from cm2data import store
from cm2data.schema import EVIDENCE_SOURCES, FOCUS_VALUES, Tool
from cm2data.validate.checklist import SOURCE_STEP_KIND, _example_anchors, _prompt_example_texts
from cm2data.validate.evidence import normalize
from cm2data.validate.json_shapes import JSON_DOCUMENT, ArgsShape, args_shape, key_pattern
from cm2data.validate.rules import _RESPONSE_MARKERS, RuleConfig
from cm2data.validate.screen import _object_ok, _parse
from cm2data.validate.tables import WEIGHT_TOLERANCE

_dumps: Callable[[Any], bytes] | None
try:  # comes with distilabel, as the screen's orjson parser
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover - depends on the environment
    _dumps = None

USER, ASSISTANT, TOOL, SYSTEM, OTHER, NONE = 0, 1, 2, 3, 4, 5
_ROLES = pa.array(["user", "assistant", "tool", "system"])
_KIND_CODE = {"user": USER, "assistant": ASSISTANT, "tool": TOOL}
_SOURCES = pa.array(list(SOURCE_STEP_KIND))
_SOURCE_KIND = np.array([_KIND_CODE[SOURCE_STEP_KIND[s]] for s in SOURCE_STEP_KIND], dtype=np.int8)
_SOURCE_PART = np.array(
    [{"assistant.content.thinking": 1, "assistant.tool_calls": 2}.get(s, 0) for s in SOURCE_STEP_KIND], dtype=np.int8
)  # 0: the messages' content, 1: the thinking, 2: the calls' arguments
_ALLOWED_FROM = pa.array(list(EVIDENCE_SOURCES))
_FOCUS = pa.array(list(FOCUS_VALUES))

#: Every text a rule objects to somewhere: the response markers and the think tags.
_SCAN = (*_RESPONSE_MARKERS, "<think>", "</think>")
#: A character that ``str.isspace`` does not call whitespace: a text holding one is not blank once stripped.
_PY_SPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
_NON_BLANK = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE) + "]"
#: Printable ASCII other than space: not whitespace for polars' ``strip_chars`` (the tables' blank checks) either.
_VISIBLE_ASCII = "[!-~]"
#: Blocks of at most this many items are checked item against item (a comparison per position); larger ones by a
#: hash join.
_BLOCK_SCAN = 32

#: Rules the columnar screens cover, by the name the gate reports.
RECORD_RULES = (
    "tool_schema",
    "role_order",
    "tool_call_response_match",
    "no_tool_response_in_assistant_message",
    "non_empty_content",
    "degenerate_message",
    "think_tags",
    "tool_response_json_valid",
    "duplicate_tools_by_name",
    "checklist_block_count",
    "checklist_dependencies",
    "checklist_evidence_pointers",
    "evidence_grounded",
    "checklist_copied_from_prompt",
)


def schema_ok(schema: pa.Schema) -> bool:
    """Whether a batch has the store's row layout, which the screens read."""
    return schema.equals(store.DIALOGUE_SCHEMA, check_metadata=False)


@dataclass
class ItemColumns:
    """The item rows of a batch, in row order: the pandera item table's columns (``row``: the batch row of the
    item's record)."""

    row: np.ndarray
    variant: np.ndarray
    turn: np.ndarray
    item_id: pa.Array
    focus_on: pa.Array
    question: pa.Array
    pass_condition: pa.Array
    weight: np.ndarray
    bad_evidence_from: np.ndarray


@dataclass
class BatchScreen:
    """What :func:`screen_batch` proved about a batch of ``n`` rows.

    ``unreadable``: rows that :func:`cm2data.store.from_row` may refuse (their every rule goes to the exact path);
    ``flags``: per rule, rows where the rule is not proven to pass; ``table``: rows whose item rows may fail a
    pandera check; ``num_turns``/``review_status``: the dialogue table's columns; ``items``: the item table's."""

    n: int
    unreadable: np.ndarray
    flags: dict[str, np.ndarray]
    table: np.ndarray
    num_turns: np.ndarray
    review_status: pa.Array
    items: ItemColumns
    notes: dict[str, int] = field(default_factory=dict)

    def not_proven(self, rules: list[str]) -> np.ndarray:
        """Rows where any of ``rules`` is not proven (or the row may not read)."""
        out = self.unreadable.copy()
        for rule in rules:
            flag = self.flags.get(rule)
            out |= True if flag is None else flag
        return out


# ------------------------------------------------------------------------------------------------------- helpers


def _np(arr: pa.Array | pa.ChunkedArray, fill: Any = 0) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        arr = arr.fill_null(fill)
    return arr.to_numpy(zero_copy_only=False)


def _pl(arr: pa.Array | pa.ChunkedArray) -> pl.Series:
    out = pl.from_arrow(arr)
    assert isinstance(out, pl.Series)
    return out


def _null(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_null())


def _flatten(lists: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The values of a list array and each value's parent index (null lists contribute nothing)."""
    return pc.list_flatten(lists), np.asarray(pc.list_parent_indices(lists), dtype=np.int64)


def _field(arr: pa.Array, name: str) -> pa.Array:
    return pc.struct_field(arr, name)


def _any(mask: np.ndarray, parent: np.ndarray, n: int) -> np.ndarray:
    """Per parent: whether any of its children has ``mask``."""
    if not mask.any():
        return np.zeros(n, dtype=np.bool_)
    return np.bincount(parent[mask], minlength=n) > 0


def _starts(parent: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Children per parent and the index of each parent's first child (children are grouped by parent)."""
    counts = np.bincount(parent, minlength=n)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return counts, starts


def _match(arr: pa.Array, pattern: str) -> np.ndarray:
    """RE2 search per string; null strings do not match."""
    return _np(pc.match_substring_regex(arr, pattern), False).astype(np.bool_)


def _bytes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string array (no copy for ``large_string``) and each string's offsets into them
    (``len(texts) + 1`` of them, starting at 0)."""
    texts = pc.cast(texts, pa.large_string()) if texts.type == pa.string() else texts
    _, offsets_buf, data_buf = texts.buffers()
    k = len(texts)
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[texts.offset : texts.offset + k + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    return data[lo:hi], offsets - lo


def _first_visible(arr: pa.Array) -> np.ndarray:
    """Per string: whether its first byte is visible ASCII (``!``..``~``; null or empty: False) — one read per
    string instead of a regex search."""
    if not len(arr):
        return np.zeros(0, dtype=np.bool_)
    b, offsets = _bytes(arr)
    first = np.zeros(len(arr), dtype=np.uint8)
    has = offsets[:-1] < offsets[1:]
    if arr.null_count:
        has &= ~_null(arr)
    first[has] = b[offsets[:-1][has]]
    return (first >= 0x21) & (first <= 0x7E)


def _or_match(settled: np.ndarray, arr: pa.Array, pattern: str) -> np.ndarray:
    """``settled``, with the strings it leaves False decided by an RE2 search for ``pattern`` instead."""
    rest = np.nonzero(~settled)[0]
    if len(rest):
        settled[rest] = _match(pc.take(arr, pa.array(rest)), pattern)
    return settled


def _has_visible_ascii(arr: pa.Array) -> np.ndarray:
    """Per string: whether it holds a visible ASCII character (null: False): a visible first byte settles most."""
    return _or_match(_first_visible(arr), arr, _VISIBLE_ASCII)


def _non_blank(arr: pa.Array) -> np.ndarray:
    """Per string: ``s.strip() != ""`` (null: False). A visible ASCII character settles most strings at once."""
    return _or_match(_has_visible_ascii(arr), arr, _NON_BLANK)


def _contains_any(arr: pa.Array, needles: tuple[str, ...]) -> np.ndarray:
    """Per string: whether it contains one of ``needles`` (null: False), one Aho-Corasick pass (polars)."""
    if not len(arr):
        return np.zeros(0, dtype=np.bool_)
    return _pl(arr).str.contains_any(list(needles)).fill_null(False).to_numpy()


def _alnum_counts(texts: pa.Array) -> np.ndarray:
    """Per string (no nulls): its ASCII letters and digits."""
    b, rel = _bytes(texts)
    return _segment_sums(_is_alnum(b), rel)


def _segment_sums(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The sums of ``x[bounds[i]:bounds[i + 1]]`` (empty segments: 0)."""
    out = np.zeros(len(bounds) - 1, dtype=np.int64)
    filled = bounds[:-1] < bounds[1:]
    if not len(x) or not filled.any():
        return out
    # over the non-empty segments only: reduceat gives x[start] for an empty one, and each non-empty segment ends
    # where the next non-empty one starts (or at the end); int32 sums are four times cheaper than int64 ones (a
    # segment of 2**31 bytes would overflow them)
    wide = len(x) >= 2**31 - 1
    out[filled] = np.add.reduceat(x.view(np.uint8), bounds[:-1][filled], dtype=np.int64 if wide else np.int32)
    return out


def _is_alnum(b: np.ndarray) -> np.ndarray:
    """Per UTF-8 byte: an ASCII letter or digit (arithmetic on the bytes: cheaper than a table lookup)."""
    return ((b | np.uint8(0x20)) - np.uint8(ord("a")) < 26) | (b - np.uint8(ord("0")) < 10)


def _is_ws6(b: np.ndarray) -> np.ndarray:
    """Per UTF-8 byte: one of the six ASCII spaces `` \\n\\t\\r\\f\\v`` (9..13 and 32)."""
    return (b == np.uint8(0x20)) | (b - np.uint8(9) < 5)


def _text_stats(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per string (no nulls): the ASCII words of :func:`~cm2data.validate.rules.degenerate_text`'s first test (runs of
    ASCII letters and digits once the other characters are dropped: a run that follows non-ASCII characters
    continues the run before them), its ASCII letters and digits, and an upper bound of its visible characters
    (characters, counted as UTF-8 lead bytes, less the six ASCII spaces it subtracts)."""
    b, rel = _bytes(texts)
    alnum = _is_alnum(b)
    first = rel[:-1][rel[:-1] < rel[1:]]
    prev = np.zeros(len(alnum), dtype=np.bool_)
    prev[1:] = alnum[:-1]
    prev[first] = False
    start = alnum & ~prev
    after_other = np.zeros(len(b), dtype=np.bool_)
    after_other[1:] = b[:-1] >= 0x80
    after_other[first] = False
    cand = np.nonzero(start & after_other)[0]
    if len(cand):
        # walk back over the non-ASCII bytes to the last ASCII byte of the same string (if any)
        lo = rel[np.searchsorted(rel, cand, side="right") - 1]
        q = cand - 1
        active = np.arange(len(cand))
        while len(active):
            qa = q[active]
            move = (b[qa] >= 0x80) & (qa > lo[active])
            active = active[move]
            q[active] -= 1
        start[cand[(b[q] < 0x80) & alnum[q]]] = False
    words = _segment_sums(start, rel)
    n_alnum = _segment_sums(alnum, rel)
    chars = _segment_sums((b & 0xC0) != 0x80, rel)
    return words, n_alnum, chars - _segment_sums(_is_ws6(b), rel)


_NO_TOOLS: tuple[bool, tuple[str, ...], tuple[Any, ...], tuple[str, ...]] = (False, (), (), ())
#: orjson reads an integer beyond 64 bits as a float, json.loads as an int: a float this large may have been one
_HUGE = 2.0**63
#: each tool object seen (:func:`_tool_key`) → its name, parameters and schema key, or None when it is not a tool
_TOOLS_SEEN: dict[bytes, tuple[str, Any, str] | None] = {}


def _tool_of(t: Any) -> Tool:
    """One ``tools`` entry as :func:`cm2data.store.from_row` reads it (its code, then pydantic's)."""
    return Tool.model_validate(
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "parameters": t["function"].get("parameters") or {},
        }
    )


def _tool_key(t: Any, dumps: Callable[[Any], bytes]) -> bytes:
    """The cache key of one ``tools`` entry: what :func:`_tool_of` makes of it depends only on these bytes. A
    description that is a string changes nothing but the description (which the screens do not keep), so it is left
    out — corpora repeat a tool with many descriptions; the leading NUL keeps such keys apart from whole entries."""
    f = t.get("function") if type(t) is dict else None
    if type(f) is dict and type(f.get("description", "")) is str:
        return b"\x00" + dumps([f.get("name"), f.get("parameters")])
    return dumps(t)


def _has_huge_float(value: Any) -> bool:
    """Whether a value orjson parsed holds a float of magnitude 2**63 or more (JSON values nest as dicts and lists)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is float:
            if abs(v) >= _HUGE:
                return True
        elif type(v) is dict:
            stack.extend(v.values())
        elif type(v) is list:
            stack.extend(v)
    return False


def _tools_info_exact(text: str | None) -> tuple[bool, tuple[str, ...], tuple[Any, ...], tuple[str, ...]]:
    try:
        tools = [_tool_of(t) for t in store._loads(text, [])]
    except Exception:
        return _NO_TOOLS
    params = tuple(t.parameters for t in tools)
    return True, tuple(t.name for t in tools), params, tuple(repr(p) for p in params)


@lru_cache(maxsize=16_384)
def _tools_info(text: str | None) -> tuple[bool, tuple[str, ...], tuple[Any, ...], tuple[str, ...]]:
    """For a ``tools`` cell: whether :func:`cm2data.store.from_row` reads it (exactly its code and pydantic's), the
    tool names, their parameter schemas and a key per schema (equal keys: equal schemas).

    Tool sets differ from dialogue to dialogue but are made of few tools: each tool is validated once (keyed by its
    name and parameters as orjson writes them back, :func:`_tool_key`). Only where orjson reads the cell as
    ``json.loads`` does — a list, and no float a 64-bit overflow could have made — else the exact reading decides."""
    if _dumps is None or not text:
        return _tools_info_exact(text)
    try:
        raw = _parse(text)
    except Exception:  # NaN, lone surrogates, …: json.loads decides
        return _tools_info_exact(text)
    if type(raw) is not list:
        return _tools_info_exact(text)
    if len(_TOOLS_SEEN) > 100_000:
        _TOOLS_SEEN.clear()
    names: list[str] = []
    params: list[Any] = []
    keys: list[str] = []
    for t in raw:
        key = _tool_key(t, _dumps)
        if key in _TOOLS_SEEN:
            seen = _TOOLS_SEEN[key]
        else:
            if _has_huge_float(t):  # equal bytes, equal values: a tool found in the cache never needs this
                return _tools_info_exact(text)
            try:
                tool = _tool_of(t)
                seen = (tool.name, tool.parameters, repr(tool.parameters))
            except Exception:
                seen = None
            _TOOLS_SEEN[key] = seen
        if seen is None:
            return _NO_TOOLS
        names.append(seen[0])
        params.append(seen[1])
        keys.append(seen[2])
    return True, tuple(names), tuple(params), tuple(keys)


_SHAPES: dict[str, ArgsShape | None] = {}


def _shape(params: Any, key: str) -> ArgsShape | None:
    if key not in _SHAPES:
        if len(_SHAPES) > 10_000:
            _SHAPES.clear()
        _SHAPES[key] = args_shape(params)
    return _SHAPES[key]


def _json_ok(value: str | None, kind: str) -> bool:
    """Whether ``store._loads(value, default)`` certainly gives what pydantic accepts for a field of ``kind``:
    ``dict`` (any object), ``dicts`` (a list of objects, or JSON null), ``floats`` (an object of numbers)."""
    if not value:
        return True
    try:
        parsed = _parse(value)  # orjson: stricter than json.loads, same types for what it accepts
    except Exception:
        return False
    if kind == "dict":
        return type(parsed) is dict
    if kind == "dicts":
        return parsed is None or (type(parsed) is list and all(type(x) is dict for x in parsed))
    return type(parsed) is dict and all(type(x) in (int, float) for x in parsed.values())


def _json_column_ok(col: pa.Array, kind: str) -> np.ndarray:
    """:func:`_json_ok` per cell, each distinct value parsed once."""
    encoded = pc.dictionary_encode(col)
    ok = np.array([_json_ok(v, kind) for v in encoded.dictionary.to_pylist()] + [True], dtype=np.bool_)
    idx = _np(encoded.indices, len(encoded.dictionary))
    return ok[idx]


# -------------------------------------------------------------------------------------------------- the screens

_NONE_INT = np.zeros(0, dtype=np.int64)
_NONE_STR = pa.array([], pa.string())
_NO_ITEMS = ItemColumns(
    row=_NONE_INT,
    variant=_NONE_INT,
    turn=_NONE_INT,
    item_id=_NONE_STR,
    focus_on=_NONE_STR,
    question=_NONE_STR,
    pass_condition=_NONE_STR,
    weight=np.zeros(0, dtype=np.float64),
    bad_evidence_from=_NONE_INT,
)


def screen_batch(batch: pa.RecordBatch, cfg: RuleConfig, *, rules: bool = True) -> BatchScreen:
    """Screen every rule of the gate over ``batch`` (which must pass :func:`schema_ok`); see the module docstring.
    ``rules=False``: only which rows certainly read (``unreadable``; no rule proven, every table row in doubt) — what
    a reader that keeps rows as Arrow needs, for about a fifth of the cost."""
    n = batch.num_rows
    flags: dict[str, np.ndarray] = {}
    bad = _null(batch.column("id"))

    # ---------------------------------------------------------------- messages
    mlists = batch.column("messages")
    bad |= _null(mlists)
    msgs, m_row = _flatten(mlists)
    n_msgs = len(msgs)
    bad |= _any(_null(msgs), m_row, n)
    m_count, m_start = _starts(m_row, n)
    role = _np(pc.index_in(_field(msgs, "role"), value_set=_ROLES), OTHER).astype(np.int8)
    bad |= _any(role == OTHER, m_row, n)
    content = _field(msgs, "content")
    thinking = _field(msgs, "thinking")
    call_lists = _field(msgs, "tool_calls")
    bad |= _any(_null(call_lists), m_row, n)
    n_calls = _np(pc.list_value_length(call_lists), 0).astype(np.int64)
    calls, c_msg = _flatten(call_lists)
    c_row = m_row[c_msg]
    bad |= _any(_null(calls), c_row, n)
    call_name = _field(calls, "name")
    bad |= _any(_null(call_name), c_row, n)

    pos = np.arange(n_msgs, dtype=np.int64) - m_start[m_row]
    first = pos == 0
    last = pos == m_count[m_row] - 1
    prev = np.empty(n_msgs, dtype=np.int8)
    prev[1:] = role[:-1]
    prev[first] = NONE
    prev_calls = np.zeros(n_msgs, dtype=np.int64)
    prev_calls[1:] = n_calls[:-1]
    prev_calls[first] = 0
    no_calls = n_calls == 0

    # tools: read as from_row reads them
    encoded = pc.dictionary_encode(batch.column("tools"))
    infos = [_tools_info(t) for t in encoded.dictionary.to_pylist()]
    infos.append(_tools_info(None))
    toolset = _np(encoded.indices, len(infos) - 1).astype(np.int64)
    readable = np.array([i[0] for i in infos], dtype=np.bool_)
    dup = np.array([len(set(i[1])) != len(i[1]) for i in infos], dtype=np.bool_)
    bad |= ~readable[toolset]
    # -------------------------------------------------------------- checklists
    variants, v_row = _flatten(batch.column("checklists"))
    bad |= _any(_null(variants), v_row, n)
    _, v_start = _starts(v_row, n)
    blocks, b_var = _flatten(variants)
    b_row = v_row[b_var]
    bad |= _any(_null(blocks), b_row, n)
    b_turn_arr = _field(blocks, "turn")
    b_turn = _np(b_turn_arr, -1).astype(np.int64)
    bad |= _any(b_turn < 0, b_row, n)
    item_lists = _field(blocks, "items")
    bad |= _any(_null(item_lists), b_row, n)
    items, i_block = _flatten(item_lists)
    i_row = b_row[i_block]
    bad |= _any(_null(items), i_row, n)
    for name in ("id", "focus_on", "question", "pass_condition", "required_for_next_turn", "weight", "evidence"):
        bad |= _any(_null(_field(items, name)), i_row, n)
    for name in ("failure_examples", "depends_on"):
        values, parent = _flatten(_field(items, name))
        bad |= _any(_null(values), i_row[parent], n)
    extra = _field(items, "extra_info")
    if extra.null_count < len(extra):
        present = np.nonzero(~_null(extra))[0]
        texts = pc.take(extra, pa.array(present))
        is_object = _match(texts, JSON_DOCUMENT) & _match(texts, r"\A[ \t\n\r]*\{")
        unsure = np.nonzero(~is_object)[0]
        if len(unsure):
            is_object[unsure] = [_json_ok(t, "dict") for t in pc.take(texts, pa.array(unsure)).to_pylist()]
        bad |= _any(~is_object, i_row[present], n)
    evidence, e_item = _flatten(_field(items, "evidence"))
    e_row = i_row[e_item]
    bad |= _any(_null(evidence), e_row, n)
    e_turn = _np(_field(evidence, "turn"), -1).astype(np.int64)
    e_step = _np(_field(evidence, "step"), -1).astype(np.int64)
    bad |= _any((e_turn < 0) | (e_step < 0), e_row, n)
    e_from = _field(evidence, "from")
    snippet = _field(evidence, "snippet")
    bad |= _any(_null(e_from) | _null(snippet), e_row, n)

    # the other JSON-string columns, as from_row decodes them
    bad |= ~_json_column_ok(batch.column("metadata"), "dict")
    prov = batch.column("provenance")
    bad |= ~_json_column_ok(_field(prov, "history"), "dicts")
    review = batch.column("review")
    bad |= ~_json_column_ok(_field(review, "decisions"), "dicts")
    bad |= ~_json_column_ok(_field(review, "agreement"), "floats")
    reviewers, r_row = _flatten(_field(review, "reviewers"))
    bad |= _any(_null(reviewers), r_row, n)

    if not rules:  # what reads, and nothing proven of any rule
        return BatchScreen(n, bad, {}, np.ones(n, dtype=np.bool_), np.zeros(n, dtype=np.int64), _NONE_STR, _NO_ITEMS)

    # role_order and tool_call_response_match: the transitions the rules allow, every call run answered in full
    ok = (
        ((role == USER) & no_calls & ((prev == NONE) | (prev == SYSTEM) | ((prev == ASSISTANT) & (prev_calls == 0))))
        | ((role == SYSTEM) & (prev == NONE) & no_calls)
        | ((role == ASSISTANT) & ((prev == USER) | (prev == TOOL)))
        | ((role == TOOL) & no_calls & (((prev == ASSISTANT) & (prev_calls > 0)) | (prev == TOOL)))
    )
    shape_bad = _any(~ok, m_row, n)
    shape_bad |= _any(last & ~((role == ASSISTANT) & no_calls), m_row, n)
    shape_bad |= m_count == 0
    is_tool = role == TOOL
    run_start = is_tool & (prev != TOOL)
    if run_start.any():
        run_id = np.cumsum(run_start) - 1
        run_len = np.bincount(run_id[is_tool], minlength=int(run_start.sum()))
        starts_at = np.nonzero(run_start)[0]
        wanted_len = prev_calls[starts_at]
        shape_bad |= _any(run_len != wanted_len, m_row[starts_at], n)
    if len(calls):
        # call k of an action is answered by the k-th message after it: the ids must be equal (or both missing)
        c_first = np.zeros(n_msgs + 1, dtype=np.int64)
        np.cumsum(n_calls, out=c_first[1:])
        rank = np.arange(len(calls), dtype=np.int64) - c_first[c_msg]
        target = np.minimum(c_msg + 1 + rank, n_msgs - 1)
        call_ids = _field(calls, "id")
        answer_ids = pc.take(_field(msgs, "tool_call_id"), pa.array(target))
        same = _np(pc.equal(call_ids, answer_ids), False).astype(np.bool_)
        same |= _null(call_ids) & _null(answer_ids)
        shape_bad |= _any(~same, c_row, n)
    flags["role_order"] = flags["tool_call_response_match"] = shape_bad

    # markers and think tags anywhere (no_tool_response_in_assistant_message, think_tags)
    marked = _any(_contains_any(content, _SCAN) | _contains_any(thinking, _SCAN), m_row, n)
    has_thought = ~_null(thinking)
    assistant = role == ASSISTANT
    thinks = _any(assistant & has_thought, m_row, n)
    blank_thought = _any(assistant & ~has_thought, m_row, n)
    policy = cfg.thinking
    think_bad = marked.copy()
    if policy == "required":
        think_bad |= blank_thought
    elif policy == "auto":
        think_bad |= thinks & blank_thought
    else:
        think_bad |= thinks
    flags["think_tags"] = think_bad
    flags["no_tool_response_in_assistant_message"] = marked

    # non_empty_content and degenerate_message
    must_speak = (role != ASSISTANT) | no_calls
    non_blank = _non_blank(content)
    flags["non_empty_content"] = _any(must_speak & ~non_blank, m_row, n)
    prose = ((role == USER) | (assistant & no_calls)) & non_blank
    degenerate = np.zeros(n_msgs, dtype=np.bool_)
    idx = np.nonzero(prose)[0]
    if len(idx):
        words, alnum, visible = _text_stats(pc.take(content, pa.array(idx)))
        degenerate[idx] = (words < cfg.min_words) | (2 * alnum < visible)
    flags["degenerate_message"] = _any(degenerate, m_row, n) | _any(
        ((role == USER) | (assistant & no_calls)) & ~non_blank, m_row, n
    )

    # tool_response_json_valid
    tool_idx = np.nonzero(is_tool)[0]
    json_bad = np.zeros(n_msgs, dtype=np.bool_)
    if len(tool_idx):
        texts = pc.take(content, pa.array(tool_idx))
        valid = _match(texts, JSON_DOCUMENT)
        if not valid.all():
            rest = np.nonzero(~valid)[0]
            deeper = _pl(pc.take(texts, pa.array(rest))).str.json_path_match("$").is_not_null()
            valid[rest] = deeper.to_numpy()
        json_bad[tool_idx] = ~valid
    flags["tool_response_json_valid"] = _any(json_bad, m_row, n)

    # duplicate_tools_by_name; tool_schema
    flags["duplicate_tools_by_name"] = dup[toolset]
    flags["tool_schema"] = _tool_schema(calls, c_row, call_name, toolset, infos, n) | dup[toolset]

    # turns and steps, as steps_per_turn and segment count them
    is_user = role == USER
    u_count = np.bincount(m_row[is_user], minlength=n)
    turn_base = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(u_count, out=turn_base[1:])
    seen_user = (np.cumsum(is_user) - turn_base[m_row]) > 0  # in a turn: at or after the row's first user message
    new_step = seen_user & ~(is_tool & (prev == TOOL))
    step_of = np.cumsum(new_step) - 1  # global step number of each message in a turn
    step_first_msg = np.nonzero(new_step)[0]
    n_steps_total = len(step_first_msg)
    step_len = np.diff(np.append(step_first_msg, n_msgs))
    # a step ends at the next step's first message or at its row's end
    step_end_row = m_start[m_row[step_first_msg] + 1] if n_steps_total else step_first_msg
    step_len = np.minimum(step_len, step_end_row - step_first_msg)
    user_msgs = np.nonzero(is_user)[0]
    turn_first_step = step_of[user_msgs]
    turn_steps = np.diff(np.append(turn_first_step, n_steps_total))
    if len(user_msgs):
        turn_steps = np.minimum(turn_steps, step_of[m_start[m_row[user_msgs] + 1] - 1] - turn_first_step + 1)

    # checklist_block_count: one block per turn, numbered 0..L-1 in order
    blocks_in_variant, b_first = _starts(b_var, len(variants))
    b_pos = np.arange(len(blocks), dtype=np.int64) - b_first[b_var]
    block_bad = _any(blocks_in_variant != u_count[v_row], v_row, n) | _any(b_turn != b_pos, b_row, n)
    flags["checklist_block_count"] = block_bad

    # checklist_evidence_pointers and where each evidence entry points
    turn_g = turn_base[e_row] + e_turn
    in_range = (e_turn >= 0) & (e_turn < u_count[e_row])
    safe_turn = np.where(in_range, turn_g, 0)
    if len(user_msgs):
        in_range &= (e_step >= 0) & (e_step < turn_steps[np.minimum(safe_turn, len(user_msgs) - 1)])
    else:
        in_range &= False
    flags["checklist_evidence_pointers"] = _any(~in_range, e_row, n)

    # checklist_dependencies: every dependency names an item of its block whose focus_on is tool.content
    item_ids = _field(items, "id")
    focus = _field(items, "focus_on")
    deps, d_item = _flatten(_field(items, "depends_on"))
    dep_bad = np.zeros(n, dtype=np.bool_)
    i_count, i_start = _starts(i_block, len(blocks))
    if len(deps):
        tool_content = _np(pc.equal(focus, "tool.content"), False).astype(np.bool_)
        dep_block = i_block[d_item]
        good = _np(pc.not_equal(deps, pc.take(item_ids, d_item)), False).astype(np.bool_)
        if len(items) and i_count.max() <= _BLOCK_SCAN:
            # blocks are small: compare each dependency with the j-th item of its block, j = 0, 1, …
            found = np.zeros(len(deps), dtype=np.bool_)
            all_tc = np.ones(len(deps), dtype=np.bool_)
            for j in range(int(i_count.max())):
                at = np.nonzero(i_count[dep_block] > j)[0]
                cand = i_start[dep_block[at]] + j
                same = _np(pc.equal(pc.take(deps, at), pc.take(item_ids, cand)), False).astype(np.bool_)
                found[at] |= same
                all_tc[at] &= ~same | tool_content[cand]
            good &= found & all_tc
        else:
            frame = pl.DataFrame({"block": i_block, "id": _pl(item_ids), "tc": tool_content})
            allowed = frame.group_by("block", "id").agg(pl.col("tc").all())
            wanted = pl.DataFrame({"block": dep_block, "id": _pl(deps)}).with_row_index("k")
            joined = wanted.join(allowed, on=["block", "id"], how="left").sort("k")
            good &= joined["tc"].fill_null(False).to_numpy()
        dep_bad = _any(~good, i_row[d_item], n)
    flags["checklist_dependencies"] = dep_bad

    # evidence_grounded: evidence present; each entry's step of the kind its `from` names; its snippet a verbatim
    # quote of one part of that step's text (a message content, the thinking, one call's arguments)
    e_count = np.bincount(e_item, minlength=len(items))
    src = _np(pc.index_in(e_from, value_set=_SOURCES), -1).astype(np.int64)
    grounded_bad = _any(e_count == 0, i_row, n) | _any((src < 0) | ~in_range, e_row, n)
    k = np.nonzero((src >= 0) & in_range)[0]
    if len(k):
        step_g = turn_first_step[turn_g[k]] + e_step[k]
        msg0 = step_first_msg[step_g]
        kind_ok = role[msg0] == _SOURCE_KIND[src[k]]
        grounded_bad |= _any(~kind_ok, e_row[k], n)
        k, msg0, step_g = k[kind_ok], msg0[kind_ok], step_g[kind_ok]
        part = _SOURCE_PART[src[k]]
        # the candidate texts: (evidence, text) pairs
        pair_ev: list[np.ndarray] = []
        pair_text: list[pa.Array] = []
        sel = part == 0  # content of each message of the step (a run of tool messages, else one message)
        if sel.any():
            lens = step_len[step_g[sel]]
            ev = np.repeat(k[sel], lens)
            first_of = np.repeat(msg0[sel], lens)
            offs = np.arange(len(ev), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
            pair_ev.append(ev)
            pair_text.append(pc.take(content, pa.array(first_of + offs)))
        sel = part == 1
        if sel.any():
            pair_ev.append(k[sel])
            pair_text.append(pc.take(thinking, pa.array(msg0[sel])))
        sel = part == 2
        if sel.any() and len(calls):
            c_first = np.zeros(n_msgs + 1, dtype=np.int64)
            np.cumsum(n_calls, out=c_first[1:])
            lens = n_calls[msg0[sel]]
            ev = np.repeat(k[sel], lens)
            offs = np.arange(len(ev), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
            pair_ev.append(ev)
            pair_text.append(pc.take(_field(calls, "arguments"), pa.array(np.repeat(c_first[msg0[sel]], lens) + offs)))
        found = np.zeros(len(evidence), dtype=np.bool_)
        if pair_ev:
            evs = np.concatenate(pair_ev)
            texts = _pl(pa.chunked_array([t.cast(pa.large_string()) for t in pair_text]))
            snips = _pl(pc.take(snippet, pa.array(evs)).cast(pa.large_string()))
            pairs = pl.DataFrame({"text": texts, "snippet": snips})
            contains = pl.col("text").str.contains(pl.col("snippet"), literal=True).fill_null(False)
            hit = pairs.select(contains).to_series().to_numpy()
            found[evs[hit]] = True
        quoted = found & _non_blank(snippet)
        grounded_bad |= _any(~quoted & (src >= 0) & in_range, e_row, n)
    else:
        grounded_bad |= _any(np.ones(len(evidence), dtype=np.bool_), e_row, n)
    flags["evidence_grounded"] = grounded_bad

    # checklist_copied_from_prompt
    flags["checklist_copied_from_prompt"] = _copied(items, i_row, snippet, e_row, n)

    # ----------------------------------------------------------------- tables
    weight = _np(_field(items, "weight"), np.nan).astype(np.float64)
    bad_from = ~_np(pc.is_in(e_from, value_set=_ALLOWED_FROM), False).astype(np.bool_)
    n_bad_from = np.bincount(e_item[bad_from], minlength=len(items)) if bad_from.any() else np.zeros(len(items), int)
    table = _any(n_bad_from > 0, i_row, n)
    table |= _any(~_np(pc.is_in(focus, value_set=_FOCUS), False).astype(np.bool_), i_row, n)
    for col in (item_ids, _field(items, "question"), _field(items, "pass_condition")):
        table |= _any(~_has_visible_ascii(col), i_row, n)
    table |= _any(~((weight >= 0.0) & (weight <= 1.0)), i_row, n)
    sums = np.bincount(i_block, weights=np.nan_to_num(weight, nan=10.0), minlength=len(blocks))
    table |= _any(~(np.abs(sums - 1.0) <= WEIGHT_TOLERANCE / 2), b_row, n)
    table |= _any(b_turn != b_pos, b_row, n)
    if len(items):
        table |= _any(_twice_in_block(item_ids, i_block, i_count, i_start), i_row, n)

    status = _field(review, "status").fill_null("unreviewed")
    if review.null_count:
        status = pc.if_else(review.is_null(), "unreviewed", status)
    item_cols = ItemColumns(
        row=i_row,
        variant=np.arange(len(variants), dtype=np.int64)[b_var][i_block] - v_start[v_row][b_var][i_block],
        turn=b_turn[i_block],
        item_id=item_ids,
        focus_on=focus,
        question=_field(items, "question"),
        pass_condition=_field(items, "pass_condition"),
        weight=weight,
        bad_evidence_from=n_bad_from.astype(np.int64),
    )
    return BatchScreen(n, bad, flags, table, u_count.astype(np.int64), status, item_cols)


def _twice_in_block(ids: pa.Array, block: np.ndarray, count: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per item: whether another item of its block has the same id (null ids count as equal)."""
    if count.max() > _BLOCK_SCAN:
        return pl.DataFrame({"b": block, "id": _pl(ids)}).is_duplicated().to_numpy()
    pos = np.arange(len(ids), dtype=np.int64) - start[block]
    null = _null(ids)
    twice = np.zeros(len(ids), dtype=np.bool_)
    for d in range(1, int(count.max())):
        at = np.nonzero(pos + d < count[block])[0]
        same = _np(pc.equal(pc.take(ids, at), pc.take(ids, at + d)), False).astype(np.bool_)
        same |= null[at] & null[at + d]
        twice[at[same]] = True
        twice[at[same] + d] = True
    return twice


def _tool_schema(
    calls: pa.Array,
    c_row: np.ndarray,
    call_name: pa.Array,
    toolset: np.ndarray,
    infos: list[tuple[bool, tuple[str, ...], tuple[Any, ...], tuple[str, ...]]],
    n: int,
) -> np.ndarray:
    """Rows where ``tool_schema`` is not proven: a call's name not among the row's tools, or arguments that its
    tool's shape regexes (else the per-record screen's checker) do not clear."""
    if not len(calls):
        return np.zeros(n, dtype=np.bool_)
    # every (tool set, tool name) of the batch as "set\x1fname", and its schema's number (equal schemas: one number,
    # numbered in order of first appearance)
    names = list(chain.from_iterable(info[1] for info in infos))
    reprs = list(chain.from_iterable(info[3] for info in infos))
    params = list(chain.from_iterable(info[2] for info in infos))
    owner = np.repeat(np.arange(len(infos), dtype=np.int64), [len(info[1]) for info in infos])
    numbered = pc.dictionary_encode(pa.array(reprs, pa.string()))  # numbers in order of first appearance
    schema_of = np.append(_np(numbered.indices).astype(np.int64), 0)
    first = np.unique(schema_of[:-1], return_index=True)[1]
    schemas = [params[i] for i in first]
    keys_of = numbered.dictionary.to_pylist()
    keys = pc.binary_join_element_wise(pa.array(owner).cast(pa.string()), pa.array(names, pa.string()), "\x1f")
    call_set = pa.array(toolset[c_row]).cast(pa.string())
    call_keys = pc.binary_join_element_wise(call_set, call_name, "\x1f")
    found = _np(pc.index_in(call_keys, value_set=keys), -1).astype(np.int64)
    bad_call = found < 0
    group = np.where(bad_call, -1, schema_of[found])
    arguments = _field(calls, "arguments")
    for g in np.unique(group[group >= 0]):
        idx = np.nonzero(group == g)[0]
        args = pc.take(arguments, pa.array(idx))
        shape = _shape(schemas[g], keys_of[g])
        if shape is not None and len(idx) >= 16:
            ok = _match(args, shape.structure)
            if shape.duplicate is not None:
                ok &= ~_match(args, shape.duplicate)
            for parent, key in shape.required:
                present = _match(args, key_pattern(key))
                ok &= present if parent is None else (present | ~_match(args, key_pattern(parent)))
        else:
            params = schemas[g]
            ok = np.array([_args_ok(a, params) for a in args.to_pylist()], dtype=np.bool_)
        bad_call[idx] |= ~ok
    return _any(bad_call, c_row, n)


def _args_ok(text: str | None, params: Any) -> bool:
    """The per-record screen's test of one call (:mod:`cm2data.validate.screen`)."""
    if text is None:
        return False
    try:
        args = _parse(text) if text and not text.isspace() else {}
        return type(args) is dict and _object_ok(args, params)
    except Exception:
        return False


def _distinct(col: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """``col``'s distinct values and each cell's index into them when there are few (templated texts repeat), else
    ``col`` itself and ``None`` (hashing costs about a fifth of one scan; it pays off from two copies per value)."""
    encoded = pc.dictionary_encode(col)
    if len(encoded.dictionary) * 2 > len(col) or encoded.indices.null_count:
        return col, None
    return encoded.dictionary, _np(encoded.indices).astype(np.int64)


def _copied(items: pa.Array, i_row: np.ndarray, snippet: pa.Array, e_row: np.ndarray, n: int) -> np.ndarray:
    """Rows where ``checklist_copied_from_prompt`` is not proven: an item text that is not ASCII or holds a word
    distinctive of the prompt's examples; a snippet that normalises to an example's snippet."""
    anchors, snippet_words = _example_anchors()
    out = np.zeros(n, dtype=np.bool_)
    texts = [(_field(items, "question"), i_row), (_field(items, "pass_condition"), i_row)]
    examples, parent = _flatten(_field(items, "failure_examples"))
    texts.append((examples, i_row[parent]))
    for col, rows in texts:
        if not len(col):
            continue
        values, back = _distinct(col)
        doubt = ~_np(pc.string_is_ascii(values), True).astype(np.bool_)
        if anchors:
            hit = _pl(values).str.contains_any(list(anchors), ascii_case_insensitive=True)
            doubt |= hit.fill_null(True).to_numpy()
        out |= _any(doubt if back is None else doubt[back], rows, n)
    if len(snippet) and snippet_words:
        series = _pl(snippet)
        ascii_ = _np(pc.string_is_ascii(snippet), True).astype(np.bool_)
        length = series.str.len_chars().fill_null(0).to_numpy()
        near = np.zeros(len(snippet), dtype=np.bool_)
        # an ASCII snippet equal to an example's holds all its words: one pass for every example's first word
        # leaves the few snippets worth a look, then each example's words one by one
        short = np.nonzero(length <= max(bound for bound, _ in snippet_words))[0]
        firsts = sorted({words[0] for _, words in snippet_words})
        hit = series.gather(short).str.contains_any(firsts, ascii_case_insensitive=True).fill_null(True)
        short = short[hit.to_numpy()]
        for bound, words in snippet_words:
            maybe = short[length[short] <= bound]
            for w in words:
                if not len(maybe):
                    break
                hit = series.gather(maybe).str.contains_any([w], ascii_case_insensitive=True).fill_null(True)
                maybe = maybe[hit.to_numpy()]
            near[maybe] = True
        known = _prompt_example_texts()["snippet"]
        far = np.nonzero(~ascii_)[0]
        if len(far) and known:
            # without escapes, every ASCII letter and digit leaves at least one character through normalize() (NFKC
            # composes a letter with its marks into one, never two letters): a snippet with more of them than the
            # longest example snippet has characters cannot normalise to one
            texts = pc.take(snippet, pa.array(far))
            alnum = _alnum_counts(texts)
            keep = (alnum <= max(map(len, known))) | _np(pc.match_substring(texts, "\\"), True).astype(np.bool_)
            near[far[keep]] = True
            ascii_[far[~keep]] = True
        candidates = np.nonzero(~ascii_ | near)[0]
        if len(candidates):
            raws = pc.take(snippet, pa.array(candidates)).to_pylist()
            doubt = np.array([raw is None or normalize(raw) in known for raw in raws], dtype=np.bool_)
            out |= _any(doubt, e_row[candidates], n)
    return out
