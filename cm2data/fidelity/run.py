"""``cm2data judge run``: judge every checklist item of a dataset's reference dialogues and keep the verdicts.

Each dialogue's own reference conversation is judged against its own checklist, turn by turn, with
:func:`cm2data.judge.judge_turn` — the same judge the reward uses, in one of three modes:

* ``reference`` — the reference's prompt order (criterion first), one call per item and assistant step: the careful,
  costly mode;
* ``prefix`` — the conversation first and the criterion last (prefix-cache friendly), one call per item and step;
* ``grouped`` — prefix order, one call per assistant step answering every open item at once.

Every turn of the reference is judged (no gating: a reference continues whatever the judge says). A reference
dialogue is known-good, so the items it fails are mostly the judge's false negatives — one fidelity signal; people
and a careful judge give the others (:mod:`cm2data.fidelity.agree`).

The result is a verdict folder (:func:`cm2data.verdicts.write_verdicts`): one row per (dialogue, variant, turn,
item) with the turn verdict, the judge model, mode and prompt version, the deciding raw answer and every step's
answer, the item's fingerprints; ``judge_run.json`` has the settings, the counts and the token usage.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data import __version__
from cm2data.judge import PROMPT_VERSION, JudgeOptions, TurnJudgement, judge_turn
from cm2data.schema import Dialogue, TurnChecklist, segment
from cm2data.verdicts import context_fingerprint, item_fingerprint, write_verdicts

if TYPE_CHECKING:
    from rich.console import Console

#: The CLI's mode names → :class:`cm2data.judge.JudgeOptions` settings.
MODES: dict[str, dict[str, Any]] = {
    "reference": {"order": "reference"},
    "prefix": {"order": "prefix"},
    "grouped": {"order": "prefix", "grouped": True},
}


class FidelityError(RuntimeError):
    """A user-facing failure of a fidelity command (bad input, unreachable server)."""


def judge_options(
    mode: str, *, grouped_answer: str = "object", max_concurrency: int = 16, max_tokens: int = 256
) -> JudgeOptions:
    """The judge's options for a mode name (``reference``, ``prefix``, ``grouped``). No verdict cache: a fidelity
    run measures the judge, not the cache."""
    if mode not in MODES:
        raise FidelityError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    extra: dict[str, Any] = {"grouped_answer": grouped_answer} if mode == "grouped" else {}
    return JudgeOptions(**MODES[mode], **extra, max_concurrency=max_concurrency, max_tokens=max_tokens, stage="judge")


def sample_records(records: Sequence[Dialogue], n: int | None, seed: int = 0) -> list[Dialogue]:
    """The records that have a checklist; a seeded sample of ``n`` of them (in their original order) when ``n`` is
    given and smaller than their number."""
    annotated = [d for d in records if d.checklists]
    if n is None or n >= len(annotated):
        return annotated
    if n < 1:
        raise FidelityError(f"--sample must be at least 1, got {n}")
    chosen = set(random.Random(seed).sample(range(len(annotated)), n))
    return [d for i, d in enumerate(annotated) if i in chosen]


def turn_rows(
    d: Dialogue,
    variant: int,
    block: TurnChecklist,
    tj: TurnJudgement | None,
    *,
    meta: dict[str, Any],
    unjudged_reason: str | None = None,
) -> list[dict[str, Any]]:
    """The verdict rows of one judged turn (or, with ``tj`` None, rows without a verdict and the reason)."""
    ctx = context_fingerprint(d, block.turn)
    rows = []
    for it in block.items:
        row: dict[str, Any] = {
            "dialogue_id": d.id,
            "variant": variant,
            "turn": block.turn,
            "item_id": it.id,
            "focus_on": it.focus_on,
            "required_for_next_turn": it.required_for_next_turn,
            "item_fingerprint": item_fingerprint(it),
            "context_fingerprint": ctx,
            **meta,
        }
        verdicts = [] if tj is None else sorted((v for v in tj.verdicts if v.item_id == it.id), key=lambda v: v.step)
        if tj is None or not verdicts:
            reason = unjudged_reason or "the turn has no assistant step to judge"
            rows.append(
                {
                    **row,
                    "verdict": None,
                    "failed": False,
                    "short_circuit": False,
                    "satisfied_at_step": None,
                    "steps": 0 if tj is None else len(tj.step_verdicts),
                    "raw_answer": None,
                    "reason": reason,
                    "step_verdicts": "[]",
                }
            )
            continue
        satisfied = bool(tj.satisfied.get(it.id, False))
        first = next((v for v in verdicts if v.satisfied), None)
        deciding = first or verdicts[-1]
        failure = next((v.reason for v in verdicts if v.failed or v.short_circuit), None)
        rows.append(
            {
                **row,
                "verdict": satisfied,
                "failed": not satisfied and any(v.failed for v in verdicts),
                "short_circuit": any(v.short_circuit for v in verdicts),
                "satisfied_at_step": first.step if first else None,
                "steps": len(tj.step_verdicts),
                "raw_answer": deciding.raw,
                "reason": failure,
                "step_verdicts": json.dumps([{**v.to_dict(), "raw": v.raw} for v in verdicts], ensure_ascii=False),
            }
        )
    return rows


@dataclass
class Job:
    dialogue: Dialogue
    variant: int
    block: TurnChecklist


def jobs_for(records: Sequence[Dialogue], variants: Sequence[int] | None = None) -> list[Job]:
    return [
        Job(d, v, block)
        for d in records
        for v, blocks in enumerate(d.checklists)
        if variants is None or v in variants
        for block in blocks
    ]


async def judge_records(
    client: Any,
    records: Sequence[Dialogue],
    options: JudgeOptions,
    *,
    meta: dict[str, Any],
    variants: Sequence[int] | None = None,
    on_turn: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Judge every (dialogue, variant, turn) of ``records`` concurrently (the client bounds requests in flight);
    returns the verdict rows in dataset order and ``{"calls", "failures", "turns"}``."""
    jobs = jobs_for(records, variants)
    n_turns = {d.id: len(segment(d.messages)) for d in records}

    async def one(job: Job) -> TurnJudgement | None:
        try:
            if job.block.turn >= n_turns[job.dialogue.id]:
                return None
            return await judge_turn(client, job.dialogue.messages, job.block.turn, job.block.items, options)
        finally:
            if on_turn is not None:
                on_turn()

    results = await asyncio.gather(*(one(j) for j in jobs))
    rows: list[dict[str, Any]] = []
    calls = failures = 0
    for job, tj in zip(jobs, results, strict=True):
        if tj is not None:
            calls += tj.calls
            failures += tj.failures
        why = (
            None
            if tj is not None
            else (f"turn {job.block.turn} is not in the dialogue ({n_turns[job.dialogue.id]} turns)")
        )
        rows.extend(turn_rows(job.dialogue, job.variant, job.block, tj, meta=meta, unjudged_reason=why))
    return rows, {"calls": calls, "failures": failures, "turns": len(jobs)}


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in rows if r["verdict"] is not None]
    passed = sum(1 for r in judged if r["verdict"])
    return {
        "items": len(rows),
        "judged": len(judged),
        "passed": passed,
        "failed_items": sum(r["failed"] for r in rows),
        "short_circuit": sum(r["short_circuit"] for r in rows),
        "unjudged": len(rows) - len(judged),
        "pass_rate": round(passed / len(judged), 4) if judged else None,
    }


@dataclass
class RunResult:
    out: Path
    run: dict[str, Any]


def load_dataset_records(src: Path) -> list[Dialogue]:
    """Records of a dataset folder or file; refuses input with unreadable rows (nothing is dropped silently)."""
    from cm2data.sources import load

    src = Path(src)
    if not src.exists():
        raise FidelityError(f"{src} does not exist")
    try:
        records, rejects = load(src)
    except (OSError, ValueError) as exc:
        raise FidelityError(f"cannot read {src}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    if rejects:
        raise FidelityError(
            f"{len(rejects)} rows of {src} cannot be read (first: {rejects[0].rule}: "
            f"{rejects[0].message}); filter them out first (cm2data filter)"
        )
    return records


def run_judge(
    src: Path,
    out: Path,
    *,
    mode: str,
    base_url: str | None = None,
    model: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    variants: Sequence[int] | None = None,
    grouped_answer: str = "object",
    concurrency: int = 32,
    timeout: float = 300.0,
    max_tokens: int = 256,
    console: Console | None = None,
    progress: bool = True,
) -> RunResult:
    """Judge the dataset ``src`` in ``mode`` and write the verdict folder ``out`` (see the module docstring).

    The endpoint is ``base_url`` (else ``CM2DATA_LLM_BASE_URL``, else the embedded server, started if needed).
    Raises :class:`FidelityError` on bad input or when the server cannot be reached; judge calls that fail are
    verdicts marked ``failed``, never exceptions."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cm2data.llm import LLMClient, LLMError, Usage, resolve_config

    options = judge_options(mode, grouped_answer=grouped_answer, max_concurrency=concurrency, max_tokens=max_tokens)
    records = load_dataset_records(src)
    chosen = sample_records(records, sample, seed)
    if not chosen:
        raise FidelityError(f"{src} has no dialogue with a checklist: nothing to judge")
    usage = Usage()
    console = console or Console(stderr=True)

    async def go() -> tuple[list[dict[str, Any]], dict[str, int], str, float]:
        config = resolve_config(base_url, model, timeout=timeout, max_concurrency=concurrency)
        client = LLMClient(config, usage=usage)
        try:
            info = await client.check()
            meta = {
                "judge_model": info.model,
                "mode": mode,
                "judge_mode": options.mode,
                "prompt_version": PROMPT_VERSION,
            }
            n_jobs = len(jobs_for(chosen, variants))
            with Progress(
                TextColumn(f"judge ({mode})"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                disable=not progress,
                transient=True,
            ) as bar:
                task = bar.add_task("turns", total=n_jobs)
                start = time.perf_counter()
                rows, calls = await judge_records(
                    client, chosen, options, meta=meta, variants=variants, on_turn=lambda: bar.advance(task)
                )
                seconds = time.perf_counter() - start
            return rows, calls, client.base_url, seconds
        finally:
            await client.aclose()

    try:
        rows, calls, url, seconds = asyncio.run(go())
    except LLMError as exc:
        raise FidelityError(str(exc)) from None
    judge_usage = usage.as_dict().get("judge", {})
    summary = summarize_rows(rows)
    run = {
        "kind": "cm2data.judge_run",
        "source": str(Path(src).resolve()),
        "dialogues_in_source": len(records),
        "dialogues_judged": len(chosen),
        "sample": sample,
        "seed": seed,
        "variants": list(variants) if variants is not None else None,
        "judge_model": rows[0]["judge_model"] if rows else model,
        "base_url": url,
        "mode": mode,
        "judge_mode": options.mode,
        "prompt_version": PROMPT_VERSION,
        "options": {
            "order": options.order,
            "grouped": options.grouped,
            "grouped_answer": options.grouped_answer,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "skip_satisfied": options.skip_satisfied,
            "concurrency": concurrency,
            "timeout": timeout,
        },
        **summary,
        **calls,
        "seconds": round(seconds, 3),
        "usage": judge_usage,
        "per_item": {
            "seconds": round(seconds / summary["judged"], 4) if summary["judged"] else None,
            "prompt_tokens": round(judge_usage.get("prompt_tokens", 0) / summary["judged"], 1)
            if summary["judged"]
            else None,
            "completion_tokens": round(judge_usage.get("completion_tokens", 0) / summary["judged"], 2)
            if summary["judged"]
            else None,
            "calls": round(calls["calls"] / summary["judged"], 3) if summary["judged"] else None,
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cm2data_version": __version__,
    }
    write_verdicts(Path(out), rows, chosen, run)
    return RunResult(Path(out), run)


def print_run(result: RunResult, console: Console) -> None:
    r = result.run
    console.print(
        f"judged {r['judged']} of {r['items']} checklist items ({r['dialogues_judged']} dialogues, "
        f"{r['turns']} turns) with {r['judge_model']} in {r['mode']} mode: {r['passed']} pass, "
        f"{r['judged'] - r['passed']} fail ({r['failed_items']} of them after failed judge calls, "
        f"{r['short_circuit']} short-circuited on tool errors); {r['unjudged']} could not be judged"
    )
    u = r["usage"]
    console.print(
        f"{r['calls']} calls ({r['failures']} failed), {u.get('prompt_tokens', 0)} prompt + "
        f"{u.get('completion_tokens', 0)} completion tokens, {r['seconds']} s → {result.out}"
    )
