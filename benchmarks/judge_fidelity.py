"""Benchmark: what the careful judge mode costs per item next to the grouped mode, and how far they agree.

The same dialogues (the shipped sample's reference dialogues, each judged against its own checklist, as
``cm2data judge run`` does) are judged in ``reference`` mode (criterion first, one call per item and assistant step)
and in ``grouped`` mode (one call per assistant step for all open items), through :func:`cm2data.fidelity.run
.judge_records` — the code of ``cm2data judge run`` — with every request of a mode in flight at once and a salt of its
own at the start of the system prompt (no mode reuses the other's prefix cache). Per mode: wall seconds, calls, prompt
and completion tokens (the client's usage counters), all per judged item; the ratios reference / grouped; and the
agreement of grouped with reference on the same (dialogue, turn, item) turn verdicts of the first round: Cohen's κ
with its bootstrap interval, accuracy, confusion matrix (:mod:`cm2data.stats.agreement`). ``--rounds`` (default 2)
repeats both modes with the order alternating (reference first, then grouped first) and sums the costs, so that
drift in a shared machine's load hits both alike.

    VENV=$(bash scripts/bootstrap.sh)
    $VENV/bin/python benchmarks/judge_fidelity.py --dialogues 3 --json bench-fidelity.json        # embedded server
    $VENV/bin/python benchmarks/judge_fidelity.py --base-url http://gpu-box:8000/v1 --dialogues 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cm2data.fidelity.run import judge_options, judge_records  # noqa: E402
from cm2data.judge import PROMPT_VERSION  # noqa: E402
from cm2data.llm import LLMClient, Usage, resolve_config  # noqa: E402
from cm2data.sources import load  # noqa: E402
from cm2data.stats.agreement import binary_agreement  # noqa: E402
from cm2data.verdicts import row_key  # noqa: E402

MODES = ("reference", "grouped")


async def run_mode(config: Any, dialogues: list, mode: str, concurrency: int) -> dict[str, Any]:
    usage = Usage()
    client = LLMClient(config, usage=usage)
    await client.check()
    options = judge_options(mode, max_concurrency=concurrency)
    options.salt = f"[run {uuid.uuid4().hex[:12]}]"
    meta = {"judge_model": client.model, "mode": mode, "judge_mode": options.mode, "prompt_version": PROMPT_VERSION}
    start = time.perf_counter()
    rows, calls = await judge_records(client, dialogues, options, meta=meta)
    wall = time.perf_counter() - start
    await client.aclose()
    u = usage.as_dict().get("judge", {})
    judged = [r for r in rows if r["verdict"] is not None]
    n = len(judged)
    return {
        "mode": mode,
        "items": len(rows),
        "judged": n,
        "calls": calls["calls"],
        "failures": calls["failures"],
        "failed_items": sum(r["failed"] for r in rows),
        "wall_s": round(wall, 2),
        "prompt_tokens": u.get("prompt_tokens", 0),
        "completion_tokens": u.get("completion_tokens", 0),
        "per_item": {
            "seconds": round(wall / n, 4),
            "prompt_tokens": round(u.get("prompt_tokens", 0) / n, 1),
            "completion_tokens": round(u.get("completion_tokens", 0) / n, 2),
            "calls": round(calls["calls"] / n, 3),
        }
        if n
        else None,
        "pass_rate": round(sum(r["verdict"] for r in judged) / n, 4) if n else None,
        "_verdicts": {row_key(r): bool(r["verdict"]) for r in judged},
    }


def _total(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's rounds summed (the verdicts of the first round: agreement is measured on one judgement each)."""
    n = sum(r["judged"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    calls = sum(r["calls"] for r in runs)
    prompt, completion = sum(r["prompt_tokens"] for r in runs), sum(r["completion_tokens"] for r in runs)
    return {
        "mode": runs[0]["mode"],
        "rounds": len(runs),
        "judged": n,
        "calls": calls,
        "failures": sum(r["failures"] for r in runs),
        "wall_s": round(wall, 2),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "per_item": {
            "seconds": round(wall / n, 4),
            "prompt_tokens": round(prompt / n, 1),
            "completion_tokens": round(completion / n, 2),
            "calls": round(calls / n, 3),
        }
        if n
        else None,
        "pass_rate": runs[0]["pass_rate"],
        "_verdicts": runs[0]["_verdicts"],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    records, _ = load(ROOT / "cm2data" / "data" / "sample" / "dialogues.json", "cm2")
    annotated = sorted((d for d in records if d.checklists), key=lambda d: sum(len(m.content) for m in d.messages))
    dialogues = annotated[: args.dialogues]  # the shortest ones: a small, quick run on a CPU server
    config = resolve_config(args.base_url, args.model, max_concurrency=args.concurrency, timeout=900.0)
    out: dict[str, Any] = {
        "server": config.base_url,
        "dialogues": [d.id for d in dialogues],
        "concurrency": args.concurrency,
        "rounds": [],
        "modes": {},
    }
    for r in range(args.rounds):  # the order alternates, so that drift in the machine's load hits both modes alike
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            res = await run_mode(config, dialogues, mode, args.concurrency)
            out["rounds"].append({k: v for k, v in res.items() if not k.startswith("_")} | {"round": r})
            print(json.dumps(out["rounds"][-1]), flush=True)
            out["modes"].setdefault(mode, []).append(res)
    out["modes"] = {m: _total(runs) for m, runs in out["modes"].items()}
    ref, grp = out["modes"]["reference"], out["modes"]["grouped"]
    out["model"] = config.model
    if ref["per_item"] and grp["per_item"]:
        out["ratio_reference_over_grouped"] = {
            k: round(ref["per_item"][k] / grp["per_item"][k], 2) if grp["per_item"][k] else None
            for k in ("seconds", "prompt_tokens", "completion_tokens", "calls")
        }
    keys = sorted(k for k in ref["_verdicts"] if k in grp["_verdicts"])
    out["agreement_grouped_vs_reference"] = binary_agreement(
        [ref["_verdicts"][k] for k in keys], [grp["_verdicts"][k] for k in keys], resamples=2000, seed=0
    )
    for m in out["modes"].values():
        m.pop("_verdicts")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url")
    p.add_argument("--model")
    p.add_argument("--dialogues", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="rounds of both modes, the order alternating")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = asyncio.run(main_async(args))
    print(json.dumps({k: v for k, v in out.items() if k != "modes"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
