"""``compute_score`` for VeRL's reward managers (``reward.custom_reward_function.{path,name}``): the CM2 checklist
reward of one rollout, ``R = (1/L) Σ_t R_t`` (method §5).

The policy's text (``solution_str``) is not judged: the agent loop stores the structured conversation
(``cm2_messages``) and the verdicts it already made (``cm2_judgements``) in its extra fields, which VeRL merges into
``extra_info``. Turns the loop did not judge are judged here (external judge URL or verl's
``reward_router_address``). Always returns a dict, never raises: ``score`` plus ``turn_scores`` (JSON, R_t per judged
turn), ``step_verdicts`` (JSON, the judge's per-step verdicts of each judged turn: what turn/step-level credit
assignment reads, ``adapters/verl/credit.py``), ``items_passed``, ``items_total``, ``judge_failures``,
``judge_calls``, ``stopped_at`` (-1: none), ``error`` (empty when fine).
"""

from __future__ import annotations

import json
from typing import Any

from adapters.verl.common import checklist_from_ground_truth, decode, judge_client, judge_options
from cm2data.judge import ItemVerdict, TurnJudgement, judge_rollout
from cm2data.reward import score_rollout


def _known(stored: Any) -> list[TurnJudgement]:
    out = []
    for t in decode(stored, []) or []:
        out.append(
            TurnJudgement(
                turn=t["turn"],
                step_verdicts=t["step_verdicts"],
                satisfied=t["satisfied"],
                score=t["score"],
                gate_passed=t["gate_passed"],
                failed_gates=t.get("failed_gates", []),
                calls=t.get("calls", 0),
                failures=t.get("failures", 0),
                cache_hits=t.get("cache_hits", 0),
                complete=t.get("complete", True),
                verdicts=[
                    ItemVerdict(
                        v["item"],
                        v["step"],
                        v["satisfied"],
                        v.get("failed", False),
                        v.get("short_circuit", False),
                        v.get("cached", False),
                        v.get("reason"),
                    )
                    for v in t.get("verdicts", [])
                ],
            )
        )
    return out


def _result(
    score: float,
    turn_scores: list[float],
    passed: int,
    total: int,
    failures: int,
    calls: int,
    stopped: int | None,
    error: str = "",
    step_verdicts: list[list[dict[str, bool]]] | None = None,
) -> dict[str, Any]:
    return {
        "score": float(score),
        "turn_scores": json.dumps([round(s, 6) for s in turn_scores]),
        "step_verdicts": json.dumps(step_verdicts or [], ensure_ascii=False),
        "items_passed": passed,
        "items_total": total,
        "judge_failures": failures,
        "judge_calls": calls,
        "stopped_at": -1 if stopped is None else stopped,
        "error": error,
    }


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    reward_router_address: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    try:
        extra = extra_info or {}
        checklist, _ = checklist_from_ground_truth(ground_truth)
        if not checklist:
            return _result(0.0, [], 0, 0, 0, 0, None, "no checklist in ground_truth")
        total = sum(len(t) for t in checklist)
        messages = decode(extra.get("cm2_messages"), None)
        known = _known(extra.get("cm2_judgements"))
        if not messages:
            if not known:
                return _result(0.0, [], 0, total, 0, 0, None, "no conversation stored by the agent loop")
            scored = score_rollout(checklist, [k.step_verdicts for k in known])
            return _result(
                scored.score,
                scored.turn_scores,
                sum(len(p) for p in scored.items_passed),
                total,
                sum(k.failures for k in known),
                sum(k.calls for k in known),
                scored.stopped_at,
                step_verdicts=[k.step_verdicts for k in known[: len(scored.turn_scores)]],
            )
        client = judge_client(reward_router_address)
        if client is None and len(known) < len(checklist):
            from cm2data.judge import segment, to_messages

            if len(segment(to_messages(messages))) > len(known) and not any(not k.gate_passed for k in known):
                return _result(0.0, [], 0, total, 0, 0, None, "no judge configured (CM2DATA_JUDGE_BASE_URL)")
        rj = await judge_rollout(client, messages, checklist, judge_options(), known=known)
        return _result(
            rj.score,
            rj.turn_scores,
            sum(len(p) for p in rj.items_passed),
            total,
            rj.judge_failures,
            sum(t.calls for t in rj.turns),
            rj.stopped_at,
            step_verdicts=[t.step_verdicts for t in rj.turns[: len(rj.turn_scores)]],
        )
    except Exception as exc:  # a defined outcome, never an exception into the trainer
        return _result(0.0, [], 0, 0, 0, 0, None, f"{type(exc).__name__}: {exc}"[:300])
