"""Benchmark: the LLM server's aggregate output tokens/s through a plain concurrent ``openai`` client versus
cm2data's :class:`~cm2data.llm.LLMClient` (semaphore, retries, usage accounting), on the same requests, in one run.

For each concurrency level (default 1 and 32) both clients send the same chat requests (distinct prompts,
``--max-tokens`` output tokens each; on vLLM with ``ignore_eos`` so that every answer is exactly that long and both
clients do identical work) in ``--rounds-1``/``--rounds-32`` short rounds, the order alternating (plain first,
then cm2data first, …) so that drift in machine load — other processes on the same cores — hits both alike.
Output tokens/s = completion tokens reported by the server / wall time of the round. It prints both figures, the
ratio cm2data / plain of the totals and the median of the per-round ratios (the more robust one on a shared
machine; target ≥ 0.9).

Then, unless ``--no-overhead``, the client's own cost: the same two clients against an instant in-process stub
server (a canned completion, no model), so that the difference is the client code alone (requests/s and µs per
request)::

    $VENV/bin/python benchmarks/llm_server.py                     # the embedded server (started or reused)
    $VENV/bin/python benchmarks/llm_server.py --base-url http://gpu-box:8000/v1 --json bench.json

Exit status 1 when a ratio (median of rounds) falls below ``--target``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai

from cm2data.llm import LLMClient, LLMConfig, Usage, resolve_config

TOPICS = [
    "a lighthouse keeper",
    "a lost umbrella",
    "the first snow",
    "a chess match",
    "a night train",
    "a bakery at dawn",
    "a broken compass",
    "an old map",
    "a quiet library",
    "a mountain rescue",
    "a street musician",
    "a forgotten garden",
    "a robot learning to paint",
    "a summer storm",
    "a ferry crossing",
    "a village festival",
]


def requests_for(n: int, max_tokens: int, extra_body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]} (story {i})."}
            ],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": i,
            "extra_body": extra_body,
        }
        for i in range(n)
    ]


async def run_plain(config: LLMConfig, model: str, reqs: list[dict[str, Any]], concurrency: int) -> tuple[int, float]:
    """A plain concurrent client: the SDK, a semaphore, asyncio.gather."""
    client = openai.AsyncOpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=0, timeout=config.timeout)
    sem = asyncio.Semaphore(concurrency)

    async def one(r: dict[str, Any]) -> int:
        async with sem:
            resp = await client.chat.completions.create(model=model, **r)
            return resp.usage.completion_tokens

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(r) for r in reqs))
    elapsed = time.perf_counter() - started
    await client.close()
    return sum(tokens), elapsed


async def run_cm2data(config: LLMConfig, reqs: list[dict[str, Any]], concurrency: int) -> tuple[int, float]:
    usage = Usage()
    async with LLMClient(config.with_(max_concurrency=concurrency), usage=usage) as client:
        await client.check()  # the reachability check is a once-per-client cost: not part of the batch
        started = time.perf_counter()
        results = await client.chat_many([{**r, "stage": "bench"} for r in reqs], return_exceptions=False)
        elapsed = time.perf_counter() - started
    assert usage["bench"].completion_tokens == sum(r.completion_tokens for r in results)
    return usage["bench"].completion_tokens, elapsed


async def bench(config: LLMConfig, levels: list[tuple[int, int, int]], max_tokens: int) -> dict[str, Any]:
    async with LLMClient(config) as probe:
        info = await probe.check()
    extra_body = {"ignore_eos": True} if info.kind == "vllm" else {}
    # warm-up: both paths once (connections, the server's first batch)
    warm = requests_for(2, 8, extra_body)
    await run_plain(config, info.model, warm, 2)
    await run_cm2data(config.with_(model=info.model), warm, 2)
    cfg = config.with_(model=info.model)
    out: dict[str, Any] = {
        "base_url": config.base_url,
        "model": info.model,
        "server": info.kind,
        "max_tokens": max_tokens,
        "ignore_eos": bool(extra_body),
        "levels": [],
    }
    for concurrency, n, rounds in [lv for lv in levels if lv[2] > 0]:
        reqs = requests_for(n, max_tokens, extra_body)
        runs: dict[str, list[tuple[int, float]]] = {"plain": [], "cm2data": []}
        for r in range(rounds):
            order = ["plain", "cm2data"] if r % 2 == 0 else ["cm2data", "plain"]
            for who in order:
                if who == "plain":
                    runs[who].append(await run_plain(cfg, info.model, reqs, concurrency))
                else:
                    runs[who].append(await run_cm2data(cfg, reqs, concurrency))
                tok, sec = runs[who][-1]
                print(
                    f"  concurrency {concurrency:>2} round {r + 1} {who:<8} {tok:>6} tokens in {sec:6.2f} s "
                    f"= {tok / sec:7.1f} tokens/s",
                    file=sys.stderr,
                )
        level: dict[str, Any] = {"concurrency": concurrency, "requests": n, "rounds": rounds}
        for who, rs in runs.items():
            tokens, seconds = sum(t for t, _ in rs), sum(s for _, s in rs)
            level[who] = {
                "tokens_per_s": round(tokens / seconds, 1),
                "tokens": tokens,
                "seconds": round(seconds, 2),
                "per_round_tokens_per_s": [round(t / s, 1) for t, s in rs],
            }
        level["ratio"] = round(level["cm2data"]["tokens_per_s"] / level["plain"]["tokens_per_s"], 3)
        level["ratio_median_of_rounds"] = round(
            statistics.median(c[0] / c[1] / (p[0] / p[1]) for c, p in zip(runs["cm2data"], runs["plain"], strict=True)),
            3,
        )
        out["levels"].append(level)
    return out


# ------------------------------------------------------------------------------- client overhead on a stub server

_CANNED = json.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }
).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "stub"}]}).encode()


class _Stub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(_MODELS)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(_CANNED)


class _StubServer(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) resets connections when 32 clients connect at once


async def overhead(n: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """Both clients against an instant stub on loopback: the difference is the client code alone."""
    httpd = _StubServer(("127.0.0.1", 0), _Stub)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    config = LLMConfig(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", model="stub")
    reqs = [{"messages": [{"role": "user", "content": f"ping {i}"}], "max_tokens": 1} for i in range(n)]
    try:
        await run_plain(config, "stub", reqs[:50], concurrency)  # warm-up
        await run_cm2data(config, reqs[:50], concurrency)
        secs: dict[str, list[float]] = {"plain": [], "cm2data": []}
        for r in range(rounds):
            for who in ["plain", "cm2data"] if r % 2 == 0 else ["cm2data", "plain"]:
                if who == "plain":
                    secs[who].append((await run_plain(config, "stub", reqs, concurrency))[1])
                else:
                    secs[who].append((await run_cm2data(config, reqs, concurrency))[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
    out: dict[str, Any] = {"requests": n, "concurrency": concurrency, "rounds": rounds}
    for who, ss in secs.items():
        med = statistics.median(ss)
        out[who] = {"requests_per_s": round(n / med, 1), "us_per_request": round(med / n * 1e6, 1)}
    out["extra_us_per_request"] = round(out["cm2data"]["us_per_request"] - out["plain"]["us_per_request"], 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: the embedded one)")
    parser.add_argument("--model", help="served model (default: the first the server lists)")
    parser.add_argument("--max-tokens", type=int, default=100, help="output tokens per request (default 100)")
    parser.add_argument("--n-1", type=int, default=1, help="requests per round at concurrency 1 (default 1)")
    parser.add_argument("--n-32", type=int, default=32, help="requests per round at concurrency 32 (default 32)")
    parser.add_argument(
        "--rounds-1", type=int, default=20, help="rounds per client at concurrency 1 (default 20; 0 skips the level)"
    )
    parser.add_argument(
        "--rounds-32", type=int, default=10, help="rounds per client at concurrency 32 (default 10; 0 skips the level)"
    )
    parser.add_argument("--no-overhead", action="store_true", help="skip the stub-server client-overhead part")
    parser.add_argument("--target", type=float, default=0.9, help="lowest acceptable ratio (default 0.9)")
    parser.add_argument("--json", dest="json_out", help="also write the figures here")
    args = parser.parse_args()

    started = time.perf_counter()
    config = resolve_config(args.base_url, args.model, timeout=600)
    print(f"server {config.base_url} ready after {time.perf_counter() - started:.1f} s", file=sys.stderr)
    result = asyncio.run(
        bench(config, [(1, args.n_1, args.rounds_1), (32, args.n_32, args.rounds_32)], args.max_tokens)
    )

    print(
        f"\n{result['server']} {result['model']} at {result['base_url']}: {result['max_tokens']} output tokens per "
        "request"
    )
    print(
        f"{'concurrency':>11} {'requests':>8} {'rounds':>6} {'plain tok/s':>12} {'cm2data tok/s':>14} {'ratio':>6} "
        f"{'median ratio':>12}"
    )
    ok = True
    for lv in result["levels"]:
        print(
            f"{lv['concurrency']:>11} {lv['requests']:>8} {lv['rounds']:>6} {lv['plain']['tokens_per_s']:>12} "
            f"{lv['cm2data']['tokens_per_s']:>14} {lv['ratio']:>6} {lv['ratio_median_of_rounds']:>12}"
        )
        ok &= lv["ratio_median_of_rounds"] >= args.target
    if not args.no_overhead:
        result["overhead"] = ov = asyncio.run(overhead(1000, 32, 5))
        print(
            f"\nclient overhead on an instant stub server ({ov['requests']} requests, concurrency "
            f"{ov['concurrency']}, median of {ov['rounds']} rounds): plain {ov['plain']['requests_per_s']} req/s "
            f"({ov['plain']['us_per_request']} µs each), cm2data {ov['cm2data']['requests_per_s']} req/s "
            f"({ov['cm2data']['us_per_request']} µs each): {ov['extra_us_per_request']:+} µs per request"
        )
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    print(f"target ratio ≥ {args.target} (median of rounds): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
