"""Push checklist items to an Argilla review dataset, idempotently (docs/review.md, "Commands").

:func:`push` creates the dataset on first use (settings from :func:`cm2data.review.dataset.build_settings`), then
sends only what is new or changed, in batches through the SDK's ``dataset.records.log``:

* the record id is a hash of (dialogue id, variant, turn, item id): pushing again updates in place, never adds a
  copy; the server keeps every response and suggestion that a push does not name (it upserts per user), so
  submitted responses survive;
* an item whose payload hash equals the one on the server is not sent again (an unchanged push only lists);
* an item whose *content* (question, pass condition, evidence, … or the dialogue up to its turn) changed while it
  had submitted responses gets ``changed_since_review = yes`` and those responses are marked stale
  (``stale_responses``: ``<user id>@<response updated_at>``); pull ignores them until the reviewer submits again;
* items on the server that the pushed folder no longer has are left alone and counted (``orphaned``).

The helpers here (:func:`connect`, :func:`find_dataset`, :func:`fetch_records`) are shared by status and pull. Server
records are listed through the SDK's authenticated HTTP client because the SDK's record objects drop the responses'
``updated_at``, which the staleness check needs.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.review.dataset import (
    FIELD,
    M_CHANGED,
    M_CONTENT_HASH,
    M_PAYLOAD_HASH,
    M_STALE,
    Q_VERDICT,
    ReviewItem,
    build_settings,
    load_template,
    review_items,
)
from cm2data.schema import Dialogue

if TYPE_CHECKING:
    import argilla as rg
    from rich.console import Console

#: Records per ``records.log`` call (the server takes at most 500 per bulk request).
DEFAULT_BATCH = 500
#: Records per listing request (the server's maximum).
LIST_BATCH = 1000


class ReviewError(RuntimeError):
    """A user-facing failure: server unreachable, key rejected, no such dataset or workspace, bad input."""


# ------------------------------------------------------------------------------------------------ the client


def connect(api_url: str | None = None, api_key: str | None = None, *, timeout: int = 60) -> rg.Argilla:
    """An authenticated :class:`argilla.Argilla` client.

    ``api_url``/``api_key`` default to ``ARGILLA_API_URL`` (else ``http://localhost:6900``) and
    ``ARGILLA_API_KEY``. Raises :class:`ReviewError` with one clear sentence when the key is missing, the server
    cannot be reached or it rejects the key; the key itself is never part of a message.
    """
    import httpx

    url = (api_url or os.environ.get("ARGILLA_API_URL") or "http://localhost:6900").rstrip("/")
    key = api_key or os.environ.get("ARGILLA_API_KEY")
    if not key:
        raise ReviewError("no Argilla API key: set ARGILLA_API_KEY (the owner's key of the review server)")
    try:
        import argilla as rg
        from argilla._exceptions import ArgillaCredentialsError
    except ImportError as exc:  # pragma: no cover - argilla is a core requirement
        raise ReviewError(f"the Argilla SDK is not installed ({exc}); pip install argilla==2.8.0") from None
    try:
        return rg.Argilla(api_url=url, api_key=key, timeout=timeout, retries=2)
    except ArgillaCredentialsError:
        raise ReviewError(f"the Argilla server at {url} rejected the API key (check ARGILLA_API_KEY)") from None
    except httpx.TransportError as exc:
        raise ReviewError(f"cannot reach the Argilla server at {url} ({type(exc).__name__}); is it running?") from None
    except Exception as exc:  # the SDK wraps HTTP failures in its own types
        raise ReviewError(f"the Argilla server at {url} did not answer as expected: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@contextlib.contextmanager
def server_errors(url: str) -> Iterator[None]:
    """Turn transport and API failures inside the block into :class:`ReviewError`."""
    import httpx
    from argilla._exceptions import ArgillaError

    try:
        yield
    except ReviewError:
        raise
    except httpx.TransportError as exc:
        raise ReviewError(f"lost the Argilla server at {url} ({type(exc).__name__})") from None
    except httpx.HTTPStatusError as exc:
        raise ReviewError(
            f"the Argilla server at {url} answered HTTP {exc.response.status_code} to "
            f"{exc.request.method} {exc.request.url.path}"
        ) from None
    except ArgillaError as exc:
        raise ReviewError(f"the Argilla server at {url} refused the request: {_describe(exc)}") from None


def find_workspace(client: rg.Argilla, workspace: str | None) -> rg.Workspace:
    """The named workspace, or the user's first one; :class:`ReviewError` when there is none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = client.workspaces(workspace) if workspace else client.workspaces.default
    if ws is None:
        raise ReviewError(
            f"no workspace {workspace!r} on the Argilla server"
            if workspace
            else "the Argilla user has no workspace: pass --workspace or create one"
        )
    return ws


def find_dataset(client: rg.Argilla, name: str, workspace: str | None = None) -> rg.Dataset | None:
    """The review dataset ``name`` in ``workspace`` (default: the first workspace), or ``None``."""
    ws = find_workspace(client, workspace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name=name, workspace=ws)
    if ds is not None:
        names = {f.name for f in ds.settings.fields}
        if FIELD not in names or Q_VERDICT not in {q.name for q in ds.settings.questions}:
            raise ReviewError(f"dataset {name!r} in workspace {ws.name!r} is not a cm2data review dataset")
    return ds


def ensure_dataset(client: rg.Argilla, name: str, workspace: str | None, min_submitted: int) -> tuple[rg.Dataset, bool]:
    """The review dataset, created when missing; an existing one gets the current template. ``(dataset, created)``."""
    import argilla as rg

    ds = find_dataset(client, name, workspace)
    if ds is None:
        ws = find_workspace(client, workspace)
        ds = rg.Dataset(name=name, workspace=ws, settings=build_settings(min_submitted), client=client)
        ds.create()
        return ds, True
    field_ = ds.settings.fields[FIELD]
    template = load_template()
    if field_.template != template:
        field_.template = template
        ds.update()
    return ds, False


# ---------------------------------------------------------------------------------------------- server records


@dataclass
class ServerResponse:
    """One user's response on the server (values flattened to ``{question: value}``)."""

    user_id: str
    status: str
    values: dict[str, Any]
    updated_at: str
    inserted_at: str = ""  # differs from updated_at when the user answered again (the server keeps one response)

    @property
    def mark(self) -> str:
        """How ``stale_responses`` names this response."""
        return f"{self.user_id}@{self.updated_at}"


@dataclass
class ServerRecord:
    """What the server holds for one record: ids, metadata and responses."""

    id: str
    external_id: str
    status: str
    metadata: dict[str, Any]
    responses: list[ServerResponse] = field(default_factory=list)

    @property
    def submitted(self) -> list[ServerResponse]:
        return [r for r in self.responses if r.status == "submitted"]

    @property
    def stale_marks(self) -> set[str]:
        value = self.metadata.get(M_STALE) or []
        return set(value if isinstance(value, list) else [value])


def _server_record(raw: dict[str, Any]) -> ServerRecord:
    responses = [
        ServerResponse(
            str(r["user_id"]),
            str(r.get("status") or ""),
            {q: (v or {}).get("value") for q, v in (r.get("values") or {}).items()},
            str(r.get("updated_at") or ""),
            str(r.get("inserted_at") or ""),
        )
        for r in raw.get("responses") or []
    ]
    return ServerRecord(
        str(raw["id"]),
        str(raw.get("external_id") or ""),
        str(raw.get("status") or ""),
        dict(raw.get("metadata") or {}),
        responses,
    )


def fetch_records(
    client: rg.Argilla,
    dataset: rg.Dataset,
    *,
    with_responses: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, ServerRecord]:
    """Every record of ``dataset`` by external id, with all users' responses (owner or admin key needed)."""
    out: dict[str, ServerRecord] = {}
    offset = 0
    total = None
    params: dict[str, Any] = {"include": ["responses"]} if with_responses else {}
    while True:
        resp = client.http_client.get(
            f"/api/v1/datasets/{dataset.id}/records", params={**params, "offset": offset, "limit": LIST_BATCH}
        )
        resp.raise_for_status()
        body = resp.json()
        items = body.get("items") or []
        for raw in items:
            rec = _server_record(raw)
            out[rec.external_id or rec.id] = rec
        if on_batch is not None:
            on_batch(len(items))
        offset += len(items)
        total = body.get("total")
        if not items or (total is not None and offset >= total):
            break
    if total is not None and len(out) != total:
        raise ReviewError(
            f"the records of {dataset.name!r} changed while they were listed ({len(out)} read, "
            f"{total} on the server); run the command again"
        )
    return out


# ---------------------------------------------------------------------------------------------------- the push


@dataclass
class PushResult:
    """What a push did: ``created``/``updated``/``unchanged`` records, the ``changed_since_review`` ones among the
    updated, ``orphaned`` server records the input no longer has, and the dataset's name, workspace and URL."""

    dataset: str
    workspace: str
    items: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    changed_since_review: int = 0
    orphaned: int = 0
    dataset_created: bool = False
    url: str = ""

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_source(source: Path | Sequence[Dialogue]) -> list[Dialogue]:
    """Records from a dataset folder or any file in a registered format, or the given records as they are.

    Raises :class:`ReviewError` when the source is missing or has rows that cannot be read (a review must not lose
    records silently)."""
    if not isinstance(source, (str, Path)):
        return list(source)
    from cm2data.sources import load

    path = Path(source)
    if not path.exists():
        raise ReviewError(f"{path} does not exist")
    try:
        records, rejects = load(path)
    except (OSError, ValueError) as exc:
        raise ReviewError(f"cannot read {path}: {_describe(exc)}") from None
    if rejects:
        raise ReviewError(
            f"{len(rejects)} rows of {path} cannot be read (first: {rejects[0].rule}: "
            f"{rejects[0].message}); filter them out first (cm2data filter)"
        )
    return records


def _stderr_quiet() -> contextlib.AbstractContextManager[Any]:
    """The SDK draws a tqdm bar per ``records.log`` call on ``sys.stderr``; push draws its own."""
    return contextlib.redirect_stderr(io.StringIO())


def _to_record(item: ReviewItem, metadata: dict[str, Any]) -> rg.Record:
    import argilla as rg

    return rg.Record(
        id=item.record_id,
        fields={FIELD: item.value},
        metadata=metadata,
        suggestions=[rg.Suggestion(question_name=Q_VERDICT, value="keep", agent=item.suggestion_agent)],
    )


def plan_push(
    items: Sequence[ReviewItem], existing: dict[str, ServerRecord]
) -> tuple[list[tuple[ReviewItem, dict]], dict[str, int]]:
    """Which items to send, with their full metadata, and the counts (pure; see the module docstring)."""
    send: list[tuple[ReviewItem, dict[str, Any]]] = []
    counts = {"created": 0, "updated": 0, "unchanged": 0, "changed_since_review": 0}
    for it in items:
        meta = dict(it.metadata)
        meta[M_PAYLOAD_HASH] = it.payload_hash
        ex = existing.get(it.record_id)
        if ex is None:
            meta[M_CHANGED] = "no"
            send.append((it, meta))
            counts["created"] += 1
            continue
        current = {r.mark for r in ex.submitted}
        stale = ex.stale_marks & current  # marks of responses re-submitted since are dropped
        content_changed = ex.metadata.get(M_CONTENT_HASH) != it.content_hash
        if content_changed:
            stale |= current
        changed = "yes" if stale else "no"
        if stale:
            meta[M_STALE] = sorted(stale)
        meta[M_CHANGED] = changed
        same = (
            ex.metadata.get(M_PAYLOAD_HASH) == it.payload_hash
            and not content_changed
            and ex.metadata.get(M_CHANGED, "no") == changed
            and ex.stale_marks == stale
        )
        if same:
            counts["unchanged"] += 1
            continue
        send.append((it, meta))
        counts["updated"] += 1
        if content_changed and current:
            counts["changed_since_review"] += 1
    return send, counts


def push(
    source: Path | Sequence[Dialogue],
    name: str,
    *,
    client: rg.Argilla,
    workspace: str | None = None,
    min_submitted: int = 2,
    batch_size: int = DEFAULT_BATCH,
    variants: list[int] | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> PushResult:
    """Push every checklist item of ``source`` (a dataset folder, a file, or records) to the review dataset
    ``name`` in ``workspace``; create the dataset on first use with an overlap of ``min_submitted`` reviewers.

    Idempotent (see the module docstring). ``batch_size`` records go in one ``records.log`` request (at most 500).
    A rich progress bar goes to ``console`` (stderr by default) unless ``progress`` is false. Raises
    :class:`ReviewError` on bad input or server failures.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    records = load_source(source)
    items = [it for d in records for it in review_items(d, variants)]
    if not items:
        raise ReviewError("no checklist items to push (the records have no checklists)")
    ids = [it.record_id for it in items]
    if len(set(ids)) != len(ids):
        raise ReviewError("two items share (dialogue id, variant, turn, item id): dialogue ids or item ids repeat")
    batch_size = max(1, min(batch_size, DEFAULT_BATCH))
    url = client.api_url
    console = console or Console(stderr=True)
    with server_errors(url):
        ds, created = ensure_dataset(client, name, workspace, min_submitted)
        existing = {} if created else fetch_records(client, ds)
        send, counts = plan_push(items, existing)
        wanted = set(ids)
        orphaned = sum(1 for rid in existing if rid not in wanted)
        with Progress(
            TextColumn("push {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not progress,
            transient=True,
        ) as bar:
            task = bar.add_task(name, total=len(send))
            for start in range(0, len(send), batch_size):
                chunk = [_to_record(it, meta) for it, meta in send[start : start + batch_size]]
                with _stderr_quiet():
                    ds.records.log(chunk, batch_size=len(chunk))
                bar.advance(task, len(chunk))
    result = PushResult(
        dataset=name,
        workspace=ds.workspace.name,
        items=len(items),
        orphaned=orphaned,
        dataset_created=created,
        url=f"{url}/dataset/{ds.id}/annotation-mode",
        **counts,
    )
    return result


def print_push(result: PushResult, console: Console) -> None:
    """One line per fact of a push (for the CLI)."""
    console.print(
        f"pushed {result.items} checklist items to [bold]{result.dataset}[/] (workspace "
        f"{result.workspace}{', new dataset' if result.dataset_created else ''}): {result.created} new, "
        f"{result.updated} updated, {result.unchanged} unchanged"
    )
    if result.changed_since_review:
        console.print(
            f"{result.changed_since_review} reviewed items changed since their review: flagged "
            "changed_since_review=yes, their earlier responses no longer count"
        )
    if result.orphaned:
        console.print(f"{result.orphaned} records on the server are not in this input (left as they are)")
    console.print(result.url)
