"""Benchmark: the checklist judge's three prompt modes on a prefix-caching vLLM server, same rollouts and checklists in
one run.

Modes: (a) ``reference`` order (criterion before the conversation, one call per item), (b) ``prefix`` order
(system + conversation first, criterion last, one call per item), (c) ``grouped`` (prefix order, all open items of a
step in one call, answer-only verdicts). Every mode judges every (turn, assistant step, item) of the same dialogues
(``skip_satisfied`` off, no verdict cache), all requests of a mode in flight at once (``--concurrency``). Each mode gets
its own salt at the start of the system prompt, so no mode reuses another's cached prefix (cold cache per mode;
within a mode, reuse is what is measured).

Figures per mode: judged items per second (wall), prompt tokens sent (server usage), prompt tokens served from the
prefix cache and so actually computed (deltas of vLLM's ``/metrics`` counters ``prefix_cache_hits``/``queries``;
``None`` when the server exposes none), failures. Ratios b/a and c/a of items/s (targets ≥ 2 and ≥ 4) and the
verdict agreement of c with b on the same (dialogue, turn, step, item); (d) is grouped mode with the compact
``letters`` answer (one Y/N letter per item instead of ``{id: bool}``), ratio d/a. (e) The judge client against a plain
concurrent client: every request of mode (b) is recorded and sent again through a bare ``openai.AsyncOpenAI`` (same
messages with a fresh salt, schema, ``max_tokens``), then (b) runs once more; the ratio is the judge's requests/s (mean
of its two runs) over the plain client's (target ≥ 0.9). Then the simulated tool environment's cache-hit latency
(``adapters.verl.env`` over ``cm2data.simulator``, SQLite cache).

    VENV=$(bash scripts/bootstrap.sh)
    $VENV/bin/python benchmarks/judge.py --dialogues 8 --json bench-judge.json      # the embedded server
    $VENV/bin/python benchmarks/judge.py --base-url http://gpu-box:8000/v1 --dialogues 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cm2data.judge import JudgeOptions, judge_turn  # noqa: E402
from cm2data.llm import LLMClient, Usage, resolve_config  # noqa: E402
from cm2data.schema import segment  # noqa: E402
from cm2data.sources import load  # noqa: E402

MODES = {
    "a_reference": {"order": "reference"},
    "b_prefix": {"order": "prefix"},
    "c_grouped": {"order": "prefix", "grouped": True},
    "d_grouped_letters": {"order": "prefix", "grouped": True, "grouped_answer": "letters"},
}


class RecordingClient:
    """Passes every call to the judge's client and keeps what was asked (messages, schema, sampling), so that a plain
    client can send exactly the same requests."""

    def __init__(self, client: LLMClient):
        self.client = client
        self.requests: list[dict[str, Any]] = []

    async def chat(self, messages, **kwargs):  # type: ignore[no-untyped-def]
        self.requests.append(
            {
                "messages": [dict(m) for m in messages],
                "schema": kwargs.get("schema"),
                "max_tokens": kwargs.get("max_tokens"),
                "temperature": kwargs.get("temperature"),
            }
        )
        return await self.client.chat(messages, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def plain_replay(client: LLMClient, requests: list[dict[str, Any]], old_salt: str, concurrency: int) -> dict:
    """The same requests through a bare ``openai.AsyncOpenAI`` (a semaphore and ``asyncio.gather``, no validation,
    no retries), with a fresh salt so that the prefix cache is as cold as it was for the judge."""
    import openai

    salt = f"[run {uuid.uuid4().hex[:12]}]"
    plain = openai.AsyncOpenAI(
        base_url=client.base_url, api_key=client.config.api_key or "none", timeout=600.0, max_retries=0
    )
    sem = asyncio.Semaphore(concurrency)
    tokens = failures = 0

    async def one(req: dict[str, Any]) -> None:
        nonlocal tokens, failures
        messages = [{**m, "content": m["content"].replace(old_salt, salt)} for m in req["messages"]]
        extra = {"structured_outputs": {"json": req["schema"], "disable_any_whitespace": True}}
        async with sem:
            try:
                r = await plain.chat.completions.create(
                    model=client.model,
                    messages=messages,
                    extra_body=extra,
                    max_tokens=req["max_tokens"],
                    temperature=req["temperature"],
                )
                tokens += r.usage.completion_tokens if r.usage else 0
            except openai.OpenAIError:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    wall = time.perf_counter() - start
    await plain.close()
    return {
        "requests": len(requests),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(requests) / wall, 3),
        "completion_tokens": tokens,
        "failures": failures,
    }


def metrics(base_url: str) -> dict[str, float]:
    url = re.sub(r"/v1/?$", "", base_url) + "/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(vllm:[a-z_]+?)(?:_total)?(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m and ("prefix_cache" in m.group(1) or "prompt_tokens" in m.group(1)):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


async def run_mode(client: Any, dialogues, mode: str, concurrency: int) -> dict[str, Any]:
    salt = f"[run {uuid.uuid4().hex[:12]}]"
    opts = JudgeOptions(**MODES[mode], skip_satisfied=False, max_concurrency=concurrency, salt=salt, max_tokens=256)
    jobs = []
    for d in dialogues:
        checklist = d.checklists[0]
        for t, _ in enumerate(segment(d.messages)):
            if t < len(checklist):
                jobs.append((d.id, t, judge_turn(client, d.messages, t, checklist[t].items, opts)))
    before_m = metrics(client.base_url)
    before_u = client.usage.total()
    start = time.perf_counter()
    results = await asyncio.gather(*(j[2] for j in jobs))
    wall = time.perf_counter() - start
    after_m = metrics(client.base_url)
    after_u = client.usage.total()
    verdicts = {}
    judged = failures = calls = 0
    for (did, t, _), tj in zip(jobs, results, strict=True):
        calls += tj.calls
        failures += tj.failures
        for v in tj.verdicts:
            if not v.short_circuit:
                judged += 1
                verdicts[(did, t, v.step, v.item_id)] = (v.satisfied, v.failed)
    delta = {k: after_m.get(k, 0.0) - before_m.get(k, 0.0) for k in after_m}
    hits = delta.get("vllm:prefix_cache_hits")
    prompt_tokens = after_u.prompt_tokens - before_u.prompt_tokens
    return {
        "mode": mode,
        "judged_items": judged,
        "calls": calls,
        "failures": failures,
        "wall_s": round(wall, 2),
        "items_per_s": round(judged / wall, 3) if wall else None,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": after_u.completion_tokens - before_u.completion_tokens,
        "cached_prompt_tokens": hits,
        "computed_prompt_tokens": None if hits is None else prompt_tokens - hits,
        "requests_per_s": round(calls / wall, 3) if wall else None,
        "_verdicts": verdicts,
        "_salt": salt,
    }


async def sim_latency(n: int) -> dict[str, float]:
    from adapters.verl.env import SimulatorEnvironment
    from cm2data.schema import canonical_json
    from cm2data.simulator import MockCache, ToolSimulator

    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cache = MockCache(Path(tmp) / "sim.sqlite")
        env = SimulatorEnvironment(ToolSimulator(None, cache))
        for i in range(n):
            cache.put("d", "lookup", canonical_json({"q": str(i)}), json.dumps({"answer": i}))
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            r = await env.call("d", [], tools, "lookup", {"q": str(i)})
            times.append(time.perf_counter() - t0)
            assert r.source == "cache"
    return {
        "n": n,
        "median_us": round(statistics.median(times) * 1e6, 1),
        "p95_us": round(sorted(times)[int(0.95 * (n - 1))] * 1e6, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    records, _ = load(ROOT / "cm2data" / "data" / "sample" / "dialogues.json", "cm2")
    dialogues = [d for d in records if d.checklists][: args.dialogues]
    config = resolve_config(args.base_url, args.model, max_concurrency=args.concurrency, timeout=600.0)
    client = LLMClient(config, usage=Usage())
    await client.check()
    out: dict[str, Any] = {
        "server": client.base_url,
        "model": client.model,
        "dialogues": len(dialogues),
        "concurrency": args.concurrency,
        "modes": {},
    }
    order = list(MODES)
    recorder = RecordingClient(client)
    for mode in order:
        res = await run_mode(recorder if mode == "b_prefix" else client, dialogues, mode, args.concurrency)
        out["modes"][mode] = res
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}), flush=True)
        if mode == "b_prefix":  # (e) the same requests from a plain client, then (b) once more, alternating
            plain = await plain_replay(client, recorder.requests, res["_salt"], args.concurrency)
            out["plain_client"] = plain
            print(json.dumps({"mode": "plain_client_same_requests_as_b", **plain}), flush=True)
            again = await run_mode(client, dialogues, mode, args.concurrency)
            out["modes"]["b_prefix_again"] = again
            print(json.dumps({k: v for k, v in again.items() if not k.startswith("_")}), flush=True)
    a, b, c, d = (out["modes"][m] for m in order)
    b_rps = statistics.mean([b["requests_per_s"], out["modes"]["b_prefix_again"]["requests_per_s"]])
    out["ratio_b_over_a"] = round(b["items_per_s"] / a["items_per_s"], 2)
    out["ratio_c_over_a"] = round(c["items_per_s"] / a["items_per_s"], 2)
    out["ratio_d_over_a"] = round(d["items_per_s"] / a["items_per_s"], 2)
    out["ratio_judge_client_over_plain"] = round(b_rps / out["plain_client"]["requests_per_s"], 3)

    def agreement(x: dict[str, Any], y: dict[str, Any]) -> tuple[float | None, int]:
        common = [
            k for k in x["_verdicts"] if k in y["_verdicts"] and not x["_verdicts"][k][1] and not y["_verdicts"][k][1]
        ]
        same = sum(x["_verdicts"][k][0] == y["_verdicts"][k][0] for k in common)
        return (round(same / len(common), 3) if common else None), len(common)

    out["agreement_c_vs_b"], out["agreement_pairs"] = agreement(b, c)
    out["agreement_d_vs_b"], _ = agreement(b, d)
    for m in out["modes"].values():
        m.pop("_verdicts")
        m.pop("_salt")
    out["simulator_cache_hit"] = await sim_latency(args.sim_n)
    await client.aclose()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url")
    p.add_argument("--model")
    p.add_argument("--dialogues", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--sim-n", type=int, default=2000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = asyncio.run(main_async(args))
    print(json.dumps({k: v for k, v in out.items() if k != "modes"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
