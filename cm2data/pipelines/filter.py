"""``filter``: the rule filters of method §2.2, then the LLM quality filter of method §2.3.

Pipeline (distilabel): ``read_rows`` → :class:`RuleFilters` → :class:`QualityJudge` × ``passes`` (``OpenAILLM``
tasks, chained: a dialogue a pass rejects is not judged again; one failure drops it).

Rejections (stage ``filter``): every rule filter by its name (``tool_schema``, ``role_order``, …, see
docs/validation.md); ``llm_quality`` (the judge answered ``"NoError": false``; the message is its ``Reasoning``);
the judge's answer never valid (``malformed_json``, ``output_schema``, …); ``llm_request_failed``.
"""

import json
from typing import TYPE_CHECKING, Any, cast

from distilabel.steps import Step, StepInput
from pydantic import BaseModel, Field

from cm2data.pipelines.config import FilterConfig
from cm2data.pipelines.registry import register_stage
from cm2data.pipelines.results import StageResult, collect, stamp
from cm2data.pipelines.rows import ROW_COLUMNS, decode_record, merge_meta, record_row, reject_json
from cm2data.pipelines.run import StageContext, run_rows
from cm2data.pipelines.steps import JSONTask, openai_llm
from cm2data.pipelines.text import dialogue_text, tools_text
from cm2data.prompts import load_prompt
from cm2data.schema import Dialogue

if TYPE_CHECKING:
    from cm2data.validate.rules import ThinkingPolicy

STAGE = "filter"

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"Reasoning": {"type": "string", "maxLength": 600}, "NoError": {"type": "boolean"}},
    "required": ["Reasoning", "NoError"],
    "additionalProperties": False,
}


class Verdict(BaseModel):
    Reasoning: str = Field(max_length=2000)
    NoError: bool


class RuleFilters(Step):
    """Apply the rule filters (:func:`cm2data.validate.run_gate`, stage ``rules``) to each batch.

    Input columns: ``id``, ``record``, ``reject``, ``usage``, ``meta``. Output columns: the same, ``reject`` set
    (first failing rule; every failing rule is in the message) for records that break a rule.
    """

    stage: str = STAGE
    thinking: str = "auto"
    rules: list[str] | None = None

    @property
    def inputs(self) -> list[str]:
        return list(ROW_COLUMNS)

    @property
    def outputs(self) -> list[str]:
        return list(ROW_COLUMNS)

    def process(self, inputs: StepInput):
        from cm2data.validate import RuleConfig, run_gate

        rows = list(inputs)
        live = [(i, decode_record(r["record"])) for i, r in enumerate(rows) if not r.get("reject")]
        result = run_gate(
            [d for _, d in live],
            config=RuleConfig(thinking=cast("ThinkingPolicy", self.thinking)),
            stages=("rules",),
            rules=self.rules,
        )
        by_id: dict[str, list[Any]] = {}
        for rej in result.rejects:
            by_id.setdefault(rej.record_id or "", []).append(rej)
        out = []
        for row in rows:
            found = by_id.get(row["id"])
            if found and not row.get("reject"):
                message = "; ".join(f"[{r.rule}] {r.message}" for r in found)
                row = {**row, "reject": reject_json(self.stage, found[0].rule, message[:2000])}
                if len(found) > 1:
                    row["meta"] = merge_meta(row.get("meta", "{}"), also_failed=[r.rule for r in found[1:]])
            out.append(row)
        yield out


class QualityJudge(JSONTask):
    """One pass of the LLM quality filter (distilabel ``OpenAILLM``, prompt ``quality_filter``): the judge reads the
    candidate tools and the dialogue and answers ``{"Reasoning": str, "NoError": bool}``.

    Input columns: ``id``, ``record``, ``reject``, ``usage``, ``meta``. Output columns: the same; ``reject`` set
    (rule ``llm_quality``, message the judge's reasoning) when ``NoError`` is false; ``meta.quality`` collects the
    reasoning of each pass.
    """

    pass_index: int = 0
    max_chars_per_message: int = 800

    def build_messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        d = decode_record(row["record"])
        return load_prompt("quality_filter").messages(
            tools=tools_text(d.tools), dialogue=dialogue_text(d, numbered=False, max_chars=self.max_chars_per_message)
        )

    def schema_for(self, row: dict[str, Any]) -> dict[str, Any]:
        return VERDICT_SCHEMA

    def accept(self, row: dict[str, Any], data: Any) -> dict[str, Any]:
        verdict = Verdict.model_validate(data)
        meta = merge_meta(
            row.get("meta", "{}"),
            quality=[{"pass": self.pass_index, "no_error": verdict.NoError, "reasoning": verdict.Reasoning[:500]}],
        )
        if verdict.NoError:
            return {"meta": meta}
        return {
            "meta": meta,
            "reject": reject_json(self.stage, "llm_quality", f"pass {self.pass_index}: {verdict.Reasoning}"[:2000]),
        }


@register_stage("filter", config=FilterConfig, llm=True)
def run_filter(records: list[Dialogue], cfg: FilterConfig, ctx: StageContext) -> StageResult:
    """Rule filters, then ``cfg.passes`` chained LLM quality passes."""
    rows = [record_row(d) for d in records]
    prompt_tag = load_prompt("quality_filter").tag
    by_id = {d.id: d for d in records}

    def build() -> list[Any]:
        steps: list[Any] = [
            RuleFilters(name="rule_filters", thinking=cfg.thinking, rules=cfg.rules, input_batch_size=ctx.batch_size)
        ]
        for k in range(cfg.passes):
            steps.append(
                QualityJudge(
                    name=f"quality_judge_{k}",
                    stage=STAGE,
                    usage_stage=f"{STAGE}.quality",
                    work_dir=str(ctx.work),
                    llm=openai_llm(ctx.llm_settings, ctx.api_key),
                    llm_settings=ctx.llm_settings,
                    schema_form=ctx.schema_form,
                    max_new_tokens=cfg.max_tokens,
                    temperature=cfg.temperature,
                    seed=ctx.seed + 1000 * k,
                    send_seed=ctx.request_seeds,
                    invalid_retries=cfg.invalid_retries,
                    pass_index=k,
                    max_chars_per_message=cfg.max_chars_per_message,
                    prompt_tag=prompt_tag,
                    settings={"pass": k},
                    input_batch_size=ctx.batch_size,
                )
            )
        return steps

    run = run_rows(STAGE, rows, build, ctx.work, batch_size=ctx.batch_size, api_key=ctx.api_key if cfg.passes else None)
    accepted, rejects, usage, resumed = collect(STAGE, run.rows, by_id)
    prompts = [prompt_tag] if cfg.passes else []
    stamp(
        accepted,
        STAGE,
        prompts,
        rules=cfg.rules or "all",
        thinking=cfg.thinking,
        llm_passes=cfg.passes,
        **({"model": ctx.model} if cfg.passes else {}),
    )
    verdicts = {"passed": 0, "failed": 0}
    for row in run.rows:
        for q in json.loads(row.get("meta") or "{}").get("quality", []):
            verdicts["passed" if q.get("no_error") else "failed"] += 1
    details = {"passes": cfg.passes, "judge_verdicts": verdicts, "pipeline_seconds": round(run.pipeline_seconds, 2)}
    return StageResult(STAGE, len(records), accepted, rejects, usage, run.seconds, resumed, details)
