"""``annotate``: per-turn checklist labelling (method §3).

Pipeline (distilabel): ``read_rows`` → :class:`LabelChecklists` (``LLMClient`` step).

For each dialogue and each of ``variants`` variants, the labeller (prompt ``annotate``) sees the candidate tools and
the dialogue with its turns and steps numbered, and answers a JSON list of blocks ``{turn, checklist, dependence,
weight}``, constrained by a schema built for this dialogue (:func:`label_schema`; by default ``strict``: under
constrained decoding the schema itself guarantees the block form below — one block per user turn with its turn
number, ids ``C0…`` in order, ``dependence``/``weight`` keys == the ids, dependence only on earlier items, evidence
steps within their turn, and with ``weight_grid`` weights summing to 1). Every answer is then validated all the
same (servers without constrained decoding, other backends, a schema given only in the prompt):

1. the block form (method §3): one block per user turn in order (``checklist_block_count``), ids ``C0…`` unique
   and restarting every turn (``unique_item_ids``), ``dependence`` keys == item ids
   (``checklist_dependence_keys``), ``weight`` keys == item ids (``checklist_weight_keys``), weights in [0, 1]
   summing to 1 ± 1e-6 (``weights_sum_to_one``);
2. the project's **full gate** (:func:`cm2data.validate.run_gate` on the record with this checklist: rule
   filters, checklist rules, pandera tables).

An invalid answer is asked again with the validation error fed back (``retries`` times, default 3); then the
dialogue is rejected with the rule of the last failure and every reason. A dialogue that fails the rule filters
itself is rejected before any LLM call (its rule, e.g. ``role_order``).
"""

import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cm2data.llm import LLMError, LLMOutputError
from cm2data.pipelines.config import AnnotateConfig
from cm2data.pipelines.registry import register_stage
from cm2data.pipelines.results import StageResult, collect, stamp
from cm2data.pipelines.rows import decode_record, encode_record, llm_error_reject, merge_meta, record_row, reject_json
from cm2data.pipelines.run import StageContext, run_rows
from cm2data.pipelines.steps import RecordStep
from cm2data.pipelines.text import dialogue_text, tools_text
from cm2data.prompts import load_prompt
from cm2data.rejects import RecordError
from cm2data.schema import EVIDENCE_SOURCES, FOCUS_VALUES, Dialogue, TurnChecklist

STAGE = "annotate"


# ------------------------------------------------------------------------------------------------ the answer


class LabelEvidence(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    turn: int
    step: int
    from_: str = Field(alias="from")
    snippet: str = ""


class LabelItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    evidence: list[LabelEvidence]
    focus_on: str
    question: str
    pass_condition: str
    failure_examples: list[str] = Field(default_factory=list)
    required_for_next_turn: bool = False


class LabelBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    turn: int
    checklist: list[LabelItem]
    dependence: dict[str, list[str]]
    weight: dict[str, float]


#: Weight vectors enumerated per item count at most (``weight_grid``); an item count with more vectors on the grid
#: gets free weights in [0, 1] instead (the sum is then checked after the answer, ``weights_sum_to_one``).
MAX_WEIGHT_OPTIONS = 256


def grid_weights(k: int, grid: float) -> list[list[float]]:
    """Every vector of ``k`` positive weights on the grid ``grid`` (a step that divides 1) summing to 1, in a fixed
    order (the most even first). Empty when ``k`` exceeds the grid's ``1 / grid`` steps."""
    m = grid_steps(grid)
    if not 1 <= k <= m:
        return []
    out: list[list[int]] = []

    def parts(left: int, slots: int, prefix: list[int]) -> None:
        if slots == 1:
            out.append([*prefix, left])
            return
        for first in range(1, left - slots + 2):
            parts(left - first, slots - 1, [*prefix, first])

    parts(m, k, [])
    out.sort(key=lambda v: (max(v) - min(v), [-x for x in v]))
    return [[round(x / m, 10) for x in v] for v in out]


def grid_steps(grid: float) -> int:
    """``1 / grid`` as an integer; ``ValueError`` when ``grid`` is not in (0, 1] or does not divide 1."""
    if not 0.0 < grid <= 1.0:
        raise ValueError(f"weight_grid {grid} must be in (0, 1]")
    m = round(1.0 / grid)
    if abs(m * grid - 1.0) > 1e-9:
        raise ValueError(f"weight_grid {grid} does not divide 1 (use 0.5, 0.25, 0.2, 0.1, …)")
    return m


def _weight_schema(k: int, grid: float | None) -> dict[str, Any]:
    ids = [f"C{i}" for i in range(k)]
    if k == 1:
        return _object({"C0": {"const": 1.0}})
    if grid is not None:
        vectors = grid_weights(k, grid)
        if 0 < len(vectors) <= MAX_WEIGHT_OPTIONS:
            # per-property const: xgrammar 0.2.8 spells a const number with 17 significant digits (0.1 →
            # 0.10000000000000001, read back as 0.1); dyadic grids (0.5, 0.25, 0.125) come out short. Not
            # minimum == maximum: that also admits trailing zeros, which a small model can pad without end.
            return {"anyOf": [_object({i: {"const": w} for i, w in zip(ids, v, strict=True)}) for v in vectors]}
    return _object({i: {"type": "number", "minimum": 0, "maximum": 1} for i in ids})


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    """An object with exactly these properties (all required, in this order, nothing else)."""
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


#: Longest quote offered as an evidence snippet (the schema's ``maxLength`` for snippets).
MAX_QUOTE_CHARS = 160
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")

Quotes = dict[tuple[int, int, str], list[str]]


def text_quotes(text: str, limit: int, max_chars: int = MAX_QUOTE_CHARS) -> list[str]:
    """Up to ``limit`` quotes of ``text``, in order: its JSON fields (``"key": value`` of every scalar leaf, for a
    JSON object or array), else its sentences and lines, long ones cut at a word boundary near ``max_chars``.

    >>> text_quotes('{"title": "Dune", "due": "2026-04-02"}', 5)
    ['"title": "Dune"', '"due": "2026-04-02"']
    >>> text_quotes("Done. Dune is due on 2 April!", 5)
    ['Done.', 'Dune is due on 2 April!']
    """
    out: list[str] = []
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            _json_quotes(json.loads(stripped), None, out, limit, max_chars)
            if out:
                return list(dict.fromkeys(out))[:limit]
        except ValueError:
            pass
    for piece in _SENTENCE_END.split(stripped):
        piece = piece.strip()
        while len(piece) > max_chars:
            cut = piece.rfind(" ", max_chars // 2, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            out.append(piece)
    return list(dict.fromkeys(out))[:limit]


def _json_quotes(value: Any, key: str | None, out: list[str], limit: int, max_chars: int) -> None:
    if len(out) >= 4 * limit:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _json_quotes(v, str(k), out, limit, max_chars)
    elif isinstance(value, list):
        for v in value:
            _json_quotes(v, key, out, limit, max_chars)
    else:
        quote = json.dumps(value, ensure_ascii=False)
        if key is not None:
            quote = f"{json.dumps(key, ensure_ascii=False)}: {quote}"
        if len(quote) <= max_chars:
            out.append(quote)


def quote_choices(record: Dialogue, limit: int = 10) -> Quotes:
    """``{(turn, step, from): [quotes]}``: what an evidence entry may quote from each part of each step of
    ``record`` (:func:`text_quotes` of the user message, the thinking, the reply, the tool results; each tool call's
    name and ``"argument": value`` pairs). Every quote is checked with
    :func:`cm2data.validate.evidence.grounded` against the text the rule ``evidence_grounded`` reads, so a choice is
    grounded by construction; parts with no quote are left out."""
    from cm2data.schema import segment, step_text
    from cm2data.validate.evidence import grounded
    from cm2data.validate.rules import degenerate_text

    msgs = record.messages
    out: Quotes = {}
    for turn in segment(msgs):
        for step in turn.steps:
            parts: dict[str, list[str]] = {}
            for idx in step.message_indices:
                m = msgs[idx]
                if m.role == "user":
                    parts.setdefault("user.content", []).extend(text_quotes(m.content, limit))
                elif m.role == "tool":
                    parts.setdefault("tool.content", []).extend(text_quotes(m.content, limit))
                elif m.role == "assistant":
                    if m.thinking:
                        parts.setdefault("assistant.content.thinking", []).extend(text_quotes(m.thinking, limit))
                    if m.tool_calls:
                        calls = parts.setdefault("assistant.tool_calls", [])
                        for call in m.tool_calls:
                            calls.append(call.name)
                            calls.extend(text_quotes(call.arguments, limit))
                    if m.content.strip():
                        parts.setdefault("assistant.content.user_visible_reply", []).extend(
                            text_quotes(m.content, limit)
                        )
            for source, quotes in parts.items():
                text = step_text(msgs, step, source)
                # "1.", "✅", "Booked!" say nothing a judge can check: quotes of text need two words; JSON pairs and
                # tool names are kept as they are
                kept = [
                    q
                    for q in dict.fromkeys(quotes)
                    if len(q) <= MAX_QUOTE_CHARS
                    and grounded(q, text)
                    and (source in ("tool.content", "assistant.tool_calls") or degenerate_text(q) is None)
                ]
                if kept:
                    out[(turn.index, step.index, source)] = kept[
                        : max(limit, 1) * 2 if source == "assistant.tool_calls" else limit
                    ]
    return out


def label_schema(
    steps: list[int],
    max_items: int = 6,
    *,
    strict: bool = True,
    weight_grid: float | None = None,
    quotes: Quotes | None = None,
) -> dict[str, Any]:
    """The JSON schema of the labeller's answer for a dialogue whose user turns have ``steps[t]`` steps.

    ``strict`` (the default): the schema itself guarantees the block form that :func:`check_blocks` checks, under
    constrained decoding — exactly one block per turn with ``turn`` = its position; per block, ``k`` items
    (1 ≤ k ≤ ``max_items``, an ``anyOf`` over k) with ids ``C0…C<k-1>`` in order; ``dependence`` and ``weight`` with
    exactly those keys; an item depends only on earlier ids (acyclic by construction; ``C0`` on nothing); weights
    in [0, 1], a lone item's weight 1, and with ``weight_grid`` every vector of positive weights on that grid summing
    to 1 (an ``anyOf``; item counts above ``1 / weight_grid`` are then not offered; more than
    :data:`MAX_WEIGHT_OPTIONS` vectors → free weights for that count). Evidence points at a step of its turn
    (``anyOf`` over turns). With ``quotes`` (:func:`quote_choices`), evidence is an ``anyOf`` over the parts of the
    steps of the item's turn and earlier turns, each with its ``turn``, ``step`` and ``from`` fixed and its snippet
    one of that part's quotes (an ``enum``): the labeller chooses what to quote, it cannot invent a quote or point a
    ``from`` at the wrong kind of step. Shared parts are ``$defs``. What the schema cannot say (weights summing to 1
    without a grid, dependencies only on ``tool.content`` items) is still checked after the answer.

    ``strict=False``: the loose schema (lengths, enums, ranges only), for servers that only read the schema in the
    prompt."""
    n_turns = len(steps)
    text = {"type": "string", "minLength": 1, "maxLength": 240}
    sources = {"type": "string", "enum": list(EVIDENCE_SOURCES)}
    snippet = {"type": "string", "maxLength": 160}

    def item(id_schema: dict[str, Any], evidence: dict[str, Any]) -> dict[str, Any]:
        return _object(
            {
                "id": id_schema,
                "evidence": {"type": "array", "minItems": 1, "maxItems": 2, "items": evidence},
                "focus_on": {"type": "string", "enum": list(FOCUS_VALUES)},
                "question": text,
                "pass_condition": text,
                "failure_examples": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 160}},
                "required_for_next_turn": {"type": "boolean"},
            }
        )

    if not strict or not steps:
        evidence = _object(
            {
                "turn": {"type": "integer", "minimum": 0, "maximum": max(0, n_turns - 1)},
                "step": {"type": "integer", "minimum": 0, "maximum": max(0, max(steps, default=1) - 1)},
                "from": sources,
                "snippet": snippet,
            }
        )
        turn_block = _object(
            {
                "turn": {"type": "integer", "minimum": 0, "maximum": max(0, n_turns - 1)},
                "checklist": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_items,
                    "items": item({"type": "string", "maxLength": 4}, evidence),
                },
                "dependence": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "array",
                        "maxItems": max_items,
                        "items": {"type": "string", "maxLength": 4},
                    },
                },
                "weight": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
            }
        )
        return {"type": "array", "minItems": n_turns, "maxItems": n_turns, "items": turn_block}

    counts = list(range(1, max_items + 1))
    if weight_grid is not None:
        counts = counts[: grid_steps(weight_grid)]
    defs: dict[str, Any] = {}
    if quotes:
        # per turn t: the quotable parts of turns 0..t (evidence for a turn's items comes from it or before it)
        for t in range(n_turns):
            choices = [
                _object(
                    {"turn": {"const": u}, "step": {"const": st}, "from": {"const": source}, "snippet": {"enum": qs}}
                )
                for (u, st, source), qs in sorted(quotes.items(), key=lambda kv: kv[0][:2])
                if u <= t
            ]
            defs[f"evidence_{t}"] = choices[0] if len(choices) == 1 else {"anyOf": choices}
            for i in range(counts[-1]):
                defs[f"item_{t}_C{i}"] = item({"const": f"C{i}"}, {"$ref": f"#/$defs/evidence_{t}"})
    else:
        pointers = [
            _object(
                {
                    "turn": {"const": u},
                    "step": {"type": "integer", "minimum": 0, "maximum": max(0, s - 1)},
                    "from": sources,
                    "snippet": snippet,
                }
            )
            for u, s in enumerate(steps)
        ]
        defs["evidence"] = pointers[0] if len(pointers) == 1 else {"anyOf": pointers}
        for i in range(counts[-1]):
            defs[f"item_C{i}"] = item({"const": f"C{i}"}, {"$ref": "#/$defs/evidence"})
    for k in counts:
        defs[f"dependence_{k}"] = _object(
            {
                f"C{i}": {"type": "array", "maxItems": i, "items": {"enum": [f"C{j}" for j in range(i)]}}
                if i
                else {"type": "array", "maxItems": 0}
                for i in range(k)
            }
        )
        defs[f"weight_{k}"] = _weight_schema(k, weight_grid)

    def block(t: int, k: int) -> dict[str, Any]:
        prefix = f"item_{t}_" if quotes else "item_"
        return _object(
            {
                "turn": {"const": t},
                "checklist": {
                    "type": "array",
                    "prefixItems": [{"$ref": f"#/$defs/{prefix}C{i}"} for i in range(k)],
                    "items": False,
                    "minItems": k,
                    "maxItems": k,
                },
                "dependence": {"$ref": f"#/$defs/dependence_{k}"},
                "weight": {"$ref": f"#/$defs/weight_{k}"},
            }
        )

    blocks = [
        {"anyOf": [block(t, k) for k in counts]} if len(counts) > 1 else block(t, counts[0]) for t in range(n_turns)
    ]
    return {
        "type": "array",
        "prefixItems": blocks,
        "items": False,
        "minItems": n_turns,
        "maxItems": n_turns,
        "$defs": defs,
    }


def check_blocks(blocks: list[LabelBlock], n_turns: int) -> None:
    """The block-form rules of method §3 that merging into items would hide; raises :class:`RecordError`."""
    if len(blocks) != n_turns:
        raise RecordError(
            "checklist_block_count",
            f"{len(blocks)} blocks for {n_turns} user turns: write exactly one block per user turn",
        )
    turns = [b.turn for b in blocks]
    if turns != list(range(n_turns)):
        raise RecordError("checklist_block_count", f"block turns are {turns}; they must be {list(range(n_turns))}")
    for b in blocks:
        ids = [it.id for it in b.checklist]
        if len(set(ids)) != len(ids):
            raise RecordError("unique_item_ids", f"turn {b.turn}: item ids {ids} repeat")
        expected = [f"C{i}" for i in range(len(ids))]
        if ids != expected:
            raise RecordError("unique_item_ids", f"turn {b.turn}: item ids are {ids}; number them {expected}")
        if set(b.dependence) != set(ids):
            raise RecordError(
                "checklist_dependence_keys",
                f"turn {b.turn}: dependence keys {sorted(b.dependence)} must be exactly the item ids {ids}",
            )
        if set(b.weight) != set(ids):
            raise RecordError(
                "checklist_weight_keys",
                f"turn {b.turn}: weight keys {sorted(b.weight)} must be exactly the item ids {ids}",
            )
        bad = {k: w for k, w in b.weight.items() if not 0.0 <= w <= 1.0}
        if bad:
            raise RecordError("weight_range", f"turn {b.turn}: weights {bad} are outside [0, 1]")
        total = sum(b.weight.values())
        if abs(total - 1.0) > 1e-6:
            raise RecordError("weights_sum_to_one", f"turn {b.turn}: weights sum to {total:g}, not 1")


def make_validator(record: Dialogue, n_turns: int) -> Callable[[Any], list[TurnChecklist]]:
    """The validator the labeller's answers must pass: the block form, then the full gate on the record."""
    from cm2data.formats.openai import checklists_from_stored
    from cm2data.validate import run_gate

    def validate(data: Any) -> list[TurnChecklist]:
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"blocks": [...]} and the like
        if not isinstance(data, list):
            raise RecordError("output_schema", "expected a JSON list of blocks, one per user turn")
        blocks = [LabelBlock.model_validate(b) for b in data]
        check_blocks(blocks, n_turns)
        variant = checklists_from_stored([[b.model_dump(by_alias=True) for b in blocks]])[0]
        candidate = Dialogue.model_validate({**record.model_dump(by_alias=True), "checklists": [variant]})
        result = run_gate([candidate])
        if not result.passed:
            rules = list(dict.fromkeys(r.rule for r in result.rejects))
            message = "; ".join(f"{r.rule}: {r.message}" for r in result.rejects[:4])
            raise RecordError(rules[0], message[:1500])
        return candidate.checklists[0]

    return validate


# --------------------------------------------------------------------------------------------------- the step


class LabelChecklists(RecordStep):
    """Label each dialogue's checklists (``LLMClient``, prompt ``annotate``), ``variants`` independent variants.

    Input columns: ``id``, ``record``, ``reject``, ``usage``, ``meta``. Output columns: the same; ``record`` with
    ``checklists`` replaced by the new variants, or ``reject`` set (rule of the last failure, every reason in the
    message, ``location`` the variant). ``meta.annotate`` has the attempts per variant.
    """

    def prompt_tags(self) -> list[str]:
        return [load_prompt("annotate").tag]

    def request(self, record: Dialogue, variant: int = 0) -> dict[str, Any]:
        """The keyword arguments of the first labelling request for ``record`` (``LLMClient.chat``): what the
        benchmark replays through a plain client."""
        return annotate_request(record, self.settings, variant, self.llm_settings.get("structured_output"))

    async def handle(self, row: dict[str, Any]) -> dict[str, Any]:
        from cm2data.validate import run_gate
        from cm2data.validate.checklist import steps_per_turn

        record = decode_record(row["record"])
        bare = record.model_copy(update={"checklists": []})
        pre = run_gate([bare], stages=("rules",))
        if not pre.passed:
            first = pre.rejects[0]
            return {
                "reject": reject_json(
                    STAGE, first.rule, f"the dialogue itself fails the rule filters: {first.message}"[:2000]
                )
            }
        n_turns = len(steps_per_turn(record.messages))
        validator = make_validator(bare, n_turns)
        variants: list[list[TurnChecklist]] = []
        attempts: list[int] = []
        retries = int(self.settings.get("retries", 3))
        for v in range(int(self.settings.get("variants", 1))):
            try:
                checklist, n = await self._label(self.request(bare, v), validator, retries)
            except LLMError as exc:  # every answer invalid (LLMOutputError), or the server failed
                return llm_error_reject(STAGE, exc, f"variant {v}")
            variants.append(checklist)
            attempts.append(n)
        record.checklists = variants
        record.provenance.labeller_model = self._client.model
        return {
            "record": encode_record(record),
            "meta": merge_meta(row.get("meta", "{}"), annotate={"attempts": attempts}),
        }

    async def _label(
        self, request: dict[str, Any], validator: Callable[[Any], list[TurnChecklist]], retries: int
    ) -> tuple[list[TurnChecklist], int]:
        """One variant: ask, validate, and on an invalid answer ask again with the error fed back (``retries``
        times). A cut-off answer is not echoed back (it would only lengthen the prompt by ``max_tokens``): the
        model is told it was cut off and to write less. Raises :class:`LLMOutputError` with every reason."""
        convo = list(request["messages"])
        reasons: list[str] = []
        texts: list[str] = []
        for attempt in range(1 + retries):
            try:
                result = await self._client.chat(
                    **{**request, "messages": convo}, validate=validator, invalid_retries=0
                )
                return result.parsed, attempt + 1
            except LLMOutputError as exc:
                reason, text = exc.reasons[-1], exc.last_text
            reasons.append(reason)
            texts.append(text)
            if reason.startswith("answer cut off"):
                convo = [
                    *convo,
                    {
                        "role": "user",
                        "content": f"Your answer was cut off: {reason}. Answer again "
                        "with fewer items and shorter texts, JSON only.",
                    },
                ]
            else:
                convo = [
                    *convo,
                    {"role": "assistant", "content": text},
                    {
                        "role": "user",
                        "content": f"That answer is not valid: {reason}\nAnswer again with corrected JSON only.",
                    },
                ]
        raise LLMOutputError(
            f"{len(reasons)} answers were not valid (stage {STAGE}); last: {reasons[-1]}", reasons=reasons, texts=texts
        )


def annotate_request(
    record: Dialogue, settings: dict[str, Any], variant: int = 0, schema_form: str | None = None
) -> dict[str, Any]:
    """``LLMClient.chat`` keyword arguments of the first labelling request of one variant (messages, schema,
    sampling): the same requests the stage sends, for the benchmark's plain client. ``schema_form`` ``"prompt"``
    (the schema only described in the prompt) always gets the loose schema: the strict one is for a grammar, not
    for reading (tens of kB with a fine ``weight_grid``)."""
    from cm2data.validate.checklist import steps_per_turn

    steps = steps_per_turn(record.messages)
    prompt = load_prompt("annotate")
    section = (
        prompt.render(prompt.extras["example_section"]).strip() + "\n" if settings.get("show_example", True) else ""
    )
    messages = prompt.messages(
        tools=tools_text(record.tools),
        num_turns=len(steps),
        example_section=section,
        dialogue=dialogue_text(record, numbered=True, max_chars=int(settings.get("max_chars_per_message", 600))),
    )
    seed = {"seed": int(settings.get("seed") or 0) + variant} if settings.get("request_seeds") else {}
    strict = bool(settings.get("strict_schema", True)) and schema_form != "prompt"
    grid = settings.get("weight_grid")
    quotes = (
        quote_choices(record, int(settings.get("max_quotes_per_part", 10)))
        if strict and settings.get("quote_choices", True)
        else None
    )
    schema = label_schema(
        steps,
        int(settings.get("max_items_per_turn", 6)),
        strict=strict,
        weight_grid=float(grid) if grid is not None and strict else None,
        quotes=quotes,
    )
    return {
        "messages": messages,
        "stage": STAGE,
        "schema": schema,
        "max_tokens": int(settings.get("max_tokens", 2000)),
        "temperature": float(settings.get("temperature", 0.3)),
        **seed,
    }


@register_stage("annotate", config=AnnotateConfig, llm=True)
def run_annotate(records: list[Dialogue], cfg: AnnotateConfig, ctx: StageContext) -> StageResult:
    seed = ctx.seed if cfg.seed is None else cfg.seed
    rows = [record_row(d) for d in records]
    by_id = {d.id: d for d in records}
    settings = {**cfg.model_dump(mode="json", exclude={"llm"}), "seed": seed, "request_seeds": ctx.request_seeds}

    def build() -> list[Any]:
        return [
            LabelChecklists(
                name="label_checklists",
                stage=STAGE,
                work_dir=str(ctx.work),
                llm_settings=ctx.llm_settings,
                settings=settings,
                input_batch_size=ctx.batch_size,
            )
        ]

    run = run_rows(STAGE, rows, build, ctx.work, batch_size=ctx.batch_size, api_key=ctx.api_key)
    accepted, rejects, usage, resumed = collect(STAGE, run.rows, by_id)
    tag = load_prompt("annotate").tag
    stamp(accepted, STAGE, [tag], model=ctx.model, variants=cfg.variants, retries=cfg.retries)
    attempts: dict[str, int] = {}
    for row in run.rows:
        for a in (json.loads(row.get("meta") or "{}").get("annotate") or {}).get("attempts", []):
            attempts[str(a)] = attempts.get(str(a), 0) + 1
    details = {
        "variants": cfg.variants,
        "retries": cfg.retries,
        "attempts_of_accepted_variants": attempts,
        "pipeline_seconds": round(run.pipeline_seconds, 2),
    }
    return StageResult(STAGE, len(records), accepted, rejects, usage, run.seconds, resumed, details)
