"""Pulling a published dataset back from the Hub into a canonical dataset folder (``cm2data pull``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cm2data import __version__, store
from cm2data.publish.errors import PublishError
from cm2data.publish.hub import BRANCH, REPO_TYPE, check_repo_id, endpoint, hub_api, hub_errors


@dataclass
class PullResult:
    repo_id: str
    revision: str  # the commit pulled
    out: Path
    records: int
    splits: dict[str, int]


def pull(
    repo_id: str,
    out: Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PullResult:
    """Download the ``dialogues`` config of a published dataset into a canonical dataset folder ``out``.

    Every downloaded row is parsed back into a record (an unreadable row stops the pull); the folder is written
    under a temporary name and renamed at the end, so ``out`` is complete or absent.
    """
    from huggingface_hub import get_token, snapshot_download

    from cm2data.sources import load

    say = on_step or (lambda _m: None)
    check_repo_id(repo_id)
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} exists and is not empty; choose a new folder")
    token = token or get_token()
    api = hub_api(token)
    nothing = f"nothing was written to {out}"
    with hub_errors("reading the repository", repo_id, state=nothing):
        info = api.dataset_info(repo_id, revision=revision or BRANCH)
    sha = info.sha
    say(f"pulling {repo_id} at {sha[:12]}" + (f" ({revision})" if revision else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cm2data-pull-", dir=out.parent) as tmp:
        snap = Path(tmp) / "snapshot"
        with hub_errors("downloading", repo_id, state=nothing):
            snapshot_download(
                repo_id,
                repo_type=REPO_TYPE,
                revision=sha,
                local_dir=snap,
                token=token,
                endpoint=endpoint(),
                allow_patterns=["README.md", f"data/{store.DIALOGUES}/*.parquet"],
            )
        if not store.split_files(snap):
            raise PublishError(f"{repo_id}@{sha[:12]} is not a cm2data dataset: no data/{store.DIALOGUES}/*.parquet")
        staged = Path(tmp) / "dataset"
        splits: dict[str, int] = {}
        for split in store.split_files(snap):
            records, rejects = load(snap, "dataset", split=split)
            if rejects:
                r = rejects[0]
                raise PublishError(
                    f"{repo_id}@{sha[:12]}: {len(rejects)} rows of split {split} do not read as "
                    f"records (first: {r.rule} {r.where()}: {r.message})"
                )
            store.write_dataset(staged, records, split=split)
            splits[split] = len(records)
        header = {k: v for k, v in store.read_card_header(snap).items() if k not in ("configs", "dataset_info")}
        body = (
            f"# {repo_id}\n\nA checklist-reward dataset for multi-turn tool-using agents, pulled from the Hub "
            f"dataset `{repo_id}` at commit `{sha}` by cm2data {__version__}: the `dialogues` config, "
            f"{sum(splits.values())} records ({', '.join(f'{s}: {n}' for s, n in splits.items())}).\n\n"
            'Load it with `datasets.load_dataset("<this folder>", "dialogues")`.\n'
        )
        store.write_card(staged, body=body, extra_header=header)
        if out.exists():
            out.rmdir()
        staged.replace(out)
    return PullResult(repo_id, sha, out, sum(splits.values()), splits)
