"""Benchmark: does a second LLM endpoint speed a stage up? In one process, on the same inputs, the annotate stage
(``run_stage``: the real distilabel pipeline, ``LLMClient``, the gate, journals, the dataset folder) against fake
OpenAI-compatible servers (tests/fake_llm.py) that each answer at most ``--slots`` requests at once, each after
``--latency`` seconds — a stand-in for a GPU server at capacity:

(a) one endpoint;
(b) two endpoints (``--base-url A --base-url B``: the client-side balancer, cm2data/llm/balance.py);
(c) with ``--ray ADDRESS`` (run with the Ray environment's Python, scripts/install_ray.sh): two endpoints on Ray,
    one replica of the LLM step per endpoint.

Records/s = records / the stage's end-to-end wall time (start-up included; a small warm-up run first pays for the
imports). Run (c) with n=8 too to see Ray's fixed start-up cost (the actors' processes). It prints each and the
ratio (b)/(a) (ideal 2: the servers are the bottleneck); exit status 1 when it is below ``--target``. The
capacity of one fake server is slots / latency requests/s (default 2 / 0.25 s = 8/s), so that a client with enough
concurrency (``--concurrency``, default 16) is limited by the servers, not by itself.

    $VENV/bin/python benchmarks/endpoints_scale.py
    $RAY_VENV/bin/python benchmarks/endpoints_scale.py --ray ADDRESS      # also (c)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake servers of the tests

from fake_llm import RoutedOpenAI, fake_model  # noqa: E402

from cm2data import store  # noqa: E402
from cm2data.pipelines import AnnotateConfig, resolve_endpoint, run_stage  # noqa: E402
from cm2data.schema import Dialogue, Message, ToolCall  # noqa: E402


def dialogues(n: int) -> list[Dialogue]:
    out = []
    for i in range(n):
        messages = [
            Message(role="system", content="You are a weather assistant."),
            Message(role="user", content=f"record-{i:02d}: what is the weather in Oslo?"),
            Message(
                role="assistant",
                content="",
                tool_calls=[ToolCall(id=f"c{i}", name="get_weather", arguments='{"city": "Oslo"}')],
            ),
            Message(role="tool", content='{"temp": 10}', tool_call_id=f"c{i}", name="get_weather"),
            Message(role="assistant", content="It is 10 degrees."),
        ]
        tool = {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
        out.append(Dialogue(id=f"rec-{i:03d}", source="bench", tools=[tool], messages=messages))
    return out


def capped(slots: int, latency: float) -> Any:
    """A route answering like fake_model, at most ``slots`` requests at once, each after ``latency`` s."""
    gate = threading.Semaphore(slots)

    def route(body: dict[str, Any]) -> Any:
        if body["_kind"] == "annotate":
            with gate:
                time.sleep(latency)
        return fake_model(body)

    return route


def one(label: str, urls: list[str], src: Path, work: Path, n: int, args: argparse.Namespace, ray: Any = None) -> float:
    endpoint = resolve_endpoint(urls, settings={"max_concurrency": args.concurrency}, start_embedded=False)
    out = work / label
    started = time.monotonic()
    outcome = run_stage(
        "annotate", AnnotateConfig(), out, src=src, endpoint=endpoint, batch_size=args.batch_size, ray=ray
    )
    seconds = time.monotonic() - started
    assert outcome.summary["accepted"] == n, outcome.summary
    rate = n / seconds
    print(f"{label:<28} {n} records in {seconds:6.2f} s = {rate:6.2f} records/s")
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="records")
    ap.add_argument("--latency", type=float, default=0.25, help="seconds per request at a fake server")
    ap.add_argument("--slots", type=int, default=2, help="requests a fake server answers at once")
    ap.add_argument("--concurrency", type=int, default=16, help="the client's requests in flight (per process)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ray", help="also run (c) on this Ray cluster")
    ap.add_argument("--target", type=float, default=1.5, help="least acceptable ratio (b)/(a)")
    args = ap.parse_args()
    capacity = args.slots / args.latency
    print(
        f"annotate, {args.n} records; fake servers: {args.slots} slots x {args.latency} s = {capacity:g} req/s each; "
        f"client concurrency {args.concurrency}; {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="cm2data-bench-") as tmp:
        work = Path(tmp)
        src = work / "in"
        store.write_dataset(src, dialogues(args.n))
        with RoutedOpenAI(capped(args.slots, args.latency)) as a, RoutedOpenAI(capped(args.slots, args.latency)) as b:
            # a first run pays for imports and distilabel's fork server: not counted
            warm = work / "warm"
            store.write_dataset(warm, dialogues(4))
            one("(warm-up, not counted)", [a.base_url], warm, work, 4, args)
            start = (len(a.requests), len(b.requests))
            single = one("(a) 1 endpoint", [a.base_url], src, work, args.n, args)
            double = one("(b) 2 endpoints, balanced", [a.base_url, b.base_url], src, work, args.n, args)
            shares = (len(a.requests) - start[0], len(b.requests) - start[1])
            if args.ray:
                from cm2data.pipelines.ray import RaySettings

                one("(c) 2 endpoints on Ray", [a.base_url, b.base_url], src, work, args.n, args, RaySettings(args.ray))
    ratio = double / single
    print(f"ratio (b)/(a) = {ratio:.2f} (ideal 2.00 at capacity, less the fixed start-up); requests a/b: {shares}")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
