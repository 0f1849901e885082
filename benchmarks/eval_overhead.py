"""What ``cm2data eval bfcl`` adds on top of the model's own request time.

A fake OpenAI-compatible model (``tests/bfcl_fake.py``, replaying BFCL's ground truth) answers every request after a
fixed delay (a model's latency). The same entries are run twice against it, 8 at a time:

1. **harness**: ``cm2data.eval.bfcl.run_bfcl`` — the endpoint check, the subprocess in the bfcl environment, BFCL's
   own multi-turn loop (its client, the simulated APIs executing every call), the results file, the checker, the
   summary and the report;
2. **raw**: the very request bodies the harness sent (recorded by the fake server), replayed with a plain HTTP client,
   8 entries at a time, each entry's requests one after another (a multi-turn conversation cannot go faster).

Printed (and written with ``--json``): wall seconds of both, the ratio harness / raw for the whole command and for
the generation phase alone (from the runner's first to its last finished entry), and the fixed costs (start-up,
scoring). The goal: the harness adds < 10 % at 8 concurrent requests.

    $VENV/bin/python benchmarks/eval_overhead.py [--entries 32] [--delay 0.2] [--concurrency 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bfcl_fake import BfclFake, _jsonl, first_user_message  # noqa: E402

from cm2data.eval.bfcl import BfclSettings, run_bfcl  # noqa: E402
from cm2data.eval.env import bfcl_data_dir, ensure_env  # noqa: E402


def raw_replay(base_url: str, chains: list[list[dict[str, Any]]], concurrency: int) -> float:
    """Send each chain's requests in order, ``concurrency`` chains at a time; wall seconds."""
    url = base_url + "/chat/completions"

    def post(body: dict[str, Any]) -> None:
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            json.loads(resp.read())

    def run_chain(chain: list[dict[str, Any]]) -> None:
        for body in chain:
            post(body)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(run_chain, chains))
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=32, help="BFCL multi_turn_base entries (from _0; at most 199)")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the fake model takes per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    python = ensure_env("bfcl")
    data = bfcl_data_dir(python)
    seen: set[str] = set()
    ids = []  # the first N base entries, without the few that open like an earlier one (the fake tells by that)
    for q in _jsonl(data / "BFCL_v4_multi_turn_base.json"):
        if len(ids) < args.entries and first_user_message(q["question"]) not in seen:
            seen.add(first_user_message(q["question"]))
            ids.append(q["id"])
    events: list[tuple[float, dict[str, Any]]] = []
    lock = threading.Lock()

    def on_event(e: dict[str, Any]) -> None:
        with lock:
            events.append((time.monotonic(), e))

    with BfclFake(data, ids, "replay", delay=args.delay) as fake, tempfile.TemporaryDirectory() as tmp:
        settings = BfclSettings(base_url=fake.base_url, model=fake.model, ids=ids, concurrency=args.concurrency)
        t0 = time.monotonic()
        summary = run_bfcl(settings, Path(tmp) / "run", python=python, on_event=on_event)
        harness = time.monotonic() - t0
        assert summary["overall"]["passed"] == len(ids), summary["overall"]  # the replay must score 100 %
        start = next(t for t, e in events if e.get("event") == "start")
        rows = [t for t, e in events if e.get("event") == "row"]
        scoring = next(t for t, e in events if e.get("event") == "evaluating")
        done = next(t for t, e in events if e.get("event") == "done")
        generation = rows[-1] - start
        first_request = fake.requests[0].at
        chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in fake.requests:
            chains[str(r.entry)].append(r.body)
        n_requests = len(fake.requests)
        fake.requests.clear()
        raw = raw_replay(fake.base_url, list(chains.values()), args.concurrency)
    result = {
        "entries": len(ids),
        "requests": n_requests,
        "delay_s": args.delay,
        "concurrency": args.concurrency,
        "harness_s": round(harness, 2),
        "raw_s": round(raw, 2),
        "ratio_total": round(harness / raw, 3),
        "generation_s": round(generation, 2),
        "ratio_generation": round(generation / raw, 3),
        "startup_s": round(start - t0, 2),
        "until_first_request_s": round(first_request - t0, 2),
        "scoring_s": round(done - scoring, 2),
        "summary_and_report_s": round(harness - (done - t0), 2),
        "model_time_s": round(n_requests * args.delay / args.concurrency, 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
