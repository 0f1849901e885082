"""Benchmark: push, re-push and pull of the Argilla review against one-record-per-request baselines.

Builds ``--items`` checklist items (default 5,000) from copies of the shipped sample (each copy with new dialogue
ids) into a dataset folder, starts a local Argilla stack in a temporary folder (or uses ``ARGILLA_API_URL`` /
``ARGILLA_API_KEY`` with ``--use-env``), then times, in one run on the same server:

* ``push`` — ``cm2data.review.push.push`` of every item to a new review dataset (batches of 500 per
  ``records.log`` request);
* ``repush`` — the same push again, unchanged (lists the server's records, sends nothing);
* ``pull`` — after one reviewer's responses to every item were logged (untimed), ``cm2data.review.pull.pull``:
  list every record with its responses, merge, agreement, gate, write the merged folder and report;

and the baselines, on ``--baseline`` items (default 300) of the same records in a dataset of their own:

* ``push``: ``dataset.records.log([record])`` — one record per request;
* ``repush``: the same records logged again one per request (no check of what the server has);
* ``pull``: one ``GET /api/v1/records/{id}`` (the record with its responses) per record.

Prints items/s for each phase and the ratio to its baseline (per-item rates, so the baseline's smaller size does
not matter), and writes them as JSON with ``--json``. Run::

    $VENV/bin/python benchmarks/review_sync.py --items 5000 --baseline 300 --json review-bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "cm2data" / "data" / "sample" / "dialogues.json"


def build_records(n_items: int) -> list[Any]:
    """Copies of the sample's dialogues (ids suffixed with the copy number) until ``n_items`` items; the last
    dialogue's checklist is cut so that the total is exact."""
    from cm2data.formats import read_records
    from cm2data.review.merge import renormalise
    from cm2data.schema import Dialogue

    sample = [r for r in read_records(SAMPLE, "cm2") if isinstance(r, Dialogue)]
    out: list[Dialogue] = []
    total = 0
    copy = 0
    while total < n_items:
        for d in sample:
            if total >= n_items:
                break
            c = d.model_copy(deep=True)
            c.id = f"{d.id}-{copy}"
            c.checklists = c.checklists[:1]
            total += sum(len(b.items) for b in c.checklists[0])
            out.append(c)
        copy += 1
    extra = total - n_items
    last = out[-1].checklists[0]
    while extra > 0:
        block = max(last, key=lambda b: len(b.items))
        block.items.pop()
        extra -= 1
    for block in last:
        kept = {it.id for it in block.items}
        for it in block.items:
            it.depends_on = [x for x in it.depends_on if x in kept]
        renormalise(block.items)
    return out


def _quiet() -> contextlib.AbstractContextManager[Any]:
    return contextlib.redirect_stderr(io.StringIO())


def baseline_push(client: Any, items: list[Any], name: str, workspace: str | None) -> float:
    """Seconds to log ``items`` one record per request into a new dataset."""
    from cm2data.review.dataset import M_CHANGED, M_PAYLOAD_HASH
    from cm2data.review.push import _to_record, ensure_dataset

    ds, _ = ensure_dataset(client, name, workspace, 1)
    records = [_to_record(it, {**it.metadata, M_PAYLOAD_HASH: it.payload_hash, M_CHANGED: "no"}) for it in items]
    start = time.perf_counter()
    with _quiet():
        for rec in records:
            ds.records.log([rec], batch_size=1)
    return time.perf_counter() - start


def baseline_pull(client: Any, name: str, workspace: str | None) -> tuple[float, int]:
    """Seconds to fetch every record of ``name`` with its responses, one request per record."""
    from cm2data.review.push import fetch_records, find_dataset

    ds = find_dataset(client, name, workspace)
    ids = [r.id for r in fetch_records(client, ds, with_responses=False).values()]
    start = time.perf_counter()
    for rid in ids:
        resp = client.http_client.get(f"/api/v1/records/{rid}")  # the record with its responses
        resp.raise_for_status()
    return time.perf_counter() - start, len(ids)


def respond_all(client: Any, name: str, workspace: str | None, user_id: Any) -> int:
    """Log one submitted ``keep`` response per record of ``name`` (500 records per request)."""
    import argilla as rg

    from cm2data.review.push import find_dataset

    ds = find_dataset(client, name, workspace)
    batch: list[Any] = []
    n = 0
    with _quiet():
        for rec in ds.records(with_responses=False, with_suggestions=False, batch_size=1000):
            batch.append(
                rg.Record(
                    id=rec.id,
                    fields=rec.fields.to_dict(),
                    metadata=dict(rec.metadata),
                    responses=[rg.Response("verdict", "keep", user_id=user_id, status="submitted")],
                )
            )
            if len(batch) == 500:
                ds.records.log(batch, batch_size=500)
                n += len(batch)
                batch = []
        if batch:
            ds.records.log(batch, batch_size=500)
            n += len(batch)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--baseline", type=int, default=300, help="items of the one-per-request baselines")
    parser.add_argument("--use-env", action="store_true", help="use ARGILLA_API_URL/KEY instead of a new stack")
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from cm2data import store
    from cm2data.review import stack as st
    from cm2data.review.dataset import review_items
    from cm2data.review.pull import pull
    from cm2data.review.push import connect, push

    tmp = Path(tempfile.mkdtemp(prefix="cm2-review-bench-"))
    running = None
    if args.use_env:
        client = connect()
    else:
        print("starting a local Argilla stack…", file=sys.stderr)
        running = st.start(tmp / "stack", die_with_parent=True, timeout=300)
        client = connect(running.api_url, running.api_key)
    try:
        records = build_records(args.items)
        folder = tmp / "in"
        store.write_dataset(folder, records)
        items = [it for d in records for it in review_items(d)]
        n = len(items)
        name = f"bench-{int(time.time())}"
        results: dict[str, Any] = {
            "items": n,
            "dialogues": len(records),
            "baseline_items": args.baseline,
            "server": client.api_url,
        }

        t = time.perf_counter()
        first = push(folder, name, client=client, workspace=args.workspace, progress=False)
        results["push_s"] = time.perf_counter() - t
        assert first.created == n, first
        t = time.perf_counter()
        again = push(folder, name, client=client, workspace=args.workspace, progress=False)
        results["repush_s"] = time.perf_counter() - t
        assert again.unchanged == n, again
        t = time.perf_counter()
        responded = respond_all(client, name, args.workspace, client.me.id)
        results["respond_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pulled = pull(name, into=folder, out=tmp / "out", client=client, workspace=args.workspace, min_answers=1)
        results["pull_s"] = time.perf_counter() - t
        assert pulled.report["items"]["keep"] == responded == n

        base_items = items[: args.baseline]
        base_name = name + "-baseline"
        results["baseline_push_s"] = baseline_push(client, base_items, base_name, args.workspace)
        results["baseline_repush_s"] = baseline_push(client, base_items, base_name, args.workspace)
        respond_all(client, base_name, args.workspace, client.me.id)
        results["baseline_pull_s"], pulled_base = baseline_pull(client, base_name, args.workspace)
        assert pulled_base == len(base_items)
    finally:
        if running is not None:
            st.stop(tmp / "stack")

    nb = args.baseline
    rows = []
    for phase in ("push", "repush", "pull"):
        rate = n / results[f"{phase}_s"]
        base = nb / results[f"baseline_{phase}_s"]
        results[f"{phase}_items_per_s"] = round(rate, 1)
        results[f"baseline_{phase}_items_per_s"] = round(base, 1)
        results[f"{phase}_speedup"] = round(rate / base, 1)
        rows.append(
            f"{phase:7s} {n:6d} items {results[f'{phase}_s']:8.1f} s {rate:9.1f} items/s   baseline "
            f"(1 record/request, {nb} items) {base:7.1f} items/s   × {rate / base:.1f}"
        )
    print("\n".join(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
