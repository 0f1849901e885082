"""Dataset folders: Hub layout, readable by plain ``datasets.load_dataset``, records come back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from cm2data import store
from cm2data.schema import Dialogue, Message, Tool, ToolCall


def _call_dialogue(i: int, args: dict) -> Dialogue:
    return Dialogue(
        id=f"d{i}",
        tools=[Tool(name="f", parameters={"type": "object", "properties": {k: {"type": "string"} for k in args}})],
        messages=[
            Message(role="user", content="go"),
            Message(role="assistant", tool_calls=[ToolCall(id="c", name="f", arguments=args)]),
            Message(role="tool", content="{}", tool_call_id="c"),
            Message(role="assistant", content="done"),
        ],
        metadata={"domain": "x", f"only_in_{i}": i},
    )


def test_records_round_trip_through_folder(tmp_path: Path, reference_record: Dialogue) -> None:
    reference_record.provenance.stamp("ingest", input="fixture")
    reference_record.review.status = "reviewed"
    store.write_dataset(tmp_path, [reference_record])
    (back,) = store.read_dataset(tmp_path)
    assert back == reference_record


def test_load_dataset_reads_the_folder_like_a_hub_repo(tmp_path: Path, reference_record: Dialogue) -> None:
    records = [reference_record, _call_dialogue(1, {"origin": "Oslo"}), _call_dialogue(2, {"city": "Rome"})]
    store.write_dataset(tmp_path, records)
    ds = datasets.load_dataset(str(tmp_path), "dialogues", split="train")
    assert ds.num_rows == 3
    assert ds["id"] == [r.id for r in records]
    rows = list(ds)
    assert [store.from_row(row) for row in rows] == records
    header = store.read_card_header(tmp_path)
    assert header["configs"][0]["config_name"] == "dialogues"
    assert header["dataset_info"][0]["splits"][0]["num_examples"] == 3


def test_arguments_do_not_gain_null_keys(tmp_path: Path) -> None:
    """The Arrow trap: dict arguments of different rows would be unified; JSON strings are not."""
    store.write_dataset(tmp_path, [_call_dialogue(1, {"origin": "Oslo"}), _call_dialogue(2, {"city": "Rome"})])
    ds = datasets.load_dataset(str(tmp_path), split="train")
    args = [json.loads(r["messages"][1]["tool_calls"][0]["arguments"]) for r in ds]
    assert args == [{"origin": "Oslo"}, {"city": "Rome"}]
    metas = [json.loads(r["metadata"]) for r in ds]
    assert metas == [{"domain": "x", "only_in_1": 1}, {"domain": "x", "only_in_2": 2}]


def test_rewriting_a_split_replaces_it(tmp_path: Path) -> None:
    store.write_dataset(tmp_path, [_call_dialogue(i, {"a": "b"}) for i in range(5)], rows_per_file=2)
    assert len(store.split_files(tmp_path)["train"]) == 3
    store.write_dataset(tmp_path, [_call_dialogue(9, {"a": "b"})])
    assert [r.id for r in store.read_dataset(tmp_path)] == ["d9"]
    assert len(list((tmp_path / "data" / "dialogues").glob("*"))) == 1  # no stale shards or partial files


def test_several_splits(tmp_path: Path) -> None:
    store.write_dataset(tmp_path, [_call_dialogue(1, {"a": "b"})], split="train")
    store.write_dataset(tmp_path, [_call_dialogue(2, {"a": "b"})], split="validation")
    ds = datasets.load_dataset(str(tmp_path))
    assert set(ds) == {"train", "validation"}
    assert [r.id for r in store.read_dataset(tmp_path, split="validation")] == ["d2"]


def test_card_body_survives_header_rewrite(tmp_path: Path) -> None:
    store.write_dataset(tmp_path, [_call_dialogue(1, {"a": "b"})])
    store.write_card(tmp_path, body="# My dataset\n\nHand-written text.\n", extra_header={"license": "apache-2.0"})
    store.write_dataset(tmp_path, [_call_dialogue(2, {"a": "b"})])
    text = (tmp_path / "README.md").read_text()
    assert "Hand-written text." in text
    assert store.read_card_header(tmp_path)["license"] == "apache-2.0"


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        store.read_dataset(tmp_path)


def test_an_empty_split_is_an_empty_file_without_row_groups(tmp_path: Path) -> None:
    """A stage that keeps nothing writes an empty split: it reads back as no records, and it has no row group at all
    (`datasets` would read an empty row group with a batch size of 0 and raise ArrowInvalid; with none it says
    plainly that the split holds no data)."""
    import pyarrow.parquet as pq

    (path,) = store.write_dataset(tmp_path, [])
    assert store.read_dataset(tmp_path) == [] and list(store.iter_dataset(tmp_path)) == []
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 0 and meta.num_row_groups == 0
    with pytest.raises(ValueError, match="corresponds to no data"):
        datasets.load_dataset(str(tmp_path), split="train")


def test_a_store_parquet_file_outside_a_folder_loads_as_rows(sample_path: Path, tmp_path: Path) -> None:
    """A shard copied out of its dataset folder still holds the store's rows: ``load`` (validate, stats, export)
    reads it as the folder reads it, as ``ingest`` does — not as OpenAI rows that every one fail."""
    import shutil

    from cm2data.sources import load

    store.write_dataset(tmp_path / "ds", load(sample_path)[0])
    shard = next(store.data_dir(tmp_path / "ds").glob("*.parquet"))
    shutil.copy(shard, tmp_path / "rows.parquet")
    from_folder, folder_rejects = load(tmp_path / "ds")
    from_file, file_rejects = load(tmp_path / "rows.parquet")
    assert from_folder and not folder_rejects and not file_rejects
    assert [d.model_dump() for d in from_file] == [d.model_dump() for d in from_folder]


def test_shard_batches_walks_a_shard_and_stops_where_it_stops_reading(tmp_path: Path) -> None:
    """Offsets and what ``read`` returns per batch; a file that does not open ends at once (its name); bytes that
    are not UTF-8 in the third batch end the walk there (``name#offset`` of that batch), the two batches before it
    read; every reader of a dataset folder reports the latter the same way."""
    from conftest import break_utf8

    from cm2data.sources import load
    from cm2data.validate.columnar import gate_dataset

    records = [_call_dialogue(i, {"q": f"v{i}"}) for i in range(10)]
    records[7].messages[3].content = "done MARKER-QZX"
    store.write_dataset(tmp_path / "ds", records)
    (shard,) = store.split_files(tmp_path / "ds")["train"]
    walked = list(store.shard_batches(shard, 3, read=lambda b: b.column("id").to_pylist()))
    assert [(offset, ids) for offset, _, ids in walked] == [
        (0, ["d0", "d1", "d2"]),
        (3, ["d3", "d4", "d5"]),
        (6, ["d6", "d7", "d8"]),
        (9, ["d9"]),
    ]
    break_utf8(shard, "MARKER-QZX")
    *read, end = store.shard_batches(shard, 3)
    assert [item[0] for item in read] == [0, 3] and isinstance(end, store.ShardUnreadable)
    assert end.location == f"{shard.name}#6" and isinstance(end.error, UnicodeDecodeError | pa.ArrowInvalid)
    loaded, rejects = load(tmp_path / "ds")
    gated = gate_dataset(tmp_path / "ds")
    assert [r.id for r in loaded] == [] and [(r.rule, r.location) for r in rejects] == [
        ("parquet_unreadable", f"{shard.name}#0")
    ]
    assert [(r.rule, r.message, r.location) for r in gated.read_rejects] == [
        (r.rule, r.message, r.location) for r in rejects
    ]
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(shard.read_bytes()[:100])
    (end,) = store.shard_batches(truncated)
    assert isinstance(end, store.ShardUnreadable) and end.location == "truncated.parquet"
