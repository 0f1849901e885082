"""The one door for every LLM call of the toolkit: an async client for OpenAI-compatible servers, and a blocking
wrapper for code without an event loop.

It depends only on ``openai``, ``pydantic`` and ``tenacity`` (plus the standard library), so it also runs inside a
trainer's environment (the checklist judge uses it from VeRL's ``compute_score``). What it adds to the SDK:

* **structured output that adapts to the server** (see :class:`~cm2data.llm.config.LLMConfig.structured_output`);
* **retries with backoff** of transient faults only (5xx, 408, 429, timeouts, lost connections; a 4xx is final);
* **bounded concurrency** (a semaphore of ``max_concurrency`` per event loop, held only while a request is in
  flight, not while it waits to retry);
* **token accounting per stage** in a shared :class:`~cm2data.llm.usage.Usage`;
* **validation of parsed JSON** by a pydantic model or a callable, with extra tries (optionally feeding the error
  back to the model) when the answer is malformed or well-formed but wrong;
* **a fail-fast reachability check** before the first request, whose message names the URL.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import openai
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from cm2data.llm.balance import Balancer
from cm2data.llm.config import LLMConfig
from cm2data.llm.errors import LLMConfigError, LLMOutputError, LLMRequestError, LLMUnreachableError
from cm2data.llm.usage import Usage

#: What ``validate=`` accepts: a pydantic model class (its instance becomes ``ChatResult.parsed``) or a callable that
#: raises on invalid data and returns the value to keep (returning None keeps the parsed JSON).
Validator = type[BaseModel] | Callable[[Any], Any]

#: Structured-output forms tried in order under ``structured_output="auto"`` on a server that is not vLLM.
FALLBACK_CHAIN = ("json_schema", "json_object", "prompt")

_T = TypeVar("_T")


@dataclass
class ChatResult:
    """One successful chat completion (the first choice).

    ``message`` is the assistant message as an OpenAI-format dict, ready to append to the conversation;
    ``tool_calls`` its tool calls (``{"id", "type", "function": {"name", "arguments"}}``, arguments as the JSON
    string the server sent). For JSON requests ``data`` is the parsed JSON and ``parsed`` the validator's result
    (a model instance, or the callable's return value, else ``data``). ``attempts`` counts the HTTP requests this
    call made (transient retries and invalid-answer retries included); ``invalid`` lists why earlier answers were
    rejected. Token counts are this answer's (``Usage`` has the totals, rejected answers included).
    """

    text: str
    message: dict[str, Any]
    finish_reason: str | None
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    data: Any = None
    parsed: Any = None
    attempts: int = 1
    invalid: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class ServerInfo:
    """What the reachability check learnt: the served models, what kind of server it is, the schema form in use."""

    base_url: str
    models: tuple[str, ...]
    kind: str  # "vllm", "llama.cpp" or "openai-compatible"
    model: str
    structured_output: str


class _Transient(Exception):
    """A 200 answer that is not a chat completion (garbage body, no choices): retried like a 5xx."""


@dataclass
class _LoopState:
    clients: list[openai.AsyncOpenAI]  # one per endpoint (config.endpoints)
    semaphore: asyncio.Semaphore
    check_lock: asyncio.Lock

    @property
    def client(self) -> openai.AsyncOpenAI:
        return self.clients[0]


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 429)
    return isinstance(exc, openai.APIConnectionError | _Transient)  # APITimeoutError is an APIConnectionError


def _schema_name(schema: Mapping[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "response"))[:64]
    return name or "response"


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: the whole text, else the text inside a ```json fence, else the span from the
    first ``{``/``[`` to the last ``}``/``]``. Raises ``ValueError`` naming the problem. (Lenient on purpose, for model
    output; :func:`cm2data.validate.rules.parse_json` is the strict ``json.loads`` of the rule filters.)

    >>> extract_json('Sure! {"city": "Paris"} Anything else?')
    {'city': 'Paris'}
    """
    s = text.strip()
    if not s:
        raise ValueError("empty answer")
    try:
        return json.loads(s)
    except json.JSONDecodeError as first:
        m = _FENCE.match(s)
        candidates = [m.group(1)] if m else []
        starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
        if starts:
            start = min(starts)
            end = max(s.rfind("}"), s.rfind("]"))
            if end > start:
                candidates.append(s[start : end + 1])
        for c in candidates:
            try:
                return json.loads(c)
            except json.JSONDecodeError:
                continue
        raise ValueError(f"malformed JSON: {first.msg} at line {first.lineno} column {first.colno}") from None


def _validate(data: Any, validate: Validator | None) -> Any:
    if validate is None:
        return data
    if isinstance(validate, type) and issubclass(validate, BaseModel):
        return validate.model_validate(data)
    out = cast(Callable[[Any], Any], validate)(data)
    return data if out is None else out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        errs = exc.errors()
        shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errs[:5])
        return f"invalid: {shown}" + (f" (+{len(errs) - 5} more)" if len(errs) > 5 else "")
    return str(exc) or type(exc).__name__


class LLMClient:
    """Async client of one OpenAI-compatible endpoint. Create one per endpoint and share it.

    >>> client = LLMClient(resolve_config(), usage=Usage())
    >>> r = await client.chat([{"role": "user", "content": "Hi"}], stage="smoke")
    >>> r = await client.chat(messages, schema=Checklist, stage="annotate", feedback=True)   # r.parsed: Checklist

    It can be used from any event loop (each loop gets its own HTTP client and semaphore; ``max_concurrency`` bounds
    the requests of one loop). Close it with ``await client.aclose()`` or ``async with``.
    """

    def __init__(self, config: LLMConfig, *, usage: Usage | None = None):
        self.config = config
        self.usage = usage if usage is not None else Usage()
        self._model = config.model
        self._mode: str | None = None if config.structured_output == "auto" else config.structured_output
        self._server: ServerInfo | None = None
        self._lock = threading.Lock()
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        # several endpoints (config.extra_base_urls): each attempt goes to the least busy, a failed one cools down
        self.balancer = Balancer(config.endpoints)

    # ------------------------------------------------------------------------------------------------- plumbing

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def model(self) -> str | None:
        """The model requests go to (known after the first check when the config leaves it open)."""
        return self._model

    @property
    def server(self) -> ServerInfo | None:
        """What the last :meth:`check` found (None before)."""
        return self._server

    @property
    def structured_output(self) -> str | None:
        """The schema form in use (None until decided by the first check under ``auto``)."""
        return self._mode

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.get(loop)
            if state is None:
                cfg = self.config
                clients = [
                    openai.AsyncOpenAI(
                        base_url=url,
                        api_key=cfg.api_key,
                        max_retries=0,
                        timeout=openai.Timeout(cfg.timeout, connect=cfg.connect_timeout),
                    )
                    for url in cfg.endpoints
                ]
                state = _LoopState(clients, asyncio.Semaphore(cfg.max_concurrency), asyncio.Lock())
                self._states[loop] = state
            return state

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop."""
        with self._lock:
            state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            for client in state.clients:
                await client.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---------------------------------------------------------------------------------------------------- check

    async def check(self, *, every_endpoint: bool = True) -> ServerInfo:
        """Ask the server for its models (``GET /models``) with the connect timeout and no retry.

        Raises :class:`LLMUnreachableError` (naming the URL) when nothing answers, :class:`LLMRequestError` when it
        rejects the API key, :class:`LLMConfigError` when the configured model is not among those it serves (or no
        model is configured and it lists none). Decides the model and, under ``auto``, the schema form.

        With several endpoints, each is asked and must serve the same model. ``every_endpoint=False`` (the check on
        first use, inside a running stage): an endpoint that fails the check only cools down in the balancer, and
        the first that answers decides; it raises only when none answers.
        """
        cfg = self.config
        state = self._state()
        asked = zip(state.clients, cfg.endpoints, strict=True)
        got = await asyncio.gather(*(self._models(c, u) for c, u in asked), return_exceptions=True)
        for g in got:  # what stops the check: an endpoint down (when every one must answer), any other fault
            if isinstance(g, BaseException) and (every_endpoint or not isinstance(g, LLMUnreachableError)):
                raise g
        if all(isinstance(g, BaseException) for g in got):
            raise cast(BaseException, got[0])
        for i, g in enumerate(got):
            if isinstance(g, BaseException):  # a balanced endpoint down: avoided while it cools down
                self.balancer.avoid(i)
        listed = [(u, g) for u, g in zip(cfg.endpoints, got, strict=True) if not isinstance(g, BaseException)]
        first_url, models = listed[0]
        ids = tuple(m for m, _ in models)
        owners = {o.lower() for _, o in models}
        kind = (
            "vllm" if "vllm" in owners else "llama.cpp" if owners & {"llamacpp", "llama.cpp"} else "openai-compatible"
        )
        model = self._model
        if model is None:
            if not ids:
                raise LLMConfigError(
                    f"no model configured and the LLM server at {cfg.base_url} lists none; "
                    "set --model or CM2DATA_LLM_MODEL"
                )
            model = ids[0]
        elif ids and model not in ids:
            raise LLMConfigError(f"model {model!r} is not served at {first_url}; it serves: {', '.join(ids)}")
        for url, more in listed[1:]:  # balanced endpoints: the same model
            served = [m for m, _ in more]
            if served and model not in served:
                raise LLMConfigError(
                    f"model {model!r} (served at {first_url}) is not served at {url}, one of the balanced "
                    f"endpoints; it serves: {', '.join(served)}"
                )
        with self._lock:
            self._model = model
            if self._mode is None:
                self._mode = "structured_outputs" if kind == "vllm" else FALLBACK_CHAIN[0]
            self._server = ServerInfo(cfg.base_url, ids, kind, model, self._mode)
        return self._server

    async def _models(self, client: openai.AsyncOpenAI, url: str) -> list[tuple[str, str]]:
        """``GET /models`` of one endpoint: (id, owned_by) pairs; [] when it answers without a usable list."""
        cfg = self.config
        try:
            page = await client.models.list(
                timeout=openai.Timeout(max(cfg.connect_timeout * 2, 5.0), connect=cfg.connect_timeout)
            )
            return [(m.id, str(getattr(m, "owned_by", "") or "")) for m in page.data]
        except openai.APITimeoutError:
            raise LLMUnreachableError(url, f"no answer within {cfg.connect_timeout:g} s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            raise LLMUnreachableError(url, str(cause) if cause else str(exc)) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise LLMRequestError(
                    f"the LLM server at {url} rejected the API key (HTTP {exc.status_code}); set CM2DATA_LLM_API_KEY",
                    base_url=url,
                    status=exc.status_code,
                ) from None
            # a server without /models (404) or a broken one (5xx): reachable; requests will tell the rest
        except (ValueError, TypeError, AttributeError, openai.OpenAIError):
            pass  # garbage instead of a model list: the server is reachable, and requests will say more
        return []

    async def _ensure_checked(self, state: _LoopState) -> None:
        if self._server is not None or (not self.config.check_on_first_use and self._model is not None):
            if self._mode is None:  # no check wanted: the portable default
                self._mode = FALLBACK_CHAIN[0]
            return
        async with state.check_lock:
            if self._server is None:
                await self.check(every_endpoint=False)

    # ----------------------------------------------------------------------------------------------------- chat

    def _request(
        self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any] | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        req: dict[str, Any] = {"model": self._model, "messages": list(messages), **params}
        if schema is None:
            return req
        mode = self._mode
        extra = dict(req.pop("extra_body", None) or {})
        if mode == "structured_outputs":
            so: dict[str, Any] = {"json": dict(schema)}
            if self.config.compact_json:
                so["disable_any_whitespace"] = True
            extra["structured_outputs"] = so
        elif mode == "json_schema":
            req["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": dict(schema)},
            }
        elif mode == "json_object":
            req["response_format"] = {"type": "json_object", "schema": dict(schema)}
        else:  # prompt: only described
            note = "Answer with one JSON value only, no other text, that matches this JSON schema:\n" + json.dumps(
                schema, ensure_ascii=False
            )
            req["messages"] = [*req["messages"], {"role": "system", "content": note}]
        if extra:
            req["extra_body"] = extra
        return req

    def _fall_back(self, exc: openai.APIStatusError, mode_used: str | None) -> bool:
        """Under ``auto`` on a non-vLLM server, step to the next schema form when the server rejects this one."""
        if self.config.structured_output != "auto" or mode_used not in FALLBACK_CHAIN[:-1]:
            return False
        if exc.status_code not in (400, 422):
            return False
        text = f"{exc.message} {getattr(exc, 'body', '')}".lower()
        if not any(w in text for w in ("response_format", "json", "schema", "grammar", "structured")):
            return False
        with self._lock:
            if self._mode == mode_used:
                self._mode = FALLBACK_CHAIN[FALLBACK_CHAIN.index(mode_used) + 1]
                if self._server is not None:
                    s = self._server
                    self._server = ServerInfo(s.base_url, s.models, s.kind, s.model, self._mode)
        return True

    async def _complete(
        self,
        state: _LoopState,
        messages: Sequence[Mapping[str, Any]],
        stage: str,
        schema: Mapping[str, Any] | None,
        params: dict[str, Any],
    ) -> ChatResult:
        """One answer: transient faults retried with backoff, schema form stepped down when rejected."""
        cfg = self.config
        attempts = 0
        url = cfg.base_url  # the endpoint of the last attempt (named in errors)

        async def once() -> tuple[Any, float]:
            nonlocal attempts, url
            while True:
                mode_used = self._mode
                req = self._request(messages, schema, params)
                attempts += 1
                async with state.semaphore:
                    started = time.monotonic()
                    i = self.balancer.acquire()
                    url = cfg.endpoints[i]
                    ok = False
                    try:
                        resp = await state.clients[i].chat.completions.create(**req)
                        ok = True
                    except openai.APIStatusError as exc:
                        ok = not _is_transient(exc)
                        if schema is not None and self._fall_back(exc, mode_used):
                            continue
                        raise
                    except (ValueError, openai.APIResponseValidationError) as exc:  # an unreadable 200 body
                        raise _Transient(f"unreadable answer: {exc}") from exc
                    finally:
                        self.balancer.release(i, ok)
                    seconds = time.monotonic() - started
                if not getattr(resp, "choices", None):
                    raise _Transient(f"the server answered without choices: {str(resp)[:200]!r}")
                return resp, seconds

        async def with_retries() -> tuple[Any, float]:
            try:  # the common case costs one plain call; tenacity takes over after the first transient fault
                return await once()
            except Exception as exc:
                if cfg.max_retries == 0 or not _is_transient(exc):
                    raise
            self.usage.record(stage, retries=1)
            await asyncio.sleep(min(cfg.backoff_initial, cfg.backoff_max) + random.uniform(0, cfg.backoff_initial))
            retrying = AsyncRetrying(  # delays continue the doubling: 2×, 4×, … backoff_initial, capped
                stop=stop_after_attempt(cfg.max_retries),
                wait=wait_exponential(multiplier=2 * cfg.backoff_initial, max=cfg.backoff_max)
                + wait_random(0, cfg.backoff_initial),
                retry=retry_if_exception(_is_transient),
                reraise=True,
                before_sleep=lambda _: self.usage.record(stage, retries=1),
            )
            return await retrying(once)

        try:
            resp, seconds = await with_retries()
        except openai.APIStatusError as exc:
            self.usage.record(stage, failures=1)
            final = "" if exc.status_code < 500 else f" after {attempts} attempts"
            raise LLMRequestError(
                f"the LLM server at {url} answered HTTP {exc.status_code}{final} (stage {stage}): {exc.message}",
                base_url=url,
                status=exc.status_code,
                attempts=attempts,
            ) from exc
        except openai.APITimeoutError as exc:
            self.usage.record(stage, failures=1)
            raise LLMRequestError(
                f"the LLM server at {url} did not answer within {cfg.timeout:g} s, {attempts} attempts (stage {stage})",
                base_url=url,
                attempts=attempts,
            ) from exc
        except (openai.APIConnectionError, _Transient) as exc:
            self.usage.record(stage, failures=1)
            cause = exc.__cause__ or exc
            raise LLMRequestError(
                f"lost the LLM server at {url} after {attempts} attempts (stage {stage}): {cause}",
                base_url=url,
                attempts=attempts,
            ) from exc
        except openai.OpenAIError as exc:  # anything else the SDK raises (e.g. an unreadable body)
            self.usage.record(stage, failures=1)
            raise LLMRequestError(
                f"bad answer from the LLM server at {url} (stage {stage}): {exc}",
                base_url=url,
                attempts=attempts,
            ) from exc

        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        self.usage.record(
            stage, requests=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, seconds=seconds
        )
        msg = choice.message
        text = msg.content or ""
        tool_calls = [tc.model_dump(exclude_none=True) for tc in (msg.tool_calls or [])]
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return ChatResult(
            text=text,
            message=message,
            finish_reason=choice.finish_reason,
            model=getattr(resp, "model", None) or str(self._model),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tool_calls=tool_calls,
            attempts=attempts,
            seconds=seconds,
        )

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        stage: str = "default",
        schema: Mapping[str, Any] | type[BaseModel] | None = None,
        validate: Validator | None = None,
        feedback: bool = False,
        invalid_retries: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        **params: Any,
    ) -> ChatResult:
        """One chat completion, counted under ``stage``.

        ``schema`` (a JSON schema, or a pydantic model class whose schema is used and which then also validates)
        constrains the answer to JSON; ``validate`` checks the parsed JSON (pydantic model class or callable; see
        :data:`Validator`). Either makes this a JSON request: a malformed or invalid answer is tried again up to
        ``invalid_retries`` more times (default ``config.max_invalid_retries``), each time with the model's answer
        and the reason appended to the conversation when ``feedback`` is true, and finally raises
        :class:`LLMOutputError` with every reason. Other keyword arguments (``seed``, ``stop``, ``top_p``,
        ``extra_body``, …) go to the server as they are.

        Raises :class:`LLMUnreachableError` (first use, nothing answers), :class:`LLMRequestError` (4xx, or
        5xx/timeouts/lost connections after ``config.max_retries`` retries), :class:`LLMOutputError`.
        """
        state = self._state()
        await self._ensure_checked(state)
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            validate = validate or schema
            schema = schema.model_json_schema()
        elif schema is None and isinstance(validate, type) and issubclass(validate, BaseModel):
            schema = validate.model_json_schema()
        json_mode = schema is not None or validate is not None
        for key, value in (
            ("max_tokens", max_tokens),
            ("temperature", temperature),
            ("tools", tools),
            ("tool_choice", tool_choice),
        ):
            if value is not None:
                params[key] = value
        tries = 1 + (self.config.max_invalid_retries if invalid_retries is None else invalid_retries)
        convo = list(messages)
        reasons: list[str] = []
        texts: list[str] = []
        attempts = 0
        for _ in range(tries if json_mode else 1):
            result = await self._complete(state, convo, stage, schema, dict(params))
            attempts += result.attempts
            result.attempts = attempts
            if not json_mode:
                return result
            try:
                if result.finish_reason == "length":
                    raise ValueError(f"answer cut off at max_tokens ({result.completion_tokens} tokens)")
                data = extract_json(result.text)
                parsed = _validate(data, validate)
            except (ValueError, TypeError, KeyError) as exc:  # ValidationError is a ValueError
                reason = _reason(exc)
                reasons.append(reason)
                texts.append(result.text)
                self.usage.record(stage, invalid=1)
                if feedback:
                    convo = [
                        *convo,
                        {"role": "assistant", "content": result.text},
                        {
                            "role": "user",
                            "content": f"That answer is not valid: {reason}\nAnswer again with corrected JSON only.",
                        },
                    ]
                continue
            result.data, result.parsed, result.invalid = data, parsed, reasons
            return result
        self.usage.record(stage, failures=1)
        raise LLMOutputError(
            f"{len(reasons)} answers from {self._model} at {self.config.base_url} were not valid "
            f"(stage {stage}); last: {reasons[-1]}",
            reasons=reasons,
            texts=texts,
        )

    async def chat_many(
        self, requests: Iterable[Mapping[str, Any]], *, return_exceptions: bool = True
    ) -> list[ChatResult | BaseException]:
        """Run many :meth:`chat` calls at once (``max_concurrency`` in flight); each mapping holds ``chat``'s keyword
        arguments (``messages`` included). Results come back in order; with ``return_exceptions`` a failed call
        gives its exception in its place instead of cancelling the rest."""
        return await asyncio.gather(*(self.chat(**r) for r in requests), return_exceptions=return_exceptions)


class SyncLLMClient:
    """Blocking façade over :class:`LLMClient` for code without an event loop (distilabel steps, scripts).

    It runs a private event loop in a daemon thread; calls from several threads share it (and its
    ``max_concurrency``). Close it with :meth:`close` or ``with``.
    """

    def __init__(self, config: LLMConfig, *, usage: Usage | None = None):
        self.client = LLMClient(config, usage=usage)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cm2data-llm", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def config(self) -> LLMConfig:
        return self.client.config

    @property
    def usage(self) -> Usage:
        return self.client.usage

    @property
    def model(self) -> str | None:
        return self.client.model

    def _run(self, fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            raise RuntimeError("this SyncLLMClient is closed")
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self._loop).result()  # type: ignore[arg-type]

    def check(self) -> ServerInfo:
        """:meth:`LLMClient.check`, blocking."""
        return self._run(self.client.check)

    def chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> ChatResult:
        """:meth:`LLMClient.chat`, blocking."""
        return self._run(self.client.chat, messages, **kwargs)

    def chat_many(
        self, requests: Iterable[Mapping[str, Any]], *, return_exceptions: bool = True
    ) -> list[ChatResult | BaseException]:
        """:meth:`LLMClient.chat_many`, blocking."""
        return self._run(self.client.chat_many, list(requests), return_exceptions=return_exceptions)

    def close(self) -> None:
        if self._closed:
            return
        self._run(self.client.aclose)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SyncLLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
