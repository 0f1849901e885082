"""The distilabel base steps of every stage: the generator that feeds a stage its rows, and the two kinds of
LLM-using step, both documented per stage in ``docs/pipelines.md``:

* :class:`JSONTask` — a distilabel ``Task`` whose ``llm`` is distilabel's own ``OpenAILLM`` pointed at the configured
  ``base_url``, for one-shot structured judgements (scenario writing, the quality filter, CoT compression). The
  schema goes in ``extra_body`` in the form the server understands (vLLM: ``structured_outputs``; others:
  ``response_format`` inside ``extra_body`` — a nested schema passed as ``OpenAILLM``'s own ``response_format`` is
  dropped silently), every answer is parsed and validated, invalid ones are asked again with the reason.
* :class:`RecordStep` — a distilabel ``Step`` that calls :class:`cm2data.llm.LLMClient`, for work that is a
  conversation rather than one request (simulating a dialogue with tools, labelling with up to 3 feedback retries
  validated by the full gate) and needs per-request schemas, tool calls, bounded concurrency and per-row failure
  isolation.

Subclasses fill in hooks (``handle``; ``build_messages``/``schema_for``/``accept``); the base classes do the
journaling (:mod:`cm2data.pipelines.journal`), the usage accounting per row and the failure isolation.
"""

import asyncio
import contextvars
import json
import time
from dataclasses import dataclass, field
from typing import Any

from distilabel.models.llms import OpenAILLM
from distilabel.steps import GeneratorStep, Step, StepInput
from distilabel.steps.tasks import Task
from pydantic import Field, PrivateAttr

from cm2data.llm import LLMClient, LLMConfig, Usage
from cm2data.pipelines.journal import _Journaled
from cm2data.pipelines.rows import ROW_COLUMNS, fingerprint, merge_usage, reason_of, reject_json, rule_of

# ----------------------------------------------------------------------------------------------- per-row usage

_ROW_USAGE: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("cm2data_row_usage", default=None)


class RowUsage(Usage):
    """A :class:`Usage` that also adds every count to the usage of the row being processed (a context variable set
    by the step for each row's coroutine), so a step's LLM calls are attributed to rows even when many rows share
    one client concurrently."""

    def record(self, stage: str, **counts: float) -> None:
        super().record(stage, **counts)
        row = _ROW_USAGE.get()
        if row is not None:
            row.record(stage, **counts)


# ----------------------------------------------------------------------------------------------------- LLM settings


def llm_settings(config: LLMConfig) -> dict[str, Any]:
    """What a step process needs to rebuild the client. The API key is not among them: it travels in the step's
    private attribute ``_api_key`` (pickled to the step process, never in distilabel's serialised pipeline)."""
    return config.model_dump(exclude={"api_key"})


def client_config(settings: dict[str, Any], api_key: str | None = None) -> LLMConfig:
    return LLMConfig(**settings, api_key=api_key or "EMPTY")


# ------------------------------------------------------------------------------------------------ the generator


class ReadRows(GeneratorStep):
    """Generator: the stage's input rows from a JSON-lines file written by :func:`run_rows`.

    Output columns: the ``columns`` given (``id``, ``record``, ``reject``, ``usage``, ``meta`` and any
    stage-specific ones), all strings.
    """

    path: str
    columns: list[str] = Field(default_factory=lambda: list(ROW_COLUMNS))
    fingerprint: str = ""

    @property
    def outputs(self) -> list[str]:
        return list(self.columns)

    def process(self, offset: int = 0):
        with open(self.path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        size = self.batch_size or 50
        for start in range(offset, len(rows), size):
            yield rows[start : start + size], start + size >= len(rows)


# ------------------------------------------------------------------------------------------- LLMClient steps


class RecordStep(_Journaled, Step):
    """Base of a step that does one asynchronous, LLM-using job per live row with :class:`cm2data.llm.LLMClient`.

    Subclasses implement ``async handle(row) -> dict`` (the columns to change; set ``reject`` to reject the row).
    Rows of a batch run concurrently (the client bounds requests in flight to ``max_concurrency``); each finished
    row is journaled at once; an unexpected exception in one row rejects that row (rule ``step_error``) and never
    the batch. Input and output columns: ``id``, ``record``, ``reject``, ``usage``, ``meta`` (see the module
    docstring) plus :attr:`extra_columns`.
    """

    stage: str
    work_dir: str
    llm_settings: dict[str, Any]
    settings: dict[str, Any] = Field(default_factory=dict)
    extra_columns: list[str] = Field(default_factory=list)

    _loop: Any = PrivateAttr(None)
    _client: Any = PrivateAttr(None)
    _usage: Any = PrivateAttr(None)
    _journal: Any = PrivateAttr(None)
    _done: Any = PrivateAttr(None)
    _fp: Any = PrivateAttr(None)
    _api_key: str | None = PrivateAttr(None)

    @property
    def inputs(self) -> list[str]:
        return [*ROW_COLUMNS, *self.extra_columns]

    @property
    def outputs(self) -> list[str]:
        return [*ROW_COLUMNS, *self.extra_columns]

    def prompt_tags(self) -> list[str]:
        return []

    def step_fingerprint(self) -> str:
        return fingerprint(type(self).__name__, self.settings, self.llm_settings.get("model"), self.prompt_tags())

    def load(self) -> None:
        super().load()
        self._loop = asyncio.new_event_loop()
        self._usage = RowUsage()
        self._client = LLMClient(client_config(self.llm_settings, self._api_key), usage=self._usage)
        self._open_journal()
        self.setup()

    def setup(self) -> None:
        """Per-process set-up after the client exists (override)."""

    def unload(self) -> None:
        if self._loop is not None:
            if self._client is not None:
                self._loop.run_until_complete(self._client.aclose())
            self._loop.close()
            self._loop = None
        super().unload()

    def process(self, inputs: StepInput):
        yield self._loop.run_until_complete(self._process(list(inputs)))

    async def _process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(rows)
        tasks = []
        for i, row in enumerate(rows):
            if row.get("reject"):
                out[i] = row
                continue
            cached = self._from_journal(row)
            if cached is not None:
                out[i] = cached
                continue
            tasks.append(asyncio.ensure_future(self._one(i, row)))
        for fut in asyncio.as_completed(tasks):
            i, new = await fut
            out[i] = new
        return out  # type: ignore[return-value]

    async def _one(self, i: int, row: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        usage = Usage()
        token = _ROW_USAGE.set(usage)
        try:
            update = await self.handle(row)
        except Exception as exc:  # a row's surprise must not take the batch down: reject it, say why
            update = {"reject": reject_json(self.stage, "step_error", f"{type(exc).__name__}: {exc}"[:2000])}
        finally:
            _ROW_USAGE.reset(token)
        update["usage"] = merge_usage(row.get("usage", "{}"), usage.as_dict())
        self._journal.append(self._key(row), update)
        return i, {**row, **update}

    async def handle(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------- distilabel OpenAILLM


def structured_body(mode: str, schema: dict[str, Any], compact: bool = True) -> dict[str, Any]:
    """The ``extra_body`` that carries ``schema`` to a server in schema form ``mode`` (what
    :class:`cm2data.llm.LLMClient` decided for this server). The ``prompt`` form adds nothing here: the caller puts
    the schema into the prompt."""
    if mode == "structured_outputs":
        so: dict[str, Any] = {"json": schema}
        if compact:
            so["disable_any_whitespace"] = True
        return {"structured_outputs": so}
    if mode == "json_schema":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}
    if mode == "json_object":
        return {"response_format": {"type": "json_object", "schema": schema}}
    return {}


def openai_llm(settings: dict[str, Any], api_key: str | None = None):
    """distilabel's ``OpenAILLM`` for the configured endpoint (SDK retries and timeout from the config); with
    several endpoints (``extra_base_urls``), :class:`BalancedOpenAILLM`, which spreads requests over them."""
    common = {
        "model": settings["model"],
        "base_url": settings["base_url"],
        "api_key": api_key or "EMPTY",
        "max_retries": settings.get("max_retries", 3),
        "timeout": int(settings.get("timeout", 120)),
    }
    extra = list(settings.get("extra_base_urls") or ())
    if not extra:
        return OpenAILLM(**common)
    return BalancedOpenAILLM(**common, extra_base_urls=extra)


class BalancedOpenAILLM(OpenAILLM):
    """``OpenAILLM`` whose chat requests are spread over ``base_url`` and ``extra_base_urls`` (least busy first, a
    transient fault retried on another endpoint: :class:`cm2data.llm.balance.BalancedAsyncOpenAI`)."""

    extra_base_urls: list[str] = Field(default_factory=list)

    def load(self) -> None:
        super().load()
        from cm2data.llm.balance import BalancedAsyncOpenAI

        self._aclient = BalancedAsyncOpenAI(
            [self.base_url, *self.extra_base_urls],
            api_key=self.api_key.get_secret_value(),
            timeout=self.timeout,
            max_retries=self.max_retries,
        )


@dataclass
class _Asking:
    """One row's conversation with the labeller within a batch: the messages so far, its usage, the reasons its
    invalid answers were refused."""

    convo: list[dict[str, str]]
    usage: Usage = field(default_factory=Usage)
    reasons: list[str] = field(default_factory=list)


def _ask_again(convo: list[dict[str, str]], text: str, reason: str) -> list[dict[str, str]]:
    """The conversation with a request to answer again. A cut-off answer is not echoed (it would only lengthen the
    prompt); any other invalid answer is, followed by the reason."""
    if reason.startswith("answer cut off"):
        return [
            *convo,
            {"role": "user", "content": f"Your answer was cut off: {reason}. Answer again, shorter, JSON only."},
        ]
    return [
        *convo,
        {"role": "assistant", "content": text},
        {"role": "user", "content": f"That answer is not valid: {reason}\nAnswer again with corrected JSON only."},
    ]


class JSONTask(_Journaled, Task):
    """Base of a one-shot structured judgement: a distilabel ``Task`` on distilabel's ``OpenAILLM``.

    Subclasses implement ``build_messages(row)`` (None: nothing to ask, the row passes unchanged),
    ``accept(row, data) -> dict`` (the columns to change; raise ``ValueError``/``RecordError`` when the answer is
    invalid) and may override ``schema_for(row)``. ``process`` sends all live rows of the batch at once through
    ``OpenAILLM.agenerate`` (each request on its own, so one failing request fails one row, not the batch as
    ``OpenAILLM.generate`` would), parses and validates every answer, asks invalid ones again with the reason
    (``invalid_retries`` times), and rejects what still fails: rule ``llm_request_failed`` for a request that failed
    after the SDK's retries, else the rule of the last reason (``malformed_json``, ``output_schema``, …).
    Input and output columns: ``id``, ``record``, ``reject``, ``usage``, ``meta`` plus :attr:`extra_columns`.
    """

    stage: str
    usage_stage: str = ""
    work_dir: str
    llm_settings: dict[str, Any]
    schema_form: str = "structured_outputs"
    compact_json: bool = True
    max_new_tokens: int = 512
    temperature: float = 0.2
    seed: int = 0
    send_seed: bool = False
    invalid_retries: int = 1
    settings: dict[str, Any] = Field(default_factory=dict)
    extra_columns: list[str] = Field(default_factory=list)
    prompt_tag: str = ""

    _journal: Any = PrivateAttr(None)
    _done: Any = PrivateAttr(None)
    _fp: Any = PrivateAttr(None)

    @property
    def inputs(self) -> list[str]:
        return [*ROW_COLUMNS, *self.extra_columns]

    @property
    def outputs(self) -> list[str]:
        return [*ROW_COLUMNS, *self.extra_columns]

    def step_fingerprint(self) -> str:
        return fingerprint(
            type(self).__name__,
            self.settings,
            self.llm_settings.get("model"),
            self.prompt_tag,
            self.max_new_tokens,
            self.temperature,
            self.seed,
            self.invalid_retries,
        )

    def load(self) -> None:
        super().load()
        self._open_journal()

    # distilabel's abstract interface (process() below does the work)
    def format_input(self, input: dict[str, Any]) -> Any:
        return self.build_messages(input)

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:
        return {}

    def build_messages(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        raise NotImplementedError

    def schema_for(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def accept(self, row: dict[str, Any], data: Any) -> dict[str, Any]:
        raise NotImplementedError

    def pass_through(self, row: dict[str, Any]) -> dict[str, Any]:
        """The update for a row with nothing to ask (default: no change)."""
        return {}

    def _body(self, row: dict[str, Any], attempt: int) -> dict[str, Any]:
        body = structured_body(self.schema_form, self.schema_for(row), self.compact_json)
        if self.send_seed:
            body["seed"] = self.seed + attempt
        return body

    def _with_schema_note(self, row: dict[str, Any], messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.schema_form != "prompt":
            return messages
        note = "Answer with one JSON value only, no other text, that matches this JSON schema:\n" + json.dumps(
            self.schema_for(row), ensure_ascii=False
        )
        return [*messages, {"role": "system", "content": note}]

    def process(self, inputs: StepInput):
        rows = list(inputs)
        out: list[dict[str, Any] | None] = [None] * len(rows)
        asking: dict[int, _Asking] = {}
        for i, row in enumerate(rows):
            out[i], ask = self._start(row)
            if ask is not None:
                asking[i] = ask
        pending = list(asking)
        for attempt in range(1 + self.invalid_retries):
            if not pending:
                break
            results, seconds = self._ask([(rows[i], asking[i]) for i in pending], attempt)
            retry = []
            for i, result in zip(pending, results, strict=True):
                done = self._answer(rows[i], asking[i], result, seconds, attempt)
                if done is None:
                    retry.append(i)
                else:
                    out[i] = done
            pending = retry
        for i in pending:
            out[i] = self._give_up(rows[i], asking[i])
        yield out

    def _start(self, row: dict[str, Any]) -> tuple[dict[str, Any] | None, _Asking | None]:
        """A row's output when it needs no request (rejected before, journaled, nothing to ask), else what to ask."""
        if row.get("reject"):
            return row, None
        cached = self._from_journal(row)
        if cached is not None:
            return cached, None
        messages = self.build_messages(row)
        if messages is None:
            return self._finish(row, self.pass_through(row), Usage()), None
        return None, _Asking(self._with_schema_note(row, messages))

    def _ask(self, batch: list[tuple[dict[str, Any], _Asking]], attempt: int) -> tuple[list[Any], float]:
        """Send every conversation of the batch at once; the answers (or exceptions) and the seconds per request."""
        started = time.monotonic()
        results = self.llm.event_loop.run_until_complete(
            asyncio.gather(
                *(
                    self.llm.agenerate(
                        input=ask.convo,
                        num_generations=1,
                        max_new_tokens=self.max_new_tokens,
                        temperature=self.temperature,
                        extra_body=self._body(row, attempt),
                    )
                    for row, ask in batch
                ),
                return_exceptions=True,
            )
        )
        return results, (time.monotonic() - started) / max(1, len(batch))

    def _answer(
        self, row: dict[str, Any], ask: _Asking, result: Any, seconds: float, attempt: int
    ) -> dict[str, Any] | None:
        """The row's output for one answer, or None when the answer was invalid and is to be asked again (the
        reason is then appended to the conversation)."""
        stage = self.usage_stage or self.stage
        if isinstance(result, BaseException):
            ask.usage.record(stage, failures=1, seconds=seconds)
            reason = f"{type(result).__name__}: {result}"[:1000]
            return self._finish(row, {"reject": reject_json(self.stage, "llm_request_failed", reason)}, ask.usage)
        stats = result.get("statistics") or {}
        produced = _first(stats.get("output_tokens"))
        ask.usage.record(
            stage,
            requests=1,
            prompt_tokens=_first(stats.get("input_tokens")),
            completion_tokens=produced,
            seconds=seconds,
        )
        text = (result.get("generations") or [None])[0] or ""
        try:
            update = self.accept(row, self._parse_answer(text, produced))
        except (ValueError, TypeError, KeyError) as exc:
            reason = reason_of(exc)
            ask.reasons.append(reason)
            ask.usage.record(stage, invalid=1)
            ask.convo = _ask_again(ask.convo, text, reason)
            return None
        return self._finish(row, update, ask.usage, attempts=attempt + 1)

    def _parse_answer(self, text: str, produced: int) -> Any:
        from cm2data.llm import extract_json

        try:
            return extract_json(text)
        except ValueError:
            if produced < self.max_new_tokens:
                raise
            # OpenAILLM hides finish_reason; a full budget and broken JSON means it was cut off
            raise ValueError(f"answer cut off at max_tokens ({produced} tokens)") from None

    def _give_up(self, row: dict[str, Any], ask: _Asking) -> dict[str, Any]:
        """Every attempt was invalid: reject with the rule of the last reason, all reasons in the message."""
        ask.usage.record(self.usage_stage or self.stage, failures=1)
        message = f"{len(ask.reasons)} answers rejected; " + " | ".join(ask.reasons)
        return self._finish(
            row, {"reject": reject_json(self.stage, rule_of(ask.reasons[-1]), message[:2000])}, ask.usage
        )

    def _finish(self, row: dict[str, Any], update: dict[str, Any], usage: Usage, attempts: int = 0) -> dict[str, Any]:
        update = dict(update)
        update["usage"] = merge_usage(row.get("usage", "{}"), usage.as_dict())
        self._journal.append(self._key(row), update)
        return {**row, **update}


def _first(values: Any) -> int:
    if isinstance(values, list):
        return int(values[0] or 0) if values else 0
    return int(values or 0)
