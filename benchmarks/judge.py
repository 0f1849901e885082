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
verdict agreement of c with b on the same (dialogue, turn, step, item). Then the simulated tool environment's
cache-hit latency (``adapters.verl.env``, SQLite cache).

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

MODES = {"a_reference": {"order": "reference"}, "b_prefix": {"order": "prefix"},
         "c_grouped": {"order": "prefix", "grouped": True}}


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


async def run_mode(client: LLMClient, dialogues, mode: str, concurrency: int) -> dict[str, Any]:
    opts = JudgeOptions(**MODES[mode], skip_satisfied=False, max_concurrency=concurrency,
                        salt=f"[run {uuid.uuid4().hex[:12]}]", max_tokens=256)
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
    return {"mode": mode, "judged_items": judged, "calls": calls, "failures": failures, "wall_s": round(wall, 2),
            "items_per_s": round(judged / wall, 3) if wall else None, "prompt_tokens": prompt_tokens,
            "completion_tokens": after_u.completion_tokens - before_u.completion_tokens,
            "cached_prompt_tokens": hits, "computed_prompt_tokens": None if hits is None else prompt_tokens - hits,
            "_verdicts": verdicts}


async def sim_latency(n: int) -> dict[str, float]:
    from adapters.verl.env import LocalToolEnvironment, SQLiteCache

    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    with tempfile.TemporaryDirectory() as tmp:
        env = LocalToolEnvironment(None, SQLiteCache(Path(tmp) / "sim.sqlite"))
        for i in range(n):
            env.cache.set(env.key("d", "lookup", {"q": str(i)}), json.dumps({"answer": i}))
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            r = await env.call("d", [], tools, "lookup", {"q": str(i)})
            times.append(time.perf_counter() - t0)
            assert r.source == "cache"
    return {"n": n, "median_us": round(statistics.median(times) * 1e6, 1),
            "p95_us": round(sorted(times)[int(0.95 * (n - 1))] * 1e6, 1)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    records, _ = load(ROOT / "cm2data" / "data" / "sample" / "dialogues.json", "cm2")
    dialogues = [d for d in records if d.checklists][: args.dialogues]
    config = resolve_config(args.base_url, args.model, max_concurrency=args.concurrency, timeout=600.0)
    client = LLMClient(config, usage=Usage())
    await client.check()
    out: dict[str, Any] = {"server": client.base_url, "model": client.model, "dialogues": len(dialogues),
                           "concurrency": args.concurrency, "modes": {}}
    order = list(MODES)
    for mode in order:
        res = await run_mode(client, dialogues, mode, args.concurrency)
        out["modes"][mode] = res
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}), flush=True)
    a, b, c = (out["modes"][m] for m in order)
    out["ratio_b_over_a"] = round(b["items_per_s"] / a["items_per_s"], 2)
    out["ratio_c_over_a"] = round(c["items_per_s"] / a["items_per_s"], 2)
    common = [k for k in b["_verdicts"] if k in c["_verdicts"] and not b["_verdicts"][k][1]
              and not c["_verdicts"][k][1]]
    same = sum(b["_verdicts"][k][0] == c["_verdicts"][k][0] for k in common)
    out["agreement_c_vs_b"] = round(same / len(common), 3) if common else None
    out["agreement_pairs"] = len(common)
    for m in out["modes"].values():
        m.pop("_verdicts")
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
