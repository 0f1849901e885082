"""Inter-reviewer agreement: Cohen's κ for two reviewers, Krippendorff's α (nominal) for any number.

Pure functions over plain values (no numpy needed at these sizes). Undefined figures (no pairable units, or a
single category everywhere so that chance agreement is total) come back as ``None``, never NaN, so that reports
stay valid JSON.

``agreement_report`` turns the submitted answers of a review round into per-question figures: the verdict
(keep/fix/drop) as one nominal variable, and each "what is wrong" label as a binary variable (ticked or not), with
their mean.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's κ of two raters' labels for the same units (``a[i]`` and ``b[i]`` label unit ``i``).

    κ = (p_o − p_e) / (1 − p_e) with p_o the observed agreement and p_e the agreement expected from each rater's
    own label frequencies. ``None`` when there are no units or p_e = 1.
    """
    if len(a) != len(b):
        raise ValueError(f"the raters labelled different numbers of units ({len(a)} and {len(b)})")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def krippendorff_alpha_nominal(units: Sequence[Sequence[Hashable | None]]) -> float | None:
    """Krippendorff's α for nominal data.

    ``units`` holds, per unit (item), the values the raters gave it; ``None`` is a missing value and is dropped.
    Units with fewer than two values are not pairable and are left out. α = 1 − D_o / D_e from the coincidence
    matrix: each unit with m values adds 1/(m−1) for every ordered pair of its values. ``None`` when fewer than two
    pairable values exist or D_e = 0 (one category only).
    """
    coincidence: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, x in enumerate(values):
            for j, y in enumerate(values):
                if i != j:
                    coincidence[(x, y)] += 1.0 / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (x, _), w in coincidence.items():
        n_c[x] += w
    n = sum(n_c.values())
    if n < 2:
        return None
    observed = sum(w for (x, y), w in coincidence.items() if x != y)
    expected = (n * n - sum(v * v for v in n_c.values())) / (n - 1)
    if expected <= 0:
        return None
    return 1.0 - observed / expected


def percent_agreement(units: Sequence[Sequence[Hashable | None]]) -> float | None:
    """Share of pairable units on which every rater gave the same value (``None`` without pairable units)."""
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    if not pairable:
        return None
    return sum(1 for u in pairable if len(set(u)) == 1) / len(pairable)


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def question_agreement(answers: Mapping[str, Mapping[str, Hashable]]) -> dict[str, Any]:
    """Agreement on one nominal question. ``answers`` is ``{unit: {reviewer: value}}``.

    Returns ``units`` (pairable units), ``reviewers``, ``alpha`` (Krippendorff, nominal), ``percent`` (units with
    one value only) and ``kappa``: Cohen's κ per pair of reviewers over the units both answered
    (``{"a|b": κ}``), with ``kappa_mean`` their mean; κ needs at least 2 shared units.
    """
    units = [list(by_reviewer.values()) for by_reviewer in answers.values()]
    reviewers = sorted({r for by_reviewer in answers.values() for r in by_reviewer})
    pairs: dict[str, float | None] = {}
    for r1, r2 in combinations(reviewers, 2):
        shared = [(v[r1], v[r2]) for v in answers.values() if r1 in v and r2 in v]
        if len(shared) >= 2:
            pairs[f"{r1}|{r2}"] = _round(cohen_kappa([x for x, _ in shared], [y for _, y in shared]))
    defined = [k for k in pairs.values() if k is not None]
    return {
        "units": sum(1 for u in units if len(u) >= 2),
        "reviewers": len(reviewers),
        "alpha": _round(krippendorff_alpha_nominal(units)),
        "percent": _round(percent_agreement(units)),
        "kappa": pairs,
        "kappa_mean": _round(sum(defined) / len(defined)) if defined else None,
    }


def agreement_report(
    verdicts: Mapping[str, Mapping[str, str]],
    problems: Mapping[str, Mapping[str, Sequence[str]]],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Per-question agreement of one review round.

    ``verdicts``: ``{item: {reviewer: keep|fix|drop}}``; ``problems``: ``{item: {reviewer: [labels ticked]}}`` for
    the same submitted responses; ``labels``: every "what is wrong" label. Returns ``{"verdict": {...},
    "problems": {label: {...}, ...}, "problems_alpha_mean": float | None}`` (see :func:`question_agreement`).
    """
    out: dict[str, Any] = {"verdict": question_agreement(verdicts), "problems": {}}
    alphas = []
    for label in labels:
        binary = {
            unit: {r: (label in ticked) for r, ticked in by_reviewer.items()} for unit, by_reviewer in problems.items()
        }
        figures = question_agreement(binary)
        out["problems"][label] = figures
        if figures["alpha"] is not None:
            alphas.append(figures["alpha"])
    out["problems_alpha_mean"] = _round(sum(alphas) / len(alphas)) if alphas else None
    return out
