"""Agreement of two raters' binary labels on the same units: Cohen's κ, accuracy, the confusion matrix and
percentile-bootstrap confidence intervals (docs/judge-fidelity.md, "Reading κ and its interval").

Pure functions. Labels are booleans (``True`` = the item passes). ``reference`` is the rater taken as the standard
(people, or the careful judge) and ``compared`` the one measured (a cheaper judge); κ and accuracy are symmetric in
the two, the confusion matrix is not (``tp``: both pass; ``fn``: the reference passes, the compared rater fails it —
a judge's false negative; ``fp``: the other way round; ``tn``: both fail).

Undefined figures are ``None``, never NaN and never a division error: with no units everything is undefined, and κ
is undefined when chance agreement is total, i.e. both raters gave one and the same label to every unit (then
accuracy, 1.0, still says that they agree). κ is computed from integer counts, so that test is exact.

The bootstrap resamples units with replacement. For paired binary labels a resample is fully described by its four
cell counts, which follow a multinomial distribution with the observed cell shares; drawing those counts directly is
the same bootstrap as drawing unit indices, at a cost independent of the number of units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Counts:
    """The 2×2 confusion matrix (rows: reference, columns: compared)."""

    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fn + self.fp + self.tn

    def as_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "fn": self.fn, "fp": self.fp, "tn": self.tn}


def counts(reference: Sequence[bool], compared: Sequence[bool]) -> Counts:
    """The confusion counts of two label sequences of equal length."""
    if len(reference) != len(compared):
        raise ValueError(f"the raters labelled different numbers of units ({len(reference)} and {len(compared)})")
    tp = fn = fp = tn = 0
    for r, c in zip(reference, compared, strict=True):
        if r and c:
            tp += 1
        elif r:
            fn += 1
        elif c:
            fp += 1
        else:
            tn += 1
    return Counts(tp, fn, fp, tn)


def kappa_from_counts(c: Counts) -> float | None:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) from the counts, in integer arithmetic: n·(tp+tn) − E over n² − E with
    E = (tp+fn)(tp+fp) + (fp+tn)(fn+tn). ``None`` when n = 0 or n² = E (total chance agreement)."""
    n = c.n
    expected = (c.tp + c.fn) * (c.tp + c.fp) + (c.fp + c.tn) * (c.fn + c.tn)
    denominator = n * n - expected
    if n == 0 or denominator == 0:
        return None
    return (n * (c.tp + c.tn) - expected) / denominator


def kappa(reference: Sequence[bool], compared: Sequence[bool]) -> float | None:
    """Cohen's κ of two binary label sequences (see :func:`kappa_from_counts`)."""
    return kappa_from_counts(counts(reference, compared))


def accuracy_from_counts(c: Counts) -> float | None:
    return (c.tp + c.tn) / c.n if c.n else None


def _kappas(cells: np.ndarray) -> np.ndarray:
    """κ of each row of ``cells`` (columns tp, fn, fp, tn; int64), NaN where undefined."""
    tp, fn, fp, tn = (cells[:, i] for i in range(4))
    n = tp + fn + fp + tn
    expected = (tp + fn) * (tp + fp) + (fp + tn) * (fn + tn)
    denominator = n * n - expected
    numerator = n * (tp + tn) - expected
    safe = np.where(denominator == 0, 1, denominator)
    return np.where(denominator == 0, np.nan, numerator / safe)


def bootstrap(c: Counts, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Percentile-bootstrap intervals of κ and accuracy: ``{"kappa": [lo, hi] | None, "accuracy": [lo, hi] | None,
    "kappa_undefined": resamples in which κ was undefined}``. Seeded: the same counts give the same interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = c.n
    if n == 0 or resamples < 1:
        return {"kappa": None, "accuracy": None, "kappa_undefined": 0}
    rng = np.random.default_rng(seed)
    shares = np.array([c.tp, c.fn, c.fp, c.tn], dtype=np.float64) / n
    cells = rng.multinomial(n, shares, size=resamples).astype(np.int64)
    acc = (cells[:, 0] + cells[:, 3]) / n
    kap = _kappas(cells)
    defined = kap[~np.isnan(kap)]
    tail = (1.0 - level) / 2.0

    def interval(values: np.ndarray) -> list[float] | None:
        if values.size == 0:
            return None
        lo, hi = np.quantile(values, [tail, 1.0 - tail])
        return [round(float(lo), 4), round(float(hi), 4)]

    return {"kappa": interval(defined), "accuracy": interval(acc), "kappa_undefined": int(resamples - defined.size)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def binary_agreement(
    reference: Sequence[bool], compared: Sequence[bool], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Everything about the agreement of two binary raters on the same units (JSON-ready):

    ``n``, ``accuracy``, ``kappa``, their bootstrap intervals ``accuracy_ci``/``kappa_ci`` (``level``, ``resamples``,
    ``seed``), ``kappa_ci_undefined`` (resamples where κ was undefined), ``confusion`` (tp, fn, fp, tn),
    ``reference_pass_rate``, ``compared_pass_rate``, and the compared rater's ``false_negative_rate`` (share of the
    reference's passes it fails) and ``false_positive_rate`` (share of the reference's fails it passes).
    """
    c = counts(reference, compared)
    boot = bootstrap(c, resamples=resamples, seed=seed, level=level)
    n = c.n
    positives, negatives = c.tp + c.fn, c.fp + c.tn
    return {
        "n": n,
        "accuracy": _round(accuracy_from_counts(c)),
        "accuracy_ci": boot["accuracy"],
        "kappa": _round(kappa_from_counts(c)),
        "kappa_ci": boot["kappa"],
        "kappa_ci_undefined": boot["kappa_undefined"],
        "confusion": c.as_dict(),
        "reference_pass_rate": _round(positives / n) if n else None,
        "compared_pass_rate": _round((c.tp + c.fp) / n) if n else None,
        "false_negative_rate": _round(c.fn / positives) if positives else None,
        "false_positive_rate": _round(c.fp / negatives) if negatives else None,
    }
