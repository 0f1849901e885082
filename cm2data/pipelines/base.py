"""The machinery every stage shares: the row layout, the record journal, the distilabel base steps, and running a
stage's distilabel ``Pipeline`` over a list of rows.

**Rows.** Between the steps of a stage, one row is one dialogue (or, in ``synthesize``, one dialogue to be), with
string columns only (Arrow would otherwise unify nested dict types across rows):

======= ==========================================================================================
column  content
======= ==========================================================================================
id      the record id (stable across runs: the resume key)
record  the canonical :class:`~cm2data.schema.Dialogue` as JSON ("" before ``synthesize`` made it)
reject  "" while the row is alive; else JSON ``{"stage", "rule", "message", "location"}`` — later steps pass a
        rejected row through untouched, and the stage turns it into a :class:`~cm2data.rejects.Reject`
usage   JSON ``{llm stage: counters}`` of the LLM calls made for this row (``cm2data.llm.Usage.as_dict`` form)
meta    JSON dict of step notes for the report (``resumed``: steps whose result came from the journal, …)
======= ==========================================================================================

**Journal (resume).** Every LLM-using step appends each finished row to ``<work>/journal/<step>.jsonl`` the moment
it finishes, keyed by a hash of the step's settings and the row's input. A stage started again after a kill sends
every row through the pipeline as before, and the step answers the journaled ones from the journal without calling
the LLM: finished work is not redone, and since the output is built from the pipeline's rows (one per input id),
nothing is duplicated. distilabel's own ``use_cache`` is *not* used for this: in distilabel 1.5.3 a pipeline killed
with SIGKILL and run again with ``use_cache=True`` hangs (measured: the generator resumed at its offset and the next
step never received a batch), and its batch-level cache would redo every row of an unfinished batch anyway.

**Where the LLM is called.** Two kinds of step, both documented per stage in ``docs/pipelines.md``:

* :class:`JSONTask` — a distilabel ``Task`` whose ``llm`` is distilabel's own ``OpenAILLM`` pointed at the configured
  ``base_url``, for one-shot structured judgements (scenario writing, the quality filter, CoT compression). The
  schema goes in ``extra_body`` in the form the server understands (vLLM: ``structured_outputs``; others:
  ``response_format`` inside ``extra_body`` — a nested schema passed as ``OpenAILLM``'s own ``response_format`` is
  dropped silently), every answer is parsed and validated, invalid ones are asked again with the reason.
* :class:`RecordStep` — a distilabel ``Step`` that calls :class:`cm2data.llm.LLMClient`, for work that is a
  conversation rather than one request (simulating a dialogue with tools, labelling with up to 3 feedback retries
  validated by the full gate) and needs per-request schemas, tool calls, bounded concurrency and per-row failure
  isolation.
"""


import asyncio
import contextlib
import contextvars
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilabel.steps import GeneratorStep, Step, StepInput
from distilabel.steps.tasks import Task
from pydantic import Field, PrivateAttr

from cm2data.llm import LLMClient, LLMConfig, LLMError, Usage
from cm2data.rejects import Reject
from cm2data.schema import Dialogue

ROW_COLUMNS = ["id", "record", "reject", "usage", "meta"]


# ------------------------------------------------------------------------------------------------------ rows


def encode_record(d: Dialogue) -> str:
    return d.model_dump_json(by_alias=True)


def decode_record(text: str) -> Dialogue:
    return Dialogue.model_validate_json(text)


def record_row(d: Dialogue) -> dict[str, str]:
    """A fresh row for a record."""
    return {"id": d.id, "record": encode_record(d), "reject": "", "usage": "{}", "meta": "{}"}


def reject_json(stage: str, rule: str, message: str, location: str | None = None) -> str:
    return json.dumps({"stage": stage, "rule": rule, "message": message, "location": location},
                      ensure_ascii=False)


def merge_usage(*parts: str | dict[str, Any]) -> str:
    total = Usage()
    for part in parts:
        data = json.loads(part) if isinstance(part, str) else part
        if data:
            total.merge(data)
    out = total.as_dict()
    out.pop("total", None)
    return json.dumps(out, sort_keys=True)


def merge_meta(current: str, **notes: Any) -> str:
    meta = json.loads(current or "{}")
    for key, value in notes.items():
        if isinstance(value, list):
            meta[key] = [*meta.get(key, []), *value]
        elif isinstance(value, dict):
            meta[key] = {**meta.get(key, {}), **value}
        else:
            meta[key] = value
    return json.dumps(meta, ensure_ascii=False, sort_keys=True)


def reason_of(exc: BaseException) -> str:
    """A rejected answer's reason, worded as :mod:`cm2data.llm` words them (``invalid: field: message; …`` for a
    pydantic error, ``[rule] message`` for a :class:`~cm2data.rejects.RecordError`)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errs = exc.errors()
        shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errs[:5])
        return f"invalid: {shown}" + (f" (+{len(errs) - 5} more)" if len(errs) > 5 else "")
    return str(exc) or type(exc).__name__


def rule_of(reason: str) -> str:
    """The rule name of an LLM answer's rejection reason (as :mod:`cm2data.llm` words them)."""
    if reason.startswith("[") and "]" in reason:
        return reason[1:reason.index("]")]
    if reason.startswith("malformed JSON") or reason == "empty answer":
        return "malformed_json"
    if reason.startswith("answer cut off"):
        return "truncated_output"
    if reason.startswith("invalid:"):
        return "output_schema"
    return "invalid_output"


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


# ----------------------------------------------------------------------------------------------------- journal


class Journal:
    """Append-only JSON lines ``{"key", "update"}``, one per finished row; the last entry of a key wins and a
    torn last line (a kill mid-write) is ignored. One writer per file (one step process)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    done[entry["key"]] = entry["update"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        return done

    def append(self, key: str, update: dict[str, Any]) -> None:
        line = json.dumps({"key": key, "update": update}, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()


def llm_settings(config: LLMConfig) -> dict[str, Any]:
    """What a step process needs to rebuild the client. The API key is not among them: it travels in the step's
    private attribute ``_api_key`` (pickled to the step process, never in distilabel's serialised pipeline)."""
    return config.model_dump(exclude={"api_key"})


def client_config(settings: dict[str, Any], api_key: str | None = None) -> LLMConfig:
    return LLMConfig(**settings, api_key=api_key or "EMPTY")


class _Journaled:
    """Journal plumbing shared by :class:`RecordStep` and :class:`JSONTask` (which declare its private attributes
    ``_journal``, ``_done``, ``_fp``)."""

    def step_fingerprint(self) -> str:
        raise NotImplementedError

    def _open_journal(self) -> None:
        self._journal = Journal(Path(self.work_dir) / "journal" / f"{self.name}.jsonl")
        self._done = self._journal.load()
        self._fp = self.step_fingerprint()

    def _key(self, row: dict[str, Any]) -> str:
        return fingerprint(self._fp, row["id"], row.get("record", ""), row.get("spec", ""), row.get("scenario", ""))

    def _from_journal(self, row: dict[str, Any]) -> dict[str, Any] | None:
        update = self._done.get(self._key(row))
        if update is None:
            return None
        out = {**row, **update}
        out["meta"] = merge_meta(out.get("meta", "{}"), resumed=[self.name])
        return out


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
    def outputs(self) -> list[str]:  # type: ignore[override]
        return list(self.columns)

    def process(self, offset: int = 0):  # type: ignore[override]
        with open(self.path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        size = self.batch_size or 50
        for start in range(offset, len(rows), size):
            yield rows[start:start + size], start + size >= len(rows)


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
    def inputs(self) -> list[str]:  # type: ignore[override]
        return [*ROW_COLUMNS, *self.extra_columns]

    @property
    def outputs(self) -> list[str]:  # type: ignore[override]
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

    def process(self, inputs: StepInput):  # type: ignore[override]
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


def openai_llm(settings: dict[str, Any], api_key: str | None = None):  # type: ignore[no-untyped-def]
    """distilabel's ``OpenAILLM`` for the configured endpoint (SDK retries and timeout from the config)."""
    from distilabel.models.llms import OpenAILLM

    return OpenAILLM(model=settings["model"], base_url=settings["base_url"],
                     api_key=api_key or "EMPTY", max_retries=settings.get("max_retries", 3),
                     timeout=int(settings.get("timeout", 120)))


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
    def inputs(self) -> list[str]:  # type: ignore[override]
        return [*ROW_COLUMNS, *self.extra_columns]

    @property
    def outputs(self) -> list[str]:  # type: ignore[override]
        return [*ROW_COLUMNS, *self.extra_columns]

    def step_fingerprint(self) -> str:
        return fingerprint(type(self).__name__, self.settings, self.llm_settings.get("model"), self.prompt_tag,
                           self.max_new_tokens, self.temperature, self.seed, self.invalid_retries)

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
        note = ("Answer with one JSON value only, no other text, that matches this JSON schema:\n"
                + json.dumps(self.schema_for(row), ensure_ascii=False))
        return [*messages, {"role": "system", "content": note}]

    def process(self, inputs: StepInput):  # type: ignore[override]
        from cm2data.llm import parse_json

        rows = list(inputs)
        out: list[dict[str, Any] | None] = [None] * len(rows)
        convos: dict[int, list[dict[str, str]]] = {}
        usage: dict[int, Usage] = {}
        reasons: dict[int, list[str]] = {}
        for i, row in enumerate(rows):
            if row.get("reject"):
                out[i] = row
                continue
            cached = self._from_journal(row)
            if cached is not None:
                out[i] = cached
                continue
            messages = self.build_messages(row)
            if messages is None:
                out[i] = self._finish(row, self.pass_through(row), Usage())
                continue
            convos[i] = self._with_schema_note(row, messages)
            usage[i] = Usage()
            reasons[i] = []
        stage = self.usage_stage or self.stage
        pending = list(convos)
        for attempt in range(1 + self.invalid_retries):
            if not pending:
                break
            started = time.monotonic()
            results = self.llm.event_loop.run_until_complete(asyncio.gather(*(
                self.llm.agenerate(input=convos[i], num_generations=1, max_new_tokens=self.max_new_tokens,
                                   temperature=self.temperature, extra_body=self._body(rows[i], attempt))
                for i in pending), return_exceptions=True))
            seconds = (time.monotonic() - started) / max(1, len(pending))
            retry = []
            for i, result in zip(pending, results, strict=True):
                row = rows[i]
                if isinstance(result, BaseException):
                    usage[i].record(stage, failures=1, seconds=seconds)
                    update = {"reject": reject_json(self.stage, "llm_request_failed",
                                                    f"{type(result).__name__}: {result}"[:1000])}
                    out[i] = self._finish(row, update, usage[i])
                    continue
                stats = result.get("statistics") or {}
                usage[i].record(stage, requests=1, prompt_tokens=_first(stats.get("input_tokens")),
                                completion_tokens=_first(stats.get("output_tokens")), seconds=seconds)
                text = (result.get("generations") or [None])[0] or ""
                produced = _first(stats.get("output_tokens"))
                try:
                    data = parse_json(text)
                except ValueError as exc:
                    if produced < self.max_new_tokens:
                        data = exc
                    else:  # OpenAILLM hides finish_reason; a full budget and broken JSON means it was cut off
                        data = ValueError(f"answer cut off at max_tokens ({produced} tokens)")
                try:
                    if isinstance(data, Exception):
                        raise data
                    update = self.accept(row, data)
                except (ValueError, TypeError, KeyError) as exc:
                    reason = reason_of(exc)
                    reasons[i].append(reason)
                    usage[i].record(stage, invalid=1)
                    if reason.startswith("answer cut off"):  # not echoed: it would only lengthen the prompt
                        convos[i] = [*convos[i], {"role": "user", "content": f"Your answer was cut off: {reason}. "
                                                                             "Answer again, shorter, JSON only."}]
                    else:
                        convos[i] = [*convos[i], {"role": "assistant", "content": text},
                                     {"role": "user", "content": f"That answer is not valid: {reason}\n"
                                                                 "Answer again with corrected JSON only."}]
                    retry.append(i)
                    continue
                out[i] = self._finish(row, update, usage[i], attempts=attempt + 1)
            pending = retry
        for i in pending:
            usage[i].record(stage, failures=1)
            last = reasons[i][-1]
            message = f"{len(reasons[i])} answers rejected; " + " | ".join(reasons[i])
            out[i] = self._finish(rows[i], {"reject": reject_json(self.stage, rule_of(last), message[:2000])},
                                  usage[i])
        yield out

    def _finish(self, row: dict[str, Any], update: dict[str, Any], usage: Usage, attempts: int = 0) -> dict[str, Any]:
        update = dict(update)
        update["usage"] = merge_usage(row.get("usage", "{}"), usage.as_dict())
        self._journal.append(self._key(row), update)
        return {**row, **update}


def _first(values: Any) -> int:
    if isinstance(values, list):
        return int(values[0] or 0) if values else 0
    return int(values or 0)


# ----------------------------------------------------------------------------------------- running a pipeline


@dataclass
class StageRun:
    """The rows a stage's pipeline returned, and what it cost."""

    rows: list[dict[str, Any]]
    seconds: float
    pipeline_seconds: float = 0.0


def _quiet_environment() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    import datasets

    datasets.disable_progress_bars()  # the Distiset's "Generating train split" bars (the env var is read at import)


@contextlib.contextmanager
def _forkserver() -> Iterator[None]:
    """Run distilabel's processes from a fork server instead of forking this process.

    distilabel 1.5.3 forks its step processes (``multiprocessing``'s default on Linux). Forking a process that has
    used polars (the gate's pandera tables) leaves polars' thread pool dead in the child: the child's next polars
    call waits forever (seen here: the annotate step hung in ``LazyFrame.collect`` after the test process had run
    the gate). A fork server is a fresh process that preloads distilabel and the step modules without touching
    polars; the step processes fork from it. The start method is switched only around ``Pipeline.run``.
    """
    import multiprocessing as mp
    import multiprocessing.context

    import distilabel.pipeline.local as local

    class ForkServerNoDaemonContext(multiprocessing.context.ForkServerContext):
        Process = local._NoDaemonProcess

    # distilabel builds its pool with ``_NoDaemonContext``, a subclass of the context type that was the default when
    # it was imported (fork): its queues would be fork-context objects shared with fork-server processes, which
    # multiprocessing refuses. Swap in the fork-server flavour for the duration of the run.
    previous = mp.get_start_method(allow_none=True)
    previous_context = local._NoDaemonContext
    mp.set_forkserver_preload(["cm2data.pipelines", "distilabel.pipeline.local", "cm2data.pipelines.synthesize",
                               "cm2data.pipelines.filter", "cm2data.pipelines.compress", "cm2data.pipelines.select",
                               "cm2data.pipelines.annotate"])  # cm2data.pipelines first: its warning filter
    mp.set_start_method("forkserver", force=True)
    local._NoDaemonContext = ForkServerNoDaemonContext  # type: ignore[misc]
    try:
        yield
    finally:
        local._NoDaemonContext = previous_context  # type: ignore[misc]
        mp.set_start_method(previous, force=True)


def run_rows(name: str, rows: Sequence[dict[str, Any]], build: Callable[[], Sequence[Any]], work: Path, *,
             batch_size: int = 50, api_key: str | None = None) -> StageRun:
    """Run ``rows`` through a distilabel ``Pipeline``: :class:`ReadRows` → the steps ``build()`` makes (called
    inside the pipeline's context, in order, each connected to the previous one) → back, in input order.

    Returns one row per input id: if distilabel returned a row twice the last copy counts, and a row it lost comes
    back rejected (rule ``lost_in_pipeline``) so that nothing disappears silently.
    """
    from distilabel.pipeline import Pipeline

    _quiet_environment()
    started = time.monotonic()
    rows = list(rows)
    if not rows:
        return StageRun([], 0.0)
    work.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    path = work / f"{name}-input.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    size = max(1, batch_size)
    with _forkserver():  # before the pipeline exists: it creates multiprocessing objects of the current context
        with Pipeline(name=f"cm2data-{name}", cache_dir=str(work / "distilabel")) as pipeline:
            previous: Any = ReadRows(name="read_rows", path=str(path), columns=columns, batch_size=size,
                                     fingerprint=fingerprint(str(path), len(rows), time.time()))
            for step in build():
                if isinstance(step, RecordStep):
                    step._api_key = api_key
                previous.connect(step)
                previous = step
        t0 = time.monotonic()
        distiset = pipeline.run(use_cache=False)
        pipeline_seconds = time.monotonic() - t0
    got: dict[str, dict[str, Any]] = {}
    for config in distiset:
        for split in distiset[config]:
            for row in distiset[config][split].to_list():
                got[row["id"]] = row
    ordered = []
    for row in rows:
        new = got.get(row["id"])
        if new is None:
            new = {**row, "reject": reject_json(name, "lost_in_pipeline",
                                                "the pipeline returned no row for this input")}
        ordered.append({k: ("" if v is None else v) for k, v in new.items()})
    return StageRun(ordered, time.monotonic() - started, pipeline_seconds)


# --------------------------------------------------------------------------------------------- stage results


@dataclass
class StageResult:
    """A stage's outcome: accepted records, rejects, LLM usage, timings and notes for the report."""

    stage: str
    input: int
    accepted: list[Dialogue]
    rejects: list[Reject]
    usage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        from collections import Counter

        return dict(Counter(r.rule for r in self.rejects).most_common())


def collect(stage: str, rows: Iterable[dict[str, Any]], inputs: dict[str, Dialogue] | None = None
            ) -> tuple[list[Dialogue], list[Reject], dict[str, Any], int]:
    """Rows → accepted records, rejects (with the record as raw), summed usage, and how many rows any step took
    from its journal."""
    from cm2data import store

    accepted: list[Dialogue] = []
    rejects: list[Reject] = []
    usage = Usage()
    resumed = 0
    for row in rows:
        usage.merge(json.loads(row.get("usage") or "{}"))
        meta = json.loads(row.get("meta") or "{}")
        if meta.get("resumed"):
            resumed += 1
        record = None
        if row.get("record"):
            try:
                record = decode_record(row["record"])
            except ValueError as exc:
                rejects.append(Reject(row["id"], stage, "record_schema", f"step output is not a record: {exc}"[:500]))
                continue
        if row.get("reject"):
            info = json.loads(row["reject"])
            raw_record = record or (inputs or {}).get(row["id"])
            raw = store.to_row(raw_record) if raw_record is not None else json.loads(row.get("spec") or "null")
            rejects.append(Reject(row["id"], info.get("stage") or stage, info["rule"], info["message"],
                                  info.get("location"), raw))
        elif record is None:
            rejects.append(Reject(row["id"], stage, "no_output", "the stage produced no record for this row"))
        else:
            accepted.append(record)
    out = usage.as_dict()
    out.pop("total", None)
    return accepted, rejects, out, resumed


def llm_error_reject(stage: str, exc: LLMError, location: str | None = None) -> dict[str, str]:
    """The update that rejects a row after an LLM failure: the rule of the last invalid answer (every reason in the
    message), or ``llm_request_failed``."""
    from cm2data.llm import LLMOutputError

    if isinstance(exc, LLMOutputError):
        last = exc.reasons[-1] if exc.reasons else str(exc)
        message = f"{len(exc.reasons)} answers rejected; " + " | ".join(exc.reasons)
        return {"reject": reject_json(stage, rule_of(last), message[:2000], location)}
    return {"reject": reject_json(stage, "llm_request_failed", str(exc)[:1000], location)}


@dataclass
class StageContext:
    """What a stage runs with: its work folder (journals, distilabel cache, the simulator's cache), the endpoint
    (model already decided) and the schema form the server takes, the batch size, the default seed, and whether
    LLM requests carry a ``seed`` (off by default, see docs/pipelines.md, "Resume and determinism")."""

    work: Path
    llm: LLMConfig | None = None
    schema_form: str = "structured_outputs"
    batch_size: int = 50
    seed: int = 42
    request_seeds: bool = False

    @property
    def llm_settings(self) -> dict[str, Any]:
        if self.llm is None:
            raise LLMError("this stage needs an LLM endpoint and none was configured")
        return llm_settings(self.llm)

    @property
    def model(self) -> str | None:
        return self.llm.model if self.llm is not None else None

    @property
    def api_key(self) -> str | None:
        return self.llm.api_key if self.llm is not None else None


def stamp(records: Iterable[Dialogue], stage: str, prompts: Sequence[str] = (), **details: Any) -> None:
    """Add a stage's history entry and its prompt versions to each record's provenance."""
    from cm2data.prompts import merge_prompt_versions

    for d in records:
        if prompts:
            d.provenance.prompt_version = merge_prompt_versions(d.provenance.prompt_version, *prompts)
        d.provenance.stamp(stage, **({"prompts": list(prompts)} if prompts else {}), **details)
