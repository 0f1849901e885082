"""Turn- and step-level credit assignment (method §5) as VeRL 0.9.1 advantage estimators: ``cm2_turn``, ``cm2_step``.

Selected with ``algorithm.adv_estimator=cm2_turn|cm2_step`` (``CREDIT=turn|step recipes/rl_qwen.sh``). Importing this
module registers both with :func:`verl.trainer.ppo.core_algos.register_adv_est`; ``adapters/verl/dataset.py`` imports
it, and the trainer loads that file (``data.custom_cls.path``) in the process that computes advantages.

**How the per-turn data reaches the estimator.** VeRL 0.9.1 calls a registered estimator with ``token_level_rewards``,
``response_mask``, ``index`` (the prompt uid) and ``config`` only — ``non_tensor_batch`` is passed to the
hard-coded ``gdpo`` name alone — and its V1 trainer fetches just ``uid``, ``response_mask``, ``rm_scores`` and the
log-prob/value tensors from the TransferQueue before computing advantages, so neither the agent loop's
``extra_fields`` nor ``reward_extra_info`` can get there. The per-row *reward tensor* is the one channel. The
agent loop (:class:`adapters.verl.agent_loop.CM2AgentLoopOutput`) therefore writes a small **credit record** into
``rm_scores`` beside the reward: a list of integers ``k`` (``|k| < 2**24``), each stored as ``k * 2**-100`` at
response positions ``0, 1, …`` — never at the last position, which carries the reward R as VeRL puts it. Every value
is exact in float32 and the record adds less than ``1e-18`` to a row's sum, so the rewards VeRL logs (sums over the
row) and GRPO are unchanged. The estimators read the record back and write nothing else into the batch.

Record (all integers; reals as ``round(x * 2**20)``)::

    MAGIC VERSION MODE LENGTH  n_turns
    per turn:  R_t  n_steps  (start end) × n_steps           # token offsets in the response, one span per step
    step mode: n_items  (weight  unknown_dep  deps_mask…) × n_items  (verdict_mask…) × n_steps

A row whose record does not fit (fewer response tokens than record entries) carries none; the estimators give its
tokens advantage 0 and leave it out of its group (a warning counts them). When no row of a batch has a record the
estimator raises: the agent loop was not ``cm2_agent``, the trainer was not V1, or something (a colocated reward
model, ``use_kl_in_reward``) rewrote the reward tensor.

Turn level: ``A_t = R_t − mean`` over the group's samples that reached turn t, 0 when 4 or fewer did
(:func:`cm2data.reward.turn_advantages`), on every policy token of turn t. Step level: dependency-gated, backfilled
rewards against ``b_{t,c}`` (:func:`cm2data.reward.group_step_advantages`) on every policy token of that assistant
step; ``CM2DATA_CREDIT_ETA`` (decay eta^k, default none) and ``CM2DATA_CREDIT_NORMALIZE=1`` (divide by the eligible
weight) are read where the estimator runs. Tool and user tokens, padding and turns a sample did not reach get 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from cm2data.reward import group_step_advantages, turn_advantages
from cm2data.schema import ChecklistItem

logger = logging.getLogger(__name__)

#: ``algorithm.adv_estimator`` name → credit level.
ESTIMATORS = {"cm2_turn": "turn", "cm2_step": "step"}
MODES = {"turn": 1, "step": 2}
MAGIC = 0xC2C2D0
VERSION = 1
SCALE = 2.0**-100  # a record integer k is stored as k * SCALE
FRACTION = 2**20  # reals: round(x * FRACTION)
LIMIT = 2**24  # |k| < LIMIT: exact in float32
BITS = 24  # items per mask integer
ENV_ETA = "CM2DATA_CREDIT_ETA"
ENV_NORMALIZE = "CM2DATA_CREDIT_NORMALIZE"


@dataclass
class TurnCredit:
    """What credit assignment needs of one reached turn of one rollout."""

    score: float  # R_t (unscaled)
    spans: list[tuple[int, int]]  # per assistant step: [start, end) in the response (empty when truncated away)
    verdicts: list[dict[str, bool]] = field(default_factory=list)  # step mode: per step, what the judge said
    items: list[ChecklistItem] = field(default_factory=list)  # step mode: the turn's checklist


@dataclass
class CreditRecord:
    mode: str
    turns: list[TurnCredit]


def credit_mode(config: Any) -> str | None:
    """``"turn"``/``"step"`` when the trainer config selects one of our estimators, else None."""
    try:
        name = config.algorithm.adv_estimator
    except Exception:
        return None
    return ESTIMATORS.get(str(getattr(name, "value", name)))


# ------------------------------------------------------------------------------------------------- the record


def _real(x: float) -> int:
    if not math.isfinite(float(x)) or abs(round(float(x) * FRACTION)) >= LIMIT:
        raise ValueError(f"value {x} out of the record's range")
    return round(float(x) * FRACTION)


def _masks(ids: Sequence[str], chosen: Any) -> list[int]:
    """Bit masks (24 items per integer) of the ids in ``chosen`` among ``ids``."""
    out = [0] * max(1, math.ceil(len(ids) / BITS))
    for k, cid in enumerate(ids):
        if cid in chosen:
            out[k // BITS] |= 1 << (k % BITS)
    return out


def _unmask(ids: Sequence[str], masks: Sequence[int]) -> list[str]:
    return [cid for k, cid in enumerate(ids) if masks[k // BITS] >> (k % BITS) & 1]


def encode(record: CreditRecord) -> list[int]:
    """The integers of a record (raises ValueError when a value does not fit)."""
    body = [len(record.turns)]
    for tc in record.turns:
        body += [_real(tc.score), len(tc.spans)]
        for start, end in tc.spans:
            body += [int(start), int(end)]
        if record.mode == "step":
            ids = [item.id for item in tc.items]
            body.append(len(ids))
            for item in tc.items:
                body += [
                    _real(item.weight),
                    int(any(d not in ids for d in item.depends_on)),
                    *_masks(ids, set(item.depends_on)),
                ]
            for s in range(len(tc.spans)):
                verdicts = tc.verdicts[s] if s < len(tc.verdicts) else {}
                body += _masks(ids, {cid for cid, ok in verdicts.items() if ok})
    out = [MAGIC, VERSION, MODES[record.mode], 4 + len(body), *body]
    if any(abs(k) >= LIMIT for k in out):
        raise ValueError("record value out of range")
    return out


class _Reader:
    def __init__(self, values: Sequence[int]):
        self.values, self.pos = values, 0

    def take(self, n: int = 1) -> list[int]:
        if n < 0 or self.pos + n > len(self.values):
            raise ValueError("truncated record")
        out = list(self.values[self.pos : self.pos + n])
        self.pos += n
        return out

    def one(self) -> int:
        return self.take()[0]


def decode(values: Sequence[int]) -> CreditRecord | None:
    """A record from its integers; None when they are not one."""
    if len(values) < 5 or values[0] != MAGIC or values[1] != VERSION or values[2] not in MODES.values():
        return None
    mode = next(m for m, code in MODES.items() if code == values[2])
    length = values[3]
    if not 5 <= length <= len(values):
        return None
    r = _Reader(values[4:length])
    try:
        turns = []
        for _ in range(r.one()):
            score = r.one() / FRACTION
            n_steps = r.one()
            flat = r.take(2 * n_steps)
            spans = [(flat[2 * s], flat[2 * s + 1]) for s in range(n_steps)]
            tc = TurnCredit(score, spans)
            if mode == "step":
                n_items = r.one()
                chunks = max(1, math.ceil(n_items / BITS))
                ids = [str(k) for k in range(n_items)]
                for cid in ids:
                    weight, unknown = r.one() / FRACTION, r.one()
                    deps = _unmask(ids, r.take(chunks)) + (["?"] if unknown else [])
                    # model_construct: only the fields the reward reads (no validation, no text; hot path)
                    tc.items.append(
                        ChecklistItem.model_construct(  # type: ignore[call-arg]
                            id=cid, weight=weight, depends_on=deps, required_for_next_turn=False
                        )
                    )
                for _ in range(n_steps):
                    tc.verdicts.append(dict.fromkeys(_unmask(ids, r.take(chunks)), True))
            turns.append(tc)
        if r.pos != len(r.values):
            return None
    except (ValueError, IndexError):
        return None
    return CreditRecord(mode, turns)


def write_record(rm_scores: torch.Tensor, record: CreditRecord) -> bool:
    """Write ``record`` into a row's reward tensor (positions 0… but never the last); False when it does not fit."""
    try:
        values = encode(record)
    except ValueError:
        return False
    if len(values) > rm_scores.numel() - 1:
        return False
    rm_scores[: len(values)] = (torch.tensor(values, dtype=torch.float64) * SCALE).to(rm_scores.dtype)
    return True


def read_records(token_level_rewards: torch.Tensor) -> list[CreditRecord | None]:
    """The record of each row of a (batch, response length) reward tensor, None where a row has none."""
    rewards = token_level_rewards.detach().to("cpu")
    width = rewards.shape[1] if rewards.dim() == 2 else 0
    if width < 5:
        return [None] * len(rewards)
    heads = (rewards[:, :4].to(torch.float64) / SCALE).numpy()
    out: list[CreditRecord | None] = []
    for i, (magic, _, _, length) in enumerate(heads):
        if magic != MAGIC or not 5 <= length <= width or length != int(length):
            out.append(None)
            continue
        row = (rewards[i, : int(length)].to(torch.float64) / SCALE).numpy()
        out.append(decode([int(v) for v in row]) if np.all(row == np.round(row)) else None)
    return out


# ------------------------------------------------------------------------------------- from the agent loop's data


def build_record(
    mode: str,
    spans: Sequence[Sequence[int]],
    length: int,
    turn_scores: Sequence[float],
    step_verdicts: Sequence[Sequence[Mapping[str, bool]]],
    checklist: Sequence[Sequence[ChecklistItem]],
) -> CreditRecord:
    """The record of one rollout. ``spans``: ``[turn, step, start, end]`` per policy generation (offsets into the
    response before truncation to ``length``); ``turn_scores[t]`` = R_t and ``step_verdicts[t]`` the judge's per-step
    verdicts of each judged turn; ``checklist[t]`` the items of turn t. A turn counts as reached when it was judged or
    has tokens; a judged turn whose tokens were truncated away keeps its score (it still counts in the group
    statistics) with empty spans."""
    by_turn: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)
    for turn, step, start, end in spans:
        s, e = min(int(start), length), min(int(end), length)
        by_turn[int(turn)][int(step)] = (s, e) if e > s else (0, 0)
    with_tokens = [t for t, steps in by_turn.items() if any(e > s for s, e in steps.values())]
    n_turns = max(len(turn_scores), max(with_tokens, default=-1) + 1)
    turns = []
    for t in range(n_turns):
        verdicts = [dict(v) for v in step_verdicts[t]] if t < len(step_verdicts) else []
        steps = by_turn.get(t, {})
        n_steps = max(max(steps, default=-1) + 1, len(verdicts) if mode == "step" else 0)
        tc = TurnCredit(
            float(turn_scores[t]) if t < len(turn_scores) else 0.0, [steps.get(s, (0, 0)) for s in range(n_steps)]
        )
        if mode == "step":
            tc.verdicts = verdicts + [{} for _ in range(n_steps - len(verdicts))]
            tc.items = list(checklist[t]) if t < len(checklist) else []
        turns.append(tc)
    return CreditRecord(mode, turns)


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def attach_record(
    output: dict[str, Any], extra_fields: Mapping[str, Any], checklist: Sequence[Sequence[ChecklistItem]], mode: str
) -> str:
    """Write the credit record into ``output["rm_scores"]`` (an ``AgentLoopOutput.as_dict()``). R_t and the step
    verdicts come from the reward's ``reward_extra_info`` (``turn_scores``, ``step_verdicts`` of
    :func:`adapters.verl.reward.compute_score`), else from the loop's own judgements. Returns the status the loop
    stores in ``extra_fields["cm2_credit"]``: the mode, ``overflow`` (it does not fit), ``no_reward`` (VeRL built no
    ``rm_scores``) or ``bad_input``."""
    rm = output.get("rm_scores")
    if rm is None:
        return "no_reward"
    info = extra_fields.get("reward_extra_info") or {}
    judged = _decoded(extra_fields.get("cm2_judgements")) or []
    try:
        scores = _decoded(info["turn_scores"]) if "turn_scores" in info else [j["score"] for j in judged]
        verdicts = _decoded(info["step_verdicts"]) if "step_verdicts" in info else [j["step_verdicts"] for j in judged]
        record = build_record(
            mode, extra_fields.get("cm2_spans") or [], rm.numel(), scores or [], verdicts or [], checklist
        )
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("cm2 credit: no record (%s)", exc)
        return "bad_input"
    return mode if write_record(rm, record) else "overflow"


# ------------------------------------------------------------------------------------------------- estimators


def _options() -> tuple[float | None, bool]:
    eta = os.environ.get(ENV_ETA, "").strip()
    normalize = os.environ.get(ENV_NORMALIZE, "0").strip().lower() in ("1", "true", "yes")
    return (float(eta) if eta else None), normalize


def _compute(
    level: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if index is None:
        raise ValueError(f"cm2_{level}: needs the group index (uid)")
    records = read_records(token_level_rewards)
    usable = [r is not None and (level == "turn" or r.mode == "step") for r in records]
    if not any(usable):
        raise RuntimeError(
            f"cm2_{level}: no row carries a CM2 credit record of the {level} level in its reward tensor. It needs "
            "the cm2_agent loop with algorithm.adv_estimator set before the rollout, VeRL's V1 trainer, the async "
            "reward loop (not a colocated reward model) and algorithm.use_kl_in_reward=False (docs/rl.md)"
        )
    missing = len(records) - sum(usable)
    if missing:
        logger.warning("cm2_%s: %d of %d rows carry no credit record: advantage 0", level, missing, len(records))
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, ok in enumerate(usable):
        if ok:
            groups[index[i]].append(i)
    adv = torch.zeros(token_level_rewards.shape, dtype=torch.float32)
    eta, normalize = _options()
    for rows in groups.values():
        turns = [records[i].turns for i in rows]  # type: ignore[union-attr]
        if level == "turn":
            per_turn = turn_advantages([[tc.score for tc in sample] for sample in turns])
            values = [
                [[a] * len(tc.spans) for a, tc in zip(row, sample, strict=True)]
                for row, sample in zip(per_turn, turns, strict=True)
            ]
        else:
            depth = max(len(sample) for sample in turns)
            checklist = [next(sample[t].items for sample in turns if len(sample) > t) for t in range(depth)]
            values = group_step_advantages(
                checklist, [[tc.verdicts for tc in sample] for sample in turns], eta=eta, normalize=normalize
            )
        for i, sample, row in zip(rows, turns, values, strict=True):
            for tc, steps in zip(sample, row, strict=True):
                for (start, end), value in zip(tc.spans, steps, strict=True):
                    if end > start and value:
                        adv[i, start:end] = value
    adv = adv.to(response_mask.device) * response_mask.to(adv.dtype)
    return adv, adv


def compute_turn_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cm2_turn``: ``A_t = R_t − mean_{reached t} R_t`` on the policy tokens of turn t (0 when ≤ 4 reached t)."""
    return _compute("turn", token_level_rewards, response_mask, index)


def compute_step_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cm2_step``: ``A_{t,s} = Σ_{c∈E_s} w_c (r̃_{s,c} − b_{t,c})`` on the policy tokens of assistant step s."""
    return _compute("step", token_level_rewards, response_mask, index)


def register() -> None:
    """Register both estimators with VeRL (idempotent; a second copy of this module keeps the first's)."""
    for name, fn in (("cm2_turn", compute_turn_advantage), ("cm2_step", compute_step_advantage)):
        try:
            core_algos.register_adv_est(name)(fn)
        except ValueError:
            pass


register()
