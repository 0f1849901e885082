"""``select``: hard-sample selection for RL (method §2.6).

For each dialogue the seven statistics are computed (:func:`cm2data.schema.dialogue_stats`); metric *i* with value
*v* has a configured drop ratio r_i(v) (0 when not listed), and the dialogue is dropped with probability
``1 − Π_i (1 − r_i(v_i))``. The draw for a dialogue is ``random.Random(f"{seed}:{id}").random()``: it depends only
on the seed and the record's id, so the outcome is reproducible and independent of the order, the batching and of
which other records are present (a resumed or re-batched run selects the same records).

:func:`drop_probability` and :func:`select_hard` are pure; :class:`SelectHardSamples` is the distilabel step.
Rejections (stage ``select``): ``hard_sample_selection``, with the probability and the metrics that raised it.
"""

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distilabel.steps import Step, StepInput
from pydantic import Field

from cm2data.pipelines.config import SelectConfig
from cm2data.pipelines.registry import register_stage
from cm2data.pipelines.results import StageResult, collect, stamp
from cm2data.pipelines.rows import ROW_COLUMNS, decode_record, merge_meta, record_row, reject_json
from cm2data.pipelines.run import StageContext, run_rows
from cm2data.schema import Dialogue, dialogue_stats

STAGE = "select"
RULE = "hard_sample_selection"


def drop_probability(stats: Mapping[str, int], ratios: Mapping[str, Mapping[int, float]]) -> tuple[float, list[str]]:
    """``1 − Π(1 − r_i)`` for one dialogue's statistics, and the ``metric=value (r)`` terms that contributed."""
    keep = 1.0
    terms = []
    for metric, table in ratios.items():
        value = stats.get(metric)
        r = float(_lookup(table, value)) if value is not None else 0.0
        if r > 0:
            keep *= 1.0 - r
            terms.append(f"{metric}={value} ({r:g})")
    return 1.0 - keep, terms


def _lookup(table: Mapping[Any, float], value: Any) -> float:
    if value in table:
        return table[value]
    return table.get(str(value), 0.0)  # YAML/JSON may give the keys as strings


def draw(seed: int, record_id: str) -> float:
    """The uniform draw of one record (reproducible, order-independent)."""
    return random.Random(f"{seed}:{record_id}").random()


@dataclass(frozen=True)
class Decision:
    record_id: str
    drop: bool
    probability: float
    terms: tuple[str, ...]


def decide(record_id: str, stats: Mapping[str, int], ratios: Mapping[str, Mapping[Any, float]], seed: int) -> Decision:
    p, terms = drop_probability(stats, ratios)
    return Decision(record_id, draw(seed, record_id) < p, p, tuple(terms))


def select_hard(
    records: Sequence[Dialogue], ratios: Mapping[str, Mapping[int, float]], seed: int
) -> tuple[list[Dialogue], list[tuple[Dialogue, Decision]]]:
    """Split ``records`` into (kept, [(dropped record, its decision)])."""
    kept: list[Dialogue] = []
    dropped: list[tuple[Dialogue, Decision]] = []
    for d in records:
        decision = decide(d.id, dialogue_stats(d).as_dict(), ratios, seed)
        if decision.drop:
            dropped.append((d, decision))
        else:
            kept.append(d)
    return kept, dropped


def reason(decision: Decision) -> str:
    return (
        f"dropped with probability {decision.probability:.3f} (" + ", ".join(decision.terms) + ")"
        if decision.terms
        else f"dropped with probability {decision.probability:.3f}"
    )


class SelectHardSamples(Step):
    """Drop easy dialogues at random, more likely the easier they are (method §2.6; no LLM).

    Input columns: ``id``, ``record``, ``reject``, ``usage``, ``meta``. Output columns: the same; ``reject`` set
    (rule ``hard_sample_selection``) for dropped dialogues; ``meta.select`` holds the drop probability.
    """

    stage: str = STAGE
    seed: int = 42
    drop_ratios: dict[str, dict[str, float]] = Field(default_factory=dict)  # str keys: distilabel's signature

    @property
    def inputs(self) -> list[str]:
        return list(ROW_COLUMNS)

    @property
    def outputs(self) -> list[str]:
        return list(ROW_COLUMNS)

    def process(self, inputs: StepInput):
        out = []
        for row in inputs:
            if row.get("reject"):
                out.append(row)
                continue
            d = decode_record(row["record"])
            decision = decide(d.id, dialogue_stats(d).as_dict(), self.drop_ratios, self.seed)
            row = {**row, "meta": merge_meta(row.get("meta", "{}"), select={"p_drop": round(decision.probability, 6)})}
            if decision.drop:
                row["reject"] = reject_json(self.stage, RULE, reason(decision))
            out.append(row)
        yield out


@register_stage("select", config=SelectConfig)
def run_select(records: list[Dialogue], cfg: SelectConfig, ctx: StageContext) -> StageResult:
    seed = ctx.seed if cfg.seed is None else cfg.seed
    rows = [record_row(d) for d in records]
    by_id = {d.id: d for d in records}

    def build() -> list[Any]:
        ratios = {k: {str(v): r for v, r in t.items()} for k, t in cfg.drop_ratios.items()}
        return [
            SelectHardSamples(
                name="select_hard_samples", seed=seed, drop_ratios=ratios, input_batch_size=ctx.batch_size
            )
        ]

    run = run_rows(STAGE, rows, build, ctx.work, batch_size=ctx.batch_size)
    accepted, rejects, usage, resumed = collect(STAGE, run.rows, by_id)
    stamp(accepted, STAGE, (), seed=seed)
    expected = sum(drop_probability(dialogue_stats(d).as_dict(), cfg.drop_ratios)[0] for d in records)
    details = {
        "seed": seed,
        "drop_ratios": {k: {str(v): r for v, r in t.items()} for k, t in cfg.drop_ratios.items()},
        "expected_drops": round(expected, 2),
        "pipeline_seconds": round(run.pipeline_seconds, 2),
    }
    return StageResult(STAGE, len(records), accepted, rejects, usage, run.seconds, resumed, details)
