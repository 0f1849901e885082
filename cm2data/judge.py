"""The checklist judge (method §4): judge one rollout turn against its checklist with an LLM.

Dependency-light on purpose (standard library, pydantic, :mod:`cm2data.schema`, :mod:`cm2data.reward` and the
:mod:`cm2data.llm` client only): it runs inside VeRL's agent loop and ``compute_score``.

For each assistant step s of the turn and each *open* item c (not yet satisfied earlier in the turn, counting
dependency gating), the judge asks whether c is satisfied given the previous turns plus the current turn up to step s
and its tool responses. The prompt carries the item's Question, Focus on, Pass condition, Failure examples and
Reference snippet (its evidence snippets), the previous messages and the current messages; the answer is forced JSON
ending in ``"answer": bool``.

Rules that cost no call:

* **short-circuit**: if the step's tool responses contain an error, items focused on ``assistant.tool_calls`` or
  ``tool.content`` are false for that step;
* **failures**: a call that fails (HTTP error, timeout after the client's retries) or whose answer never parses is
  "not satisfied" and counted as failed; no exception leaves :func:`judge_turn`;
* **gating**: :attr:`TurnJudgement.gate_passed` is false when an item with ``required_for_next_turn`` was never
  satisfied in the turn (the rollout ends there).

Switches (:class:`JudgeOptions`): ``order="reference"`` puts the criterion before the conversation as the reference
does; ``order="prefix"`` (default) puts system instructions and the conversation first and the criterion last, so a
server with prefix caching reuses the conversation's KV cache for every item and step; ``grouped=True`` judges all
open items of a step in one call answering ``{item id: bool}``. A verdict cache keyed by (prompt version, mode, model,
item, canonical conversation prefix) avoids judging the same thing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cm2data import reward
from cm2data.schema import ChecklistItem, Message, ToolCall, Turn, canonical_json, segment, split_thinking

#: Bumped whenever the prompt text or the answer schema changes (part of the verdict-cache key).
PROMPT_VERSION = "cm2data-judge-v1"

#: Focus values whose items are false without a call when the step's tool responses contain an error.
SHORT_CIRCUIT_FOCUS = ("assistant.tool_calls", "tool.content")

SYSTEM_PROMPT = """You are a strict, objective judge of a tool-using AI assistant.
You will see a conversation between a user and the assistant (with the assistant's thinking, its tool calls and the
tool responses) and a checklist criterion. Decide whether the assistant satisfied the criterion at the current point
of the conversation.
Rules:
- Judge only what is observable in the conversation shown. Follow the pass condition literally.
- A tool call counts only if it appears under "tool calls" of an assistant message; a call written only inside the
  thinking does not count.
- If a tool response is an error, the tool calls of that step are invalid.
- The failure examples show what does NOT satisfy the criterion. The reference snippet shows one acceptable way;
  other routes to the same verifiable result also pass.
Answer with JSON only."""

ANSWER_ONE = 'Answer with JSON: {"answer": true} if the criterion is satisfied, else {"answer": false}.'
ANSWER_ONE_ANALYSIS = (
    'Answer with JSON: {"analysis": "<one or two short sentences>", "answer": true|false}, '
    '"answer" true if the criterion is satisfied.'
)
ANSWER_GROUPED = (
    "Answer with one JSON object mapping every criterion id listed above to true (satisfied) or false, "
    'for example {"C0": true, "C1": false}.'
)
ANSWER_LETTERS = (
    "Answer with one JSON string of exactly {n} letters, one per criterion in the order listed above "
    '({ids}): Y if that criterion is satisfied, N if not. For example "{example}".'
)

Order = Literal["reference", "prefix"]
#: How a grouped call answers: an object ``{id: bool}`` (explicit ids; ~5 output tokens per item) or a string of Y/N
#: letters in the listed order (~1 token per item). Decode steps dominate a CPU server's time, and a GPU server's
#: latency per call, so ``letters`` is the fast form; ``object`` is the more robust one for small judges.
GroupedAnswer = Literal["object", "letters"]


# ----------------------------------------------------------------------------------------------------- options


class VerdictCache(Protocol):
    """Where verdicts are remembered: ``get`` returns None on a miss."""

    def get(self, key: str) -> bool | None: ...

    def set(self, key: str, value: bool) -> None: ...


class MemoryVerdictCache:
    """A bounded, thread-safe LRU verdict cache in memory (per process)."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._data: OrderedDict[str, bool] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bool | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def set(self, key: str, value: bool) -> None:
        with self._lock:
            self._data[key] = bool(value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class JudgeOptions:
    """How :func:`judge_turn` asks. Defaults: prefix-cache-friendly order, one call per item."""

    order: Order = "prefix"
    grouped: bool = False
    grouped_answer: GroupedAnswer = "object"
    analysis: bool = False  # ask for a short analysis before the answer (per-item mode only; costs decode time)
    max_concurrency: int = 16  # judge calls in flight per judge_turn (the client also bounds its total)
    call_timeout: float | None = None  # seconds for one call including the client's retries (None: the client's)
    max_tokens: int = 256
    temperature: float = 0.0
    invalid_retries: int | None = 1  # extra tries on unparseable answers (None: the client's default)
    skip_satisfied: bool = True  # do not ask again about an item already satisfied earlier in the turn
    cache: VerdictCache | None = None
    stage: str = "judge"
    salt: str = ""  # text put before the system prompt (benchmarks: isolates runs on a prefix-caching server)

    @property
    def mode(self) -> str:
        grouped = ("-grouped" + ("-letters" if self.grouped_answer == "letters" else "")) if self.grouped else ""
        return f"{self.order}{grouped}{'-analysis' if self.analysis else ''}"


# ----------------------------------------------------------------------------------------------------- results


@dataclass
class ItemVerdict:
    """One judged (item, assistant step) pair."""

    item_id: str
    step: int  # index among the assistant steps of the turn
    satisfied: bool
    failed: bool = False  # the call failed or never gave a valid answer (then satisfied is False)
    short_circuit: bool = False  # false without a call (tool error)
    cached: bool = False
    reason: str | None = None
    #: the judge's answer text (in grouped mode the whole answer of the call, shared by its items; for a failed call
    #: the last answer received, if any). Not part of :meth:`to_dict`, which travels inside VeRL's batches.
    raw: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item_id,
            "step": self.step,
            "satisfied": self.satisfied,
            "failed": self.failed,
            "short_circuit": self.short_circuit,
            "cached": self.cached,
            "reason": self.reason,
        }


@dataclass
class TurnJudgement:
    """The verdicts of one turn and what follows from them."""

    turn: int
    step_verdicts: list[dict[str, bool]]  # one mapping per assistant step: what cm2data.reward reads
    verdicts: list[ItemVerdict]
    satisfied: dict[str, bool]
    score: float
    gate_passed: bool
    failed_gates: list[str]
    calls: int = 0
    failures: int = 0
    cache_hits: int = 0
    complete: bool = True  # the turn ended with a final reply

    @property
    def items_passed(self) -> list[str]:
        return [cid for cid, ok in self.satisfied.items() if ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "step_verdicts": self.step_verdicts,
            "satisfied": self.satisfied,
            "score": self.score,
            "gate_passed": self.gate_passed,
            "failed_gates": self.failed_gates,
            "calls": self.calls,
            "failures": self.failures,
            "cache_hits": self.cache_hits,
            "complete": self.complete,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }


# --------------------------------------------------------------------------------------------------- rendering


def render_message(m: Message) -> str:
    """One message as judge-readable text: role, thinking, visible content, structured tool calls."""
    if m.role == "tool":
        head = f"[tool response{f' from {m.name}' if m.name else ''}]"
        return f"{head}\n{m.content}"
    lines = [f"[{m.role}]"]
    if m.thinking:
        lines.append(f"<think>\n{m.thinking}\n</think>")
    if m.content:
        lines.append(m.content)
    if m.tool_calls:
        lines.append("tool calls:")
        lines.extend(f"- {c.name}({c.arguments})" for c in m.tool_calls)
    return "\n".join(lines)


def render_messages(messages: Sequence[Message]) -> str:
    return "\n\n".join(render_message(m) for m in messages) if messages else "(none)"


def render_conversation(previous: Sequence[Message], current: Sequence[Message]) -> str:
    return f"## Previous messages\n\n{render_messages(previous)}\n\n## Current messages\n\n{render_messages(current)}"


def render_criterion(item: ChecklistItem, *, with_id: bool = False) -> str:
    snippets = [e.snippet for e in item.evidence if e.snippet]
    fails = "\n".join(f"- {f}" for f in item.failure_examples) or "- (none)"
    head = f"### Criterion {item.id}\n" if with_id else "## Criterion\n"
    return (
        f"{head}Question: {item.question}\nFocus on: {item.focus_on}\nPass condition: {item.pass_condition}\n"
        f"Failure examples:\n{fails}\nReference snippet: {' | '.join(snippets) if snippets else '(none)'}"
    )


def build_prompt(
    previous: Sequence[Message], current: Sequence[Message], items: Sequence[ChecklistItem], options: JudgeOptions
) -> list[dict[str, str]]:
    """The chat messages of one judge call (one item, or all ``items`` in grouped mode)."""
    convo = render_conversation(previous, current)
    system = f"{options.salt}\n{SYSTEM_PROMPT}" if options.salt else SYSTEM_PROMPT
    if options.grouped:
        criteria = "## Criteria\n\n" + "\n\n".join(render_criterion(i, with_id=True) for i in items)
        if options.grouped_answer == "letters":
            answer = ANSWER_LETTERS.format(
                n=len(items),
                ids=", ".join(i.id for i in items),
                example="".join("YN"[k % 2] for k in range(len(items))),
            )
        else:
            answer = ANSWER_GROUPED
    else:
        criteria = render_criterion(items[0])
        answer = ANSWER_ONE_ANALYSIS if options.analysis else ANSWER_ONE
    if options.order == "reference":  # the criterion before the conversation, as the reference does
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": f"{criteria}\n\n{convo}\n\n{answer}"},
        ]
    # shared context first: system + conversation form a prefix common to every item and (growing) step
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": convo},
        {"role": "user", "content": f"{criteria}\n\n{answer}"},
    ]


def answer_schema(
    item_ids: Sequence[str] | None, *, analysis: bool = False, grouped_answer: GroupedAnswer = "object"
) -> dict[str, Any]:
    """The forced-JSON schema: ``{"answer": bool}`` (optionally after ``analysis``), ``{id: bool, …}``, or for
    ``grouped_answer="letters"`` a string of exactly ``len(item_ids)`` Y/N letters."""
    if item_ids is not None and grouped_answer == "letters":
        n = len(item_ids)
        # the pattern alone: xgrammar (vLLM's default back-end) refuses a pattern combined with min/maxLength
        return {"title": "verdicts", "type": "string", "pattern": f"^[YN]{{{n}}}$"}
    if item_ids is None:
        props: dict[str, Any] = {}
        if analysis:
            props["analysis"] = {"type": "string", "maxLength": 400}
        props["answer"] = {"type": "boolean"}
        return {
            "title": "verdict",
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }
    return {
        "title": "verdicts",
        "type": "object",
        "properties": {i: {"type": "boolean"} for i in item_ids},
        "required": list(item_ids),
        "additionalProperties": False,
    }


def _check_one(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("answer"), bool):
        raise ValueError('expected an object with a boolean "answer"')
    return data["answer"]


def _checker_letters(ids: Sequence[str]):
    def check(data: Any) -> dict[str, bool]:
        text = data.strip().upper() if isinstance(data, str) else None
        if text is None or len(text) != len(ids) or set(text) - {"Y", "N"}:
            raise ValueError(f"expected a string of exactly {len(ids)} letters Y or N, got {data!r}")
        return {cid: ch == "Y" for cid, ch in zip(ids, text, strict=True)}

    return check


def _checker_grouped(ids: Sequence[str]):
    def check(data: Any) -> dict[str, bool]:
        if not isinstance(data, dict):
            raise ValueError("expected an object mapping criterion ids to booleans")
        out = {}
        for cid in ids:
            value = data.get(cid)
            if isinstance(value, dict):  # tolerate {"C0": {"answer": true}}
                value = value.get("answer")
            if not isinstance(value, bool):
                raise ValueError(f"criterion {cid}: expected true or false, got {value!r}")
            out[cid] = value
        return out

    return check


def cache_key(
    item: ChecklistItem, previous: Sequence[Message], current: Sequence[Message], *, mode: str, model: str | None
) -> str:
    """(prompt version, mode, model, item, canonical conversation prefix) → a SHA-256 hex digest."""
    payload = {
        "v": PROMPT_VERSION,
        "mode": mode,
        "model": model,
        "item": item.model_dump(
            mode="json",
            include={"id", "focus_on", "question", "pass_condition", "failure_examples", "evidence"},
            by_alias=True,
        ),
        "prev": [m.model_dump(mode="json") for m in previous],
        "cur": [m.model_dump(mode="json") for m in current],
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------- the judge


def is_tool_error(content: str) -> bool:
    """A tool response that reports an error: a JSON object with an ``error``/``error_tool_call`` key (the simulator's
    ``{code, message, details}`` envelope included) or text starting with "error"."""
    text = (content or "").strip()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text.lower().startswith("error")
    if isinstance(data, dict):
        if data.get("error") or data.get("error_tool_call"):
            return True
        return (
            isinstance(data.get("code"), str)
            and data["code"].isupper()
            and "message" in data
            and set(data) <= {"code", "message", "details"}
        )
    return False


class _Caller:
    """Bounded, failure-proof calls to the client."""

    def __init__(self, client: Any, options: JudgeOptions):
        self.client = client
        self.options = options
        self.semaphore = asyncio.Semaphore(max(1, options.max_concurrency))
        self.calls = 0
        self.failures = 0

    async def ask(
        self, prompt: list[dict[str, str]], schema: dict[str, Any], validate: Any
    ) -> tuple[Any, str | None, str | None]:
        """(parsed answer or None, failure reason or None, the answer text or None). Never raises (except
        cancellation)."""
        opts = self.options
        async with self.semaphore:
            self.calls += 1
            try:
                coro = self.client.chat(
                    prompt,
                    stage=opts.stage,
                    schema=schema,
                    validate=validate,
                    max_tokens=opts.max_tokens,
                    temperature=opts.temperature,
                    invalid_retries=opts.invalid_retries,
                )
                result = await (asyncio.wait_for(coro, opts.call_timeout) if opts.call_timeout else coro)
                return result.parsed, None, getattr(result, "text", None)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                self.failures += 1
                return None, f"judge call timed out after {opts.call_timeout:g} s", None
            except Exception as exc:  # LLMError and anything unexpected: a defined outcome, never an escape
                self.failures += 1
                texts = getattr(exc, "texts", None)  # LLMOutputError keeps every rejected answer
                return None, f"{type(exc).__name__}: {exc}"[:500], (texts[-1] if texts else None)


def to_message(m: Message | dict[str, Any]) -> Message:
    """A canonical :class:`Message` from itself or an OpenAI chat dict (``tool_calls[].function``, inline
    ``<think>``, content parts)."""
    if isinstance(m, Message):
        return m
    data = dict(m)
    calls = []
    for c in data.get("tool_calls") or []:
        fn = c.get("function", c) if isinstance(c, dict) else {}
        calls.append(
            ToolCall(
                id=c.get("id") if isinstance(c, dict) else None,
                name=str(fn.get("name") or ""),
                arguments=fn.get("arguments"),
            )
        )
    content = data.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    content = content or ""
    thinking = data.get("thinking") or data.get("reasoning_content")
    if data.get("role") == "assistant" and thinking is None:
        thinking, content = split_thinking(content)
    return Message(
        role=data.get("role", "user"),
        content=content,
        thinking=thinking,
        tool_calls=calls,
        tool_call_id=data.get("tool_call_id"),
        name=data.get("name"),
    )


def to_messages(messages: Sequence[Message | dict[str, Any]]) -> list[Message]:
    return [to_message(m) for m in messages]


def _turn_of(messages: Sequence[Message], turn_index: int) -> tuple[list[Turn], Turn]:
    turns = segment(messages)
    if not 0 <= turn_index < len(turns):
        raise IndexError(f"turn {turn_index} not in a conversation of {len(turns)} turns")
    return turns, turns[turn_index]


@dataclass
class _TurnProgress:
    """What judging one turn has established so far, step by step."""

    verdicts: list[ItemVerdict] = field(default_factory=list)
    step_verdicts: list[dict[str, bool]] = field(default_factory=list)
    cache_hits: int = 0
    gated_at: dict[str, int] = field(default_factory=dict)  # item → assistant step where it became satisfied
    ever_true: set[str] = field(default_factory=set)  # (gated: its dependencies were satisfied before)

    def settled(self, item: ChecklistItem) -> bool:
        """Satisfied already in a way later steps cannot change."""
        return item.id in self.ever_true and (item.id in self.gated_at or not item.depends_on)

    def advance(self, row: dict[str, bool], by_id: dict[str, ChecklistItem], s: int) -> None:
        """Take step ``s``'s verdicts ``row`` into the satisfaction so far (ungated and gated)."""
        for cid, ok in row.items():
            if not ok:
                continue
            self.ever_true.add(cid)
            item = by_id.get(cid)
            if cid in self.gated_at or item is None:
                continue
            if all(self.gated_at.get(d, s) < s for d in item.depends_on):
                self.gated_at[cid] = s
        self.step_verdicts.append(row)


def _step_context(msgs: list[Message], turn: Turn, k: int) -> tuple[list[Message], bool]:
    """The current messages for assistant step ``k`` of ``turn`` (the turn up to that step and the tool responses
    that answer it) and whether those responses contain an error."""
    steps = turn.steps
    end = steps[k].message_indices[-1] + 1
    tool_error = False
    if k + 1 < len(steps) and steps[k + 1].kind == "tool":
        nxt = steps[k + 1]
        end = nxt.message_indices[-1] + 1
        tool_error = any(is_tool_error(msgs[i].content) for i in nxt.message_indices)
    return msgs[turn.start : end], tool_error


def _open_items(
    items: Sequence[ChecklistItem],
    s: int,
    tool_error: bool,
    options: JudgeOptions,
    progress: _TurnProgress,
    row: dict[str, bool],
) -> list[ChecklistItem]:
    """The items step ``s`` must judge; items short-circuited by a tool error are decided here (false)."""
    open_items: list[ChecklistItem] = []
    for item in items:
        if options.skip_satisfied and progress.settled(item):
            continue
        if tool_error and item.focus_on in SHORT_CIRCUIT_FOCUS:
            row[item.id] = False
            progress.verdicts.append(ItemVerdict(item.id, s, False, short_circuit=True, reason="tool error"))
            continue
        open_items.append(item)
    return open_items


def _from_cache(
    open_items: Sequence[ChecklistItem],
    s: int,
    previous: Sequence[Message],
    current: Sequence[Message],
    options: JudgeOptions,
    model: str | None,
    progress: _TurnProgress,
    row: dict[str, bool],
) -> tuple[list[ChecklistItem], dict[str, str]]:
    """Verdicts the cache already has go into ``row``; returns the items still to ask and their cache keys."""
    pending: list[ChecklistItem] = []
    keys: dict[str, str] = {}
    for item in open_items:
        if options.cache is not None:
            key = keys[item.id] = cache_key(item, previous, current, mode=options.mode, model=model)
            hit = options.cache.get(key)
            if hit is not None:
                progress.cache_hits += 1
                row[item.id] = hit
                progress.verdicts.append(ItemVerdict(item.id, s, hit, cached=True))
                continue
        pending.append(item)
    return pending, keys


async def _ask_step(
    caller: _Caller,
    previous: Sequence[Message],
    current: Sequence[Message],
    pending: Sequence[ChecklistItem],
    options: JudgeOptions,
) -> dict[str, tuple[bool | None, str | None, str | None]]:
    """The calls of one step: one grouped call, or one call per item at once. Item id → (verdict or None when the
    call failed, failure reason, answer text)."""
    results: dict[str, tuple[bool | None, str | None, str | None]] = {}
    if pending and options.grouped:
        ids = [i.id for i in pending]
        letters = options.grouped_answer == "letters"
        parsed, why, raw = await caller.ask(
            build_prompt(previous, current, pending, options),
            answer_schema(ids, grouped_answer=options.grouped_answer),
            (_checker_letters if letters else _checker_grouped)(ids),
        )
        for cid in ids:
            results[cid] = (None, why, raw) if parsed is None else (bool(parsed[cid]), None, raw)
    elif pending:
        schema = answer_schema(None, analysis=options.analysis)
        answers = await asyncio.gather(
            *(caller.ask(build_prompt(previous, current, [i], options), schema, _check_one) for i in pending)
        )
        for item, (parsed, why, raw) in zip(pending, answers, strict=True):
            results[item.id] = (None, why, raw) if parsed is None else (bool(parsed), None, raw)
    return results


def _record_answers(
    pending: Sequence[ChecklistItem],
    results: dict[str, tuple[bool | None, str | None, str | None]],
    s: int,
    keys: dict[str, str],
    options: JudgeOptions,
    progress: _TurnProgress,
    row: dict[str, bool],
) -> None:
    """The answers of step ``s`` into ``row`` and the verdicts (a failed call: false, counted as failed); answered
    verdicts go into the cache."""
    for item in pending:
        value, why, raw = results[item.id]
        if value is None:
            row[item.id] = False
            progress.verdicts.append(ItemVerdict(item.id, s, False, failed=True, reason=why, raw=raw))
        else:
            row[item.id] = value
            progress.verdicts.append(ItemVerdict(item.id, s, value, raw=raw))
            if options.cache is not None:
                options.cache.set(keys[item.id], value)


async def judge_turn(
    client: Any,
    messages: Sequence[Message | dict[str, Any]],
    turn_index: int,
    items: Sequence[ChecklistItem],
    options: JudgeOptions | None = None,
) -> TurnJudgement:
    """Judge turn ``turn_index`` of the rollout ``messages`` (the whole conversation so far, canonical or OpenAI
    dicts) against that turn's checklist ``items``. ``client`` is a :class:`cm2data.llm.LLMClient` (anything with
    its async ``chat``). Steps are judged in order so that items satisfied earlier are not asked again."""
    options = options or JudgeOptions()
    msgs = to_messages(messages)
    _, turn = _turn_of(msgs, turn_index)
    previous = msgs[: turn.start]
    caller = _Caller(client, options)
    model = getattr(client, "model", None)
    by_id = {i.id: i for i in items}
    progress = _TurnProgress()
    a_steps = [k for k, st in enumerate(turn.steps) if st.kind == "assistant"]
    for s, k in enumerate(a_steps):
        current, tool_error = _step_context(msgs, turn, k)
        row: dict[str, bool] = {}
        open_items = _open_items(items, s, tool_error, options, progress, row)
        pending, keys = _from_cache(open_items, s, previous, current, options, model, progress, row)
        results = await _ask_step(caller, previous, current, pending, options)
        _record_answers(pending, results, s, keys, options, progress, row)
        progress.advance(row, by_id, s)

    satisfied = reward.item_satisfaction(items, progress.step_verdicts)
    return TurnJudgement(
        turn=turn_index,
        step_verdicts=progress.step_verdicts,
        verdicts=progress.verdicts,
        satisfied=satisfied,
        score=reward.turn_score(items, satisfied),
        gate_passed=reward.gate_passed(items, satisfied),
        failed_gates=reward.failed_gates(items, satisfied),
        calls=caller.calls,
        failures=caller.failures,
        cache_hits=progress.cache_hits,
        complete=turn.complete,
    )


@dataclass
class RolloutJudgement:
    """All judged turns of a rollout and its reward (:func:`cm2data.reward.score_rollout`)."""

    turns: list[TurnJudgement] = field(default_factory=list)
    score: float = 0.0
    turn_scores: list[float] = field(default_factory=list)
    stopped_at: int | None = None

    @property
    def judge_failures(self) -> int:
        return sum(t.failures for t in self.turns)

    @property
    def items_passed(self) -> list[list[str]]:
        return [t.items_passed for t in self.turns]


async def judge_rollout(
    client: Any,
    messages: Sequence[Message | dict[str, Any]],
    checklist: Sequence[Sequence[ChecklistItem]],
    options: JudgeOptions | None = None,
    *,
    known: Sequence[TurnJudgement] = (),
) -> RolloutJudgement:
    """Judge every turn of a rollout in order (turn t against ``checklist[t]``), stopping after a failed gate, and
    score it. ``known`` holds judgements already made (for example by the agent loop) for the first turns: they are
    reused, not judged again. Turns beyond the checklist are ignored; a trailing incomplete turn is judged as it is
    (it scores what it reached)."""
    msgs = to_messages(messages)
    n_turns = min(len(segment(msgs)), len(checklist))
    out: list[TurnJudgement] = []
    for t in range(n_turns):
        tj = known[t] if t < len(known) else await judge_turn(client, msgs, t, checklist[t], options)
        out.append(tj)
        if not tj.gate_passed:
            break
    scored = reward.score_rollout(checklist, [tj.step_verdicts for tj in out])
    return RolloutJudgement(out, scored.score, scored.turn_scores, scored.stopped_at)
