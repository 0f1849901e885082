"""VeRL export: canonical records → ``train.parquet`` / ``val.parquet`` in VeRL 0.9.1's RL dataset schema.

One row per dialogue that has a checklist and at least one user turn:

* ``data_source``: ``"cm2data"`` (what ``compute_score`` receives; :data:`DATA_SOURCE`);
* ``agent_name``: the agent loop that rolls it out (``cm2_agent``: ``adapters/verl/agent_loop.py``);
* ``prompt``: the chat messages up to and including the first user message (system prompt kept), content strings;
* ``ability``: ``"tool_use"``;
* ``reward_model``: ``{"style": "model", "ground_truth": JSON string {"checklists": stored variants, "num_turns": L}}``;
* ``extra_info``: ``index``, ``split``, ``uuid``, ``need_tools_kwargs`` and, as **JSON strings** (Arrow unifies
  free-form dict keys across rows otherwise), ``messages`` (the whole reference dialogue, thinking inline),
  ``tools`` (the
  candidate tool schemas), ``tools_kwargs`` (per tool name: ``create_kwargs`` with the record id) and
  ``tool_selection`` (the row's tool names). ``adapters/verl/dataset.py`` decodes them.

The validation split is a seeded shuffle (``val_size`` rows, or ``val_fraction``); rows without a checklist or a user
turn go to ``rejects.jsonl``. This module needs pyarrow only (toolkit side); VeRL reads the files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.formats.openai import checklists_to_stored, message_to_openai
from cm2data.rejects import Reject, write_rejects
from cm2data.schema import Dialogue

if TYPE_CHECKING:
    import pyarrow as pa

DATA_SOURCE = "cm2data"
AGENT_NAME = "cm2_agent"
ABILITY = "tool_use"


@dataclass
class VerlExportResult:
    out: Path
    records: int = 0
    train_rows: int = 0
    val_rows: int = 0
    rejects: list[Reject] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "train_rows": self.train_rows,
            "val_rows": self.val_rows,
            "rejects_by_rule": dict(Counter(r.rule for r in self.rejects)),
        }


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def to_verl_row(d: Dialogue, index: int, split: str) -> dict[str, Any]:
    """One VeRL row for record ``d`` (raises ``ValueError`` when it has no checklist or no user message)."""
    if not d.checklists or not d.checklists[0]:
        raise ValueError("no checklist")
    first_user = next((i for i, m in enumerate(d.messages) if m.role == "user"), None)
    if first_user is None:
        raise ValueError("no user message")
    messages = [message_to_openai(m) for m in d.messages]
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[: first_user + 1]]
    num_turns = sum(1 for m in d.messages if m.role == "user")
    names = [t.name for t in d.tools]
    return {
        "data_source": DATA_SOURCE,
        "agent_name": AGENT_NAME,
        "prompt": prompt,
        "ability": ABILITY,
        "reward_model": {
            "style": "model",
            "ground_truth": _dumps({"checklists": checklists_to_stored(d), "num_turns": num_turns}),
        },
        "extra_info": {
            "index": index,
            "split": split,
            "uuid": d.id,
            "need_tools_kwargs": bool(names),
            "messages": _dumps(messages),
            "tools": _dumps([t.to_openai() for t in d.tools]),
            "tools_kwargs": _dumps({n: {"create_kwargs": {"record_id": d.id}} for n in names}),
            "tool_selection": _dumps(names),
        },
    }


def hub_table(records: Sequence[Dialogue], split: str, *, start: int = 0) -> pa.Table:
    """The ``rl`` config of ``cm2data publish --with rl``: one :func:`to_verl_row` per dialogue that has a
    checklist; ``extra_info.index`` is the dialogue's position in its split (``records[0]`` is at ``start``)."""
    import pyarrow as pa

    rows = []
    for i, d in enumerate(records):
        try:
            rows.append(to_verl_row(d, start + i, split))
        except ValueError:  # no checklist or no user turn: VeRL has nothing to reward
            continue
    return pa.Table.from_pylist(rows) if rows else pa.table({})


#: Rows per parquet row group: a file of at most this many rows is one row group, as ``pq.write_table`` of the
#: whole table writes it; a larger one is written a group at a time, so memory holds one group, not the file.
ROW_GROUP_ROWS = 8192


def verl_schema() -> pa.Schema:
    """The columns :func:`to_verl_row` fills, as ``pyarrow.Table.from_pylist`` infers them from its rows; given
    explicitly so that every row group of a file has the same schema, whatever the rows of that group hold."""
    import pyarrow as pa

    text = pa.string()
    return pa.schema(
        [
            ("data_source", text),
            ("agent_name", text),
            ("prompt", pa.list_(pa.struct([("role", text), ("content", text)]))),
            ("ability", text),
            ("reward_model", pa.struct([("style", text), ("ground_truth", text)])),
            (
                "extra_info",
                pa.struct(
                    [
                        ("index", pa.int64()),
                        ("split", text),
                        ("uuid", text),
                        ("need_tools_kwargs", pa.bool_()),
                        ("messages", text),
                        ("tools", text),
                        ("tools_kwargs", text),
                        ("tool_selection", text),
                    ]
                ),
            ),
        ]
    )


class _RowGroups:
    """One output parquet file, written :data:`ROW_GROUP_ROWS` rows at a time; a file without rows is written as
    ``pa.table({})`` (no columns), as before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self.writer: Any = None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) == ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.rows, schema=verl_schema())
        self.rows = []
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            self._flush()
        if self.writer is not None:
            self.writer.close()
        else:
            pq.write_table(pa.table({}), self.path)


def _not_exportable(d: Dialogue) -> Reject | None:
    """The reject of a record VeRL has nothing to reward in (no checklist, no user turn), else None."""
    if not d.checklists or not d.checklists[0]:
        return Reject(d.id, "export_verl", "no_checklist", "the record has no checklist")
    if not any(m.role == "user" for m in d.messages):
        return Reject(d.id, "export_verl", "no_user_turn", "the record has no user message")
    return None


def count_exportable(folder: Path, *, split: str | None = None) -> int:
    """How many of the records :func:`cm2data.sources.load` reads from a dataset folder :func:`export_verl` keeps
    (a non-empty first checklist variant and a user message), counted from the shards' Arrow batches
    (:func:`cm2data.folder_batches.read_parts`) without building a record where the screen clears the row."""
    import numpy as np
    import pyarrow.compute as pc

    from cm2data.folder_batches import read_parts

    n = 0
    for part in read_parts(folder, [], split=split):
        if part.rows is None:
            n += sum(1 for d in part.records if _not_exportable(d) is None)
            continue
        t = part.rows.combine_chunks()
        checklists = t.column("checklists").chunk(0)
        n_variants = pc.list_value_length(checklists).to_numpy(zero_copy_only=False)
        variant_len = pc.list_value_length(pc.list_flatten(checklists)).to_numpy(zero_copy_only=False)
        first = np.concatenate([[0], np.cumsum(n_variants)])[:-1]
        has_checklist = n_variants > 0
        has_checklist[has_checklist] = variant_len[first[has_checklist]] > 0
        messages = t.column("messages").chunk(0)
        is_user = pc.equal(pc.struct_field(pc.list_flatten(messages), "role"), "user").to_numpy(zero_copy_only=False)
        parent = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
        users = np.bincount(parent[is_user], minlength=t.num_rows)
        n += int(np.count_nonzero(has_checklist & (users > 0)))
    return n


def export_verl(
    records: Iterable[Dialogue],
    out: Path,
    *,
    val_size: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 42,
    extra_rejects: Iterable[Reject] = (),
    exportable: int | None = None,
    on_record: Callable[[], None] | None = None,
) -> VerlExportResult:
    """Write ``train.parquet`` and ``val.parquet`` (possibly empty) plus ``rejects.jsonl`` and ``export.json``.

    The validation split is a seeded shuffle of the positions of all exportable records, so their number must be
    known before the first row is written: pass ``exportable`` (for a dataset folder, :func:`count_exportable`)
    and ``records`` is read once, one record at a time — rendering a row needs the record, but only one is held,
    and the files are written :data:`ROW_GROUP_ROWS` rows at a time; without it, ``records`` is first gathered into
    a list and counted. The files are the same either way. ``extra_rejects`` is read after ``records`` (it may be
    a list the reader of ``records`` fills); ``on_record()`` is called per record.
    """
    out.mkdir(parents=True, exist_ok=True)
    result = VerlExportResult(out=out)
    if exportable is None:
        records = list(records)
        exportable = sum(1 for d in records if _not_exportable(d) is None)
    order = list(range(exportable))
    random.Random(seed).shuffle(order)
    n_val = val_size if val_size is not None else round(exportable * val_fraction)
    n_val = max(0, min(n_val, exportable))
    val_ids = set(order[:n_val])
    del order
    files = {split: _RowGroups(out / f"{split}.parquet") for split in ("train", "val")}
    i = 0
    for d in records:
        result.records += 1
        if on_record is not None:
            on_record()
        reject = _not_exportable(d)
        if reject is not None:
            result.rejects.append(reject)
            continue
        if i == exportable:
            raise ValueError(f"more exportable records than the {exportable} counted (record {d.id!r})")
        split = "val" if i in val_ids else "train"
        files[split].add(to_verl_row(d, i, split))
        i += 1
    if i != exportable:
        raise ValueError(f"{i} exportable records read, {exportable} counted")
    for f in files.values():
        f.close()
    result.train_rows, result.val_rows = files["train"].count, files["val"].count
    result.rejects.extend(extra_rejects)
    write_rejects(result.rejects, out / "rejects.jsonl")
    (out / "export.json").write_text(json.dumps({**result.manifest(), "seed": seed}, indent=2) + "\n", encoding="utf-8")
    return result
