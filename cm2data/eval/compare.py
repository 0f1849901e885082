"""``cm2data eval compare A/ B/``: two runs of one benchmark side by side — accuracy per category (A, B, B − A) and the
entries that flipped — the SFT-vs-RL table of the paper. Reads each run's ``outcomes.jsonl`` and ``summary.json``;
works for BFCL and tau2 runs alike (a tau2 run's category is its domain). Accuracies are computed on the entries
both runs have, so that a partial run is not compared against a full one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cm2data.eval.env import EvalError


def _load(run: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from cm2data.eval.bfcl import read_outcomes

    if not run.is_dir():
        raise EvalError(f"{run} is not a run folder")
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise EvalError(f"{run} has no readable summary.json: not a finished cm2data eval run") from None
    outcomes = {o["id"]: o for o in read_outcomes(run)}
    return summary, outcomes


def _sort_key(entry_id: str) -> tuple[str, int]:
    head, _, tail = entry_id.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (entry_id, -1)


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """The comparison as a dict: ``categories`` (per category: entries, a, b, delta, fixed, broken), ``overall``
    (the unweighted mean over categories, as the runs report it), ``flips`` (``fixed``: fail → pass, ``broken``:
    pass → fail; an error row counts as a failure), ``only_in_a``/``only_in_b``."""
    sa, oa = _load(a)
    sb, ob = _load(b)
    if sa.get("benchmark") != sb.get("benchmark"):
        raise EvalError(f"{a} is a {sa.get('benchmark')} run and {b} a {sb.get('benchmark')} run: nothing to compare")
    common = sorted(set(oa) & set(ob), key=_sort_key)
    if not common:
        raise EvalError(f"{a} and {b} have no entries in common")
    categories: dict[str, dict[str, Any]] = {}
    fixed, broken = [], []
    for entry_id in common:
        ra, rb = oa[entry_id], ob[entry_id]
        c = categories.setdefault(
            ra["category"],
            {"category": ra["category"], "entries": 0, "a_passed": 0, "b_passed": 0, "fixed": 0, "broken": 0},
        )
        pa, pb = ra["outcome"] == "pass", rb["outcome"] == "pass"
        c["entries"] += 1
        c["a_passed"] += pa
        c["b_passed"] += pb
        flip = {
            "id": entry_id,
            "category": ra["category"],
            "a_error_type": ra.get("error_type"),
            "b_error_type": rb.get("error_type"),
        }
        if pb and not pa:
            c["fixed"] += 1
            fixed.append(flip)
        elif pa and not pb:
            c["broken"] += 1
            broken.append(flip)
    rows = []
    for c in categories.values():
        c["a"] = round(c["a_passed"] / c["entries"], 4)
        c["b"] = round(c["b_passed"] / c["entries"], 4)
        c["delta"] = round(c["b"] - c["a"], 4)
        rows.append(c)
    mean_a = sum(c["a"] for c in rows) / len(rows)
    mean_b = sum(c["b"] for c in rows) / len(rows)
    return {
        "benchmark": sa.get("benchmark"),
        "a": {"run": str(a), "model": sa.get("model")},
        "b": {"run": str(b), "model": sb.get("model")},
        "categories": rows,
        "overall": {
            "entries": len(common),
            "a": round(mean_a, 4),
            "b": round(mean_b, 4),
            "delta": round(mean_b - mean_a, 4),
        },
        "flips": {"fixed": fixed, "broken": broken},
        "only_in_a": sorted(set(oa) - set(ob), key=_sort_key),
        "only_in_b": sorted(set(ob) - set(oa), key=_sort_key),
    }
