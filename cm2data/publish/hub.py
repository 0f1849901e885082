"""Publishing a built tree to the Hugging Face Hub in one commit.

``publish`` talks to the Hub through the real ``huggingface_hub`` client (``HF_ENDPOINT`` picks another endpoint, as
everywhere in the Hub's clients; without it, the real Hub): ``whoami`` → ``dataset_info`` and the published manifest
(:mod:`cm2data.publish.manifest`: an unchanged folder stops here, with no gate and no commit; otherwise only changed
shards are gated) → the tree → ``create_repo`` → one ``create_commit`` that adds changed files and deletes files the
new version no longer has, with ``parent_commit`` set so that a concurrent change is refused rather than
overwritten → optional ``create_tag``. Identical content makes no commit. Nothing is written to the Hub before the
gate has passed, and a failure anywhere before the commit call returns leaves the repository as it was (uploaded
LFS objects stay unreferenced).

The token comes from ``HF_TOKEN`` or the ``huggingface_hub`` login (``hf auth login``); it is passed to the client
and never printed or written.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from cm2data import __version__, store
from cm2data.publish import manifest as mf
from cm2data.publish.errors import PublishError
from cm2data.publish.tree import Tree, build_tree, publish_keys, resolve_exporters

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
    #: what the republish check found (:func:`cm2data.publish.manifest.plan`): ``gate_skipped`` when the folder
    #: matched the published manifest (no gate, no build, no commit); else how many source shards were gated and
    #: how many were skipped as already gated
    plan: str = ""
    gate_skipped: bool = False
    shards_gated: int = 0
    shards_trusted: int = 0

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
    """Validate ``src`` and publish it to ``repo_id`` (a dataset repository) in one commit. See the module doc.

    The published head's manifest decides how much work a republish does: none when ``src`` and the options are
    unchanged (no gate, no build, no commit), the gate only over changed shards otherwise."""
    say = on_step or (lambda _m: None)
    check_repo_id(repo_id)
    if tag is not None:
        check_tag(tag)
    resolve_exporters(with_)  # fail before anything else
    if not store.is_dataset_folder(src):
        raise PublishError(f"{src} is not a cm2data dataset folder (no data/{store.DIALOGUES}/*.parquet)")
    token = resolve_token(token)
    api, user = _connect(token, repo_id)
    say(f"reading {repo_id} on {endpoint()}")
    info = _head_info(api, repo_id, user)
    remote = _remote_manifest(api, repo_id, info, user, say)
    gate, build = publish_keys(
        src, repo_id=repo_id, with_=with_, license=license, pretty_name=pretty_name, thinking=thinking
    )
    shards = list(mf.source_shards(src).values())
    remote_files = _remote_files(info)
    deletable = _deletable(remote_files, set(remote.files) | {mf.MANIFEST} if remote else set(), keep)
    plan = mf.plan(remote, gate=gate, build=build, shards=shards, remote_files=remote_files, deletable=deletable)
    if plan.unchanged and remote is not None and info is not None:
        say(f"unchanged: {plan.reason}; gate skipped, nothing built")
        result = PublishResult(
            repo_id,
            f"{endpoint()}/datasets/{repo_id}",
            None,
            str(info.sha),
            [],
            [],
            sorted(remote_files),
            None,
            0,
            remote.records,
            remote.items,
            plan=plan.reason,
            gate_skipped=True,
            shards_trusted=len(shards),
        )
        return _tag(api, result, tag, message, user)
    n_trusted = sum(s.sha256 in plan.trusted for s in shards)
    say(
        f"{plan.reason}: gating {len(shards) - n_trusted} of {len(shards)} shards"
        + (f" ({n_trusted} already passed under the same rules)" if n_trusted else "")
    )
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
            trusted=plan.trusted,
        )
        say(
            f"{tree.records} dialogues, {tree.items} checklist items, {len(tree.files)} files "
            f"({tree.total_bytes() / 2**20:.1f} MiB); contacting {endpoint()}"
        )
        result = _upload(
            tree, repo_id, api=api, user=user, private=private, tag=tag, message=message, keep=keep, say=say
        )
        result.plan, result.shards_gated, result.shards_trusted = plan.reason, tree.shards_gated, tree.shards_trusted
        return _tag(api, result, tag, message, user)


def _connect(token: str, repo_id: str) -> tuple[Any, dict[str, Any]]:
    """The client and the token's user; refuses offline mode and read-only tokens before anything is built."""
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
    return api, user


def _head_info(api: Any, repo_id: str, user: dict[str, Any]) -> Any | None:
    """The repository's ``main`` with file metadata, or None when the repository does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    with hub_errors("reading the repository", repo_id, user=user):
        try:
            return api.dataset_info(repo_id, revision=BRANCH, files_metadata=True)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None


def _remote_files(info: Any | None) -> dict[str, tuple[str, str]]:
    """path → ("lfs", sha256) or ("blob", git sha1), as the Hub lists the files of ``info``."""
    out: dict[str, tuple[str, str]] = {}
    for s in (info.siblings or []) if info is not None else []:
        out[s.rfilename] = ("lfs", s.lfs.sha256) if s.lfs is not None else ("blob", str(s.blob_id))
    return out


def _deletable(remote: Iterable[str], published: set[str], keep: Sequence[str]) -> list[str]:
    """Remote paths a publish deletes: not part of the published tree, not always kept, not matched by ``keep``."""
    return sorted(
        p
        for p in remote
        if p not in published and p not in ALWAYS_KEEP and not any(fnmatch.fnmatch(p, pat) for pat in keep)
    )


def _remote_manifest(
    api: Any, repo_id: str, info: Any | None, user: dict[str, Any], say: Callable[[str], None]
) -> mf.Manifest | None:
    """The manifest of the published head, or None (no repository, no manifest, or one this code cannot read:
    then everything is gated, as on a first publish)."""
    if info is None or not any(s.rfilename == mf.MANIFEST for s in info.siblings or []):
        return None
    with tempfile.TemporaryDirectory(prefix="cm2data-manifest-") as tmp:
        with hub_errors("reading the publish manifest", repo_id, user=user):
            path = api.hf_hub_download(
                repo_id, mf.MANIFEST, repo_type=REPO_TYPE, revision=info.sha, cache_dir=tmp, local_dir=tmp
            )
        try:
            return mf.Manifest.from_json(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            say(f"note: ignoring the published {mf.MANIFEST} ({exc}); every shard is gated")
            return None


def _tag(api: Any, result: PublishResult, tag: str | None, message: str | None, user: dict[str, Any]) -> PublishResult:
    """Tag ``result.head``; an existing tag is fine only when it already points there and nothing changed."""
    if not tag:
        return result
    repo_id = result.repo_id
    with hub_errors("reading the tags", repo_id, user=user, committed=result.changed):
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    existing = next((r for r in refs.tags if r.name == tag), None)
    if existing is not None:
        if existing.target_commit != result.head:
            raise PublishError(
                f"tag {tag!r} already exists on {repo_id} (at {existing.target_commit[:12]}); choose a new tag"
                + ("" if result.changed else " (nothing was uploaded)")
            )
        result.tag = tag
        return result
    with hub_errors(f"tagging {tag}", repo_id, user=user, committed=result.changed):
        api.create_tag(repo_id, tag=tag, tag_message=message, revision=result.head, repo_type=REPO_TYPE)
    result.tag = tag
    return result


def _upload(
    tree: Tree,
    repo_id: str,
    *,
    api: Any,
    user: dict[str, Any],
    private: bool,
    tag: str | None,
    message: str | None,
    keep: Sequence[str],
    say: Callable[[str], None],
) -> PublishResult:
    """Create the repository if needed and commit what differs between ``tree`` and ``main``, in one commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    with hub_errors("creating the repository", repo_id, user=user):
        repo_url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    with hub_errors("reading the repository", repo_id, user=user):
        info = api.dataset_info(repo_id, revision=BRANCH, files_metadata=True)
    if private and info.private is False:
        say(f"note: {repo_id} already exists and is public; --private does not change an existing repository")
    head = info.sha
    remote = _remote_files(info)

    added: list[str] = []
    unchanged: list[str] = []
    for path, local in tree.files.items():
        sha256, sha1 = mf.file_hashes(local)
        same = path in remote and remote[path] in (("lfs", sha256), ("blob", sha1))
        (unchanged if same else added).append(path)
    deleted = _deletable(remote, set(tree.files), keep)

    if tag:  # refused before the commit: a tag is never moved, and a publish that cannot be tagged sends nothing
        with hub_errors("reading the tags", repo_id, user=user):
            refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
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

    return PublishResult(
        repo_id, str(repo_url), commit, head, added, deleted, unchanged, None, n_bytes, tree.records, tree.items
    )
