"""The publish manifest: what a published tree was built from, so that a republish knows what changed.

Every tree :func:`~cm2data.publish.tree.build_tree` writes holds ``cm2data-publish.json`` at its root:

* ``gate_key`` — a hash of what decides the gate's verdict on a record: the cm2data version, the gate's rule names
  and its settings (the thinking policy);
* ``build_key`` — a hash of everything besides the records that decides the tree's bytes: the gate key, the
  exports asked for, license, title, repository id, shard size, and the content of every file of the source folder
  that is not a ``dialogues`` shard (the card header, ``rejects.jsonl``, the pipeline configuration, the judge
  agreement, which the card reads);
* ``shards`` — one entry per source shard (a parquet file of the ``dialogues`` config): split, file name, sha256 of
  its bytes and row count. A tree is only written when every record of every shard passed the gate, so each entry
  says "these exact bytes passed under ``gate_key``";
* ``files`` — every other file of the tree: ``[sha256, git blob sha1]`` of its content (the Hub reports the first
  for LFS files and the second for regular ones).

No timestamps: identical content must give a byte-identical manifest, or a republish would always commit.

:func:`plan` compares the manifest of the published head with the dataset folder about to be published: unchanged
(same build key, same shards, every published file still as the manifest lists it and no file the publish would
delete) means no gate, no build and no commit; otherwise the gate runs only over shards whose bytes are not among
the published shards that passed under the same gate key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cm2data import __version__, store

MANIFEST = "cm2data-publish.json"
FORMAT = 1


@dataclass(frozen=True)
class SourceShard:
    """One parquet file of a dataset folder's ``dialogues`` config."""

    split: str
    name: str
    sha256: str
    rows: int


@dataclass
class Manifest:
    gate_key: str
    build_key: str
    shards: list[SourceShard]
    files: dict[str, list[str]] = field(default_factory=dict)
    records: int = 0
    items: int = 0
    cm2data_version: str = __version__
    format: int = FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest; ``ValueError`` (naming what is wrong) for anything that is not one this code wrote."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{MANIFEST} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{MANIFEST} has format {data.get('format') if isinstance(data, dict) else None!r}")
        try:
            shards = [
                SourceShard(str(s["split"]), str(s["name"]), str(s["sha256"]), int(s["rows"])) for s in data["shards"]
            ]
            files = {str(k): [str(v[0]), str(v[1])] for k, v in dict(data["files"]).items()}
            return cls(
                str(data["gate_key"]),
                str(data["build_key"]),
                shards,
                files,
                int(data["records"]),
                int(data["items"]),
                str(data["cm2data_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{MANIFEST} is incomplete: {type(exc).__name__}: {exc}") from None


def sha256_file(path: Path) -> str:
    return file_hashes(path)[0]


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the content, git blob sha1) of a file — what the Hub reports for LFS and regular files."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def source_shards(src: Path) -> dict[Path, SourceShard]:
    """Every ``dialogues`` shard of the folder ``src``, in the order :func:`cm2data.store.split_files` gives."""
    out: dict[Path, SourceShard] = {}
    for split, paths in store.split_files(src).items():
        for path in paths:
            try:
                rows = pq.read_metadata(path).num_rows
            except Exception:  # a damaged file: the build reports it as a read reject; here it is just bytes
                rows = -1
            out[path] = SourceShard(split, path.name, sha256_file(path), rows)
    return out


def _hash(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def gate_key(rules: Sequence[str], thinking: str) -> str:
    return _hash({"cm2data": __version__, "rules": sorted(rules), "thinking": thinking})


def build_key(
    src: Path,
    *,
    gate: str,
    repo_id: str | None,
    exports: Sequence[str],
    license: str | None,
    pretty_name: str | None,
    rows_per_file: int,
) -> str:
    """See the module docstring; ``src``'s non-shard files are hashed by content and relative path."""
    shards = {p.resolve() for paths in store.split_files(src).values() for p in paths}
    sidecars = {
        p.relative_to(src).as_posix(): sha256_file(p)
        for p in sorted(src.rglob("*"))
        if p.is_file() and p.resolve() not in shards
    }
    return _hash(
        {
            "gate": gate,
            "repo_id": repo_id,
            "exports": list(exports),
            "license": license,
            "pretty_name": pretty_name,
            "rows_per_file": rows_per_file,
            "sidecars": sidecars,
        }
    )


@dataclass
class Plan:
    """What a republish has to do. ``unchanged``: nothing (no gate, no build, no commit); else the gate skips the
    shards whose sha256 is in ``trusted``. ``reason`` says why, for the report."""

    unchanged: bool
    trusted: frozenset[str]
    reason: str


def plan(
    remote: Manifest | None,
    *,
    gate: str,
    build: str,
    shards: Iterable[SourceShard],
    remote_files: Mapping[str, tuple[str, str]],
    deletable: Iterable[str],
) -> Plan:
    """Compare the published head (its manifest, and ``remote_files``: path → ``("lfs", sha256)`` or ``("blob",
    git sha1)``, as the Hub lists them) with the folder about to be published (``gate``/``build`` keys, ``shards``).
    ``deletable``: remote paths a publish of this tree would delete (not in the manifest, not kept)."""
    shards = list(shards)
    if remote is None:
        return Plan(False, frozenset(), "no manifest on the Hub (first publish, or published by an older cm2data)")
    trusted = frozenset(s.sha256 for s in remote.shards) if remote.gate_key == gate else frozenset()
    if remote.gate_key != gate:
        return Plan(False, trusted, "the gate changed since the last publish (cm2data version, rules or settings)")
    if sorted(asdict(s).items() for s in remote.shards) != sorted(asdict(s).items() for s in shards):
        changed = sum(1 for s in shards if s.sha256 not in trusted)
        return Plan(False, trusted, f"{changed} of {len(shards)} shards changed")
    if remote.build_key != build:
        return Plan(False, trusted, "the shards are unchanged but the card's inputs or the publish options changed")
    tampered = [p for p, hashes in remote.files.items() if not _same(remote_files.get(p), hashes)]
    if tampered or MANIFEST not in remote_files:
        return Plan(False, trusted, f"published files differ from the manifest ({', '.join(sorted(tampered)[:3])})")
    extra = sorted(deletable)
    if extra:
        return Plan(False, trusted, f"files on the Hub that a publish deletes: {', '.join(extra[:3])}")
    return Plan(True, trusted, f"all {len(shards)} shards and the publish options match the published manifest")


def _same(remote: tuple[str, str] | None, hashes: Sequence[str]) -> bool:
    if remote is None:
        return False
    kind, value = remote
    return value == (hashes[0] if kind == "lfs" else hashes[1])
