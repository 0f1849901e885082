"""A local **stand-in** for the Hugging Face Hub's HTTP API, for tests and benchmarks (not the Hub).

No installable server accepts Hub uploads, so this one implements, on two loopback ports, what the unmodified
``huggingface_hub`` 2.x and ``datasets`` 5.x clients call when they create a repository, upload (pre-upload, LFS
batch, single and multipart LFS uploads, verify, the ndjson commit), list (tree, paths-info, repo info, refs,
commits), tag and download (``resolve`` with the headers the client reads, 302 redirects to the storage port for
LFS files). Repositories are git-like snapshots on disk (:mod:`hub_standin.storage`). Faults can be injected per
stage, including a dropped connection in the middle of an upload.

Point the clients at it with ``HF_ENDPOINT=<url>`` and ``HF_HUB_DISABLE_XET=1`` (see :meth:`HubStandin.env`);
without ``HF_ENDPOINT`` the same clients talk to the real Hub. Run it on its own with
``PYTHONPATH=tests python -m hub_standin --root DIR --token TOKEN:USER[:ORG,ORG][:read]``.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

from hub_standin.server import Fault, HubState, LogEntry, Token, make_servers
from hub_standin.storage import Entry, Storage

__all__ = ["Entry", "Fault", "HubStandin", "LogEntry", "Storage", "Token"]


class HubStandin:
    """The stand-in, served from threads of the current process. Use as a context manager or start()/stop()."""

    def __init__(self, root: Path, *, multipart_chunk_size: int = 64 * 2**20, host: str = "127.0.0.1") -> None:
        self.state = HubState(Path(root), multipart_chunk_size=multipart_chunk_size)
        self.host = host
        self._servers: list[Any] = []
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> HubStandin:
        hub, storage = make_servers(self.state, self.host)
        self._servers = [hub, storage]
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()

    def __enter__(self) -> HubStandin:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.state.hub_url

    @property
    def storage_url(self) -> str:
        return self.state.storage_url

    def env(self, token: str | None = None, home: Path | None = None) -> dict[str, str]:
        """Environment variables that point the Hub clients here (online, no Xet, no telemetry)."""
        env = {
            "HF_ENDPOINT": self.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        if token is not None:
            env["HF_TOKEN"] = token
        if home is not None:
            env.update({"HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets")})
        return env

    # ---------------------------------------------------------------------------------------- configuration

    def add_token(self, token: str, user: str, orgs: tuple[str, ...] = (), role: str = "write") -> None:
        self.state.tokens[token] = Token(user, tuple(orgs), role)

    def fail(
        self,
        stage: str,
        *,
        after: int = 0,
        times: int | None = 1,
        status: int = 500,
        mode: str = "error",
        message: str = "injected fault",
        path: str | None = None,
        stall_s: float = 120.0,
    ) -> Fault:
        """Inject a fault (see :class:`~hub_standin.server.Fault`); stages are the names in :attr:`log`."""
        fault = Fault(stage, after, times, status, mode, message, path=path, stall_s=stall_s)
        self.state.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.state.faults.clear()

    # ------------------------------------------------------------------------------------------ inspection

    @property
    def log(self) -> list[LogEntry]:
        return list(self.state.log)

    def clear_log(self) -> None:
        self.state.log.clear()

    def repo(self, repo_id: str, repo_type: str = "dataset") -> dict[str, Any] | None:
        return self.state.storage.load(repo_type, repo_id)

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "dataset") -> str | None:
        repo = self.repo(repo_id, repo_type)
        return None if repo is None else repo["branches"].get(branch)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """``{path: content}`` of a revision, read straight from the stand-in's storage."""
        repo = self.repo(repo_id, repo_type)
        if repo is None:
            return {}
        st = self.state.storage
        tree = st.tree(repo, st.resolve(repo, revision))
        return {p: st.read_file(repo, e).read_bytes() for p, e in tree.items()}

    def commits(self, repo_id: str, repo_type: str = "dataset") -> int:
        repo = self.repo(repo_id, repo_type)
        return 0 if repo is None else len(repo["commits"])


def point_clients_at(standin: HubStandin, monkeypatch: Any, token: str, home: Path, *, datasets: bool = False) -> None:
    """Point this process's ``huggingface_hub`` (and, with ``datasets=True``, ``datasets``) clients at ``standin``:
    the environment plus the constants they read at import (endpoint, offline flags, token and cache paths).
    ``monkeypatch`` is pytest's; everything is undone with it."""
    from huggingface_hub import constants

    for key, value in standin.env(token=token, home=home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", standin.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", standin.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    if datasets:
        import datasets.config as ds_config

        monkeypatch.setattr(ds_config, "HF_ENDPOINT", standin.url)
        monkeypatch.setattr(
            ds_config, "HUB_DATASETS_URL", standin.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(ds_config, "HF_DATASETS_OFFLINE", False)
        monkeypatch.setattr(ds_config, "HF_DATASETS_CACHE", home / "datasets")
        monkeypatch.setattr(ds_config, "HF_MODULES_CACHE", home / "modules")
    standin.clear_faults()
    standin.clear_log()


def admin(url: str, route: str, data: Any = None, method: str = "POST") -> Any:
    """Call the administration routes of a stand-in running in another process."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(
        f"{url}/_standin/{route}", data=body, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")
