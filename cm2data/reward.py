"""Checklist rewards and credit assignment (method §5): pure functions, standard library and ``cm2data.schema`` only.

Nothing here does I/O or calls a model: the judge (:mod:`cm2data.judge`) produces verdicts, these functions turn
verdicts into scores and advantages. They run inside trainer processes (VeRL's ``compute_score``, the agent loop).

Vocabulary, for one turn t of one rollout:

* ``step_verdicts``: one mapping ``{item id: bool}`` per assistant step of the turn, in order (what the judge said
  for that step; an item missing from a step's mapping counts as not satisfied there);
* an item is *satisfied in the turn* when any step says so (:func:`item_satisfaction`);
* ``R_t = Σ_c w_{t,c} · 1[c satisfied in t]`` (:func:`turn_score`); a turn never reached scores 0;
* ``R = (1/L) Σ_t R_t`` with L the number of turns of the *reference* dialogue (:func:`trajectory_reward`), so an
  early stop forfeits the rest.

Credit assignment over a GRPO group of G rollouts of the same prompt:

* trajectory level (the final recipe): ``A = R − mean_group(R)``, std term 1 (:func:`trajectory_advantages`);
* turn level: ``A_t = R_t − mean over the samples that reached t``, zero when ``≤ 4`` samples reached t
  (:func:`turn_advantages`);
* step level: dependency-gated satisfaction, backfilled step rewards and the baseline ``b_{t,c}`` = fraction of the
  group that ever satisfies c (:func:`gated_satisfaction`, :func:`step_rewards`, :func:`step_advantages`, and
  :func:`group_step_advantages` for whole rollouts).

VeRL wiring (token spans, the ``cm2_turn``/``cm2_step`` advantage estimators): ``adapters/verl/credit.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cm2data.schema import ChecklistItem

#: Turn-level rule of method §5: a turn reached by this many samples or fewer gets zero advantage.
MIN_TURN_SAMPLES_EXCLUSIVE = 4

StepVerdicts = Sequence[Mapping[str, bool]]


# --------------------------------------------------------------------------------------------- one rollout, one turn


def item_satisfaction(items: Sequence[ChecklistItem], step_verdicts: StepVerdicts) -> dict[str, bool]:
    """``{item id: satisfied at any assistant step of the turn}`` (method §5, ungated)."""
    return {item.id: any(bool(v.get(item.id, False)) for v in step_verdicts) for item in items}


def turn_score(items: Sequence[ChecklistItem], satisfied: Mapping[str, bool]) -> float:
    """``R_t = Σ_c w_c · 1[c satisfied]``. With weights summing to 1 the score is in [0, 1]."""
    return math.fsum(item.weight for item in items if satisfied.get(item.id, False))


def gate_passed(items: Sequence[ChecklistItem], satisfied: Mapping[str, bool]) -> bool:
    """True unless an item with ``required_for_next_turn`` was never satisfied in the turn (then the rollout ends)."""
    return all(satisfied.get(item.id, False) for item in items if item.required_for_next_turn)


def failed_gates(items: Sequence[ChecklistItem], satisfied: Mapping[str, bool]) -> list[str]:
    """Ids of the must-pass items that were never satisfied (empty when the gate passes)."""
    return [item.id for item in items if item.required_for_next_turn and not satisfied.get(item.id, False)]


def trajectory_reward(turn_scores: Sequence[float], num_turns: int) -> float:
    """``R = (1/L) Σ_t R_t`` over the L turns of the reference; ``turn_scores`` holds the turns actually reached
    (an early stop gives a shorter list: the missing turns score 0). Extra entries beyond L are ignored."""
    if num_turns <= 0:
        return 0.0
    return math.fsum(turn_scores[:num_turns]) / num_turns


def turn_reward_placement(turn_scores: Sequence[float], num_turns: int) -> list[float]:
    """What goes on the last token of each reached turn's last assistant segment in the token reward tensor:
    ``R_t / L``. Their sum is :func:`trajectory_reward`."""
    if num_turns <= 0:
        return [0.0 for _ in turn_scores]
    return [score / num_turns for score in turn_scores[:num_turns]]


# --------------------------------------------------------------------------------------------------- GRPO, groups


def trajectory_advantages(rewards: Sequence[float]) -> list[float]:
    """Trajectory-level GRPO with the std term set to 1 (Dr.GRPO style): ``A_i = R_i − mean(R)``."""
    if not rewards:
        return []
    mean = math.fsum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def turn_advantages(
    group_turn_scores: Sequence[Sequence[float]], *, min_exclusive: int = MIN_TURN_SAMPLES_EXCLUSIVE
) -> list[list[float]]:
    """Turn-level advantages. ``group_turn_scores[i]`` holds the scores of the turns sample i reached (its length is
    how far it got). ``A_{i,t} = R_{i,t} − mean_{j reached t} R_{j,t}``, or 0 for every sample when ``min_exclusive``
    (4) or fewer samples reached turn t. The result has the same shape as the input."""
    depth = max((len(s) for s in group_turn_scores), default=0)
    means: list[float | None] = []
    for t in range(depth):
        reached = [s[t] for s in group_turn_scores if len(s) > t]
        means.append(math.fsum(reached) / len(reached) if len(reached) > min_exclusive else None)
    out: list[list[float]] = []
    for scores in group_turn_scores:
        row = []
        for t, score in enumerate(scores):
            mean = means[t]
            row.append(0.0 if mean is None else score - mean)
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------------ step level


@dataclass(frozen=True)
class GatedItem:
    """When one item became eligible and satisfied within a turn (assistant-step indices, or None)."""

    id: str
    eligible_from: int | None  # first step at which all dependencies were already satisfied (0 without any)
    satisfied_at: int | None  # first eligible step whose verdict is true


def gated_satisfaction(items: Sequence[ChecklistItem], step_verdicts: StepVerdicts) -> dict[str, GatedItem]:
    """Dependency-gated satisfaction (method §5, step level): item c counts as satisfied at step s only if every item
    it depends on was satisfied at a step *before* s. Dependencies on ids that are not items of the turn can never be
    met; dependency cycles are never met either."""
    by_id = {item.id: item for item in items}
    done: dict[str, GatedItem] = {}
    visiting: set[str] = set()

    def resolve(cid: str) -> GatedItem:
        if cid in done:
            return done[cid]
        item = by_id.get(cid)
        if item is None or cid in visiting:
            return GatedItem(cid, None, None)
        visiting.add(cid)
        deps = [resolve(d) for d in item.depends_on]
        visiting.discard(cid)
        if any(d.satisfied_at is None for d in deps):
            gi = GatedItem(cid, None, None)
        else:
            start = max((d.satisfied_at + 1 for d in deps if d.satisfied_at is not None), default=0)
            sat = next((s for s in range(start, len(step_verdicts)) if step_verdicts[s].get(cid, False)), None)
            gi = GatedItem(cid, start if start < len(step_verdicts) else None, sat)
        done[cid] = gi
        return gi

    for item in items:
        resolve(item.id)
    return {item.id: done[item.id] for item in items}


def step_rewards(
    items: Sequence[ChecklistItem], step_verdicts: StepVerdicts, *, eta: float | None = None
) -> list[dict[str, float]]:
    """Backfilled step rewards ``r̃_{s,c}`` for each assistant step s: for every item eligible at s and not satisfied
    before s (the set E_s), 1 if it gets satisfied at s or later in the turn, else 0; with ``eta`` the value is
    ``eta**k`` where k is the number of steps between s and the step that satisfies it. Items outside E_s are absent
    from step s's mapping."""
    gated = gated_satisfaction(items, step_verdicts)
    out: list[dict[str, float]] = [{} for _ in step_verdicts]
    for item in items:
        gi = gated[item.id]
        if gi.eligible_from is None:
            continue
        last = gi.satisfied_at if gi.satisfied_at is not None else len(step_verdicts) - 1
        for s in range(gi.eligible_from, last + 1):
            if gi.satisfied_at is None:
                out[s][item.id] = 0.0
            else:
                k = gi.satisfied_at - s
                out[s][item.id] = 1.0 if eta is None else float(eta) ** k
    return out


def item_baselines(
    items: Sequence[ChecklistItem], group_step_verdicts: Sequence[StepVerdicts | None]
) -> dict[str, float]:
    """``b_{t,c}``: the fraction of the group whose rollout ever satisfies c in turn t (gated). A sample that never
    reached the turn is given as None and counts as not satisfying."""
    n = len(group_step_verdicts)
    if n == 0:
        return {item.id: 0.0 for item in items}
    counts = dict.fromkeys((item.id for item in items), 0)
    for verdicts in group_step_verdicts:
        if verdicts is None:
            continue
        for cid, gi in gated_satisfaction(items, verdicts).items():
            if gi.satisfied_at is not None:
                counts[cid] += 1
    return {cid: c / n for cid, c in counts.items()}


def step_advantages(
    items: Sequence[ChecklistItem],
    group_step_verdicts: Sequence[StepVerdicts | None],
    *,
    eta: float | None = None,
    normalize: bool = False,
) -> list[list[float] | None]:
    """Step-level advantages of one turn across the group: ``A_{t,s} = Σ_{c∈E_s} w_c (r̃_{s,c} − b_{t,c})``,
    divided by ``Σ_{c∈E_s} w_c`` when ``normalize``; 0 for a step whose E_s is empty. One list per sample (one value
    per assistant step), None for a sample that did not reach the turn."""
    weights = {item.id: item.weight for item in items}
    baselines = item_baselines(items, group_step_verdicts)
    out: list[list[float] | None] = []
    for verdicts in group_step_verdicts:
        if verdicts is None:
            out.append(None)
            continue
        row = []
        for rewards in step_rewards(items, verdicts, eta=eta):
            total = math.fsum(weights[c] * (r - baselines[c]) for c, r in rewards.items())
            if normalize:
                wsum = math.fsum(weights[c] for c in rewards)
                total = total / wsum if wsum > 0 else 0.0
            row.append(total)
        out.append(row)
    return out


def group_step_advantages(
    checklist: Sequence[Sequence[ChecklistItem]],
    group_turn_verdicts: Sequence[Sequence[StepVerdicts]],
    *,
    eta: float | None = None,
    normalize: bool = False,
) -> list[list[list[float]]]:
    """Step-level advantages of whole rollouts across a group: :func:`step_advantages` turn by turn.
    ``group_turn_verdicts[i][t]`` holds the step verdicts of turn t of sample i (its length is how many turns the
    sample reached); ``checklist[t]`` the items of turn t. A sample that did not reach turn t counts as not
    satisfying its items in the baseline (``b_{t,c}`` is a share of the whole group). ``out[i][t][s]`` is the
    advantage of assistant step s of turn t of sample i: the same shape as the input."""
    depth = max((len(turns) for turns in group_turn_verdicts), default=0)
    out: list[list[list[float]]] = [[] for _ in group_turn_verdicts]
    for t in range(depth):
        items = checklist[t] if t < len(checklist) else []
        per_turn = step_advantages(
            items, [turns[t] if len(turns) > t else None for turns in group_turn_verdicts], eta=eta, normalize=normalize
        )
        for i, row in enumerate(per_turn):
            if row is not None:
                out[i].append(row)
    return out


# ------------------------------------------------------------------------------------------------ whole rollouts


@dataclass(frozen=True)
class RolloutScore:
    """The reward of one rollout from its per-turn verdicts."""

    score: float
    turn_scores: list[float]
    items_passed: list[list[str]]
    stopped_at: int | None  # index of the turn whose gate failed (the rollout ended there), else None


def score_rollout(
    checklist: Sequence[Sequence[ChecklistItem]], turn_step_verdicts: Sequence[StepVerdicts]
) -> RolloutScore:
    """Score a rollout: ``checklist[t]`` are the items of reference turn t (L = ``len(checklist)``),
    ``turn_step_verdicts[t]`` the per-step verdicts of the turns the rollout reached. Turns after the first failed
    must-pass gate are forfeited even if verdicts for them are given."""
    num_turns = len(checklist)
    scores: list[float] = []
    passed: list[list[str]] = []
    stopped: int | None = None
    for t, verdicts in enumerate(turn_step_verdicts[:num_turns]):
        items = checklist[t]
        sat = item_satisfaction(items, verdicts)
        scores.append(turn_score(items, sat))
        passed.append([item.id for item in items if sat[item.id]])
        if not gate_passed(items, sat):
            stopped = t
            break
    return RolloutScore(trajectory_reward(scores, num_turns), scores, passed, stopped)
