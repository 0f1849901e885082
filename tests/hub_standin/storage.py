"""Repositories of the Hub stand-in, kept on disk as git-like snapshots.

::

    ROOT/objects/blobs/<git sha1>      contents of regular (non-LFS) files, addressed like git blobs
    ROOT/lfs/<type>/<ns>/<name>/<sha256>
                                       LFS objects of one repository (like the Hub, objects are per repository: an
                                       upload to one repository does not serve another), stored once uploaded and
                                       verified; visible only once a commit points at them, so an upload without a
                                       commit changes no repository
    ROOT/uploads/                      partial uploads (an interrupted upload never becomes an object)
    ROOT/repos/<type>/<ns>/<name>.json one file per repository: settings, branches, tags and every commit, each
                                       commit holding the full tree (path → entry) it produced

A commit is applied by computing its whole new tree in memory and replacing the repository file atomically
(write to a temporary name, then ``os.replace``), so a reader sees the old state or the new one, never a mixture.
Only the standard library is used.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The ``.gitattributes`` the Hub puts in the initial commit of a new dataset repository (LFS patterns).
DEFAULT_GITATTRIBUTES = (
    "\n".join(
        f"{pattern} filter=lfs diff=lfs merge=lfs -text"
        for pattern in (
            "*.7z",
            "*.arrow",
            "*.bin",
            "*.bz2",
            "*.ckpt",
            "*.ftz",
            "*.gz",
            "*.h5",
            "*.joblib",
            "*.lfs.*",
            "*.lz4",
            "*.mds",
            "*.mlmodel",
            "*.model",
            "*.msgpack",
            "*.npy",
            "*.npz",
            "*.onnx",
            "*.ot",
            "*.parquet",
            "*.pb",
            "*.pickle",
            "*.pkl",
            "*.pt",
            "*.pth",
            "*.rar",
            "*.safetensors",
            "saved_model/**/*",
            "*.tar.*",
            "*.tar",
            "*.tflite",
            "*.tgz",
            "*.wasm",
            "*.xz",
            "*.zip",
            "*.zst",
            "*tfevents*",
            "*.wav",
            "*.mp3",
            "*.ogg",
            "*.jpg",
            "*.jpeg",
            "*.png",
            "*.gif",
            "*.webp",
            "*.bmp",
            "*.tiff",
        )
    )
    + "\n"
)

#: Files at least this large are LFS files whatever their name (the Hub's rule: 10 MB).
LFS_SIZE_THRESHOLD = 10 * 1000 * 1000

REPO_TYPES = ("model", "dataset", "space")


class StandinError(Exception):
    """An error the HTTP layer turns into a Hub-style response (status, ``X-Error-Code``, ``X-Error-Message``)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(time.time() * 1000) % 1000:03d}Z"


@dataclass
class Entry:
    """One file of a tree: its git oid and size, plus the LFS object for LFS files."""

    oid: str
    size: int
    lfs: dict[str, Any] | None = None  # {"oid": sha256, "size": n, "pointerSize": m}

    def as_json(self) -> dict[str, Any]:
        return {"oid": self.oid, "size": self.size, "lfs": self.lfs}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(data["oid"], data["size"], data.get("lfs"))


class Storage:
    """All repositories and objects under one root folder. Thread-safe (one lock for repository updates)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("objects/blobs", "lfs", "uploads", "repos"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # ------------------------------------------------------------------------------------------------ objects

    def blob_path(self, oid: str) -> Path:
        return self.root / "objects" / "blobs" / oid

    def lfs_path(self, repo_type: str, repo_id: str, sha256: str) -> Path:
        return self.root / "lfs" / repo_type / repo_id / sha256

    def has_lfs(self, repo_type: str, repo_id: str, sha256: str, size: int | None = None) -> bool:
        path = self.lfs_path(repo_type, repo_id, sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_blob(self, data: bytes) -> Entry:
        oid = git_blob_oid(data)
        path = self.blob_path(oid)
        if not path.exists():
            tmp = self.root / "uploads" / f"{oid}.{threading.get_ident()}.partial"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Entry(oid, len(data))

    def lfs_entry(self, sha256: str, size: int) -> Entry:
        pointer = lfs_pointer(sha256, size)
        return Entry(git_blob_oid(pointer), size, {"oid": sha256, "size": size, "pointerSize": len(pointer)})

    def read_file(self, repo: dict[str, Any], entry: Entry) -> Path:
        return self.lfs_path(repo["type"], repo["id"], entry.lfs["oid"]) if entry.lfs else self.blob_path(entry.oid)

    def new_upload(self, name: str) -> Path:
        return self.root / "uploads" / f"{name}.{threading.get_ident()}.{time.monotonic_ns()}.partial"

    def store_lfs(self, tmp: Path, repo_type: str, repo_id: str, sha256: str, size: int) -> None:
        """Move a finished upload into the object store if its hash and size are right (else drop it)."""
        actual_size = tmp.stat().st_size
        digest = hashlib.sha256()
        with tmp.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if actual_size != size or digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise StandinError(
                400,
                f"uploaded content does not match: expected sha256 {sha256} size {size}, "
                f"got {digest.hexdigest()} size {actual_size}",
                "BadDigest",
            )
        dest = self.lfs_path(repo_type, repo_id, sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    # ----------------------------------------------------------------------------------------------- repos

    def repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / repo_type / f"{repo_id}.json"

    def load(self, repo_type: str, repo_id: str) -> dict[str, Any] | None:
        path = self.repo_file(repo_type, repo_id)
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def save(self, repo: dict[str, Any]) -> None:
        path = self.repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.partial")
        tmp.write_text(json.dumps(repo), encoding="utf-8")
        os.replace(tmp, path)

    def list_repos(self) -> list[tuple[str, str]]:
        out = []
        for path in sorted((self.root / "repos").glob("*/*/*.json")):
            rel = path.relative_to(self.root / "repos")
            out.append((rel.parts[0], f"{rel.parts[1]}/{rel.stem}"))
        return out

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> dict[str, Any]:
        with self.lock:
            if self.load(repo_type, repo_id) is not None:
                raise StandinError(409, f"You already created this {repo_type} repo")
            now = now_iso()
            repo: dict[str, Any] = {
                "id": repo_id,
                "type": repo_type,
                "private": private,
                "created_at": now,
                "branches": {},
                "tags": {},
                "commits": {},
            }
            gitattributes = self.put_blob(DEFAULT_GITATTRIBUTES.encode())
            oid = self._new_commit(repo, None, {".gitattributes": gitattributes}, "initial commit", "", author, now)
            repo["branches"]["main"] = oid
            self.save(repo)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            path = self.repo_file(repo_type, repo_id)
            if not path.exists():
                raise StandinError(404, "Repository not found", "RepoNotFound")
            path.unlink()
            shutil.rmtree(self.root / "lfs" / repo_type / repo_id, ignore_errors=True)

    @staticmethod
    def _new_commit(
        repo: dict[str, Any],
        parent: str | None,
        tree: dict[str, Entry],
        title: str,
        message: str,
        author: str,
        date: str,
    ) -> str:
        tree_oid = tree_hash(tree, "")
        text = (
            f"tree {tree_oid}\n"
            + (f"parent {parent}\n" if parent else "")
            + f"author {author} {date}\n\n{title}\n\n{message}"
        )
        oid = hashlib.sha1(text.encode()).hexdigest()
        repo["commits"][oid] = {
            "parents": [parent] if parent else [],
            "title": title,
            "message": message,
            "date": date,
            "authors": [author],
            "tree": {p: e.as_json() for p, e in tree.items()},
        }
        return oid

    # ------------------------------------------------------------------------------------------- revisions

    @staticmethod
    def resolve(repo: dict[str, Any], revision: str) -> str:
        """A branch, tag, ``refs/heads/…``/``refs/tags/…`` name or a full commit id → commit id."""
        rev = revision
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/") :]
            if rev in repo["branches"]:
                return repo["branches"][rev]
        elif rev.startswith("refs/tags/"):
            rev = rev[len("refs/tags/") :]
            if rev in repo["tags"]:
                return repo["tags"][rev]["target"]
        else:
            if rev in repo["branches"]:
                return repo["branches"][rev]
            if rev in repo["tags"]:
                return repo["tags"][rev]["target"]
            if rev in repo["commits"]:
                return rev
        raise StandinError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def tree(repo: dict[str, Any], commit: str) -> dict[str, Entry]:
        return {p: Entry.from_json(e) for p, e in repo["commits"][commit]["tree"].items()}

    def last_commits(self, repo: dict[str, Any], commit: str) -> dict[str, dict[str, Any]]:
        """For each path of ``commit``'s tree (folders too), the newest commit that changed it."""
        out: dict[str, dict[str, Any]] = {}
        chain = []
        c: str | None = commit
        while c:
            chain.append(c)
            parents = repo["commits"][c]["parents"]
            c = parents[0] if parents else None
        head_tree = repo["commits"][commit]["tree"]
        for path in head_tree:
            for i, c in enumerate(chain):
                older = repo["commits"][chain[i + 1]]["tree"] if i + 1 < len(chain) else {}
                if older.get(path) != head_tree[path]:
                    info = repo["commits"][c]
                    out[path] = {"id": c, "title": info["title"], "date": info["date"]}
                    break
        for path, info in list(out.items()):
            parts = path.split("/")[:-1]
            for k in range(1, len(parts) + 1):
                folder = "/".join(parts[:k])
                if folder not in out or out[folder]["date"] < info["date"]:
                    out[folder] = info
        return out

    # ---------------------------------------------------------------------------------------------- commit

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        ops: list[dict[str, Any]],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None,
    ) -> str:
        """Apply ``ops`` (``file``/``lfsFile``/``deletedFile``/``deletedFolder`` values) on ``branch`` in one step."""
        with self.lock:
            repo = self.load(repo_type, repo_id)
            if repo is None:
                raise StandinError(404, "Repository not found", "RepoNotFound")
            if branch not in repo["branches"]:
                raise StandinError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo["branches"][branch]
            if parent_commit is not None and parent_commit != head:
                raise StandinError(412, "A commit has happened since. Please refresh and try again.")
            tree = self.tree(repo, head)
            for op in ops:
                key, value = op["key"], op["value"]
                path = value.get("path", "").strip("/")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise StandinError(400, f"unsupported encoding {value.get('encoding')!r}")
                    data = base64.b64decode(value["content"])
                    tree[path] = self.put_blob(data)
                elif key == "lfsFile":
                    sha, size = value["oid"], value.get("size")
                    if not self.has_lfs(repo_type, repo_id, sha):
                        raise StandinError(
                            422,
                            "Your push was rejected because an LFS pointer pointed to a file "
                            f"that does not exist (oid {sha}, path {path})",
                        )
                    actual = self.lfs_path(repo_type, repo_id, sha).stat().st_size
                    if size is not None and size != actual:
                        raise StandinError(422, f"LFS object {sha} has size {actual}, not {size}")
                    tree[path] = self.lfs_entry(sha, actual)
                elif key == "deletedFile":
                    if path not in tree:
                        raise StandinError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    doomed = [p for p in tree if p.startswith(path + "/")]
                    if not doomed:
                        raise StandinError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
                else:
                    raise StandinError(400, f"unknown commit operation {key!r}")
            oid = self._new_commit(repo, head, tree, title, message, author, now_iso())
            repo["branches"][branch] = oid
            repo["last_modified"] = repo["commits"][oid]["date"]
            self.save(repo)
            return oid

    def create_tag(self, repo_type: str, repo_id: str, revision: str, tag: str, message: str | None) -> str:
        with self.lock:
            repo = self.load(repo_type, repo_id)
            if repo is None:
                raise StandinError(404, "Repository not found", "RepoNotFound")
            target = self.resolve(repo, revision)
            if tag in repo["tags"]:
                raise StandinError(409, f"Tag {tag} already exists")
            if not valid_ref_name(tag):
                raise StandinError(400, f"Invalid tag name {tag!r}")
            repo["tags"][tag] = {"target": target, "message": message or ""}
            self.save(repo)
            return target

    def delete_tag(self, repo_type: str, repo_id: str, tag: str) -> None:
        with self.lock:
            repo = self.load(repo_type, repo_id)
            if repo is None:
                raise StandinError(404, "Repository not found", "RepoNotFound")
            if tag not in repo["tags"]:
                raise StandinError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
            del repo["tags"][tag]
            self.save(repo)


def tree_hash(tree: dict[str, Entry], prefix: str) -> str:
    """A git-like tree id for the folder ``prefix`` of ``tree`` (sha1 over its sorted entries)."""
    lines = sorted(f"{p}\0{e.oid}" for p, e in tree.items() if not prefix or p.startswith(prefix + "/"))
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def valid_ref_name(name: str) -> bool:
    """git's ``check-ref-format`` rules, the ones that matter for tags and branches."""
    bad = (" ", "~", "^", ":", "?", "*", "[", "\\", "..", "@{", "//")
    return (
        bool(name)
        and not any(b in name for b in bad)
        and not name.startswith(("/", ".", "-"))
        and not name.endswith(("/", ".", ".lock"))
        and all(ord(c) >= 32 and ord(c) != 127 for c in name)
    )


def lfs_patterns(gitattributes: str) -> list[str]:
    return [
        line.split()[0]
        for line in gitattributes.splitlines()
        if line.strip() and not line.startswith("#") and "filter=lfs" in line
    ]


def is_lfs(path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
    """The Hub's upload-mode rule: LFS when ``.gitattributes`` says so, when the file is large, or binary."""
    name = path.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns):
        return True
    if size >= LFS_SIZE_THRESHOLD:
        return True
    return b"\0" in sample
