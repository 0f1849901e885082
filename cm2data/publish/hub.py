"""Publishing a built tree to the Hugging Face Hub in one commit.

``publish`` talks to the Hub through the real ``huggingface_hub`` client (``HF_ENDPOINT`` picks another endpoint, as
everywhere in the Hub's clients; without it, the real Hub): ``whoami`` → ``create_repo`` → one ``create_commit``
that adds changed files and deletes files the new version no longer has, with ``parent_commit`` set so that a
concurrent change is refused rather than overwritten → optional ``create_tag``. Identical content makes no commit.
Nothing is sent before the gate has passed, and a failure anywhere before the commit call returns leaves the
repository as it was (uploaded LFS objects stay unreferenced).

The token comes from ``HF_TOKEN`` or the ``huggingface_hub`` login (``hf auth login``); it is passed to the client
and never printed or written.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from cm2data import __version__
from cm2data.publish.errors import PublishError
from cm2data.publish.tree import Tree, build_tree, resolve_exporters

REPO_TYPE = "dataset"
BRANCH = "main"
#: Remote files a publish never deletes.
ALWAYS_KEEP = (".gitattributes",)


@dataclass
class PublishResult:
    repo_id: str
    url: str
    commit: str | None  # the new commit, None when nothing changed
    head: str  # the commit main points at afterwards
    added: list[str]
    deleted: list[str]
    unchanged: list[str]
    tag: str | None
    bytes_uploaded: int
    records: int
    items: int

    @property
    def changed(self) -> bool:
        return self.commit is not None


def endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` when set (read now, not at import), else the real Hub."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants._HF_DEFAULT_ENDPOINT).rstrip("/")


def resolve_token(token: str | None = None) -> str:
    """``token``, else ``HF_TOKEN``, else the token saved by ``hf auth login``; :class:`PublishError` if none."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` "
            "(a token with write access is needed to publish)"
        )
    return found


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"bad repo id {repo_id!r}: expected ORG/NAME (for example my-org/my-checklists)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PublishError(f"bad repo id {repo_id!r}: {exc}") from None


def check_tag(tag: str) -> None:
    bad = (" ", "~", "^", ":", "?", "*", "[", "\\", "..", "@{", "//")
    if not tag or any(b in tag for b in bad) or tag.startswith(("/", ".", "-")) or tag.endswith(("/", ".lock", ".")):
        raise PublishError(f"bad tag {tag!r}: use a git ref name such as v1.0")


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextmanager
def hub_errors(
    action: str, repo_id: str, *, user: dict[str, Any] | None = None, committed: bool = False, state: str | None = None
) -> Iterator[None]:
    """Turn the client's exceptions into :class:`PublishError` messages that say what happened and what to do.

    The client wraps some errors (an LFS upload failing inside its thread pool becomes a ``RuntimeError``): the
    cause chain is searched for the error that explains it. Anything unrecognised propagates unchanged.
    """
    state = state or ("the commit was made" if committed else "nothing was committed: the repository is as it was")
    try:
        yield
    except PublishError:
        raise
    except Exception as exc:
        translated = _translate(exc, action, repo_id, user, state)
        if translated is None:
            raise
        raise translated from None


def _translate(
    exc: BaseException, action: str, repo_id: str, user: dict[str, Any] | None, state: str
) -> PublishError | None:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    known = (LocalTokenNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, *_network_errors())
    cause = next((e for e in chain if isinstance(e, known)), None)
    if cause is None:
        return None
    where = "" if cause is exc else f" ({_first_line(exc)})"
    if isinstance(cause, LocalTokenNotFoundError):
        return PublishError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    if isinstance(cause, OfflineModeIsEnabled):
        return PublishError(f"{action}: HF_HUB_OFFLINE is set; unset it to talk to the Hub; {state}")
    if isinstance(cause, RepositoryNotFoundError):
        status = cause.response.status_code if cause.response is not None else None
        return PublishError(
            f"{action}: repository {repo_id} not found or not accessible"
            f"{f' (HTTP {status})' if status else ''}{_namespace_hint(repo_id, user)}{where}; "
            f"{state}"
        )
    if isinstance(cause, RevisionNotFoundError):
        return PublishError(f"{action}: revision not found in {repo_id}{where}; {state}")
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code if cause.response is not None else None
        server = _server_message(cause)
        if status == 401:
            return PublishError(
                f"{action}: the Hub rejected the token (401 Unauthorized{server}){where}; check "
                f"HF_TOKEN or log in again with `hf auth login`; {state}"
            )
        if status == 403:
            return PublishError(
                f"{action}: permission denied for {repo_id} (403 Forbidden{server})"
                f"{_namespace_hint(repo_id, user)}{where}; the token needs write access to the "
                f"namespace {repo_id.split('/')[0]!r}; {state}"
            )
        if status == 412:
            return PublishError(
                f"{action}: {repo_id} changed on the Hub while publishing (412){where}; {state}. Run the command again."
            )
        return PublishError(f"{action}: the Hub answered HTTP {status}{server}{where}; {state}")
    return PublishError(
        f"{action}: network failure talking to {endpoint()} ({type(cause).__name__}: "
        f"{_first_line(cause)}){where}; {state}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server_message(exc: Any) -> str:
    msg = getattr(exc, "server_message", None)
    if not msg and getattr(exc, "response", None) is not None:
        msg = exc.response.headers.get("X-Error-Message")
    return f": {msg.strip()}" if msg else ""


def _namespace_hint(repo_id: str, user: dict[str, Any] | None) -> str:
    if not user:
        return ""
    mine = [user.get("name", ""), *(o.get("name", "") for o in user.get("orgs", []) if isinstance(o, dict))]
    mine = [m for m in mine if m]
    ns = repo_id.split("/")[0]
    if ns in mine:
        return ""
    close = get_close_matches(ns, mine, n=1)
    hint = f" — did you mean {close[0]}/{repo_id.split('/')[1]}?" if close else ""
    return f" (the token belongs to {user.get('name')!r}, organizations: {', '.join(mine[1:]) or 'none'}){hint}"


def _hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the content, git blob sha1) of a file — what the Hub reports for LFS and regular files."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def hub_api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token, library_name="cm2data", library_version=__version__)


def publish(
    src: Path,
    repo_id: str,
    *,
    private: bool = False,
    tag: str | None = None,
    message: str | None = None,
    with_: Sequence[str] = (),
    license: str | None = None,
    pretty_name: str | None = None,
    thinking: str = "auto",
    keep: Sequence[str] = (),
    token: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PublishResult:
    """Validate ``src`` and publish it to ``repo_id`` (a dataset repository) in one commit. See the module doc."""
    say = on_step or (lambda _m: None)
    check_repo_id(repo_id)
    if tag is not None:
        check_tag(tag)
    resolve_exporters(with_)  # fail before anything else
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="cm2data-publish-") as tmp:
        say("validating and building the repository tree")
        tree = build_tree(
            src,
            Path(tmp) / "tree",
            repo_id=repo_id,
            with_=with_,
            license=license,
            pretty_name=pretty_name,
            thinking=thinking,
        )
        say(
            f"{tree.records} dialogues, {tree.items} checklist items, {len(tree.files)} files "
            f"({tree.total_bytes() / 2**20:.1f} MiB); contacting {endpoint()}"
        )
        return _upload(tree, repo_id, private=private, tag=tag, message=message, keep=keep, token=token, say=say)


def _upload(
    tree: Tree,
    repo_id: str,
    *,
    private: bool,
    tag: str | None,
    message: str | None,
    keep: Sequence[str],
    token: str,
    say: Callable[[str], None],
) -> PublishResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub import constants as hub_constants

    if hub_constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set: unset it to publish (nothing was uploaded)")
    api = hub_api(token)
    with hub_errors("checking the token", repo_id):
        user = api.whoami(token=token)
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(
            f"the token of {user.get('name')!r} is read-only; publishing needs a token with write "
            "access (nothing was uploaded)"
        )
    with hub_errors("creating the repository", repo_id, user=user):
        repo_url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    with hub_errors("reading the repository", repo_id, user=user):
        info = api.dataset_info(repo_id, revision=BRANCH, files_metadata=True)
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE) if tag else None
    if private and info.private is False:
        say(f"note: {repo_id} already exists and is public; --private does not change an existing repository")
    head = info.sha
    remote = {s.rfilename: s for s in info.siblings or []}

    added: list[str] = []
    unchanged: list[str] = []
    for path, local in tree.files.items():
        sha256, sha1 = _hashes(local)
        sib = remote.get(path)
        same = sib is not None and (
            (sib.lfs is not None and sib.lfs.sha256 == sha256) or (sib.lfs is None and sib.blob_id == sha1)
        )
        (unchanged if same else added).append(path)
    deleted = sorted(
        p
        for p in remote
        if p not in tree.files and p not in ALWAYS_KEEP and not any(fnmatch.fnmatch(p, pat) for pat in keep)
    )

    existing_tag = None
    if tag and refs is not None:
        existing_tag = next((r for r in refs.tags if r.name == tag), None)
        if existing_tag is not None and (added or deleted or existing_tag.target_commit != head):
            raise PublishError(
                f"tag {tag!r} already exists on {repo_id} (at {existing_tag.target_commit[:12]}); "
                "choose a new tag (nothing was uploaded)"
            )

    commit = None
    n_bytes = 0
    if added or deleted:
        ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(tree.files[p])) for p in added]
        ops += [CommitOperationDelete(path_in_repo=p) for p in deleted]
        n_bytes = sum(tree.files[p].stat().st_size for p in added)
        summary = message or f"Publish {tree.records} dialogues with cm2data {__version__}"
        description = (
            f"{tree.records} dialogues, {tree.items} checklist items; configs: "
            + ", ".join(tree.configs)
            + f". {len(added)} files added or changed, {len(deleted)} deleted."
        )
        say(f"uploading {len(added)} files ({n_bytes / 2**20:.1f} MiB), deleting {len(deleted)}, in one commit")
        with hub_errors("committing", repo_id, user=user):
            info_commit = api.create_commit(
                repo_id,
                ops,
                commit_message=summary,
                commit_description=description,
                repo_type=REPO_TYPE,
                revision=BRANCH,
                parent_commit=head,
            )
        commit = info_commit.oid
        head = commit
    else:
        say(f"{repo_id} already holds this exact content at {head[:12]}: no commit made")

    if tag and existing_tag is None:
        with hub_errors(f"tagging {tag}", repo_id, user=user, committed=commit is not None):
            api.create_tag(repo_id, tag=tag, tag_message=message, revision=head, repo_type=REPO_TYPE)
    return PublishResult(
        repo_id, str(repo_url), commit, head, added, deleted, unchanged, tag, n_bytes, tree.records, tree.items
    )
