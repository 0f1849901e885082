"""Benchmark: does the annotate pipeline keep the LLM server busy? In one run, on the same inputs:

(a) **saturation**: a plain concurrent client (the ``openai`` SDK, a semaphore of ``--concurrency``,
    ``asyncio.gather``) sends the annotate stage's exact first requests — the messages, per-dialogue JSON schema
    (as vLLM's ``structured_outputs``, compact), ``max_tokens`` and ``temperature`` that
    :func:`cm2data.pipelines.annotate.annotate_request` builds — all at once; output tokens/s = completion tokens
    reported by the server / wall time;
(b) **pipeline**: ``run_stage("annotate", …)`` — the real distilabel pipeline (start-up, the ``LabelChecklists``
    step's process, ``LLMClient``, the gate on every answer, the journal, writing the dataset folder and the report)
    — on the same dialogues; output tokens/s = completion tokens of every answer it received (``Usage``) / the
    stage's end-to-end wall time.

It prints both and the ratio (b)/(a); the target is >= 0.8. By default the pipeline runs with ``retries=0`` so that it
sends exactly the requests of (a); ``--retries 3`` (the stage's default) adds the feedback retries, whose prompts are
longer (more prefill per output token), and is reported as a second figure.

Prefix caching: the same prompt sent twice would be served from the cache the second time and flatter whichever
phase runs later, so each phase gets its own copy of the inputs with a per-phase nonce in the dialogue's system
message (the labeller's shared instructions stay cacheable within a phase, as in real runs), and the phases alternate
their order over ``--rounds`` rounds; the median ratio is the headline.

    $VENV/bin/python benchmarks/pipeline_throughput.py                 # the embedded server (started or reused)
    $VENV/bin/python benchmarks/pipeline_throughput.py --base-url http://gpu-box:8000/v1 --n 256 --concurrency 128

Exit status 1 when the median ratio is below ``--target``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import openai

from cm2data import store
from cm2data.pipelines import AnnotateConfig, resolve_endpoint, run_stage
from cm2data.pipelines.annotate import annotate_request
from cm2data.schema import Dialogue
from cm2data.sources import load

SAMPLE = Path(__file__).resolve().parents[1] / "cm2data" / "data" / "sample" / "dialogues.json"


def inputs(n: int, max_chars: int) -> list[Dialogue]:
    """``n`` dialogues from the shipped sample (shortest first, repeated with new ids when n > 33), checklists
    removed."""
    records, _ = load(SAMPLE, "cm2")
    records = [d for d in records if len(d.model_dump_json()) <= max_chars] or records
    records.sort(key=lambda d: len(d.model_dump_json()))
    out = []
    for i in range(n):
        d = records[i % len(records)].model_copy(deep=True)
        d.id = f"bench-{i:04d}"
        d.checklists = []
        out.append(d)
    return out


def with_nonce(records: list[Dialogue], nonce: str) -> list[Dialogue]:
    out = []
    for d in records:
        d = d.model_copy(deep=True)
        if d.messages and d.messages[0].role == "system":
            d.messages[0].content = f"[{nonce}] {d.messages[0].content}"
        out.append(d)
    return out


async def plain(
    base_url: str, api_key: str, model: str, reqs: list[dict[str, Any]], concurrency: int
) -> tuple[int, float, int]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=3600)
    sem = asyncio.Semaphore(concurrency)

    async def one(r: dict[str, Any]) -> int:
        async with sem:
            resp = await client.chat.completions.create(model=model, **r)
            return resp.usage.completion_tokens

    t0 = time.monotonic()
    tokens = await asyncio.gather(*(one(r) for r in reqs))
    seconds = time.monotonic() - t0
    await client.close()
    return sum(tokens), seconds, len(reqs)


def wire(request: dict[str, Any], schema_form: str) -> dict[str, Any]:
    """``LLMClient.chat`` arguments → the HTTP body fields it sends (vLLM form)."""
    body: dict[str, Any] = {
        "messages": request["messages"],
        "max_tokens": request["max_tokens"],
        "temperature": request["temperature"],
    }
    if schema_form == "structured_outputs":
        body["extra_body"] = {"structured_outputs": {"json": request["schema"], "disable_any_whitespace": True}}
    elif schema_form == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": request["schema"]},
        }
    return body


def run_plain(endpoint: Any, records: list[Dialogue], cfg: AnnotateConfig, concurrency: int) -> dict[str, Any]:
    settings = {**cfg.model_dump(mode="json", exclude={"llm"}), "seed": 0, "request_seeds": False}
    reqs = [wire(annotate_request(d, settings), endpoint.schema_form) for d in records]
    tokens, seconds, n = asyncio.run(
        plain(endpoint.config.base_url, endpoint.config.api_key, endpoint.config.model, reqs, concurrency)
    )
    return {
        "requests": n,
        "completion_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def run_pipeline_phase(
    endpoint: Any, records: list[Dialogue], cfg: AnnotateConfig, work: Path, concurrency: int
) -> dict[str, Any]:
    src = work / f"in-{uuid.uuid4().hex[:6]}"
    store.write_dataset(src, records)
    ep = type(endpoint)(endpoint.config.with_(max_concurrency=concurrency), endpoint.kind, endpoint.schema_form)
    t0 = time.monotonic()
    outcome = run_stage(
        "annotate",
        cfg,
        work / f"out-{uuid.uuid4().hex[:6]}",
        src=src,
        endpoint=ep,
        batch_size=max(50, len(records)),
        fresh=True,
    )
    seconds = time.monotonic() - t0
    usage = outcome.summary["usage"].get("annotate", {})
    tokens = int(usage.get("completion_tokens", 0))
    return {
        "requests": usage.get("requests", 0),
        "completion_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "accepted": outcome.summary["accepted"],
        "rejects_by_rule": outcome.summary["rejects_by_rule"],
        "distilabel_seconds": outcome.summary["details"].get("pipeline_seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="OpenAI-compatible server (default: the embedded one)")
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=24, help="dialogues (default 24)")
    ap.add_argument("--max-chars", type=int, default=14_000, help="skip sample dialogues longer than this (JSON)")
    ap.add_argument("--max-tokens", type=int, default=1200, help="labeller max_tokens (default 1200)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight, both clients (default 32)")
    ap.add_argument(
        "--retries",
        type=int,
        default=0,
        help="pipeline retries for the headline ratio (default 0: the same requests as the plain client)",
    )
    ap.add_argument(
        "--with-retries",
        type=int,
        default=None,
        metavar="R",
        help="also run the pipeline with R feedback retries and report it (e.g. 3, the default)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds, alternating which phase goes first")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    endpoint = resolve_endpoint(args.base_url, args.model)
    base = inputs(args.n, args.max_chars)
    cfg = AnnotateConfig(retries=args.retries, max_tokens=args.max_tokens)
    print(
        f"server {endpoint.config.base_url} ({endpoint.kind}, {endpoint.config.model}); {args.n} dialogues; "
        f"max_tokens {args.max_tokens}; concurrency {args.concurrency}",
        flush=True,
    )
    rounds = []
    with tempfile.TemporaryDirectory(prefix="cm2data-pipebench-") as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            order = ("plain", "pipeline") if r % 2 == 0 else ("pipeline", "plain")
            got: dict[str, Any] = {}
            for phase in order:
                records = with_nonce(base, uuid.uuid4().hex[:8])
                if phase == "plain":
                    got[phase] = run_plain(endpoint, records, cfg, args.concurrency)
                else:
                    got[phase] = run_pipeline_phase(endpoint, records, cfg, work, args.concurrency)
                print(
                    f"round {r + 1} {phase:8s}: {got[phase]['completion_tokens']} output tokens in "
                    f"{got[phase]['seconds']} s = {got[phase]['tokens_per_s']} tokens/s",
                    flush=True,
                )
            got["ratio"] = round(got["pipeline"]["tokens_per_s"] / got["plain"]["tokens_per_s"], 3)
            got["order"] = list(order)
            rounds.append(got)
            print(f"round {r + 1} ratio pipeline/plain: {got['ratio']}", flush=True)
        extra = None
        if args.with_retries is not None:
            extra = run_pipeline_phase(
                endpoint,
                with_nonce(base, uuid.uuid4().hex[:8]),
                AnnotateConfig(retries=args.with_retries, max_tokens=args.max_tokens),
                work,
                args.concurrency,
            )
            print(
                f"pipeline with {args.with_retries} retries: {extra['completion_tokens']} output tokens in "
                f"{extra['seconds']} s = {extra['tokens_per_s']} tokens/s ({extra['requests']} requests)",
                flush=True,
            )
    ratios = [g["ratio"] for g in rounds]
    median = round(statistics.median(ratios), 3)
    plain_tps = statistics.median(g["plain"]["tokens_per_s"] for g in rounds)
    pipe_tps = statistics.median(g["pipeline"]["tokens_per_s"] for g in rounds)
    print(f"\n(a) saturation, plain client: {plain_tps} output tokens/s (median of {len(rounds)})")
    print(f"(b) annotate pipeline:        {pipe_tps} output tokens/s (median of {len(rounds)})")
    print(f"ratio (b)/(a): median {median} (rounds: {ratios}); target >= {args.target}")
    if extra is not None:
        print(
            f"pipeline with {args.with_retries} retries: {extra['tokens_per_s']} output tokens/s = "
            f"{round(extra['tokens_per_s'] / plain_tps, 3)} of (a)"
        )
    result = {
        "server": endpoint.describe(),
        "n": args.n,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "retries": args.retries,
        "rounds": rounds,
        "plain_tokens_per_s": plain_tps,
        "pipeline_tokens_per_s": pipe_tps,
        "ratio_median": median,
        "with_retries": extra,
        "target": args.target,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if median >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
