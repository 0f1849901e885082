"""Launcher for the local Argilla server: runs inside the Argilla server's OWN environment, never the toolkit's.

``cm2data.review.stack`` starts it by path with that environment's interpreter::

    <argilla venv>/bin/python cm2data/review/argilla_server_patch.py serve --host 127.0.0.1 --port 6900 \
        --credentials <state>/credentials.json
    <argilla venv>/bin/python cm2data/review/argilla_server_patch.py worker

The server is configured by the ``ARGILLA_*`` variables the stack sets (SQLite database, Redis, OpenSearch at the
in-memory ``osmem-server``). ``serve`` does in ONE process (importing ``argilla_server`` costs ~4 s):

1. registers :func:`register_engine`'s search engine under the name ``opensearch``, replacing the stock one;
2. migrates the database to the newest revision (alembic);
3. creates or updates the owner user from the credentials file (``username``, ``password``, ``api_key``,
   ``workspace``) and its workspace;
4. rebuilds the search index of every dataset from the database (osmem keeps indices in memory only, so a restarted
   stack has none);
5. serves the API and the web UI with uvicorn.

Why the engine: the stock OpenSearch engine updates a record's ``responses`` (and deletes suggestions) with Painless
scripts, which osmem does not run, so the web UI's own response endpoints (``POST /api/v1/records/{id}/responses``,
``PUT``/``DELETE /api/v1/responses/{id}``, ``POST /api/v1/me/responses/bulk``) and suggestion deletion fail with
HTTP 500. The replacement reads the document, changes it in Python and writes it back under optimistic concurrency
control (``if_seq_no``/``if_primary_term``, retried on a conflict): the same result as the script.

This file imports only the standard library at module level (so ruff and the toolkit can read it); everything from
``argilla_server`` is imported inside the functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENGINE_NAME = "opensearch"
#: how often a read-modify-write is retried when another writer changed the document in between
CONFLICT_RETRIES = 20
_LOGGER = logging.getLogger("cm2data.argilla")


def register_engine() -> type:
    """Define the read-modify-write OpenSearch engine and register it as ``opensearch`` (replacing the stock class
    in ``SearchEngine.registered_classes``, which ``get_search_engine`` looks up on every request). Returns the
    class. Needs ``argilla_server`` and ``opensearch-py`` (the server's environment)."""
    from argilla_server.search_engine.base import SearchEngine
    from argilla_server.search_engine.commons import es_index_name_for_dataset
    from argilla_server.search_engine.opensearch import OpenSearchEngine
    from opensearchpy.exceptions import ConflictError

    class ReadModifyWriteOpenSearchEngine(OpenSearchEngine):
        """The stock OpenSearch engine with every Painless-scripted update replaced by get → change → index, the
        index conditional on the sequence number read (a concurrent writer makes it retry, never lose an update)."""

        async def _modify_document(
            self, index_name: str, doc_id: str, change: Callable[[dict[str, Any]], None]
        ) -> None:
            """Apply ``change`` (which edits the ``_source`` dict in place) to one document. A missing document
            raises ``NotFoundError`` as the scripted update does; ``ConflictError`` after all retries."""
            for _ in range(CONFLICT_RETRIES):
                found = await self.client.get(index=index_name, id=doc_id)
                source = dict(found.get("_source") or {})
                change(source)
                try:
                    await self.client.index(
                        index=index_name,
                        id=doc_id,
                        body=source,
                        refresh=True,
                        if_seq_no=found["_seq_no"],
                        if_primary_term=found["_primary_term"],
                    )
                    return
                except ConflictError:
                    continue
            raise ConflictError(
                409,
                "version_conflict_engine_exception",
                f"{index_name}/{doc_id}: still changing after {CONFLICT_RETRIES} tries",
            )

        async def update_record_response(self, response: Any) -> None:
            """Put ``response`` into its record's ``responses`` list, replacing an entry with the same id."""
            record = response.record
            doc = self._map_record_response_to_es(response)
            response_id = str(doc["id"])

            def change(source: dict[str, Any]) -> None:
                kept = [r for r in source.get("responses") or [] if str(r.get("id")) != response_id]
                source["responses"] = [*kept, doc]

            await self._modify_document(es_index_name_for_dataset(record.dataset), str(record.id), change)

        async def delete_record_response(self, response: Any) -> None:
            """Remove ``response`` (by id) from its record's ``responses`` list."""
            record = response.record
            response_id = str(response.id)

            def change(source: dict[str, Any]) -> None:
                if source.get("responses") is not None:
                    source["responses"] = [r for r in source["responses"] if str(r.get("id")) != response_id]

            await self._modify_document(es_index_name_for_dataset(record.dataset), str(record.id), change)

        async def delete_record_suggestion(self, suggestion: Any) -> None:
            """Remove the suggestion for ``suggestion.question`` from its record's ``suggestions`` object."""
            name = suggestion.question.name

            def change(source: dict[str, Any]) -> None:
                if isinstance(source.get("suggestions"), dict):
                    source["suggestions"].pop(name, None)

            await self._modify_document(
                es_index_name_for_dataset(suggestion.record.dataset), str(suggestion.record_id), change
            )

    SearchEngine.register(engine_name=ENGINE_NAME)(ReadModifyWriteOpenSearchEngine)
    return ReadModifyWriteOpenSearchEngine


def migrate() -> None:
    """Migrate the database named by ``ARGILLA_DATABASE_URL`` to the newest revision."""
    from alembic import command
    from alembic.config import Config
    from argilla_server.database import ALEMBIC_CONFIG_FILE

    command.upgrade(Config(ALEMBIC_CONFIG_FILE), "head")


async def ensure_owner(username: str, password: str, api_key: str, workspace: str) -> str:
    """Create the owner ``username`` (member of ``workspace``, created if missing) with this password and API key,
    or bring an existing user with that name to them. Returns ``"created"`` or ``"updated"``."""
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import User, UserRole, Workspace, WorkspaceUser

    async with AsyncSessionLocal() as db:
        ws = await Workspace.get_by(db, name=workspace)
        if ws is None:
            ws = await accounts.create_workspace(db, {"name": workspace})
        other = await accounts.get_user_by_api_key(db, api_key)
        user = await accounts.get_user_by_username(db, username)
        if other is not None and (user is None or other.id != user.id):
            raise SystemExit(f"another user ({other.username!r}) already has the owner's API key")
        if user is None:
            user = await User.create(
                db,
                first_name=username,
                username=username,
                role=UserRole.owner,
                password_hash=accounts.hash_password(password),
                api_key=api_key,
            )
            outcome = "created"
        else:
            await user.update(db, role=UserRole.owner, password_hash=accounts.hash_password(password), api_key=api_key)
            outcome = "updated"
        if await WorkspaceUser.get_by(db, workspace_id=ws.id, user_id=user.id) is None:
            await WorkspaceUser.create(db, workspace_id=ws.id, user_id=user.id)
        return outcome


async def reindex_all() -> tuple[int, int]:
    """Rebuild every dataset's index and its records' documents from the database; (datasets, records)."""
    from argilla_server.cli.search_engine.reindex import Reindexer
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.search_engine import get_search_engine

    datasets = records = 0
    async with AsyncSessionLocal() as db:
        async for engine in get_search_engine():
            async for dataset in Reindexer.reindex_datasets(db, engine):
                datasets += 1
                async for chunk in Reindexer.reindex_dataset_records(db, engine, dataset):
                    records += len(chunk)
    return datasets, records


def _read_credentials(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = {"username", "password", "api_key", "workspace"} - data.keys()
    if missing:
        raise SystemExit(f"{path}: missing {sorted(missing)}")
    return data


def serve(host: str, port: int, credentials: Path, access_log: bool = True) -> None:
    """Register the engine, migrate, ensure the owner, reindex, then serve until SIGTERM/SIGINT (uvicorn)."""
    register_engine()
    creds = _read_credentials(credentials)
    print(f"cm2data: migrating {os.environ.get('ARGILLA_DATABASE_URL', '(default database)')}", flush=True)
    migrate()

    async def init() -> tuple[str, tuple[int, int]]:
        outcome = await ensure_owner(creds["username"], creds["password"], creds["api_key"], creds["workspace"])
        return outcome, await reindex_all()

    outcome, (n_datasets, n_records) = asyncio.run(init())
    print(
        f"cm2data: owner {creds['username']!r} {outcome}; reindexed {n_datasets} datasets, {n_records} records",
        flush=True,
    )
    import uvicorn
    from argilla_server import app

    uvicorn.run(app, host=host, port=port, access_log=access_log)


def worker(num_workers: int = 1) -> None:
    """Run Argilla's background-job workers (rq, queues ``default`` and ``high``) with the patched engine."""
    register_engine()
    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION

    if num_workers == 1:  # one plain worker: no pool process, and a SIGTERM while idle ends it at once
        from rq import Worker

        Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION).work(with_scheduler=True)
        return
    from rq.worker_pool import WorkerPool

    WorkerPool(
        connection=REDIS_CONNECTION, queues=[HIGH_QUEUE.name, DEFAULT_QUEUE.name], num_workers=num_workers
    ).start()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``serve --host H --port P --credentials FILE [--no-access-log]``, ``worker [--num-workers N]``,
    ``check`` (the engine registers: the environment is usable)."""
    parser = argparse.ArgumentParser(prog="argilla_server_patch", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--credentials", type=Path, required=True)
    s.add_argument("--no-access-log", action="store_true")
    w = sub.add_parser("worker")
    w.add_argument("--num-workers", type=int, default=1)
    sub.add_parser("check")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.host, args.port, args.credentials, access_log=not args.no_access_log)
    elif args.cmd == "worker":
        worker(args.num_workers)
    else:
        cls = register_engine()
        print(f"ok: {cls.__name__} registered as {ENGINE_NAME!r}")


if __name__ == "__main__":
    main()
