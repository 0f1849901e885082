"""Publishing to the Hub and pulling back, through the unmodified huggingface_hub/datasets clients and the local
Hub stand-in (``tests/hub_standin``). conftest.py sets HF_HUB_OFFLINE=1 for the whole run; the ``hub`` fixture
undoes it for one test (environment and the client's import-time constants), and ``load_dataset`` runs in a
subprocess whose environment points at the stand-in, exactly as a user's would.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hub_standin import HubStandin, point_clients_at
from typer.testing import CliRunner

from cm2data import publish as pub
from cm2data import store
from cm2data.cli import app
from cm2data.ingest import write_ingested
from cm2data.rejects import Reject, write_rejects
from cm2data.schema import Dialogue
from cm2data.sources import load
from cm2data.validate import run_gate

TOKEN = "hf_standin_write_4f1c9a"
READ_TOKEN = "hf_standin_read_77b2e0"
runner = CliRunner()

LOAD_SCRIPT = r"""
import json, sys
import datasets
out = {}
for spec in json.loads(sys.argv[2]):
    src, revision = spec["src"], spec.get("revision")
    configs = {}
    for name in datasets.get_dataset_config_names(src, revision=revision):
        dd = datasets.load_dataset(src, name, revision=revision)
        configs[name] = {split: {"features": ds.features.to_dict(), "rows": ds.to_list()} for split, ds in dd.items()}
    out[spec["key"]] = configs
json.dump(out, open(sys.argv[1], "w"), default=str)
"""


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory):
    # a small multipart chunk so that the parquet files go through the multipart LFS protocol too
    s = HubStandin(tmp_path_factory.mktemp("hub"), multipart_chunk_size=64 * 1024).start()
    s.add_token(TOKEN, "alice", ("acme",))
    s.add_token(READ_TOKEN, "bob", ("acme",), role="read")
    yield s
    s.stop()


@pytest.fixture()
def hub(standin: HubStandin, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubStandin:
    """Point the in-process Hub client at the stand-in: environment plus the constants it read at import."""
    point_clients_at(standin, monkeypatch, TOKEN, tmp_path / "hf-home")
    return standin


def _sample_records(sample_path: Path) -> list[Dialogue]:
    records, _ = load(sample_path, "cm2")
    accepted = run_gate(records).accepted
    assert len(accepted) >= 8, "the shipped sample should give enough valid dialogues"
    return accepted


@pytest.fixture()
def dataset(tmp_path: Path, sample_path: Path) -> Path:
    """A valid dataset folder with two splits and a rejects table from an earlier stage."""
    records = _sample_records(sample_path)
    folder = tmp_path / "ds"
    write_ingested(folder, records[:-4], [], source="sample")
    store.write_dataset(folder, records[-4:], split="test")
    write_rejects(
        [
            Reject("x1", "validate", "tool_schema", "unknown tool", raw={"secret": "row"}),
            Reject(None, "read", "json_syntax", "bad line", "f.jsonl:3"),
        ],
        folder / store.REJECTS_FILE,
    )
    return folder


def _variant(src: Path, out: Path, keep: int) -> Path:
    """A changed version of ``src``: only the first ``keep`` train records, no test split."""
    records = store.read_dataset(src, split="train")[:keep]
    store.write_dataset(out, records)
    return out


def _cli(*args: object) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.output + (str(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else "")


def _load_all(specs: list[dict], env: dict[str, str], tmp: Path) -> dict:
    out = tmp / f"loaded-{len(list(tmp.glob('loaded-*')))}.json"
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(out), json.dumps(specs)],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _writes(standin: HubStandin) -> list[str]:
    """Stages of logged requests that change something or upload bytes."""
    return [
        e.stage
        for e in standin.log
        if e.stage
        in ("create_repo", "preupload", "lfs_batch", "lfs_upload", "lfs_complete", "lfs_verify", "commit", "tag")
    ]


# ---------------------------------------------------------------------------------------------- round trip


def test_publish_then_load_dataset_equals_local_and_dry_run(hub: HubStandin, dataset: Path, tmp_path: Path) -> None:
    repo = "acme/checklists"
    dry = tmp_path / "dry"
    # the trainer exports that exist by now are published too (see test_with_exporters_and_missing_ones)
    extra = [name for name in ("sft", "rl") if pub.EXPORTERS[name].load() is not None]
    with_ = ["--with", ",".join(extra)] if extra else []
    code, output = _cli("publish", dataset, "--repo-id", repo, "--dry-run", dry, *with_)
    assert code == 0, output
    assert hub.log == [], "a dry run must not talk to the Hub"

    # the real command line, in its own process, configured by environment variables only
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(hub.env(token=TOKEN, home=tmp_path / "cli-home"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cm2data.cli",
            "publish",
            str(dataset),
            "--repo-id",
            repo,
            "--tag",
            "v1.0",
            "-m",
            "first release",
            *with_,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr

    # one commit on top of the repository's initial commit, tagged
    assert hub.commits(repo) == 2
    assert hub.repo(repo)["tags"]["v1.0"]["target"] == hub.head(repo)
    assert hub.repo(repo)["commits"][hub.head(repo)]["title"] == "first release"

    # the remote tree is exactly the dry-run tree (plus the Hub's .gitattributes), byte for byte
    remote = hub.files(repo)
    local = _tree(dry)
    assert set(remote) == set(local) | {".gitattributes"}
    assert all(remote[p] == local[p] for p in local)
    assert {
        "data/dialogues/train-00000-of-00001.parquet",
        "data/dialogues/test-00000-of-00001.parquet",
        "data/checklist_items/train-00000-of-00001.parquet",
        "assets/checklist_items.png",
    } <= set(local)
    assert "rejects.jsonl" not in local, "rejected rows must never be published"
    assert not any(TOKEN.encode() in blob for blob in remote.values())

    # the card: YAML header with configs, dataset_info, license, tags, task categories; plots linked and present
    card = remote["README.md"].decode()
    header = store.read_card_header(dry)
    configs = {"dialogues", "checklist_items", *(pub.EXPORTERS[name].config for name in extra)}
    assert {c["config_name"] for c in header["configs"]} == configs
    assert {i["config_name"] for i in header["dataset_info"]} == configs
    assert header["license"] and "cm2" in header["tags"] and header["task_categories"] == ["text-generation"]
    for section in (
        "## How it was produced",
        "## Schema",
        "## Statistics",
        "## Review",
        "## Rejects",
        "## License",
        "## Citation",
        "arXiv:2602.12268",
    ):
        assert section in card
    for png in (p for p in local if p.endswith(".png")):
        assert f"]({png})" in card
        assert local[png][:8] == b"\x89PNG\r\n\x1a\n"
    assert "`tool_schema` | 1" in card and "`json_syntax` | 1" in card  # the rejects summary, not the rows
    assert "secret" not in card

    # datasets.load_dataset through the stand-in == load_dataset of the dry-run folder == the local records
    loaded = _load_all(
        [
            {"key": "hub", "src": repo},
            {"key": "hub_tag", "src": repo, "revision": "v1.0"},
            {"key": "dry", "src": str(dry)},
        ],
        hub.env(token=TOKEN, home=tmp_path / "load-home"),
        tmp_path,
    )
    assert set(loaded["hub"]) == configs
    assert loaded["hub"] == loaded["dry"] == loaded["hub_tag"]
    for split in ("train", "test"):
        records = store.read_dataset(dataset, split=split)
        expected = store.records_table(records).to_pylist()
        assert json.loads(json.dumps(loaded["hub"]["dialogues"][split]["rows"], default=str)) == json.loads(
            json.dumps(expected, default=str)
        )
        items = pub.checklist_items_table(records).to_pylist()
        assert loaded["hub"]["checklist_items"][split]["rows"] == items
        assert len(items) == sum(len(b.items) for d in records for v in d.checklists for b in v)
    first = loaded["hub"]["checklist_items"]["train"]["rows"][0]
    assert isinstance(json.loads(first["evidence"]), list) and first["item_id"] == "C0"


@pytest.fixture()
def gated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the rows the publish gate checks, in order (the real gate still decides)."""
    from cm2data.validate.columnar import ColumnarGate

    seen: list[str] = []
    real = ColumnarGate.add_batch

    def counting(self: ColumnarGate, batch: pa.RecordBatch, **kwargs: Any) -> Any:
        seen.extend(batch.column("id").to_pylist())
        return real(self, batch, **kwargs)

    monkeypatch.setattr(ColumnarGate, "add_batch", counting)
    return seen


def _manifest(hub: HubStandin, repo: str) -> dict[str, Any]:
    return json.loads(hub.files(repo)[pub.MANIFEST])


def test_republish_identical_content_makes_no_commit(hub: HubStandin, dataset: Path, gated: list[str]) -> None:
    repo = "acme/idempotent"
    code, output = _cli("publish", dataset, "--repo-id", repo)
    assert code == 0, output
    n_records = sum(len(store.read_dataset(dataset, split=s)) for s in ("train", "test"))
    assert len(gated) == n_records, "a first publish gates every record"
    head, n_commits = hub.head(repo), hub.commits(repo)
    shards = _manifest(hub, repo)["shards"]
    assert [(s["split"], s["rows"]) for s in shards] == [("test", 4), ("train", n_records - 4)]
    hub.clear_log()
    gated.clear()
    code, output = _cli("publish", dataset, "--repo-id", repo)
    assert code == 0, output
    assert "nothing to commit" in output and "gate skipped" in output
    assert gated == [], "an unchanged dataset is not gated again"
    assert hub.head(repo) == head and hub.commits(repo) == n_commits
    assert _writes(hub) == []  # reads only: no create_repo, no upload, no commit
    assert [e.stage for e in hub.log] == ["whoami", "repo_info", "resolve", "resolve"]  # HEAD, then GET of the manifest


def _sharded(folder: Path, records: list[Dialogue], rows_per_file: int) -> Path:
    store.write_dataset(folder, records, rows_per_file=rows_per_file)
    return folder


def test_republish_gates_only_the_changed_shard(
    hub: HubStandin, sample_path: Path, tmp_path: Path, gated: list[str]
) -> None:
    """Three source shards; one record of the middle one changes: only that shard's records are gated again, the
    new commit carries the change, and the manifest lists the new shard."""
    records = _sample_records(sample_path)[:9]
    repo = "acme/sharded"
    first = _sharded(tmp_path / "v1", records, 3)
    assert _cli("publish", first, "--repo-id", repo)[0] == 0
    assert len(gated) == 9
    old = {s["name"]: s["sha256"] for s in _manifest(hub, repo)["shards"]}
    assert len(old) == 3

    changed = [r.model_copy(deep=True) for r in records]
    reply = next(m for m in reversed(changed[4].messages) if m.role == "assistant" and m.content)
    reply.content += " Anything else?"
    second = _sharded(tmp_path / "v2", changed, 3)
    gated.clear()
    code, output = _cli("publish", second, "--repo-id", repo)
    assert code == 0, output
    assert sorted(gated) == sorted(r.id for r in records[3:6]), "only the changed shard is gated"
    assert "1 of 3 shards changed" in output and "published 9 dialogues" in output
    new = {s["name"]: s["sha256"] for s in _manifest(hub, repo)["shards"]}
    assert [name for name in new if new[name] != old[name]] == ["train-00001-of-00003.parquet"]
    assert store.read_table(second).equals(
        pa.concat_tables(
            pq.read_table(io.BytesIO(c)) for p, c in sorted(hub.files(repo).items()) if p.startswith("data/dialogues/")
        )
    )


def test_republish_after_changed_options_or_tampering_rebuilds_without_gating(
    hub: HubStandin, dataset: Path, gated: list[str]
) -> None:
    """Same shards, another license: the tree is rebuilt (the card changes) but nothing is gated again. A data file
    deleted on the Hub by hand: the next publish restores it, again without gating."""
    from huggingface_hub import HfApi

    repo = "acme/relicensed"
    assert _cli("publish", dataset, "--repo-id", repo)[0] == 0
    gated.clear()
    code, output = _cli("publish", dataset, "--repo-id", repo, "--license", "mit")
    assert code == 0, output
    assert "options changed" in output and "in commit" in output and gated == []
    assert "license: mit" in hub.files(repo)["README.md"].decode()

    before = hub.files(repo)
    HfApi(endpoint=hub.url, token=TOKEN).delete_file(
        "data/dialogues/test-00000-of-00001.parquet", repo_id=repo, repo_type="dataset"
    )
    code, output = _cli("publish", dataset, "--repo-id", repo, "--license", "mit")
    assert code == 0, output
    assert "published files differ from the manifest" in output and gated == []
    assert hub.files(repo) == before


def test_unreadable_manifest_gates_everything(hub: HubStandin, dataset: Path, gated: list[str]) -> None:
    from huggingface_hub import HfApi

    repo = "acme/garbled"
    assert _cli("publish", dataset, "--repo-id", repo)[0] == 0
    HfApi(endpoint=hub.url, token=TOKEN).upload_file(
        path_or_fileobj=b"{not json", path_in_repo=pub.MANIFEST, repo_id=repo, repo_type="dataset"
    )
    gated.clear()
    code, output = _cli("publish", dataset, "--repo-id", repo)
    assert code == 0, output
    assert f"ignoring the published {pub.MANIFEST}" in output and "in commit" in output
    assert len(gated) == sum(len(store.read_dataset(dataset, split=s)) for s in ("train", "test"))
    assert json.loads(hub.files(repo)[pub.MANIFEST])["format"] == 1


def test_republish_after_change_leaves_no_stale_files(hub: HubStandin, dataset: Path, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    repo = "acme/changing"
    assert _cli("publish", dataset, "--repo-id", repo)[0] == 0
    api = HfApi(endpoint=hub.url, token=TOKEN)  # files added by hand on the Hub, outside cm2data
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="extra/notes.md", repo_id=repo, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"license text", path_in_repo="LICENSE", repo_id=repo, repo_type="dataset")
    api.create_tag(repo, tag="v1", repo_type="dataset")
    old_files = hub.files(repo)
    assert "data/dialogues/test-00000-of-00001.parquet" in old_files
    smaller = _variant(dataset, tmp_path / "smaller", keep=3)
    dry = tmp_path / "dry"
    assert _cli("publish", smaller, "--repo-id", repo, "--dry-run", dry)[0] == 0
    hub.clear_log()
    code, output = _cli("publish", smaller, "--repo-id", repo, "--tag", "v2", "--keep", "LICENSE")
    assert code == 0, output
    assert [e.stage for e in hub.log].count("commit") == 1, "changes and deletions go in one commit"
    remote = hub.files(repo)
    assert set(remote) == set(_tree(dry)) | {".gitattributes", "LICENSE"}
    assert not any("test-" in p for p in remote)
    assert store.read_table(dry).num_rows == 3
    # the earlier version is still there under its tag
    assert hub.files(repo, revision="v1") == old_files


def test_pull_round_trips_and_follows_revisions(hub: HubStandin, dataset: Path, tmp_path: Path) -> None:
    repo = "acme/pulled"
    assert _cli("publish", dataset, "--repo-id", repo, "--tag", "v1")[0] == 0
    assert _cli("publish", _variant(dataset, tmp_path / "v2", keep=2), "--repo-id", repo)[0] == 0

    code, output = _cli("pull", repo, "--out", tmp_path / "latest")
    assert code == 0, output
    assert [d.id for d in store.read_dataset(tmp_path / "latest")] == [
        d.id for d in store.read_dataset(dataset, split="train")[:2]
    ]

    out = tmp_path / "first"
    code, output = _cli("pull", repo, "--revision", "v1", "--out", out)
    assert code == 0, output
    for split in ("train", "test"):
        assert [d.model_dump() for d in store.read_dataset(out, split=split)] == [
            d.model_dump() for d in store.read_dataset(dataset, split=split)
        ]
        name = f"data/dialogues/{split}-00000-of-00001.parquet"
        assert (out / name).read_bytes() == hub.files(repo, revision="v1")[name]
    assert set(_tree(out)) == {
        "README.md",
        "data/dialogues/train-00000-of-00001.parquet",
        "data/dialogues/test-00000-of-00001.parquet",
    }
    assert store.read_card_header(out)["license"] == "unknown"
    assert "pulled from the Hub dataset `acme/pulled`" in (out / "README.md").read_text()
    # the pulled folder is a dataset folder the rest of the toolkit reads: it validates
    assert _cli("validate", out)[0] == 0
    # pulling into a folder that is not empty is refused; an unknown revision is a clear error
    assert "not empty" in _cli("pull", repo, "--out", out)[1]
    code, output = _cli("pull", repo, "--revision", "v9", "--out", tmp_path / "none")
    assert code == 1 and "revision not found" in output and not (tmp_path / "none").exists()


# --------------------------------------------------------------------------------------- nothing partial


def _break(dataset: Path) -> None:
    records = store.read_dataset(dataset, split="train")
    records[1].checklists[0][0].items[0].weight += 0.5  # the turn's weights no longer sum to 1
    records[2].messages[-1].content = "   "  # blank final reply
    store.write_dataset(dataset, records)


def test_invalid_dataset_uploads_nothing(hub: HubStandin, dataset: Path, tmp_path: Path) -> None:
    _break(dataset)
    code, output = _cli("publish", dataset, "--repo-id", "acme/invalid")
    assert code == 1
    assert "validation failed" in output and "weights_sum_to_one" in output and "non_empty_content" in output
    assert "nothing was uploaded" in output
    # the Hub is read (the token, whether a manifest exists) and never written to
    assert _writes(hub) == [] and hub.repo("acme/invalid") is None
    code, output = _cli("publish", dataset, "--repo-id", "acme/invalid", "--dry-run", tmp_path / "dry")
    assert code == 1 and not (tmp_path / "dry").exists()


@pytest.mark.parametrize(
    ("stage", "after", "status"), [("lfs_upload", 1, 400), ("lfs_verify", 2, 403), ("commit", 0, 500)]
)
def test_failure_during_upload_leaves_remote_unchanged(
    hub: HubStandin, dataset: Path, tmp_path: Path, stage: str, after: int, status: int
) -> None:
    repo = f"acme/fault-{stage.replace('_', '-')}"
    assert _cli("publish", dataset, "--repo-id", repo)[0] == 0
    before, head, n_commits = hub.files(repo), hub.head(repo), hub.commits(repo)
    changed = _variant(dataset, tmp_path / "changed", keep=3)
    fault = hub.fail(stage, after=after, times=None, status=status)
    hub.clear_log()
    code, output = _cli("publish", changed, "--repo-id", repo)
    assert code == 1, output
    assert "nothing was committed" in output
    assert fault.fired >= 1
    if stage == "lfs_upload":  # the failure came in the middle: other files had been uploaded already
        assert any(e.stage == "lfs_upload" and e.status == 200 for e in hub.log)
    assert hub.head(repo) == head and hub.commits(repo) == n_commits and hub.files(repo) == before
    hub.clear_faults()
    code, output = _cli("publish", changed, "--repo-id", repo)
    assert code == 0, output
    assert store.read_table(tmp_path / "changed").num_rows == 3
    assert (
        hub.files(repo)["data/dialogues/train-00000-of-00001.parquet"]
        == (tmp_path / "changed" / "data/dialogues/train-00000-of-00001.parquet").read_bytes()
    )


def test_dropped_connection_mid_upload_is_retried(hub: HubStandin, dataset: Path) -> None:
    repo = "acme/flaky"
    fault = hub.fail("lfs_upload", after=0, times=1, mode="disconnect")
    code, output = _cli("publish", dataset, "--repo-id", repo)
    assert code == 0, output
    assert fault.fired == 1
    dropped = [e for e in hub.log if e.stage == "lfs_upload" and e.status == 0]
    assert len(dropped) == 1 and dropped[0].bytes_in > 0, "the connection dropped after part of the body"
    assert hub.commits(repo) == 2 and "README.md" in hub.files(repo)


# ----------------------------------------------------------------------------------------- tags and access


def test_tags_are_created_and_never_moved(hub: HubStandin, dataset: Path, tmp_path: Path) -> None:
    repo = "acme/tagged"
    assert _cli("publish", dataset, "--repo-id", repo, "--tag", "v1.0")[0] == 0
    v1 = hub.head(repo)
    # same content, same tag: fine, nothing happens
    assert _cli("publish", dataset, "--repo-id", repo, "--tag", "v1.0")[0] == 0
    assert hub.head(repo) == v1
    # new content under an existing tag is refused before anything is uploaded
    changed = _variant(dataset, tmp_path / "changed", keep=2)
    hub.clear_log()
    code, output = _cli("publish", changed, "--repo-id", repo, "--tag", "v1.0")
    assert code == 1 and "already exists" in output
    assert hub.head(repo) == v1 and "commit" not in _writes(hub)
    assert _cli("publish", changed, "--repo-id", repo, "--tag", "v1.1")[0] == 0
    tags = hub.repo(repo)["tags"]
    assert tags["v1.0"]["target"] == v1 and tags["v1.1"]["target"] == hub.head(repo) != v1
    # same content published again with a new tag: the tag lands on the existing head, no commit
    n = hub.commits(repo)
    assert _cli("publish", changed, "--repo-id", repo, "--tag", "v1.1-final")[0] == 0
    assert hub.commits(repo) == n and hub.repo(repo)["tags"]["v1.1-final"]["target"] == hub.head(repo)
    assert "bad tag" in _cli("publish", changed, "--repo-id", repo, "--tag", "v 1")[1]


def test_missing_token_is_a_clear_error(hub: HubStandin, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    code, output = _cli("publish", dataset, "--repo-id", "acme/no-token")
    assert code == 1 and "no Hugging Face token" in output and "HF_TOKEN" in output
    assert hub.log == []


def test_token_from_hub_login(hub: HubStandin, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants, get_token

    monkeypatch.delenv("HF_TOKEN")
    # where `hf auth login` keeps the active token (HF_HOME/token; HF_HOME is the test's own folder here)
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN)
    assert get_token() == TOKEN
    code, output = _cli("publish", dataset, "--repo-id", "acme/logged-in")
    assert code == 0, output
    assert hub.commits("acme/logged-in") == 2


def test_wrong_token_is_rejected_without_printing_it(
    hub: HubStandin, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_this_is_not_a_valid_token")
    code, output = _cli("publish", dataset, "--repo-id", "acme/wrong-token")
    assert code == 1 and "rejected the token (401" in output
    assert "hf_this_is_not_a_valid_token" not in output
    assert hub.repo("acme/wrong-token") is None


def test_read_only_token_and_foreign_namespace(hub: HubStandin, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = _cli("publish", dataset, "--repo-id", "acmee/typo")
    assert code == 1 and "permission denied" in output and "did you mean acme/typo" in output
    assert "nothing was committed" in output and hub.repo("acmee/typo") is None
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    code, output = _cli("publish", dataset, "--repo-id", "acme/read-only")
    assert code == 1 and "read-only" in output and hub.repo("acme/read-only") is None


@pytest.mark.parametrize("repo_id", ["checklists", "acme/team/checklists", "acme/bad name", "acme/", "/x"])
def test_bad_repo_id_fails_before_any_request(hub: HubStandin, dataset: Path, repo_id: str) -> None:
    code, output = _cli("publish", dataset, "--repo-id", repo_id)
    assert code == 1 and "bad repo id" in output
    assert hub.log == []


def test_network_failure_is_reported(hub: HubStandin, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, output = _cli("publish", dataset, "--repo-id", "acme/offline")
    assert code == 1 and "network failure" in output and "nothing was committed" in output


def test_offline_mode_is_refused(hub: HubStandin, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, output = _cli("publish", dataset, "--repo-id", "acme/offline-mode")
    assert code == 1 and "HF_HUB_OFFLINE" in output
    assert hub.log == []


def test_private_repository(hub: HubStandin, dataset: Path) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    assert _cli("publish", dataset, "--repo-id", "acme/private", "--private")[0] == 0
    assert hub.repo("acme/private")["private"] is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).dataset_info("acme/private")
    assert HfApi(endpoint=hub.url, token=TOKEN).dataset_info("acme/private").private is True


# ---------------------------------------------------------------------------------------------- --with


def test_with_exporters_and_missing_ones(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, label in (("sft", "LLaMA-Factory"), ("rl", "VeRL")):
        exporter = pub.EXPORTERS[name]
        if exporter.load() is not None:  # built: it publishes as its own config, one row per dialogue
            tree = pub.build_tree(dataset, tmp_path / name, with_=[name])
            assert tree.configs[exporter.config] == tree.configs["dialogues"]
            continue
        code, output = _cli("publish", dataset, "--repo-id", "acme/x", "--with", name, "--dry-run", tmp_path / "dry")
        assert code == 1 and label in output and exporter.command in output
    # an exporter whose module is not there yet: a clear message naming it, and nothing written
    monkeypatch.setitem(
        pub.EXPORTERS,
        "dpo",
        pub.Exporter(
            "dpo",
            "dpo_pairs",
            "DPO pairs export",
            "cm2data export dpo",
            "cm2data.export.dpo:hub_table",
            requires="cm2data.export.dpo",
        ),
    )
    code, output = _cli("publish", dataset, "--repo-id", "acme/x", "--with", "sft,dpo", "--dry-run", tmp_path / "d1")
    assert code == 1 and "DPO pairs export is not available yet" in output and "cm2data export dpo" in output
    assert not (tmp_path / "d1").exists()
    code, output = _cli("publish", dataset, "--repo-id", "acme/x", "--with", "kto", "--dry-run", tmp_path / "d2")
    assert code == 1 and "unknown --with 'kto'" in output


def test_registered_exporter_is_published_as_a_config(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets
    import pyarrow as pa

    def ids(records, split):  # type: ignore[no-untyped-def]
        return pa.table({"id": [d.id for d in records], "split": [split] * len(records)})

    monkeypatch.setitem(pub.EXPORTERS, "ids", pub.Exporter("ids", "ids_only", "id list", "", build=ids))
    tree = pub.build_tree(dataset, tmp_path / "dry", repo_id="acme/x", with_=["ids"])
    assert tree.configs["ids_only"] == {"train": len(store.read_dataset(dataset, "train")), "test": 4}
    loaded = datasets.load_dataset(str(tmp_path / "dry"), "ids_only", split="test")
    assert loaded["id"] == [d.id for d in store.read_dataset(dataset, split="test")]
    assert "`ids_only`" in (tmp_path / "dry" / "README.md").read_text()


def test_dry_run_is_deterministic_and_refuses_a_used_folder(dataset: Path, tmp_path: Path) -> None:
    a = pub.build_tree(dataset, tmp_path / "a", repo_id="acme/x")
    b = pub.build_tree(dataset, tmp_path / "b", repo_id="acme/x")
    assert _tree(a.root) == _tree(b.root)
    code, output = _cli("publish", dataset, "--repo-id", "acme/x", "--dry-run", tmp_path / "a")
    assert code == 1 and "not empty" in output


# ------------------------------------------------------------------------ the stand-in speaks the Hub protocol


def test_standin_resolve_headers_ranges_and_downloads(hub: HubStandin, tmp_path: Path) -> None:
    import hashlib

    import httpx
    from huggingface_hub import HfApi, hf_hub_download

    repo = "acme/protocol"
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(repo, repo_type="dataset")
    text, blob = b"hello\n", bytes(range(256)) * 1000  # 256 kB binary: LFS, multipart at 64 KiB chunks
    info = api.create_commit(
        repo, [pub_op("notes.txt", text), pub_op("data/blob.bin", blob)], commit_message="add", repo_type="dataset"
    )
    headers = {"authorization": f"Bearer {TOKEN}"}
    base = f"{hub.url}/datasets/{repo}/resolve/main"
    r = httpx.head(f"{base}/notes.txt", headers=headers)
    assert r.status_code == 200 and r.headers["X-Repo-Commit"] == info.oid
    assert r.headers["ETag"] == f'"{hashlib.sha1(b"blob 6" + bytes(1) + text).hexdigest()}"'
    assert r.headers["Content-Length"] == "6"
    r = httpx.head(f"{base}/data/blob.bin", headers=headers)
    assert r.status_code == 302 and r.headers["X-Linked-Size"] == str(len(blob))
    assert r.headers["X-Linked-Etag"] == f'"{hashlib.sha256(blob).hexdigest()}"'
    assert r.headers["Location"].startswith(hub.storage_url)  # another origin, like the Hub's CDN
    r = httpx.get(r.headers["Location"], headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == blob[10:20]
    r = httpx.head(f"{base}/missing.txt", headers=headers)
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound"
    r = httpx.head(f"{hub.url}/datasets/{repo}/resolve/nope/notes.txt", headers=headers)
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound"
    r = httpx.head(f"{hub.url}/datasets/acme/absent/resolve/main/x", headers=headers)
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
    r = httpx.head(f"{base}/notes.txt", headers={"authorization": "Bearer nope"})
    assert r.status_code == 401
    for name, content in (("notes.txt", text), ("data/blob.bin", blob)):
        path = hf_hub_download(repo, name, repo_type="dataset", cache_dir=tmp_path / "cache", endpoint=hub.url)
        assert Path(path).read_bytes() == content
    assert any(e.stage == "lfs_complete" for e in hub.log), "the 256 kB file went through multipart upload"


def test_standin_commit_rules(hub: HubStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    import hub_standin.server
    from huggingface_hub import CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError

    repo = "acme/rules"
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(repo, repo_type="dataset")
    first = api.create_commit(
        repo, [pub_op(f"f{i}.txt", b"%d" % i) for i in range(7)], commit_message="a", repo_type="dataset"
    )
    api.create_commit(repo, [pub_op("g.txt", b"g")], commit_message="b", repo_type="dataset")
    # a commit based on an older parent is refused (412), and changes nothing
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(
            repo, [pub_op("h.txt", b"h")], commit_message="c", repo_type="dataset", parent_commit=first.oid
        )
    assert exc.value.response.status_code == 412 and "h.txt" not in hub.files(repo)
    # deleting a file that is not there is an EntryNotFound error
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit(repo, [CommitOperationDelete("nope.txt")], commit_message="d", repo_type="dataset")
    # an upload without a commit is invisible; a commit naming an LFS object never uploaded is refused
    import httpx

    body = (
        json.dumps({"key": "header", "value": {"summary": "x"}})
        + "\n"
        + json.dumps({"key": "lfsFile", "value": {"path": "ghost.bin", "algo": "sha256", "oid": "0" * 64, "size": 3}})
        + "\n"
    )
    r = httpx.post(
        f"{hub.url}/api/datasets/{repo}/commit/main",
        content=body,
        headers={"authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 422 and "ghost.bin" not in hub.files(repo)
    # the tree listing is paginated with Link headers, and the client follows them
    monkeypatch.setattr(hub_standin.server, "PAGE_SIZE", 3)
    listed = {f.path for f in api.list_repo_tree(repo, repo_type="dataset", recursive=True)}
    assert listed == set(hub.files(repo))
    assert sum(1 for e in hub.log if e.stage == "tree") >= 3


def pub_op(path: str, data: bytes):  # type: ignore[no-untyped-def]
    from huggingface_hub import CommitOperationAdd

    return CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)


def test_streamed_build_shards_like_the_store(dataset: Path, tmp_path: Path) -> None:
    """The tree is built chunk by chunk; its dialogue shards are still byte-identical to the store's."""
    records = store.read_dataset(dataset, split="train")
    tree = pub.build_tree(dataset, tmp_path / "tree", rows_per_file=3, chunk=2)
    store.write_dataset(tmp_path / "ref", records, rows_per_file=3)
    ref = {p.name: p.read_bytes() for p in store.data_dir(tmp_path / "ref").glob("train-*.parquet")}
    got = {p.name: p.read_bytes() for p in store.data_dir(tree.root).glob("train-*.parquet")}
    assert len(ref) == -(-len(records) // 3) > 1 and got == ref
    items = store.read_table(tree.root, pub.CHECKLIST_ITEMS, split="train")
    assert items.to_pylist() == pub.checklist_items_table(records).to_pylist()
    assert len(store.split_files(tree.root, pub.CHECKLIST_ITEMS)["train"]) == len(ref)
    whole = pub.build_tree(dataset, tmp_path / "whole")
    # the card says the same whatever the chunking
    assert (whole.root / "README.md").read_text().split("---\n\n", 1)[1] == (tree.root / "README.md").read_text().split(
        "---\n\n", 1
    )[1]


def test_a_shard_with_bytes_that_are_not_utf8_fails_the_gate(dataset: Path, tmp_path: Path) -> None:
    """Parquet does not check strings when read: bytes that are not UTF-8 make their shard unreadable (the record
    path's reject, same message) and the publish stops — they are never copied into the Hub's files."""
    from conftest import break_utf8

    from cm2data.publish.errors import GateFailed
    from cm2data.sources import load

    records = store.read_dataset(dataset, split="train")
    records[0].messages[0].content += " MARKER-QZX"
    store.write_dataset(tmp_path / "src", records)
    break_utf8(next(store.data_dir(tmp_path / "src").glob("*.parquet")), "MARKER-QZX")
    _, read = load(tmp_path / "src")
    with pytest.raises(GateFailed) as exc:
        pub.build_tree(tmp_path / "src", tmp_path / "tree")
    assert [(r.rule, r.message, r.location) for r in exc.value.read_rejects] == [
        (r.rule, r.message, r.location) for r in read
    ]
    assert [r.rule for r in read] == ["parquet_unreadable"]
