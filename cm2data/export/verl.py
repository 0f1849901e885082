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
from collections.abc import Iterable, Sequence
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


def export_verl(
    records: Iterable[Dialogue],
    out: Path,
    *,
    val_size: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 42,
    extra_rejects: Iterable[Reject] = (),
) -> VerlExportResult:
    """Write ``train.parquet`` and ``val.parquet`` (possibly empty) plus ``rejects.jsonl`` and ``export.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    result = VerlExportResult(out=out)
    kept: list[Dialogue] = []
    for d in records:
        result.records += 1
        if not d.checklists or not d.checklists[0]:
            result.rejects.append(Reject(d.id, "export_verl", "no_checklist", "the record has no checklist"))
        elif not any(m.role == "user" for m in d.messages):
            result.rejects.append(Reject(d.id, "export_verl", "no_user_turn", "the record has no user message"))
        else:
            kept.append(d)
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    n_val = val_size if val_size is not None else round(len(kept) * val_fraction)
    n_val = max(0, min(n_val, len(kept)))
    val_ids = set(order[:n_val])
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for i, d in enumerate(kept):
        split = "val" if i in val_ids else "train"
        rows[split].append(to_verl_row(d, i, split))
    for split, data in rows.items():
        table = pa.Table.from_pylist(data) if data else pa.table({})
        pq.write_table(table, out / f"{split}.parquet")
    result.train_rows, result.val_rows = len(rows["train"]), len(rows["val"])
    result.rejects.extend(extra_rejects)
    write_rejects(result.rejects, out / "rejects.jsonl")
    (out / "export.json").write_text(json.dumps({**result.manifest(), "seed": seed}, indent=2) + "\n", encoding="utf-8")
    return result
