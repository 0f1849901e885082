"""Verdict datasets: what a judge, or people, said about each checklist item of a dataset's dialogues
(docs/judge-fidelity.md).

A **verdict folder** is a Hub-layout dataset folder (:mod:`cm2data.store`) that ``datasets.load_dataset(folder)``
reads as it would read the same repo from the Hub:

::

    V/README.md                          YAML configs (``verdicts`` is the default config) and a short card
    V/data/verdicts/train-*.parquet      one row per (dialogue_id, variant, turn, item_id): the judge's turn verdict
    V/data/dialogues/train-*.parquet     the judged dialogues as they were (what reviewers are shown)
    V/judge_run.json                     the run: source, judge model, mode, prompt version, options, counts, usage

A **human verdict folder** (``cm2data review pull-verdicts``) has one config, ``human_verdicts``: one row per
(item, reviewer) response, submitted or discarded, plus ``pull_report.json``.

The unit is the **turn verdict** of an item: satisfied at any assistant step of its turn (method §5, what the reward
counts), which is also what a reviewer answers when shown the dialogue up to the end of the turn. The per-step
answers stay in ``steps`` (JSON).

Every row carries two fingerprints, so that a verdict whose item changed or disappeared is detected and counted
wherever verdicts meet (``judge agree``, ``review pull-verdicts``), never silently compared:

* ``item_fingerprint`` — what the judge's prompt shows of the item: question, pass condition, focus, failure
  examples, evidence (the fields of :func:`cm2data.judge.cache_key`, less the id, which is part of the key);
* ``context_fingerprint`` — the messages of the dialogue up to the end of the item's turn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from cm2data import store
from cm2data.schema import ChecklistItem, Dialogue, canonical_json, segment

VERDICTS = "verdicts"
HUMAN_VERDICTS = "human_verdicts"
RUN_FILE = "judge_run.json"
PULL_REPORT = "pull_report.json"
#: what ``cm2data judge agree`` writes into a verdict folder by default (removed when the folder is judged again)
STALE_REPORTS = ("agreement.json", "agreement.html")

#: (dialogue id, variant, turn, item id)
Key = tuple[str, int, int, str]

KEY_COLUMNS = ("dialogue_id", "variant", "turn", "item_id")

VERDICT_SCHEMA = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("variant", pa.int64()),
        ("turn", pa.int64()),
        ("item_id", pa.string()),
        ("focus_on", pa.string()),
        ("required_for_next_turn", pa.bool_()),
        ("item_fingerprint", pa.string()),
        ("context_fingerprint", pa.string()),
        ("judge_model", pa.string()),
        ("mode", pa.string()),  # reference | prefix | grouped (the CLI's names)
        ("judge_mode", pa.string()),  # cm2data.judge.JudgeOptions.mode, e.g. prefix-grouped
        ("prompt_version", pa.string()),
        ("verdict", pa.bool_()),  # the turn verdict; null only when the item could not be judged at all
        ("failed", pa.bool_()),  # a call about this item failed and it was never satisfied (verdict False)
        ("short_circuit", pa.bool_()),  # false without a call at some step (tool error)
        ("satisfied_at_step", pa.int64()),  # first assistant step that satisfied it (null when never)
        ("steps", pa.int64()),  # assistant steps of the turn
        ("raw_answer", pa.string()),  # the answer that decided: the first satisfying step's, else the last one
        ("reason", pa.string()),  # why a call failed / why the item could not be judged
        ("step_verdicts", pa.string()),  # JSON: [{step, satisfied, failed, short_circuit, cached, raw, reason}]
    ]
)

HUMAN_SCHEMA = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("variant", pa.int64()),
        ("turn", pa.int64()),
        ("item_id", pa.string()),
        ("focus_on", pa.string()),
        ("item_fingerprint", pa.string()),  # of what the reviewer was shown (the pushed record)
        ("context_fingerprint", pa.string()),
        ("reviewer", pa.string()),
        ("status", pa.string()),  # submitted | discarded | draft
        ("verdict", pa.bool_()),  # pass → true, fail → false; null for a skip or a draft without answer
        ("reason", pa.string()),
        ("answered_at", pa.string()),
        ("revised", pa.bool_()),  # the reviewer answered again after a first answer (last one kept)
        ("judge_verdict", pa.bool_()),  # the pushed verdict folder's verdict, when its fingerprints match
        ("dataset", pa.string()),  # the Argilla dataset
    ]
)


class VerdictError(ValueError):
    """A verdict folder that cannot be read or written (missing, wrong layout, bad columns)."""


# ------------------------------------------------------------------------------------------------ fingerprints


def _hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:32]


def item_fingerprint(item: ChecklistItem) -> str:
    """What the judge's prompt shows of ``item`` (question, pass condition, focus, failure examples, evidence)."""
    return _hash(
        item.model_dump(
            mode="json",
            include={"focus_on", "question", "pass_condition", "failure_examples", "evidence"},
            by_alias=True,
        )
    )


def context_fingerprint(d: Dialogue, turn: int) -> str:
    """The messages of ``d`` up to the end of turn ``turn`` (the whole dialogue when the turn does not exist)."""
    turns = segment(d.messages)
    end = turns[turn].end if 0 <= turn < len(turns) else len(d.messages)
    return _hash([m.model_dump(mode="json") for m in d.messages[:end]])


@dataclass(frozen=True)
class ItemRef:
    """One checklist item of a dialogue, with its fingerprints."""

    key: Key
    focus_on: str
    required_for_next_turn: bool
    item_fingerprint: str
    context_fingerprint: str


def item_refs(records: Iterable[Dialogue], variants: Sequence[int] | None = None) -> dict[Key, ItemRef]:
    """Every checklist item of ``records`` (all variants unless ``variants`` names some) by key."""
    out: dict[Key, ItemRef] = {}
    for d in records:
        contexts: dict[int, str] = {}
        for v, variant in enumerate(d.checklists):
            if variants is not None and v not in variants:
                continue
            for block in variant:
                ctx = contexts.get(block.turn)
                if ctx is None:
                    ctx = contexts[block.turn] = context_fingerprint(d, block.turn)
                for it in block.items:
                    key = (d.id, v, block.turn, it.id)
                    out[key] = ItemRef(key, it.focus_on, it.required_for_next_turn, item_fingerprint(it), ctx)
    return out


def row_key(row: Mapping[str, Any]) -> Key:
    return (str(row["dialogue_id"]), int(row["variant"]), int(row["turn"]), str(row["item_id"]))


# --------------------------------------------------------------------------------------------------- matching


@dataclass
class Matched:
    """Rows of one table checked against a set of current items: which match, which changed, which are gone."""

    current: list[dict[str, Any]]
    item_changed: list[Key]
    context_changed: list[Key]
    gone: list[Key]

    def counts(self) -> dict[str, int]:
        return {
            "matched": len(self.current),
            "item_changed": len(self.item_changed),
            "dialogue_changed": len(self.context_changed),
            "gone": len(self.gone),
        }


def match_rows(rows: Iterable[Mapping[str, Any]], items: Mapping[Key, ItemRef]) -> Matched:
    """Split ``rows`` by whether their item still exists in ``items`` with the same fingerprints (pure).

    An item whose text changed counts as ``item_changed`` (even when its dialogue changed too); one whose text is
    the same but whose dialogue up to the turn changed as ``context_changed``; a key not in ``items`` as ``gone``."""
    out = Matched([], [], [], [])
    for row in rows:
        key = row_key(row)
        ref = items.get(key)
        if ref is None:
            out.gone.append(key)
        elif row.get("item_fingerprint") != ref.item_fingerprint:
            out.item_changed.append(key)
        elif row.get("context_fingerprint") != ref.context_fingerprint:
            out.context_changed.append(key)
        else:
            out.current.append(dict(row))
    return out


# ------------------------------------------------------------------------------------------------ read / write


def _table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    missing = [n for n in schema.names if rows and n not in rows[0]]
    if missing:
        raise VerdictError(f"verdict rows lack the columns {', '.join(missing)}")
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)


def _card(title: str, lines: Sequence[str]) -> str:
    return "\n".join([f"# {title}", "", *lines, ""])


def write_verdicts(
    folder: Path, rows: Sequence[Mapping[str, Any]], dialogues: Sequence[Dialogue], run: Mapping[str, Any]
) -> Path:
    """Write a verdict folder: the ``verdicts`` config (default), the judged ``dialogues`` and ``judge_run.json``.
    An existing verdict folder at ``folder`` is replaced; any other non-empty folder is refused."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / RUN_FILE).is_file():
        raise VerdictError(f"{folder} exists, is not empty and is not a verdict folder; choose a new folder")
    store.reset_folder(folder)
    for name in (RUN_FILE, *STALE_REPORTS):  # an earlier run's reports would describe other verdicts
        (folder / name).unlink(missing_ok=True)
    store.write_table(folder, _table(rows, VERDICT_SCHEMA), config=VERDICTS)
    store.write_dataset(folder, dialogues)
    (folder / RUN_FILE).write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    body = _card(
        f"Judge verdicts: {folder.name}",
        [
            f"Checklist-judge verdicts written by `cm2data judge run`: judge `{run.get('judge_model')}`, mode "
            f"`{run.get('mode')}`, prompt `{run.get('prompt_version')}`, "
            f"{len(rows)} items of {len(dialogues)} dialogues "
            f"from `{run.get('source')}`.",
            "",
            "Configs: `verdicts` (default; one row per dialogue, variant, turn and checklist item) "
            "and `dialogues` (the "
            "judged dialogues). The run's settings, counts and token usage are in `judge_run.json`. See cm2data's "
            "docs/judge-fidelity.md.",
        ],
    )
    store.write_card(folder, body=body, default_config=VERDICTS)
    return folder


def is_verdict_folder(folder: Path) -> bool:
    return bool(store.split_files(Path(folder), VERDICTS))


def read_rows(folder: Path, config: str = VERDICTS) -> list[dict[str, Any]]:
    """The rows of one config of a verdict folder (all splits)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VerdictError(f"{folder} does not exist")
    try:
        table = store.read_table(folder, config)
    except FileNotFoundError:
        raise VerdictError(
            f"{folder} has no {config!r} table (data/{config}/*.parquet): is it the right folder?"
        ) from None
    missing = [n for n in (*KEY_COLUMNS, "item_fingerprint", "verdict") if n not in table.column_names]
    if missing:
        raise VerdictError(f"{folder}: data/{config} lacks the columns {', '.join(missing)}")
    return table.to_pylist()


def read_run(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise VerdictError(f"{folder} has no {RUN_FILE}: not a verdict folder written by `cm2data judge run`")
    return json.loads(path.read_text(encoding="utf-8"))


def read_dialogues(folder: Path) -> list[Dialogue]:
    folder = Path(folder)
    if not store.is_dataset_folder(folder):
        raise VerdictError(f"{folder} has no judged dialogues (data/{store.DIALOGUES}/)")
    return store.read_dataset(folder)


def write_human(folder: Path, rows: Sequence[Mapping[str, Any]], report: Mapping[str, Any]) -> Path:
    """Write a human verdict folder (``human_verdicts`` config and ``pull_report.json``), replacing an earlier one;
    any other non-empty folder is refused."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / PULL_REPORT).is_file():
        raise VerdictError(f"{folder} exists, is not empty and is not a human verdict folder; choose a new folder")
    store.reset_folder(folder)
    store.write_table(folder, _table(rows, HUMAN_SCHEMA), config=HUMAN_VERDICTS)
    (folder / PULL_REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    body = _card(
        f"Human verdicts: {folder.name}",
        [
            f"Reviewers' pass/fail verdicts on checklist items, pulled from Argilla dataset "
            f"`{report.get('dataset')}` by "
            "`cm2data review pull-verdicts`: one row per item and reviewer (submitted and discarded responses). Counts "
            "in `pull_report.json`. Compare with a judge: `cm2data judge agree VERDICTS --human THIS_FOLDER`.",
        ],
    )
    store.write_card(folder, body=body, default_config=HUMAN_VERDICTS)
    return folder
