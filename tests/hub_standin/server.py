"""HTTP front of the Hub stand-in: the Hub API on one loopback port, the object storage ("S3/CDN") on another.

The routes are the ones the unmodified ``huggingface_hub`` (2.x) and ``datasets`` (5.x) clients call, with the
status codes and headers those clients read (``X-Error-Code``, ``X-Error-Message``, ``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``, ``X-Linked-Size``, ``Location``, ``Link`` pagination). Protocol sources: ``hf_api.py``,
``_commit_api.py``, ``lfs.py``, ``file_download.py`` and ``utils/_http.py`` of huggingface_hub.

Hub API (``http://127.0.0.1:PORT``)::

    GET  /api/whoami-v2
    POST /api/repos/create                       DELETE /api/repos/delete
    POST /api/validate-yaml
    GET  /api/{type}s/{repo}[/revision/{rev}]    repo info (sha, siblings, cardData, private, …)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}] ?recursive=&expand=&cursor=  (Link header pagination)
    POST /api/{type}s/{repo}/paths-info/{rev}    form: paths=…&expand=…
    POST /api/{type}s/{repo}/preupload/{rev}     → uploadMode lfs|regular, remote oid
    POST /api/{type}s/{repo}/commit/{rev}        ndjson: header, file, lfsFile, deletedFile, deletedFolder
    GET  /api/{type}s/{repo}/refs                GET /api/{type}s/{repo}/commits/{rev}
    POST /api/{type}s/{repo}/tag/{rev}           DELETE /api/{type}s/{repo}/tag/{tag}
    GET  /api/{type}s/{repo}/auth-check[/write]
    POST /{prefix}{repo}.git/info/lfs/objects/batch         LFS batch API (basic and multipart transfers)
    POST /{prefix}{repo}.git/info/lfs/objects/verify        LFS verify
    POST /{prefix}{repo}.git/info/lfs/complete/{upload id}  multipart completion
    GET|HEAD /{prefix}{repo}/resolve/{rev}/{path}           file, or 302 to the storage for LFS files

Storage (``http://127.0.0.1:PORT2``, a different origin, like the Hub's CDN and S3)::

    PUT /upload/{upload id}[/part/{n}]   signed upload URLs handed out by the batch API
    GET|HEAD /objects/{type}/{repo}/{sha256}   LFS downloads (signed; Range supported)

Stand-in administration (not part of the Hub API)::

    POST /_standin/faults  {stage, after, times, status, mode}    DELETE /_standin/faults
    POST /_standin/tokens  {token, user, orgs, role}              GET /_standin/log
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hub_standin.storage import (
    REPO_TYPES,
    Entry,
    StandinError,
    Storage,
    is_lfs,
    lfs_patterns,
    tree_hash,
)

PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
PAGE_SIZE = 1000
PAGE_SIZE_EXPANDED = 50
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class Token:
    user: str
    orgs: tuple[str, ...] = ()
    role: str = "write"  # "write" or "read"


@dataclass
class Fault:
    """Make requests of one stage fail: let ``after`` through, then fail ``times`` of them (``None``: all).

    ``mode="error"`` reads the request body then answers ``status``; ``mode="disconnect"`` reads half the body and
    drops the connection (a network failure in the middle of an upload); ``mode="stall"`` holds the request until
    the fault is cleared (or ``stall_s`` seconds pass), then serves it normally (a client stuck at a known point,
    for tests that kill it there). ``path``, when set, limits the fault to requests whose path contains it.
    """

    stage: str
    after: int = 0
    times: int | None = 1
    status: int = 500
    mode: str = "error"
    message: str = "injected fault"
    seen: int = 0
    fired: int = 0
    path: str | None = None
    stall_s: float = 120.0


@dataclass
class LogEntry:
    method: str
    path: str
    stage: str
    status: int = 0
    bytes_in: int = 0
    user: str | None = None


@dataclass
class _Upload:
    oid: str
    size: int
    repo: tuple[str, str]
    chunk_size: int | None = None
    parts: int = 0
    part_etags: dict[int, str] = field(default_factory=dict)


class HubState:
    """Everything both servers share: storage, tokens, faults, the request log and pending uploads."""

    def __init__(self, root: Path, *, multipart_chunk_size: int = 64 * 2**20) -> None:
        self.storage = Storage(root)
        self.tokens: dict[str, Token] = {}
        self.faults: list[Fault] = []
        self.log: list[LogEntry] = []
        self.uploads: dict[str, _Upload] = {}
        self.multipart_chunk_size = multipart_chunk_size
        self.secret = secrets.token_bytes(16)
        self.lock = threading.Lock()
        self.hub_url = ""
        self.storage_url = ""

    def sign(self, *parts: Any) -> str:
        return hmac.new(self.secret, "|".join(map(str, parts)).encode(), hashlib.sha256).hexdigest()[:32]

    def fault_for(self, stage: str, path: str = "") -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.stage not in (stage, "any") or (f.path is not None and f.path not in path):
                    continue
                f.seen += 1
                if f.seen > f.after and (f.times is None or f.fired < f.times):
                    f.fired += 1
                    return f
        return None


# ---------------------------------------------------------------------------------------------------- handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cm2data-hub-standin/1"
    state: HubState
    role: str  # "hub" or "storage"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -------------------------------------------------------------------------------------------- plumbing

    def _dispatch(self) -> None:
        self._entry = LogEntry(self.command, self.path, "?")
        self._body_read = False
        self.state.log.append(self._entry)
        try:
            if self.role == "hub":
                self._route_hub()
            else:
                self._route_storage()
        except _Answered:
            pass
        except StandinError as exc:
            self._drain()
            self._error(exc.status, exc.message, exc.code)
        except _Disconnect:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the stand-in: answer 500 with the reason
            self._drain()
            self._error(500, f"stand-in error: {type(exc).__name__}: {exc}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _stage(self, stage: str, *, user: str | None = None) -> None:
        self._entry.stage = stage
        self._entry.user = user
        fault = self.state.fault_for(stage, unquote(self.path))
        if fault is None:
            return
        if fault.mode == "stall":
            deadline = time.monotonic() + fault.stall_s
            while fault in self.state.faults and time.monotonic() < deadline:
                time.sleep(0.02)
            return
        if fault.mode == "disconnect":
            self._read_body(limit=max(1, self._content_length() // 2))
            raise _Disconnect()
        self._drain()
        if self.role == "storage":
            body = (
                f'<?xml version="1.0"?><Error><Code>RequestTimeout</Code><Message>{fault.message}</Message></Error>'
            ).encode()
            self._send(fault.status, body, {"Content-Type": "application/xml"})
            raise _Answered()
        raise StandinError(fault.status, fault.message)

    def _content_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _read_body(self, limit: int | None = None, sink: Any = None) -> bytes:
        """Read the request body (Content-Length or chunked), into ``sink`` if given; ``limit`` stops early."""
        self._body_read = True
        chunks: list[bytes] = []
        total = 0

        def take(data: bytes) -> None:
            nonlocal total
            total += len(data)
            if sink is not None:
                sink.write(data)
            else:
                chunks.append(data)

        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline()
                take(data)
                if limit is not None and total >= limit:
                    break
        else:
            remaining = self._content_length() if limit is None else min(limit, self._content_length())
            while remaining > 0:
                data = self.rfile.read(min(remaining, 1 << 20))
                if not data:
                    break
                take(data)
                remaining -= len(data)
        self._entry.bytes_in += total
        return b"".join(chunks)

    def _drain(self) -> None:
        if not self._body_read:
            try:
                self._read_body(sink=_Null())
            except OSError:
                self.close_connection = True

    def _json_body(self) -> Any:
        raw = self._read_body()
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise StandinError(400, f"invalid JSON body: {exc}") from None

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._entry.status = status
        self.send_response(status)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message.encode("ascii", "replace").decode()}
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status, headers)

    # --------------------------------------------------------------------------------------------- auth

    def _user(self) -> Token | None:
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        token = header.removeprefix("Bearer ").strip()
        found = self.state.tokens.get(token)
        if found is None:
            raise StandinError(401, "Invalid credentials in Authorization header")
        return found

    @staticmethod
    def _namespaces(user: Token | None) -> set[str]:
        return set() if user is None else {user.user, *user.orgs}

    def _repo_read(self, rtype: str, rid: str, user: Token | None) -> dict[str, Any]:
        repo = self.state.storage.load(rtype, rid)
        if repo is None or (repo["private"] and rid.split("/")[0] not in self._namespaces(user)):
            raise StandinError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _repo_write(self, rtype: str, rid: str, user: Token | None) -> dict[str, Any]:
        repo = self._repo_read(rtype, rid, user)
        self._check_write(rid.split("/")[0], user, f"write to {rtype} {rid}")
        return repo

    @staticmethod
    def _check_write(namespace: str, user: Token | None, what: str) -> None:
        if user is None:
            raise StandinError(401, f"You must be authenticated to {what}")
        if namespace not in {user.user, *user.orgs}:
            raise StandinError(
                403,
                f"You don't have the rights to {what}: namespace {namespace!r} is not "
                f"{user.user!r} or one of its organizations",
            )
        if user.role != "write":
            raise StandinError(403, f"Your token has the {user.role!r} role: it cannot {what}")

    # ------------------------------------------------------------------------------------------ routing

    def _route_hub(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        raw = [p for p in url.path.split("/")]
        seg = [unquote(p) for p in raw[1:]]
        method = self.command
        if seg[:1] == ["_standin"]:
            return self._admin(seg[1:], method)
        if seg[:2] == ["api", "whoami-v2"]:
            self._stage("whoami")
            user = self._user()
            if user is None:
                raise StandinError(401, "Invalid credentials in Authorization header")
            return self._json(
                {
                    "type": "user",
                    "id": hashlib.sha1(user.user.encode()).hexdigest()[:24],
                    "name": user.user,
                    "fullname": user.user,
                    "email": None,
                    "emailVerified": False,
                    "isPro": False,
                    "orgs": [{"type": "org", "name": o, "roleInOrg": "write"} for o in user.orgs],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": user.role}},
                }
            )
        if seg[:2] == ["api", "agent-harnesses"] and method == "GET":  # the client's agent registry: empty
            self._stage("agent_harnesses")
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if seg[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if seg[:3] == ["api", "repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if seg[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if len(seg) >= 4 and seg[0] == "api" and seg[1] in ("models", "datasets", "spaces"):
            rtype = seg[1][:-1]
            rid = f"{seg[2]}/{seg[3]}"
            return self._repo_api(rtype, rid, seg[4:], raw[5:], query, method)
        # /{prefix}{ns}/{name}.git/info/lfs/… and /{prefix}{ns}/{name}/resolve/{rev}/{path}
        rtype = "model"
        rest = seg
        if seg and seg[0] in ("datasets", "spaces"):
            rtype = seg[0][:-1]
            rest = seg[1:]
        if len(rest) >= 2 and rest[1].endswith(".git") and rest[2:4] == ["info", "lfs"]:
            return self._lfs(rtype, f"{rest[0]}/{rest[1][:-4]}", rest[4:], method)
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(rtype, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        self._stage("unknown")
        raise StandinError(404, f"stand-in: no route for {method} {url.path}")

    def _route_storage(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        seg = [unquote(p) for p in url.path.split("/")[1:]]
        if seg[:1] == ["upload"] and self.command == "PUT":
            return self._storage_put(seg[1], int(seg[3]) if seg[2:3] == ["part"] else None, query)
        if seg[:1] == ["objects"] and self.command in ("GET", "HEAD") and len(seg) == 5:
            return self._storage_get(seg[1], f"{seg[2]}/{seg[3]}", seg[4], query)
        self._stage("unknown")
        raise StandinError(404, f"stand-in storage: no route for {self.command} {url.path}")

    # ------------------------------------------------------------------------------------------- admin

    def _admin(self, seg: list[str], method: str) -> None:
        self._entry.stage = "admin"
        st = self.state
        if seg == ["faults"] and method == "POST":
            data = self._json_body()
            st.faults.append(Fault(**data))
            return self._json({"ok": True})
        if seg == ["faults"] and method == "DELETE":
            st.faults.clear()
            return self._json({"ok": True})
        if seg == ["tokens"] and method == "POST":
            data = self._json_body()
            st.tokens[data["token"]] = Token(data["user"], tuple(data.get("orgs", ())), data.get("role", "write"))
            return self._json({"ok": True})
        if seg == ["log"] and method == "GET":
            return self._json([asdict(e) for e in st.log if e.stage != "admin"])
        raise StandinError(404, "unknown admin route")

    # -------------------------------------------------------------------------------------- repositories

    def _create_repo(self) -> None:
        self._stage("create_repo")
        user = self._user()
        data = self._json_body()
        rtype = data.get("type") or "model"
        if rtype not in REPO_TYPES:
            raise StandinError(400, f"Invalid repo type {rtype!r}")
        name = data.get("name") or ""
        namespace = data.get("organization") or (user.user if user else "")
        if not _NAME_RE.match(name) or ".." in name or name.endswith((".git", ".")):
            raise StandinError(400, f"Repository name {name!r} is invalid")
        self._check_write(namespace, user, f"create a {rtype} under the namespace {namespace!r}")
        private = data.get("private")
        if "visibility" in data:
            private = data["visibility"] == "private"
        rid = f"{namespace}/{name}"
        prefix = PREFIXES[rtype]
        repo_url = f"{self.state.hub_url}/{prefix}{rid}"
        try:
            self.state.storage.create_repo(rtype, rid, private=bool(private), author=user.user if user else "")
        except StandinError as exc:
            if exc.status == 409:
                self._drain()
                return self._json({"error": exc.message, "url": repo_url}, 409, {"X-Error-Message": exc.message})
            raise
        self._json({"url": repo_url, "name": rid, "id": hashlib.sha1(rid.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        self._stage("delete_repo")
        user = self._user()
        data = self._json_body()
        rtype = data.get("type") or "model"
        namespace = data.get("organization") or (user.user if user else "")
        rid = f"{namespace}/{data.get('name')}"
        self._repo_read(rtype, rid, user)
        self._check_write(namespace, user, f"delete {rid}")
        self.state.storage.delete_repo(rtype, rid)
        self._json({})

    def _validate_yaml(self) -> None:
        self._stage("validate_yaml")
        self._user()
        data = self._json_body()
        errors = [{"message": m} for m in _yaml_problems(data.get("content", ""))]
        if errors:
            return self._json({"errors": errors, "warnings": []}, 400)
        self._json({"errors": [], "warnings": []})

    def _repo_api(
        self, rtype: str, rid: str, seg: list[str], raw: list[str], query: dict[str, list[str]], method: str
    ) -> None:
        st = self.state
        op = seg[0] if seg else ""
        if not seg and method == "GET":
            return self._repo_info(rtype, rid, "main", query)
        if op == "revision" and method == "GET" and len(seg) >= 2:
            return self._repo_info(rtype, rid, "/".join(seg[1:]), query)
        if op == "tree" and method == "GET" and len(seg) >= 2:
            return self._tree(rtype, rid, seg[1], "/".join(seg[2:]).strip("/"), query)
        if op == "paths-info" and method == "POST" and len(seg) >= 2:
            return self._paths_info(rtype, rid, "/".join(seg[1:]))
        if op == "preupload" and method == "POST" and len(seg) >= 2:
            return self._preupload(rtype, rid, "/".join(seg[1:]), query)
        if op == "commit" and method == "POST" and len(seg) >= 2:
            return self._commit(rtype, rid, "/".join(seg[1:]), query)
        if op == "refs" and method == "GET":
            self._stage("refs")
            repo = self._repo_read(rtype, rid, self._user())
            refs = {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                    for b, c in sorted(repo["branches"].items())
                ],
                "tags": [
                    {"name": t, "ref": f"refs/tags/{t}", "targetCommit": v["target"]}
                    for t, v in sorted(repo["tags"].items())
                ],
                "converts": [],
            }
            if query.get("include_prs", ["0"])[-1] in ("1", "true", "True"):
                refs["pullRequests"] = []
            return self._json(refs)
        if op == "commits" and method == "GET":
            self._stage("commits")
            repo = self._repo_read(rtype, rid, self._user())
            commit = st.storage.resolve(repo, "/".join(seg[1:]) or "main")
            out = []
            while commit:
                info = repo["commits"][commit]
                out.append(
                    {
                        "id": commit,
                        "title": info["title"],
                        "message": info["message"],
                        "authors": [{"user": a} for a in info["authors"]],
                        "date": info["date"],
                    }
                )
                commit = info["parents"][0] if info["parents"] else None
            return self._json(out)
        if op == "tag" and len(seg) >= 2:
            self._stage("tag")
            user = self._user()
            self._repo_write(rtype, rid, user)
            if method == "POST":
                data = self._json_body()
                st.storage.create_tag(rtype, rid, "/".join(seg[1:]), data.get("tag", ""), data.get("message"))
                return self._json({})
            if method == "DELETE":
                st.storage.delete_tag(rtype, rid, "/".join(seg[1:]))
                return self._json({})
        if op == "auth-check" and method == "GET":
            self._stage("auth_check")
            user = self._user()
            if seg[1:2] == ["write"]:
                self._repo_write(rtype, rid, user)
            else:
                self._repo_read(rtype, rid, user)
            return self._json({})
        self._stage("unknown")
        raise StandinError(404, f"stand-in: no route for {method} /api/{rtype}s/{rid}/{'/'.join(seg)}")

    def _repo_info(self, rtype: str, rid: str, revision: str, query: dict[str, list[str]]) -> None:
        self._stage("repo_info")
        st = self.state
        repo = self._repo_read(rtype, rid, self._user())
        commit = st.storage.resolve(repo, revision)
        tree = st.storage.tree(repo, commit)
        blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings = []
        for path, e in sorted(tree.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update({"size": e.size, "blobId": e.oid})
                if e.lfs:
                    sib["lfs"] = {"size": e.lfs["size"], "sha256": e.lfs["oid"], "pointerSize": e.lfs["pointerSize"]}
            siblings.append(sib)
        card = None
        if "README.md" in tree:
            readme = st.storage.read_file(repo, tree["README.md"])
            card = _front_matter(readme.read_text(encoding="utf-8", errors="replace"))
        info = {
            "_id": hashlib.sha1(rid.encode()).hexdigest()[:24],
            "id": rid,
            "author": rid.split("/")[0],
            "sha": commit,
            "lastModified": repo["commits"][commit]["date"],
            "createdAt": repo["created_at"],
            "private": repo["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": (card or {}).get("tags", []) if isinstance((card or {}).get("tags", []), list) else [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in tree.values()),
        }
        if card is not None:
            info["cardData"] = card
        self._json(info)

    def _entry_json(self, path: str, e: Entry | None, tree: dict[str, Entry], last: dict[str, Any] | None) -> dict:
        if e is None:
            out: dict[str, Any] = {"type": "directory", "oid": tree_hash(tree, path), "size": 0, "path": path}
        else:
            out = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
            if e.lfs:
                out["lfs"] = dict(e.lfs)
        if last is not None and path in last:
            out["lastCommit"] = last[path]
        return out

    def _tree(self, rtype: str, rid: str, revision: str, path: str, query: dict[str, list[str]]) -> None:
        self._stage("tree")
        st = self.state
        repo = self._repo_read(rtype, rid, self._user())
        commit = st.storage.resolve(repo, revision)
        tree = st.storage.tree(repo, commit)
        recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[-1].lower() in ("1", "true")
        folders = {"/".join(p.split("/")[:k]) for p in tree for k in range(1, p.count("/") + 1)}
        if path and path not in folders:
            if path in tree:  # listing a file gives the file
                return self._json([self._entry_json(path, tree[path], tree, None)])
            raise StandinError(404, f"Entry not found: {path}", "EntryNotFound")
        prefix = f"{path}/" if path else ""
        names: list[str] = []
        for p in sorted(set(tree) | folders):
            if not p.startswith(prefix):
                continue
            if not recursive and "/" in p[len(prefix) :]:
                continue
            names.append(p)
        # folders before files at each level, like the Hub
        names.sort(key=lambda p: (p.split("/")[:-1], p not in folders, p))
        size = PAGE_SIZE_EXPANDED if expand else PAGE_SIZE
        start = int(query.get("cursor", ["0"])[-1] or 0)
        page = names[start : start + size]
        last = st.storage.last_commits(repo, commit) if expand else None
        headers = {}
        if start + size < len(names):
            base = f"{st.hub_url}/api/{rtype}s/{rid}/tree/{quote(revision, safe='')}"
            base += f"/{quote(path, safe='')}" if path else ""
            nxt = f"{base}?recursive={str(recursive).lower()}&expand={str(expand).lower()}&cursor={start + size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json([self._entry_json(p, tree.get(p), tree, last) for p in page], headers=headers)

    def _paths_info(self, rtype: str, rid: str, revision: str) -> None:
        self._stage("paths_info")
        st = self.state
        repo = self._repo_read(rtype, rid, self._user())
        commit = st.storage.resolve(repo, revision)
        tree = st.storage.tree(repo, commit)
        raw = self._read_body().decode()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            data = json.loads(raw or "{}")
            paths, expand = data.get("paths", []), bool(data.get("expand"))
        else:
            form = parse_qs(raw, keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[-1].lower() in ("1", "true")
        folders = {"/".join(p.split("/")[:k]) for p in tree for k in range(1, p.count("/") + 1)}
        last = st.storage.last_commits(repo, commit) if expand else None
        out = []
        for p in paths:
            p = p.strip("/")
            if p in tree:
                out.append(self._entry_json(p, tree[p], tree, last))
            elif p in folders:
                out.append(self._entry_json(p, None, tree, last))
        self._json(out)

    # ------------------------------------------------------------------------------------------- uploads

    def _preupload(self, rtype: str, rid: str, revision: str, query: dict[str, list[str]]) -> None:
        self._stage("preupload")
        st = self.state
        user = self._user()
        repo = self._repo_write(rtype, rid, user)
        if query.get("create_pr", ["0"])[-1] in ("1", "true"):
            raise StandinError(400, "stand-in: pull requests are not supported")
        commit = st.storage.resolve(repo, revision)
        tree = st.storage.tree(repo, commit)
        data = self._json_body()
        attrs = data.get("gitAttributes")
        if attrs is None and ".gitattributes" in tree:
            attrs = st.storage.read_file(repo, tree[".gitattributes"]).read_text(encoding="utf-8")
        patterns = lfs_patterns(attrs or "")
        files = []
        for f in data.get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            lfs = is_lfs(f["path"], int(f.get("size", 0)), sample, patterns)
            existing = tree.get(f["path"])
            oid = None
            if existing is not None:
                oid = existing.lfs["oid"] if existing.lfs else existing.oid
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json({"files": files, "commitOid": commit})

    def _lfs(self, rtype: str, rid: str, seg: list[str], method: str) -> None:
        st = self.state
        if seg == ["objects", "batch"] and method == "POST":
            self._stage("lfs_batch")
            user = self._user()
            data = self._json_body()
            if data.get("operation") == "download":
                self._repo_read(rtype, rid, user)
                objects = []
                for obj in data.get("objects", []):
                    if st.storage.has_lfs(rtype, rid, obj["oid"]):
                        objects.append(
                            {**obj, "actions": {"download": {"href": self._download_url(rtype, rid, obj["oid"])}}}
                        )
                    else:
                        objects.append({**obj, "error": {"code": 404, "message": "Object does not exist"}})
                return self._json(
                    {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                    headers={"Content-Type": "application/vnd.git-lfs+json"},
                )
            self._repo_write(rtype, rid, user)
            objects = []
            for obj in data.get("objects", []):
                oid, size = obj.get("oid", ""), obj.get("size")
                if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                    objects.append(
                        {"oid": str(oid), "size": int(size or 0), "error": {"code": 422, "message": "invalid object"}}
                    )
                    continue
                if st.storage.has_lfs(rtype, rid, oid, size):
                    objects.append({"oid": oid, "size": size})  # already there: nothing to upload
                    continue
                upload_id = secrets.token_hex(12)
                sig = st.sign(upload_id, oid, size)
                verify = {"href": f"{st.hub_url}/{PREFIXES[rtype]}{rid}.git/info/lfs/objects/verify", "header": {}}
                chunk = st.multipart_chunk_size
                if size > chunk:
                    n_parts = -(-size // chunk)
                    st.uploads[upload_id] = _Upload(oid, size, (rtype, rid), chunk, n_parts)
                    header: dict[str, str] = {"chunk_size": str(chunk)}
                    for k in range(1, n_parts + 1):
                        header[f"{k:05d}"] = f"{st.storage_url}/upload/{upload_id}/part/{k}?sig={sig}"
                    upload = {
                        "href": f"{st.hub_url}/{PREFIXES[rtype]}{rid}.git/info/lfs/complete/{upload_id}?sig={sig}",
                        "header": header,
                    }
                else:
                    st.uploads[upload_id] = _Upload(oid, size, (rtype, rid))
                    upload = {"href": f"{st.storage_url}/upload/{upload_id}?sig={sig}"}
                objects.append(
                    {"oid": oid, "size": size, "authenticated": True, "actions": {"upload": upload, "verify": verify}}
                )
            return self._json(
                {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                headers={"Content-Type": "application/vnd.git-lfs+json"},
            )
        if seg == ["objects", "verify"] and method == "POST":
            self._stage("lfs_verify")
            self._repo_write(rtype, rid, self._user())
            data = self._json_body()
            if not st.storage.has_lfs(rtype, rid, data.get("oid", ""), data.get("size")):
                raise StandinError(404, f"LFS object {data.get('oid')} of size {data.get('size')} not found")
            return self._json({"success": True})
        if len(seg) == 2 and seg[0] == "complete" and method == "POST":
            self._stage("lfs_complete")
            upload_id = seg[1]
            sig = parse_qs(urlsplit(self.path).query).get("sig", [""])[-1]
            up = st.uploads.get(upload_id)
            if up is None or not hmac.compare_digest(sig, st.sign(upload_id, up.oid, up.size)):
                raise StandinError(403, "invalid or expired multipart upload")
            data = self._json_body()
            if data.get("oid") != up.oid:
                raise StandinError(400, "completion oid does not match the upload")
            parts = sorted(data.get("parts", []), key=lambda p: p["partNumber"])
            if [p["partNumber"] for p in parts] != list(range(1, up.parts + 1)):
                raise StandinError(400, f"expected parts 1..{up.parts}, got {[p['partNumber'] for p in parts]}")
            for p in parts:
                if up.part_etags.get(p["partNumber"]) != p["etag"]:
                    raise StandinError(400, f"part {p['partNumber']}: etag mismatch")
            tmp = st.storage.new_upload(up.oid)
            with tmp.open("wb") as out:
                for k in range(1, up.parts + 1):
                    part = st.storage.root / "uploads" / f"{upload_id}.part{k}"
                    with part.open("rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 20)
            st.storage.store_lfs(tmp, *up.repo, up.oid, up.size)
            for k in range(1, up.parts + 1):
                (st.storage.root / "uploads" / f"{upload_id}.part{k}").unlink(missing_ok=True)
            st.uploads.pop(upload_id, None)
            return self._json({"success": True})
        self._stage("unknown")
        raise StandinError(404, f"stand-in: no LFS route {method} {'/'.join(seg)}")

    def _storage_put(self, upload_id: str, part: int | None, query: dict[str, str]) -> None:
        self._stage("lfs_upload")
        st = self.state
        up = st.uploads.get(upload_id)
        if up is None or not hmac.compare_digest(query.get("sig", ""), st.sign(upload_id, up.oid, up.size)):
            raise StandinError(403, "SignatureDoesNotMatch")
        if part is None:
            tmp = st.storage.new_upload(up.oid)
            with tmp.open("wb") as fh:
                self._read_body(sink=fh)
            st.storage.store_lfs(tmp, *up.repo, up.oid, up.size)
            st.uploads.pop(upload_id, None)
            return self._send(200, b"", {"ETag": f'"{up.oid}"'})
        if not 1 <= part <= up.parts:
            raise StandinError(400, f"part {part} out of range")
        dest = st.storage.root / "uploads" / f"{upload_id}.part{part}"
        tmp = st.storage.new_upload(f"{upload_id}.part{part}")
        md5 = hashlib.md5()
        with tmp.open("wb") as fh:
            self._read_body(sink=_Tee(fh, md5))
        os.replace(tmp, dest)
        etag = f'"{md5.hexdigest()}"'
        up.part_etags[part] = etag
        self._send(200, b"", {"ETag": etag})

    # ----------------------------------------------------------------------------------------- downloads

    def _resolve(self, rtype: str, rid: str, revision: str, path: str) -> None:
        self._stage("resolve")
        st = self.state
        repo = self._repo_read(rtype, rid, self._user())
        commit = st.storage.resolve(repo, revision)
        tree = st.storage.tree(repo, commit)
        entry = tree.get(path)
        if entry is None:
            raise StandinError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
        if entry.lfs:
            sha = entry.lfs["oid"]
            location = self._download_url(rtype, rid, sha)
            headers.update(
                {
                    "Location": location,
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(entry.size),
                    "ETag": f'"{entry.oid}"',
                    "Content-Type": "text/plain; charset=utf-8",
                }
            )
            return self._send(302, f"Found. Redirecting to {location}".encode(), headers)
        headers["ETag"] = f'"{entry.oid}"'
        self._serve_file(st.storage.blob_path(entry.oid), headers)

    def _download_url(self, rtype: str, rid: str, sha: str) -> str:
        st = self.state
        return f"{st.storage_url}/objects/{rtype}/{rid}/{sha}?sig={st.sign(rtype, rid, sha)}"

    def _storage_get(self, rtype: str, rid: str, sha: str, query: dict[str, str]) -> None:
        self._stage("download")
        st = self.state
        if not hmac.compare_digest(query.get("sig", ""), st.sign(rtype, rid, sha)):
            raise StandinError(403, "SignatureDoesNotMatch")
        path = st.storage.lfs_path(rtype, rid, sha)
        if not path.is_file():
            raise StandinError(404, "NoSuchKey")
        self._serve_file(path, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"})

    def _serve_file(self, path: Path, headers: dict[str, str]) -> None:
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m is None:
                raise StandinError(416, f"unsupported range {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size and size > 0:
                self._send(416, b"", {"Content-Range": f"bytes */{size}", **headers})
                return
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        length = max(0, end - start + 1)
        self._entry.status = status
        self.send_response(status)
        for k, v in {"Content-Type": "application/octet-stream", **headers, "Content-Length": str(length)}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        with path.open("rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                data = fh.read(min(remaining, 1 << 20))
                if not data:
                    break
                self.wfile.write(data)
                remaining -= len(data)

    # -------------------------------------------------------------------------------------------- commit

    def _commit(self, rtype: str, rid: str, revision: str, query: dict[str, list[str]]) -> None:
        self._stage("commit")
        st = self.state
        user = self._user()
        self._repo_write(rtype, rid, user)
        if query.get("create_pr", ["0"])[-1] in ("1", "true"):
            raise StandinError(400, "stand-in: pull requests are not supported")
        raw = self._read_body()
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise StandinError(400, "the first line of a commit must be its header")
        header = lines[0]["value"]
        summary = (header.get("summary") or "").strip()
        if not summary:
            raise StandinError(400, "commit summary is empty")
        oid = st.storage.commit(
            rtype,
            rid,
            revision,
            lines[1:],
            title=summary,
            message=header.get("description", ""),
            author=user.user if user else "",
            parent_commit=header.get("parentCommit"),
        )
        self._json(
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{st.hub_url}/{PREFIXES[rtype]}{rid}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )


class _Disconnect(Exception):
    pass


class _Answered(StandinError):
    """The response was already sent (a storage fault): nothing more to answer."""

    def __init__(self) -> None:
        super().__init__(0, "answered")


class _Null:
    def write(self, data: bytes) -> None:
        pass


class _Tee:
    def __init__(self, fh: Any, digest: Any) -> None:
        self.fh, self.digest = fh, digest

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.digest.update(data)


def _front_matter(text: str) -> dict[str, Any] | None:
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        import yaml
    except ImportError:  # cardData is optional in the Hub's answer
        return None
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _yaml_problems(content: str) -> list[str]:
    """A few of the Hub's README metadata checks: the header parses to a mapping, configs are well formed."""
    if not content.startswith("---"):
        return []
    end = content.find("\n---", 3)
    if end < 0:
        return ["the YAML header is not closed with ---"]
    try:
        import yaml
    except ImportError:
        return []
    try:
        data = yaml.safe_load(content[3:end])
    except yaml.YAMLError as exc:
        return [f"invalid YAML: {exc}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return ["the YAML header must be a mapping"]
    problems = []
    lic = data.get("license")
    if lic is not None and not (
        isinstance(lic, str) or (isinstance(lic, list) and all(isinstance(x, str) for x in lic))
    ):
        problems.append('"license" must be a string or a list of strings')
    for key in ("tags", "task_categories", "size_categories", "language"):
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            problems.append(f'"{key}" must be a list of strings')
    configs = data.get("configs")
    if configs is not None:
        if not isinstance(configs, list):
            problems.append('"configs" must be a list')
        else:
            for c in configs:
                if not isinstance(c, dict) or "config_name" not in c:
                    problems.append('every entry of "configs" needs a "config_name"')
    return problems


# ----------------------------------------------------------------------------------------------- servers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def make_servers(
    state: HubState, host: str = "127.0.0.1", port: int = 0, storage_port: int = 0
) -> tuple[_Server, _Server]:
    hub_handler = type("HubHandler", (_Handler,), {"state": state, "role": "hub"})
    storage_handler = type("StorageHandler", (_Handler,), {"state": state, "role": "storage"})
    hub = _Server((host, port), hub_handler)
    storage = _Server((host, storage_port), storage_handler)
    state.hub_url = f"http://{host}:{hub.server_address[1]}"
    state.storage_url = f"http://{host}:{storage.server_address[1]}"
    return hub, storage
