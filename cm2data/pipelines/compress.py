"""``compress``: CoT compression (method §2.5) — an LLM rewrites each assistant thinking shorter.

Pipeline (distilabel): ``read_rows`` → :class:`CompressThinking` (``OpenAILLM`` task).

The answer is ``{"thinking": [{"thinking": str}, …]}``, one entry per assistant message that has thinking, in order;
the count must match (rule ``thinking_count_mismatch``; asked again with the reason, then rejected). A rewrite that
is blank is refused (``empty_thinking``); one that is not shorter than the original keeps the original (compression
never makes a record longer; counted in the report). Dialogues without thinking pass unchanged.
"""

import json
from typing import Any

from cm2data.pipelines.config import CompressConfig
from cm2data.pipelines.registry import register_stage
from cm2data.pipelines.results import StageResult, collect, stamp
from cm2data.pipelines.rows import decode_record, encode_record, merge_meta, record_row
from cm2data.pipelines.run import StageContext, run_rows
from cm2data.pipelines.steps import JSONTask, openai_llm
from cm2data.prompts import load_prompt
from cm2data.rejects import RecordError
from cm2data.schema import Dialogue

STAGE = "compress"


def compress_schema(count: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "thinking": {
                "type": "array",
                "minItems": count,
                "maxItems": count,
                "items": {
                    "type": "object",
                    "properties": {"thinking": {"type": "string", "minLength": 1, "maxLength": 4000}},
                    "required": ["thinking"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["thinking"],
        "additionalProperties": False,
    }


def _thinking_positions(d: Dialogue, min_chars: int) -> list[int]:
    positions = [i for i, m in enumerate(d.messages) if m.role == "assistant" and m.thinking]
    if not positions or all(len(d.messages[i].thinking or "") < min_chars for i in positions):
        return []
    return positions


class CompressThinking(JSONTask):
    """Rewrite every assistant thinking of a dialogue shorter (distilabel ``OpenAILLM``, prompt ``compress``).

    Input columns: ``id``, ``record``, ``reject``, ``usage``, ``meta``. Output columns: the same, ``record`` with
    the compressed thinking (``meta.compress`` has characters before/after and how many rewrites were kept).
    """

    min_chars: int = 0

    def build_messages(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        d = decode_record(row["record"])
        positions = _thinking_positions(d, self.min_chars)
        if not positions:
            return None
        listing = "\n\n".join(f"Thinking {k + 1}:\n{d.messages[i].thinking}" for k, i in enumerate(positions))
        return load_prompt("compress").messages(count=len(positions), thinkings=listing)

    def schema_for(self, row: dict[str, Any]) -> dict[str, Any]:
        d = decode_record(row["record"])
        return compress_schema(max(1, len(_thinking_positions(d, self.min_chars))))

    def pass_through(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"meta": merge_meta(row.get("meta", "{}"), compress={"skipped": "no thinking to compress"})}

    def accept(self, row: dict[str, Any], data: Any) -> dict[str, Any]:
        d = decode_record(row["record"])
        positions = _thinking_positions(d, self.min_chars)
        entries = data.get("thinking") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError('expected {"thinking": [{"thinking": "..."}, ...]}')
        if len(entries) != len(positions):
            raise RecordError(
                "thinking_count_mismatch",
                f"{len(entries)} thinkings returned for {len(positions)} assistant messages with "
                "thinking; return exactly one per input, in order",
            )
        before = after = kept = 0
        for i, entry in zip(positions, entries, strict=True):
            text = entry.get("thinking") if isinstance(entry, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise RecordError("empty_thinking", f"thinking for assistant message {i} is blank")
            old = d.messages[i].thinking or ""
            before += len(old)
            if len(text.strip()) < len(old):
                d.messages[i].thinking = text.strip()
            else:
                kept += 1
            after += len(d.messages[i].thinking or "")
        return {
            "record": encode_record(d),
            "meta": merge_meta(
                row.get("meta", "{}"),
                compress={
                    "chars_before": before,
                    "chars_after": after,
                    "kept_original": kept,
                    "thinkings": len(positions),
                },
            ),
        }


@register_stage("compress", config=CompressConfig, llm=True)
def run_compress(records: list[Dialogue], cfg: CompressConfig, ctx: StageContext) -> StageResult:
    rows = [record_row(d) for d in records]
    tag = load_prompt("compress").tag
    by_id = {d.id: d for d in records}

    def build() -> list[Any]:
        return [
            CompressThinking(
                name="compress_thinking",
                stage=STAGE,
                work_dir=str(ctx.work),
                llm=openai_llm(ctx.llm_settings, ctx.api_key),
                llm_settings=ctx.llm_settings,
                schema_form=ctx.schema_form,
                max_new_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
                seed=ctx.seed,
                send_seed=ctx.request_seeds,
                invalid_retries=cfg.invalid_retries,
                min_chars=cfg.min_chars,
                prompt_tag=tag,
                settings={"min_chars": cfg.min_chars},
                input_batch_size=ctx.batch_size,
            )
        ]

    run = run_rows(STAGE, rows, build, ctx.work, batch_size=ctx.batch_size, api_key=ctx.api_key)
    accepted, rejects, usage, resumed = collect(STAGE, run.rows, by_id)
    totals = {"compressed": 0, "skipped": 0, "chars_before": 0, "chars_after": 0, "kept_original": 0}
    compressed_ids = set()
    for row in run.rows:
        info = json.loads(row.get("meta") or "{}").get("compress") or {}
        if "skipped" in info:
            totals["skipped"] += 1
        elif info and not row.get("reject"):
            totals["compressed"] += 1
            compressed_ids.add(row["id"])
            for k in ("chars_before", "chars_after", "kept_original"):
                totals[k] += int(info.get(k, 0))
    stamp([d for d in accepted if d.id in compressed_ids], STAGE, [tag], model=ctx.model)
    stamp([d for d in accepted if d.id not in compressed_ids], STAGE, (), skipped="no thinking to compress")
    details: dict[str, Any] = {**totals, "pipeline_seconds": round(run.pipeline_seconds, 2)}
    return StageResult(STAGE, len(records), accepted, rejects, usage, run.seconds, resumed, details)
