"""cm2data.reward: worked examples of method §5 and property-based checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cm2data import reward
from cm2data.schema import ChecklistItem


def item(
    cid: str, weight: float, deps: tuple[str, ...] = (), must: bool = False, focus: str = "assistant.tool_calls"
) -> ChecklistItem:
    return ChecklistItem(
        id=cid,
        focus_on=focus,
        question="q",
        pass_condition="p",
        weight=weight,
        depends_on=list(deps),
        required_for_next_turn=must,
    )


# ------------------------------------------------------------------------------------------------ worked examples


def test_turn_score_and_satisfaction_any_step():
    items = [item("C0", 0.6, focus="tool.content"), item("C1", 0.4, ("C0",))]
    verdicts = [{"C0": False, "C1": False}, {"C0": True}, {"C1": True}]
    sat = reward.item_satisfaction(items, verdicts)
    assert sat == {"C0": True, "C1": True}
    assert reward.turn_score(items, sat) == pytest.approx(1.0)
    assert reward.turn_score(items, {"C0": True}) == pytest.approx(0.6)


def test_trajectory_reward_early_stop_forfeits():
    # L = 3 reference turns; the rollout stopped after turn 1 (scores 1.0 and 0.5): R = 1.5 / 3
    assert reward.trajectory_reward([1.0, 0.5], 3) == pytest.approx(0.5)
    assert reward.turn_reward_placement([1.0, 0.5], 3) == pytest.approx([1 / 3, 1 / 6])
    assert reward.trajectory_reward([], 0) == 0.0


def test_score_rollout_gate_stops():
    checklist = [[item("C0", 0.5, must=True), item("C1", 0.5)], [item("C0", 1.0)]]
    # turn 0: must-pass C0 never satisfied → the rollout ends there; turn 1's verdicts are forfeited
    out = reward.score_rollout(checklist, [[{"C0": False, "C1": True}], [{"C0": True}]])
    assert out.stopped_at == 0
    assert out.turn_scores == [0.5]
    assert out.score == pytest.approx(0.25)
    assert out.items_passed == [["C1"]]
    ok = reward.score_rollout(checklist, [[{"C0": True}], [{"C0": True}]])
    assert ok.stopped_at is None and ok.score == pytest.approx(0.75)


def test_trajectory_advantages_std_one():
    assert reward.trajectory_advantages([1.0, 0.0, 0.5, 0.5]) == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_turn_advantages_min_samples_rule():
    # 6 samples reach turn 0, only 4 reach turn 1 → turn 1 advantage is zero for all
    group = [[1.0, 1.0], [0.0, 0.0], [0.5, 1.0], [0.5, 0.0], [1.0], [0.0]]
    adv = reward.turn_advantages(group)
    assert [row[0] for row in adv] == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.5, -0.5])
    assert all(row[1] == 0.0 for row in adv if len(row) > 1)
    # 5 samples reaching the turn is enough
    adv5 = reward.turn_advantages([[0.0, 1.0]] * 4 + [[0.0, 0.0]])
    assert [row[1] for row in adv5] == pytest.approx([0.2, 0.2, 0.2, 0.2, -0.8])


def test_step_level_worked_example():
    items = [item("C0", 0.5, focus="tool.content"), item("C1", 0.5, ("C0",))]
    # C1 judged true at step 0 (before C0) does not count; C0 satisfied at step 1; C1 eligible from step 2
    verdicts = [{"C0": False, "C1": True}, {"C0": True, "C1": False}, {"C1": False}, {"C1": True}]
    gated = reward.gated_satisfaction(items, verdicts)
    assert gated["C0"] == reward.GatedItem("C0", 0, 1)
    assert gated["C1"] == reward.GatedItem("C1", 2, 3)
    r = reward.step_rewards(items, verdicts)
    assert r == [{"C0": 1.0}, {"C0": 1.0}, {"C1": 1.0}, {"C1": 1.0}]
    r_eta = reward.step_rewards(items, verdicts, eta=0.5)
    assert r_eta == [{"C0": 0.5}, {"C0": 1.0}, {"C1": 0.5}, {"C1": 1.0}]
    # a group of two: the other sample never satisfies anything → b = 0.5 for both items
    adv = reward.step_advantages(items, [verdicts, [{"C0": False}, {"C0": False}], None])
    assert reward.item_baselines(items, [verdicts, [{"C0": False}]]) == {"C0": 0.5, "C1": 0.5}
    # b over a group of three (the unreached sample counts as not satisfying): 1/3
    b = 1 / 3
    assert adv[0] == pytest.approx([0.5 * (1 - b)] * 4)
    assert adv[1] == pytest.approx([0.5 * (0 - b)] * 2)
    assert adv[2] is None
    norm = reward.step_advantages(items, [verdicts, None], normalize=True)
    assert norm[0] == pytest.approx([0.5] * 4)


def test_unknown_dependency_and_cycle_never_met():
    items = [item("C0", 0.5, ("C9",)), item("C1", 0.25, ("C2",)), item("C2", 0.25, ("C1",))]
    gated = reward.gated_satisfaction(items, [{"C0": True, "C1": True, "C2": True}])
    assert all(g.satisfied_at is None and g.eligible_from is None for g in gated.values())


# ------------------------------------------------------------------------------------------------------ properties


@st.composite
def turns(draw):
    """A turn's items with weights summing to 1, acyclic dependencies (only on earlier items) and step verdicts."""
    n = draw(st.integers(1, 6))
    raw = draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n))
    total = math.fsum(raw)
    items = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if i > 0 else []
        items.append(item(f"C{i}", raw[i] / total, tuple(f"C{d}" for d in deps), must=draw(st.booleans())))
    steps = draw(st.integers(1, 5))
    verdicts = [{f"C{i}": draw(st.booleans()) for i in range(n)} for _ in range(steps)]
    return items, verdicts


@given(st.lists(turns(), min_size=1, max_size=4), st.data())
@settings(max_examples=150, deadline=None)
def test_reward_in_unit_interval_and_early_stop(turn_list, data):
    checklist = [items for items, _ in turn_list]
    verdicts = [v for _, v in turn_list]
    out = reward.score_rollout(checklist, verdicts)
    assert -1e-9 <= out.score <= 1 + 1e-9
    for s in out.turn_scores:
        assert -1e-9 <= s <= 1 + 1e-9
    # early stop: cutting the rollout at any turn never raises the reward, and equals the prefix's share
    cut = data.draw(st.integers(0, len(verdicts)))
    short = reward.score_rollout(checklist, verdicts[:cut])
    assert short.score <= out.score + 1e-9
    assert short.score == pytest.approx(math.fsum(short.turn_scores) / len(checklist))
    if out.stopped_at is not None:
        assert len(out.turn_scores) == out.stopped_at + 1


@given(st.lists(st.floats(0, 1), min_size=1, max_size=48))
def test_trajectory_advantages_sum_to_zero(rewards):
    assert math.fsum(reward.trajectory_advantages(rewards)) == pytest.approx(0.0, abs=1e-9)


@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=4), min_size=1, max_size=12))
def test_turn_advantages_sum_to_zero_per_turn(group):
    adv = reward.turn_advantages(group)
    assert [len(a) for a in adv] == [len(g) for g in group]
    for t in range(max(len(g) for g in group)):
        vals = [a[t] for a in adv if len(a) > t]
        assert math.fsum(vals) == pytest.approx(0.0, abs=1e-9)
        if len(vals) <= 4:
            assert all(v == 0.0 for v in vals)


@given(turns(), st.lists(st.integers(0, 2**16), min_size=1, max_size=8), st.data())
@settings(max_examples=100, deadline=None)
def test_step_level_dependencies_and_baselines(turn, seeds, data):
    items, _ = turn
    ids = [i.id for i in items]
    group = []
    for _ in seeds:
        steps = data.draw(st.integers(1, 4))
        group.append([{c: data.draw(st.booleans()) for c in ids} for _ in range(steps)])
    by_id = {i.id: i for i in items}
    for verdicts in group:
        gated = reward.gated_satisfaction(items, verdicts)
        for cid, gi in gated.items():
            if gi.satisfied_at is not None:
                assert verdicts[gi.satisfied_at][cid]
                for dep in by_id[cid].depends_on:  # dependencies satisfied strictly before
                    assert gated[dep].satisfied_at is not None and gated[dep].satisfied_at < gi.satisfied_at
        for s, rewards in enumerate(reward.step_rewards(items, verdicts)):
            for cid in rewards:
                assert gated[cid].eligible_from is not None and gated[cid].eligible_from <= s
    # group-mean baselines: Σ_group (1[c satisfied] − b_c) = 0 for every item
    baselines = reward.item_baselines(items, group)
    for cid in ids:
        sat = [reward.gated_satisfaction(items, v)[cid].satisfied_at is not None for v in group]
        assert math.fsum(float(x) - baselines[cid] for x in sat) == pytest.approx(0.0, abs=1e-9)
    adv = reward.step_advantages(items, group, eta=0.9)
    assert [len(a) for a in adv] == [len(v) for v in group]


def test_group_step_advantages_two_turns():
    # turn 0: one item; turn 1: the step-level worked example (C1 depends on C0); sample 2 stops after turn 0
    checklist = [[item("A", 1.0)], [item("C0", 0.5, focus="tool.content"), item("C1", 0.5, ("C0",))]]
    worked = [{"C0": False, "C1": True}, {"C0": True, "C1": False}, {"C1": False}, {"C1": True}]
    group = [[[{"A": True}], worked], [[{"A": False}, {"A": True}], [{"C0": False}, {"C0": False}]], [[{"A": False}]]]
    out = reward.group_step_advantages(checklist, group)
    # b_A = 2/3; b_C0 = b_C1 = 1/3 (the group has three samples, one never reached turn 1)
    assert out[0][0] == pytest.approx([1 / 3])
    assert out[1][0] == pytest.approx([1 / 3, 1 / 3])  # backfilled: A satisfied at step 1 credits step 0 too
    assert out[2] == [pytest.approx([-2 / 3])]
    assert out[0][1] == pytest.approx([0.5 * (2 / 3)] * 4)
    assert out[1][1] == pytest.approx([0.5 * (-1 / 3)] * 2)  # C1 never eligible: only C0 is in E_s
    eta = reward.group_step_advantages(checklist, group, eta=0.5)
    assert eta[1][0] == pytest.approx([0.5 - 2 / 3, 1 / 3])
    assert eta[0][1] == pytest.approx([0.5 * (0.5 - 1 / 3), 0.5 * (2 / 3), 0.5 * (0.5 - 1 / 3), 0.5 * (2 / 3)])
    norm = reward.group_step_advantages(checklist, group, normalize=True)
    assert norm[0][1] == pytest.approx([2 / 3] * 4)


@given(st.lists(turns(), min_size=1, max_size=3), st.integers(1, 8), st.data())
@settings(max_examples=80, deadline=None)
def test_group_step_advantages_shape_and_turnwise(turn_list, size, data):
    checklist = [items for items, _ in turn_list]
    group = []
    for _ in range(size):
        reached = data.draw(st.integers(1, len(checklist)))
        group.append(
            [
                [{i.id: data.draw(st.booleans()) for i in checklist[t]} for _ in range(data.draw(st.integers(1, 4)))]
                for t in range(reached)
            ]
        )
    eta = data.draw(st.none() | st.floats(0.1, 1.0))
    out = reward.group_step_advantages(checklist, group, eta=eta)
    # the shape of the input: one list per reached turn, one value per assistant step
    assert [[len(steps) for steps in sample] for sample in out] == [
        [len(steps) for steps in sample] for sample in group
    ]
    # turn by turn it is step_advantages over the group, unreached samples counting in the baseline
    for t, items in enumerate(checklist):
        expected = reward.step_advantages(items, [s[t] if len(s) > t else None for s in group], eta=eta)
        for sample, exp in zip(out, expected, strict=True):
            assert (sample[t] if len(sample) > t else None) == exp
    # a group whose samples all judged alike gets no step-level advantage (without decay: eta^k < b = 1 otherwise)
    same = reward.group_step_advantages(checklist, [group[0]] * size)
    assert all(v == pytest.approx(0.0, abs=1e-12) for sample in same for steps in sample for v in steps)
