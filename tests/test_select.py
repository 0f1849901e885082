"""Hard-sample selection (method §2.6) as a pure function: the drop probability formula, and the drops it makes,
tested statistically."""

from __future__ import annotations

import math
import random

import pytest

from cm2data.pipelines.config import REFERENCE_DROP_RATIOS
from cm2data.pipelines.select import decide, draw, drop_probability, select_hard
from cm2data.schema import Dialogue, Message, Tool, ToolCall, dialogue_stats

HARD = {
    "num_turns": 3,
    "tool_calls_total": 5,
    "max_parallel_tool_calls": 2,
    "num_candidate_tools": 6,
    "num_selected_tools": 3,
    "max_assistant_steps": 3,
    "num_assistant_messages": 7,
}


def test_drop_probability_formula():
    assert drop_probability(HARD, REFERENCE_DROP_RATIOS) == (0.0, [])
    p, terms = drop_probability({**HARD, "num_turns": 1}, REFERENCE_DROP_RATIOS)
    assert p == pytest.approx(0.4) and terms == ["num_turns=1 (0.4)"]
    easy = {
        **HARD,
        "num_turns": 1,
        "tool_calls_total": 1,
        "num_candidate_tools": 1,
        "num_selected_tools": 1,
        "max_assistant_steps": 1,
        "num_assistant_messages": 2,
    }
    p, terms = drop_probability(easy, REFERENCE_DROP_RATIOS)
    assert p == pytest.approx(1 - 0.6 * 0.7 * 0.3 * 0.6 * 0.7 * 0.7)
    assert len(terms) == 6
    # keys given as strings (YAML/JSON) work the same
    assert drop_probability({"num_turns": 1}, {"num_turns": {"1": 0.4}})[0] == pytest.approx(0.4)
    assert drop_probability({"num_turns": 1}, {"num_turns": {1: 1.0}})[0] == 1.0


@pytest.mark.parametrize(
    "stats",
    [
        {**HARD, "num_turns": 1},
        {**HARD, "num_turns": 1, "tool_calls_total": 2, "num_candidate_tools": 2},
        {**HARD, "num_candidate_tools": 1, "num_selected_tools": 1, "tool_calls_total": 1, "num_assistant_messages": 1},
    ],
)
def test_drop_rate_matches_the_probability(stats):
    p, _ = drop_probability(stats, REFERENCE_DROP_RATIOS)
    n = 4000
    dropped = sum(decide(f"d{i}", stats, REFERENCE_DROP_RATIOS, 42).drop for i in range(n))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 4.5 * sigma, (dropped, n * p, sigma)


def test_metrics_drop_independently():
    """P(kept) is the product of the per-metric keep rates: the joint drop rate of two metrics matches
    1 − (1 − r1)(1 − r2), not r1 + r2 or max(r1, r2)."""
    ratios = {"num_turns": {1: 0.5}, "tool_calls_total": {1: 0.5}}
    stats = {**HARD, "num_turns": 1, "tool_calls_total": 1}
    n = 4000
    dropped = sum(decide(f"x{i}", stats, ratios, 7).drop for i in range(n))
    assert abs(dropped / n - 0.75) < 4.5 * math.sqrt(0.75 * 0.25 / n)


def test_draws_are_uniform_seeded_and_order_independent():
    draws = [draw(42, f"id-{i}") for i in range(5000)]
    for x in (0.1, 0.25, 0.5, 0.75, 0.9):
        frac = sum(d < x for d in draws) / len(draws)
        assert abs(frac - x) < 4.5 * math.sqrt(x * (1 - x) / len(draws))
    assert draws == [draw(42, f"id-{i}") for i in range(5000)]
    other = [draw(43, f"id-{i}") for i in range(5000)]
    assert sum(a != b for a, b in zip(draws, other, strict=True)) > 4990

    stats = {**HARD, "num_turns": 1}
    ids = [f"r{i}" for i in range(500)]
    forward = {i: decide(i, stats, REFERENCE_DROP_RATIOS, 1).drop for i in ids}
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert {i: decide(i, stats, REFERENCE_DROP_RATIOS, 1).drop for i in shuffled} == forward


def _dialogue(i: int, turns: int, calls: int) -> Dialogue:
    tools = [Tool(name=f"t{k}") for k in range(3)]
    messages = [Message(role="system", content="s")]
    for t in range(turns):
        messages.append(Message(role="user", content=f"q{t}"))
        for c in range(calls):
            messages.append(Message(role="assistant", tool_calls=[ToolCall(id=f"c{t}{c}", name=f"t{c % 2}")]))
            messages.append(Message(role="tool", content="{}", tool_call_id=f"c{t}{c}"))
        messages.append(Message(role="assistant", content="a"))
    return Dialogue(id=f"d{i}", tools=tools, messages=messages)


def test_select_hard_on_records():
    """On records: easy dialogues (one turn, one call) are dropped at the rate the formula
    gives for their statistics, hard ones are kept, and a subset selects the same way as the whole."""
    easy = [_dialogue(i, 1, 1) for i in range(1500)]
    hard = [_dialogue(10_000 + i, 3, 2) for i in range(300)]
    p_easy, _ = drop_probability(dialogue_stats(easy[0]).as_dict(), REFERENCE_DROP_RATIOS)
    assert drop_probability(dialogue_stats(hard[0]).as_dict(), REFERENCE_DROP_RATIOS)[0] == 0
    kept, dropped = select_hard(easy + hard, REFERENCE_DROP_RATIOS, 42)
    assert {d.id for d in hard} <= {d.id for d in kept}
    n_dropped = len(dropped)
    assert abs(n_dropped - 1500 * p_easy) < 4.5 * math.sqrt(1500 * p_easy * (1 - p_easy))
    assert all(dec.drop and dec.probability == pytest.approx(p_easy) for _, dec in dropped)
    sub_kept, _ = select_hard(easy[::3], REFERENCE_DROP_RATIOS, 42)
    assert [d.id for d in sub_kept] == [d.id for d in kept if d in easy[::3]]
