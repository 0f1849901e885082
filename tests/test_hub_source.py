"""``cm2data ingest hf://datasets/…``: Hub sources read as a stream, in shards, resumable, through the unmodified
``huggingface_hub``/``datasets`` clients and the local Hub stand-in (``tests/hub_standin``).

conftest.py sets HF_HUB_OFFLINE=1 for the whole run; the ``hub`` fixture undoes it for one test (environment plus the
constants ``huggingface_hub`` and ``datasets`` read at import) and points both clients at the stand-in. The kill test
runs the CLI in a subprocess whose environment points at the stand-in, as a user's shell would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hub_standin import HubStandin, point_clients_at
from typer.testing import CliRunner

from cm2data import store
from cm2data.cli import app
from cm2data.formats import FORMATS, write_records
from cm2data.hub_source import HubSourceError, HubURI, parse_hub_uri
from cm2data.ingest import STAGING, IngestJournal
from cm2data.rejects import Reject, read_rejects
from cm2data.schema import Dialogue
from cm2data.sources import load

TOKEN = "hf_standin_write_hubsrc"
CLI = [sys.executable, "-m", "cm2data.cli", "ingest"]
runner = CliRunner()

#: the bad lines put into the first nemotron file: (line number, text, the rule it must be rejected under)
BAD_LINES = [
    (4, '{"uuid": "broken", "messages": [', "json_syntax"),
    (9, "[1, 2, 3]", "row_type"),
    (13, '{"uuid": "meta-bad", "messages": [], "metadata": "{not json"}', "metadata_json"),
]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory):
    s = HubStandin(tmp_path_factory.mktemp("hub")).start()
    s.add_token(TOKEN, "alice", ("acme",))
    yield s
    s.stop()


@pytest.fixture()
def hub(standin: HubStandin, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubStandin:
    """Point the in-process Hub clients at the stand-in: environment plus what huggingface_hub and datasets read at
    import (endpoint, offline flag, cache folders)."""
    point_clients_at(standin, monkeypatch, TOKEN, tmp_path / "hf-home", datasets=True)
    return standin


@pytest.fixture(scope="module")
def sample_records(sample_path: Path) -> list[Dialogue]:
    records, rejects = load(sample_path, "cm2")
    assert len(records) >= 30 and not rejects
    return records


@pytest.fixture(scope="module")
def source_files(tmp_path_factory: pytest.TempPathFactory, sample_records: list[Dialogue]) -> Path:
    """The repo's files on disk: a nemotron config (two train files, bad lines and a duplicate in the first; a test
    file) and a cm2 config (one parquet file), selected by the card's ``configs:``."""
    root = tmp_path_factory.mktemp("hub-src")
    nemo = root / "nemotron"
    write_records(sample_records[:20], nemo / "train-0.jsonl", "nemotron")
    write_records(sample_records[20:], nemo / "train-1.jsonl", "nemotron")
    write_records(sample_records[:3], nemo / "test.jsonl", "nemotron")
    lines = (nemo / "train-0.jsonl").read_text(encoding="utf-8").splitlines()
    lines.append(lines[1])  # a second copy of the second record: duplicate_id
    for lineno, text, _ in BAD_LINES:
        lines.insert(lineno - 1, text)
    (nemo / "train-0.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "cm2").mkdir()
    rows = [FORMATS["cm2"].write(r) for r in sample_records]
    pq.write_table(pa.Table.from_pylist(rows), root / "cm2" / "train-00000.parquet", row_group_size=8)
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: nemotron\n  data_files:\n"
        "  - split: train\n    path: nemotron/train-*.jsonl\n"
        "  - split: test\n    path: nemotron/test.jsonl\n"
        "- config_name: cm2\n  data_files:\n"
        "  - split: train\n    path: cm2/*.parquet\n"
        "---\n\nTwo formats of the same dialogues.\n",
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def mixed_repo(standin: HubStandin, source_files: Path) -> str:
    """``acme/mixed`` on the stand-in (uploaded once per module; never changed afterwards)."""
    with _online(standin):
        from huggingface_hub import HfApi

        api = HfApi(endpoint=standin.url, token=TOKEN)
        api.create_repo("acme/mixed", repo_type="dataset")
        return api.upload_folder(
            folder_path=source_files, repo_id="acme/mixed", repo_type="dataset", commit_message="two formats"
        ).oid


class _online:
    """The upload client online for a module-scoped fixture (monkeypatch is function-scoped)."""

    def __init__(self, standin: HubStandin) -> None:
        self.standin = standin

    def __enter__(self) -> None:
        from huggingface_hub import constants

        self.saved = (constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET, os.environ.get("HF_HUB_DISABLE_XET"))
        constants.HF_HUB_OFFLINE = False
        constants.HF_HUB_DISABLE_XET = True
        os.environ["HF_HUB_DISABLE_XET"] = "1"

    def __exit__(self, *exc: Any) -> None:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET, xet = self.saved
        if xet is None:
            os.environ.pop("HF_HUB_DISABLE_XET", None)
        else:
            os.environ["HF_HUB_DISABLE_XET"] = xet


# ------------------------------------------------------------------------------------------------- helpers


def _cli(*args: object) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    text = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        text += f"\n{type(r.exception).__name__}: {r.exception}"
    return r.exit_code, text


def _content(records: list[Dialogue]) -> list[dict[str, Any]]:
    """Records without provenance (which names the source: a path locally, the hf:// URI from the Hub)."""
    return [r.model_dump(mode="json", exclude={"provenance"}) for r in records]


def _rejects(path: Path, strip: str = "") -> list[tuple[str, str | None, str, Any]]:
    return [
        (r.rule, r.location.removeprefix(strip) if r.location else None, r.message, r.raw) for r in read_rejects(path)
    ]


def _local_ingest(src: Path, out: Path) -> None:
    code, text = _cli("ingest", src, "--out", out)
    assert code == 0, text


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- the URI


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://datasets/acme/chats", HubURI("acme/chats")),
        ("hf://datasets/acme/chats@v1.0", HubURI("acme/chats", "v1.0")),
        ("hf://datasets/acme/chats@refs%2Fpr%2F3:train", HubURI("acme/chats", "refs/pr/3", None, "train")),
        ("hf://datasets/acme/chats:default/test", HubURI("acme/chats", None, "default", "test")),
        ("hf://datasets/a-b/c.d_e@0123abcd:cfg-1/train.v2", HubURI("a-b/c.d_e", "0123abcd", "cfg-1", "train.v2")),
    ],
)
def test_parse_hub_uri(text: str, expected: HubURI) -> None:
    assert parse_hub_uri(text) == expected
    assert parse_hub_uri(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hf://acme/chats", "expected hf://datasets/ORG/NAME[@REVISION][:CONFIG/SPLIT]"),
        ("hf://models/acme/chats", "models and spaces cannot be ingested"),
        ("hf://datasets/acme", "'acme' is not a repo id ORG/NAME"),
        ("hf://datasets/acme/chats/data/train.jsonl", "is not a repo id ORG/NAME"),
        ("hf://datasets/acme/chats@", "nothing after '@'"),
        ("hf://datasets/acme/chats:", "nothing after ':'"),
        ("hf://datasets/acme/chats:a/b/c", "'a/b/c' is not CONFIG/SPLIT or SPLIT"),
        ("hf://datasets/acme/chats:tr ain", "is not CONFIG/SPLIT or SPLIT"),
        ("hf://datasets/acme/chats@v 1", "'v 1' is not a git revision"),
        ("hf://datasets/ac me/chats", "is not a repo id ORG/NAME"),
    ],
)
def test_malformed_uri_is_a_clear_error(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(HubSourceError) as exc:
        parse_hub_uri(text)
    assert message in str(exc.value)
    code, out = _cli("ingest", text, "--out", tmp_path / "out")
    assert code == 2
    assert "error: bad Hub source" in out and message in " ".join(out.split())
    assert not (tmp_path / "out").exists()


def test_offline_mode_is_a_clear_error(tmp_path: Path) -> None:
    """Without the hub fixture the test process is offline (HF_HUB_OFFLINE=1): the ingest says so, writes nothing."""
    code, out = _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", tmp_path / "out")
    assert code == 2
    assert "HF_HUB_OFFLINE is set" in out
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- reading = local reading


def test_jsonl_source_equals_local_ingest_with_the_same_rejects(
    hub: HubStandin, mixed_repo: str, source_files: Path, sample_records: list[Dialogue], tmp_path: Path
) -> None:
    local_src = tmp_path / "local"
    local_src.mkdir()
    for name in ("train-0.jsonl", "train-1.jsonl"):
        (local_src / name).write_bytes((source_files / "nemotron" / name).read_bytes())
    _local_ingest(local_src, tmp_path / "local-out")

    out = tmp_path / "out"
    code, text = _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", out, "--shard-rows", "6")
    assert code == 0, text
    pinned = f"hf://datasets/acme/mixed@{mixed_repo}:nemotron/train"
    assert f"ingested 33 records from {pinned}" in " ".join(text.split())

    hub_records = store.read_dataset(out)
    local_records = store.read_dataset(tmp_path / "local-out")
    assert _content(hub_records) == _content(local_records)
    assert [r.id for r in hub_records] == [r.id for r in sample_records]
    for r in hub_records:  # provenance: the hf:// URI with the commit
        assert r.provenance.source == pinned
        assert r.provenance.history[-1]["stage"] == "ingest" and r.provenance.history[-1]["input"] == pinned

    # rejects: exactly the bad lines and the duplicate, with the same rule, message and row as locally
    prefix = f"hf://datasets/acme/mixed@{mixed_repo}/nemotron/"
    hub_rejects = _rejects(out / store.REJECTS_FILE, prefix)
    local_rejects = _rejects(tmp_path / "local-out" / store.REJECTS_FILE)
    assert [(rule, loc) for rule, loc, _, _ in hub_rejects] == [
        *((rule, f"train-0.jsonl:{n}") for n, _, rule in BAD_LINES),
        ("duplicate_id", "train-0.jsonl:24"),  # the Hub ingest also says where the duplicate was
    ]
    assert [
        (rule, loc if rule != "duplicate_id" else "train-0.jsonl:24", msg, raw) for rule, loc, msg, raw in local_rejects
    ] == hub_rejects

    # shards of at most 6 source rows, under the store's names; a normal dataset folder
    names = sorted(p.name for p in store.data_dir(out).iterdir())
    n = len(names)
    assert n == 7  # 37 source rows in 6-row steps
    assert names == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert [pq.read_metadata(store.data_dir(out) / name).num_rows for name in names] == [5, 5, 5, 5, 6, 6, 1]
    assert "shard 7: 37 rows read, 33 accepted, 4 rejected" in text
    import datasets

    loaded = datasets.load_dataset(str(out), "dialogues", split="train")
    assert loaded["id"] == [r.id for r in sample_records]
    header = store.read_card_header(out)
    assert header["dataset_info"][0]["splits"] == [
        {"name": "train", "num_examples": 33, "num_bytes": sum((store.data_dir(out) / m).stat().st_size for m in names)}
    ]


def test_parquet_config_equals_local_ingest(
    hub: HubStandin, mixed_repo: str, source_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cm2data.ingest

    _local_ingest(source_files / "cm2", tmp_path / "local-out")
    out = tmp_path / "out"
    monkeypatch.setattr(cm2data.ingest, "WRITE_BATCH", 2)  # records reach the shard file two at a time
    # the parquet file has row groups of 8: shards of 5 rows cut across them
    code, text = _cli("ingest", "hf://datasets/acme/mixed:cm2/train", "--out", out, "--shard-rows", "5")
    assert code == 0, text
    local = store.read_dataset(tmp_path / "local-out")
    assert len(local) == 33
    assert _content(store.read_dataset(out)) == _content(local)
    assert read_rejects(out / store.REJECTS_FILE) == []
    files = store.split_files(out)["train"]
    assert len(files) == 7
    meta = pq.read_metadata(files[0])
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [2, 2, 1]


def test_interrupted_inside_a_parquet_file_resumes_at_the_row(
    hub: HubStandin, mixed_repo: str, source_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped at row 13 of the parquet file (row groups of 8), the next run starts in the second row group at row
    10 (the last commit): every record once, in order."""
    import cm2data.hub_source

    _local_ingest(source_files / "cm2", tmp_path / "local-out")
    out = tmp_path / "out"
    convert = cm2data.hub_source._convert
    seen: list[str] = []
    armed = [True]

    def failing(item: Any, location: str, fmt: str, dataset: bool) -> Any:
        seen.append(location)
        if armed[0] and len(seen) == 13:
            raise RuntimeError("injected failure after 12 rows")
        return convert(item, location, fmt, dataset)

    monkeypatch.setattr(cm2data.hub_source, "_convert", failing)
    code, text = _cli("ingest", "hf://datasets/acme/mixed:cm2/train", "--out", out, "--shard-rows", "5")
    assert code == 1 and "injected failure after 12 rows" in text
    journal = IngestJournal.load(out, "train")
    assert journal is not None and journal.position == {"file": 0, "row": 10, "offset": 0}
    seen.clear()
    armed[0] = False
    code, text = _cli("ingest", "hf://datasets/acme/mixed:cm2/train", "--out", out, "--shard-rows", "5")
    assert code == 0, text
    assert seen[0].endswith("cm2/train-00000.parquet#10") and len(seen) == 23
    assert _content(store.read_dataset(out)) == _content(store.read_dataset(tmp_path / "local-out"))


def test_test_split_is_written_as_its_own_split(
    hub: HubStandin, mixed_repo: str, sample_records: list[Dialogue], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _cli("ingest", "hf://datasets/acme/mixed:cm2/train", "--out", out)[0] == 0
    code, text = _cli("ingest", "hf://datasets/acme/mixed:nemotron/test", "--out", out, "--format", "nemotron")
    assert code == 0, text
    assert set(store.split_files(out)) == {"train", "test"}
    assert [r.id for r in store.read_dataset(out, split="test")] == [r.id for r in sample_records[:3]]
    assert len(store.read_dataset(out, split="train")) == 33  # the other split is untouched


def test_published_cm2data_dataset_reads_as_dataset_shards(
    hub: HubStandin, sample_records: list[Dialogue], tmp_path: Path
) -> None:
    from huggingface_hub import HfApi

    folder = tmp_path / "published"
    store.write_dataset(folder, sample_records[:12], rows_per_file=5)
    api = HfApi()
    api.create_repo("acme/published", repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id="acme/published", repo_type="dataset", commit_message="v1")
    out = tmp_path / "out"
    code, text = _cli("ingest", "hf://datasets/acme/published", "--out", out, "--shard-rows", "4")
    assert code == 0, text
    back = store.read_dataset(out)
    assert _content(back) == _content(store.read_dataset(folder))  # read with the store's schema, not guessed
    assert [h["stage"] for h in back[0].provenance.history][-1] == "ingest"


def test_json_array_file_and_an_unreadable_file_type(
    hub: HubStandin, sample_records: list[Dialogue], tmp_path: Path
) -> None:
    """A JSON array is read as a local one is (same records, same element locations); a file type cm2data does not
    read is one reject naming the file, not a silent gap."""
    from huggingface_hub import HfApi

    src = tmp_path / "src"
    write_records(sample_records[:3], src / "data" / "a.jsonl", "nemotron")
    write_records(sample_records[3:7], src / "data" / "c.json", "cm2")
    text = (src / "data" / "c.json").read_text(encoding="utf-8")
    (src / "data" / "c.json").write_text(text.replace("[\n", '[\n"not an object",\n', 1), encoding="utf-8")
    (src / "data" / "b.csv").write_text("uuid,messages\nx,[]\n", encoding="utf-8")
    (src / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*\n---\n",
        encoding="utf-8",
    )
    api = HfApi()
    api.create_repo("acme/odd", repo_type="dataset")
    sha = api.upload_folder(folder_path=src, repo_id="acme/odd", repo_type="dataset", commit_message="c").oid
    out = tmp_path / "out"
    code, text = _cli("ingest", "hf://datasets/acme/odd:train", "--out", out)
    assert code == 0, text
    assert [r.id for r in store.read_dataset(out)] == [r.id for r in sample_records[:7]]
    base = f"hf://datasets/acme/odd@{sha}/data/"
    assert [(r.rule, r.location) for r in read_rejects(out / store.REJECTS_FILE)] == [
        ("unsupported_file", f"{base}b.csv"),
        ("row_type", f"{base}c.json[0] (line 2)"),
    ]
    _local_ingest(src / "data" / "c.json", tmp_path / "local")
    local = read_rejects(tmp_path / "local" / store.REJECTS_FILE)
    assert [(r.rule, r.location) for r in local] == [("row_type", "c.json[0] (line 2)")]
    assert _content(store.read_dataset(out))[3:] == _content(store.read_dataset(tmp_path / "local"))


# ------------------------------------------------------------------------------------- what the Hub can refuse


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("hf://datasets/acme/missing", "dataset repository acme/missing not found or not accessible (HTTP 404"),
        ("hf://datasets/acme/mixed@no-such-branch", "revision 'no-such-branch' not found in acme/mixed (HTTP 404"),
        ("hf://datasets/acme/mixed:nope/train", "has no config 'nope'; its configs: nemotron, cm2"),
        ("hf://datasets/acme/mixed:nemotron/valid", "config 'nemotron' has no split 'valid'; its splits: train, test"),
        ("hf://datasets/acme/mixed:train", "has 2 configs (nemotron, cm2): name one"),
        ("hf://datasets/acme/mixed", "has 2 configs (nemotron, cm2): name one"),
        ("hf://datasets/acme/mixed:nemotron", "'nemotron' is one of its 2 configs (nemotron, cm2), and ':NAME' alone"),
    ],
)
def test_missing_repo_revision_config_or_split(
    hub: HubStandin, mixed_repo: str, uri: str, message: str, tmp_path: Path
) -> None:
    code, text = _cli("ingest", uri, "--out", tmp_path / "out")
    assert code == 2, text
    assert message in " ".join(text.split())
    assert not (tmp_path / "out").exists()


def test_split_alone_when_the_repo_has_one_config(
    hub: HubStandin, sample_records: list[Dialogue], tmp_path: Path
) -> None:
    from huggingface_hub import HfApi

    src = tmp_path / "src" / "data"
    write_records(sample_records[:4], src / "train.jsonl", "nemotron")
    write_records(sample_records[4:6], src / "test.jsonl", "nemotron")
    api = HfApi()
    api.create_repo("acme/plain", repo_type="dataset")
    api.upload_folder(folder_path=src.parent, repo_id="acme/plain", repo_type="dataset", commit_message="c")
    code, text = _cli("ingest", "hf://datasets/acme/plain:test", "--out", tmp_path / "out")
    assert code == 0, text
    assert [r.id for r in store.read_dataset(tmp_path / "out", split="test")] == [r.id for r in sample_records[4:6]]
    code, text = _cli("ingest", "hf://datasets/acme/plain", "--out", tmp_path / "o2")
    assert code == 2 and "config 'default' has splits train, test: name one" in " ".join(text.split())


# ------------------------------------------------------------------------------------------------ revisions


def test_revision_pin_reads_the_older_commit(
    hub: HubStandin, sample_records: list[Dialogue], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("acme/revs", repo_type="dataset")
    src = tmp_path / "src"
    write_records(sample_records[:10], src / "train.jsonl", "nemotron")
    old = api.upload_folder(folder_path=src, repo_id="acme/revs", repo_type="dataset", commit_message="old").oid
    api.create_tag("acme/revs", repo_type="dataset", tag="v1", revision=old)
    write_records(sample_records[5:15], src / "train.jsonl", "nemotron")
    write_records(sample_records[15:25], src / "train-2.jsonl", "nemotron")  # the newer commit has two files
    new = api.upload_folder(folder_path=src, repo_id="acme/revs", repo_type="dataset", commit_message="new").oid
    assert old != new

    ids = {}
    for rev in (old, "v1", None):
        out = tmp_path / f"out-{rev}"
        uri = "hf://datasets/acme/revs" + (f"@{rev}" if rev else "")
        code, text = _cli("ingest", uri, "--out", out)
        assert code == 0, text
        records = store.read_dataset(out)
        ids[rev] = [r.id for r in records]
        commit = old if rev else new
        assert {r.provenance.source for r in records} == {f"hf://datasets/acme/revs@{commit}:default/train"}
    assert ids[old] == ids["v1"] == [r.id for r in sample_records[:10]]
    # (datasets lists a split's files sorted by path: train-2.jsonl comes before train.jsonl)
    assert ids[None] == [r.id for r in sample_records[15:25] + sample_records[5:15]]

    # another revision into a folder that holds a finished ingest: an error, unless --fresh
    out = tmp_path / f"out-{old}"
    before = _tree(out)
    code, text = _cli("ingest", "hf://datasets/acme/revs", "--out", out, "--split", "train")
    assert code == 2
    assert f"holds an ingest of hf://datasets/acme/revs@{old}:default/train" in " ".join(text.split())
    assert "--fresh" in text and _tree(out) == before
    code, text = _cli(
        "ingest", "hf://datasets/acme/revs", "--out", out, "--split", "train", "--fresh", "--shard-rows", "4"
    )
    assert code == 0, text
    assert [r.id for r in store.read_dataset(out)] == ids[None]  # the earlier shard file is gone
    assert len(store.split_files(out)["train"]) == 5

    # a push between resolving the revision and reading the files changes nothing: the resolved commit is read
    import cm2data.publish.hub

    real = cm2data.publish.hub.hub_api

    class PushAfterAnswer:
        def __init__(self, token: str | None) -> None:
            self.api = real(token)

        def dataset_info(self, *args: Any, **kwargs: Any) -> Any:
            info = self.api.dataset_info(*args, **kwargs)
            write_records(sample_records[25:30], src / "train-3.jsonl", "nemotron")
            api.upload_folder(folder_path=src, repo_id="acme/revs", repo_type="dataset", commit_message="racing")
            return info

    monkeypatch.setattr(cm2data.publish.hub, "hub_api", PushAfterAnswer)
    out = tmp_path / "out-racing"
    code, text = _cli("ingest", "hf://datasets/acme/revs", "--out", out)
    assert code == 0, text
    assert [r.id for r in store.read_dataset(out)] == ids[None]
    assert hub.head("acme/revs") != new


# ---------------------------------------------------------------------------------------------- resumption


def _reference(tmp_path: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    ref = tmp_path / "reference"
    code, text = _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", ref, "--shard-rows", "4")
    assert code == 0, text
    return _content(store.read_dataset(ref)), _rejects(ref / store.REJECTS_FILE)


def test_finished_ingest_rerun_is_a_no_op(hub: HubStandin, mixed_repo: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", out)[0] == 0
    before = _tree(out)
    hub.clear_log()
    code, text = _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", out)
    assert code == 0, text
    assert "already done" in text and "nothing to do" in text
    assert _tree(out) == before
    assert hub.log == []  # not even a request to the Hub


def test_hub_failure_mid_ingest_then_rerun_gives_the_dataset_once(
    hub: HubStandin, mixed_repo: str, tmp_path: Path
) -> None:
    records, rejects = _reference(tmp_path)
    out = tmp_path / "out"
    # the second file cannot be read: the ingest stops, keeping the shards of the first
    hub.fail("resolve", path="nemotron/train-1.jsonl", times=None, status=403, message="no access today")
    code, text = _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", out, "--shard-rows", "4")
    assert code == 2, text
    flat = " ".join(text.split())
    assert "the Hub refused access to acme/mixed (HTTP 403: no access today)" in flat
    assert "reading stopped at hf://datasets/acme/mixed@" in flat
    assert "6 shards (20 records, 24 rows read) kept in" in flat and "run the same command again" in flat
    journal = IngestJournal.load(out, "train")
    assert journal is not None and journal.state == "running" and len(journal.shards) == 6
    assert not store.is_dataset_folder(out)  # nothing in place until the whole split is read
    # what a run killed after its last journal entry leaves: a closed shard, a half-written one, more rejects
    staged = out / STAGING / "train"
    (staged / "shards" / "train-00006.parquet").write_bytes((staged / "shards" / "train-00000.parquet").read_bytes())
    (staged / "shards" / ".train-00007.parquet.partial").write_bytes(b"PAR1 half")
    with (staged / store.REJECTS_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(Reject(None, "read", "json_syntax", "uncommitted", "x:1").as_row()) + "\n")
    hub.clear_faults()
    hub.clear_log()
    code, text = _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", out, "--shard-rows", "4")
    assert code == 0, text
    assert "resuming" in text and "resumed after an interrupted run" in " ".join(text.split())
    assert not any("train-0.jsonl" in e.path for e in hub.log)  # the finished file is not read again
    assert _content(store.read_dataset(out)) == records
    assert _rejects(out / store.REJECTS_FILE) == rejects
    assert not (out / STAGING / "train" / "shards").exists()


def test_killed_ingest_resumes_without_duplicates(hub: HubStandin, mixed_repo: str, tmp_path: Path) -> None:
    """SIGKILL in the middle (the process held at the Hub while reading the second file), then the same command."""
    records, rejects = _reference(tmp_path)
    out = tmp_path / "out"
    stall = hub.fail("resolve", path="nemotron/train-1.jsonl", mode="stall", stall_s=60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(hub.env(token=TOKEN, home=tmp_path / "sub-home"))
    proc = subprocess.Popen(
        [*CLI, "hf://datasets/acme/mixed:nemotron/train", "--out", str(out), "--shard-rows", "5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while stall.fired == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stall.fired == 1, proc.communicate(timeout=10)[0].decode()[-3000:] if proc.poll() is not None else ""
        journal = IngestJournal.load(out, "train")
        # 24 rows of the first file: 4 shards committed, 4 rows read after the last commit
        assert journal is not None and journal.state == "running" and len(journal.shards) == 4
        assert journal.position["row"] == 20
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    hub.clear_faults()
    # what the killed run left: committed shards, the rejects of committed rows, nothing in place yet
    assert not store.is_dataset_folder(out)
    code, text = _cli("ingest", "hf://datasets/acme/mixed:nemotron/train", "--out", out, "--shard-rows", "5")
    assert code == 0, text
    assert "resuming" in text
    assert _content(store.read_dataset(out)) == records
    assert _rejects(out / store.REJECTS_FILE) == rejects
    assert len({r["id"] for r in records}) == len(records) == 33


def test_a_finalization_cut_short_is_finished_by_the_next_run(
    tmp_path: Path, sample_records: list[Dialogue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step after reading (shards into place, card, rejects) is repeatable: killed in the middle, the next run
    completes it without reading again. (No Hub needed: the writer takes any source of items.)"""
    from cm2data import ingest

    def items(position: dict[str, int]) -> Any:
        for i in range(position.get("row", 0), 12):
            record = sample_records[i].model_copy(deep=True) if i != 5 else Reject(None, "read", "x", "bad", f"s:{i}")
            yield ingest.SourceItem({"row": i + 1}, record, f"s:{i}")

    def run(out: Path) -> ingest.StreamResult:
        journal = ingest.IngestJournal.load(out, "train") or ingest.IngestJournal({"uri": "test"}, "train")
        return ingest.stream_ingest(out, journal, items, source="test", shard_rows=4)

    run(tmp_path / "clean")
    out = tmp_path / "out"
    store.write_dataset(out, sample_records[20:30], rows_per_file=3)  # the split's earlier content: 4 files
    real = store.write_card
    monkeypatch.setattr(store, "write_card", lambda folder: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        run(out)
    journal = ingest.IngestJournal.load(out, "train")
    assert journal is not None and journal.state == "finalizing"
    monkeypatch.setattr(store, "write_card", real)
    result = run(out)
    assert not result.already_complete and result.journal.state == "complete"
    assert _content(store.read_dataset(out)) == _content(store.read_dataset(tmp_path / "clean"))
    assert [p.name for p in result.files] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert sorted(p.name for p in store.data_dir(out).iterdir()) == [p.name for p in result.files]
    assert _rejects(out / store.REJECTS_FILE) == [("x", "s:5", "bad", None)]
    assert run(out).already_complete
