"""cm2data.stats.agreement: Cohen's κ, accuracy, confusion counts and bootstrap intervals of binary labels —
properties (hypothesis), textbook values, and the single-class edge cases."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cm2data.review.agreement import cohen_kappa
from cm2data.stats.agreement import Counts, binary_agreement, bootstrap, counts, kappa, kappa_from_counts

labels = st.lists(st.booleans(), min_size=1, max_size=200)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[list[bool], list[bool]]:
    a = draw(labels)
    b = draw(st.lists(st.booleans(), min_size=len(a), max_size=len(a)))
    return a, b


@given(labels)
def test_identical_labels_agree_perfectly(a: list[bool]) -> None:
    k = kappa(a, a)
    if len(set(a)) == 2:
        assert k == 1.0
    else:  # one label throughout: chance agreement is total, κ undefined (not NaN, no error); accuracy says 1
        assert k is None
    figures = binary_agreement(a, a, resamples=50)
    assert figures["accuracy"] == 1.0 and figures["n"] == len(a)


@given(pairs())
def test_symmetric_bounded_and_equal_to_the_review_implementation(p: tuple[list[bool], list[bool]]) -> None:
    a, b = p
    k1, k2 = kappa(a, b), kappa(b, a)
    assert k1 == k2
    # an independent implementation (the reviewers' κ, from label frequencies in floating point)
    other = cohen_kappa(a, b)
    assert (k1 is None) == (other is None)
    if k1 is not None:
        assert k1 == pytest.approx(other, abs=1e-12)
        assert -1.0 <= k1 <= 1.0
        assert not math.isnan(k1)


@given(pairs())
def test_counts_partition_the_units(p: tuple[list[bool], list[bool]]) -> None:
    a, b = p
    c = counts(a, b)
    assert c.n == len(a)
    assert c.tp + c.fn == sum(a) and c.tp + c.fp == sum(b)
    f = binary_agreement(a, b, resamples=0)
    assert f["accuracy"] == pytest.approx((c.tp + c.tn) / c.n, abs=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.2, 0.8), st.floats(0.2, 0.8))
def test_independent_raters_are_near_chance(seed: int, pa: float, pb: float) -> None:
    rng = random.Random(seed)
    a = [rng.random() < pa for _ in range(20_000)]
    b = [rng.random() < pb for _ in range(20_000)]
    k = kappa(a, b)
    assert k is not None and abs(k) < 0.05  # the standard error here is about 0.007


@given(st.integers(1, 300), st.booleans(), labels)
def test_single_class_edge_cases_never_divide_by_zero(n: int, value: bool, other: list[bool]) -> None:
    constant = [value] * n
    assert kappa(constant, constant) is None
    mixed = (other * (n // len(other) + 1))[:n]
    k = kappa(constant, mixed)
    if len(set(mixed)) == 1 and mixed[0] == value:
        assert k is None
    else:
        assert k == 0.0  # one rater constant: observed agreement equals chance agreement exactly
    f = binary_agreement(constant, mixed, resamples=100)
    assert f["n"] == n and 0.0 <= f["accuracy"] <= 1.0
    assert f["false_negative_rate" if value else "false_positive_rate"] is not None
    assert f["false_positive_rate" if value else "false_negative_rate"] is None  # no such reference labels


def test_textbook_values() -> None:
    # the 50-unit table used for the reviewers' κ: 20 both yes, 5 yes/no, 10 no/yes, 15 both no → κ = 0.4
    c = Counts(tp=20, fn=5, fp=10, tn=15)
    assert kappa_from_counts(c) == pytest.approx(0.4)
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    f = binary_agreement(a, b)
    assert f["kappa"] == 0.4 and f["accuracy"] == 0.7 and f["confusion"] == {"tp": 20, "fn": 5, "fp": 10, "tn": 15}
    assert f["false_negative_rate"] == 0.2 and f["false_positive_rate"] == 0.4
    lo, hi = f["kappa_ci"]
    assert 0.1 < lo < 0.4 < hi < 0.7  # n = 50: the interval is wide, and it is around 0.4
    # complete disagreement with balanced labels: κ = −1
    assert kappa([True, False, True, False], [False, True, False, True]) == -1.0
    assert kappa_from_counts(Counts()) is None and binary_agreement([], [])["kappa"] is None


def test_bootstrap_is_seeded_and_narrows_with_n() -> None:
    small, large = Counts(8, 2, 3, 7), Counts(800, 200, 300, 700)
    assert bootstrap(small, seed=1) == bootstrap(small, seed=1)
    assert bootstrap(small, seed=1) != bootstrap(small, seed=2)
    w_small = bootstrap(small)["kappa"][1] - bootstrap(small)["kappa"][0]
    w_large = bootstrap(large)["kappa"][1] - bootstrap(large)["kappa"][0]
    assert w_large < w_small / 5  # ~1/sqrt(100) as wide
    # a level out of range is an error, not a silent default
    with pytest.raises(ValueError):
        bootstrap(small, level=1.0)
    # resamples where κ is undefined are counted: a table with almost every unit in one cell
    skewed = bootstrap(Counts(tp=49, fn=1), resamples=400, seed=0)
    assert skewed["kappa_undefined"] > 0


def test_unequal_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="different numbers"):
        kappa([True], [True, False])
