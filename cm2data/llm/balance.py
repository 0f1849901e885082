"""Several OpenAI-compatible endpoints serving the same model, used as one: which endpoint the next request goes to
(:class:`Balancer`), and an ``AsyncOpenAI`` look-alike that spreads chat requests over several endpoints and fails
over when one breaks (:class:`BalancedAsyncOpenAI`, for distilabel's ``OpenAILLM``; :class:`cm2data.llm.LLMClient`
uses the :class:`Balancer` directly).

The choice is *least busy* within the calling process: the endpoint with the fewest requests in flight, ties broken
round robin from a per-process starting point (so that several processes — distilabel step replicas on a Ray
cluster — do not all start on the first endpoint). An endpoint whose request failed with a transient fault
(connection refused or lost, timeout, HTTP 408/429/5xx) is avoided for ``cooldown`` seconds, so the retry of that
request goes to another endpoint; when every endpoint is cooling down, the one whose cool-down ends first is used
(nothing is ever refused for lack of a healthy endpoint: the request's own retries decide when to give up).
See docs/scale.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import openai


def is_transient(exc: BaseException) -> bool:
    """A fault worth retrying elsewhere: no connection, a timeout, or HTTP 408/429/5xx."""
    if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return False


class Balancer:
    """Picks an endpoint index per request: least in flight among those not cooling down, ties round robin.

    ``acquire()`` → index (counted in flight), ``release(index, ok)`` when the request ends (``ok`` false after a
    transient fault: the endpoint then cools down). Thread-safe; one per process and client.
    """

    def __init__(self, urls: Sequence[str], *, cooldown: float = 5.0, seed: int | None = None):
        if not urls:
            raise ValueError("a balancer needs at least one endpoint")
        self.urls = list(urls)
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._in_flight = [0] * len(self.urls)
        self._sent = [0] * len(self.urls)
        self._failed = [0] * len(self.urls)
        self._avoid_until = [0.0] * len(self.urls)
        self._next = random.Random(os.getpid() if seed is None else seed).randrange(len(self.urls))

    def acquire(self) -> int:
        n = len(self.urls)
        with self._lock:
            now = time.monotonic()
            healthy = [i for i in range(n) if self._avoid_until[i] <= now]
            if not healthy:  # all cooling down: the one that recovers first
                healthy = [min(range(n), key=lambda i: self._avoid_until[i])]
            least = min(self._in_flight[i] for i in healthy)
            order = [(self._next + k) % n for k in range(n)]
            pick = next(i for i in order if i in healthy and self._in_flight[i] == least)
            self._next = (pick + 1) % n
            self._in_flight[pick] += 1
            self._sent[pick] += 1
            return pick

    def avoid(self, index: int) -> None:
        """Let an endpoint cool down (it failed outside a request: the check of a running stage)."""
        with self._lock:
            self._failed[index] += 1
            self._avoid_until[index] = time.monotonic() + self.cooldown

    def release(self, index: int, ok: bool = True) -> None:
        with self._lock:
            self._in_flight[index] -= 1
            if not ok:
                self._failed[index] += 1
                self._avoid_until[index] = time.monotonic() + self.cooldown
            else:
                self._avoid_until[index] = 0.0

    def all_cooling(self) -> bool:
        """Whether every endpoint failed within its cool-down (then a retry should wait)."""
        with self._lock:
            now = time.monotonic()
            return all(t > now for t in self._avoid_until)

    def stats(self) -> dict[str, dict[str, int]]:
        """Requests sent and transient failures per endpoint URL (this process)."""
        with self._lock:
            return {u: {"sent": self._sent[i], "failed": self._failed[i]} for i, u in enumerate(self.urls)}


class _Completions:
    def __init__(self, owner: BalancedAsyncOpenAI):
        self._owner = owner

    async def create(self, **kwargs: Any) -> Any:
        return await self._owner._call(lambda c: c.chat.completions.create(**kwargs))


class _Chat:
    def __init__(self, owner: BalancedAsyncOpenAI):
        self.completions = _Completions(owner)


class BalancedAsyncOpenAI:
    """The part of ``openai.AsyncOpenAI`` that distilabel's ``OpenAILLM`` uses for chat (``chat.completions.create``
    and ``close``), spread over several endpoints.

    Each endpoint's own SDK client makes no retries; this makes up to ``max_retries`` retries of a request after a
    transient fault, each to the endpoint the balancer picks then (another one, while the failed one cools down),
    waiting ``backoff`` seconds (doubling, capped at 8 s) only when every endpoint has failed recently. Other faults
    (HTTP 400, a bad API key) are raised at once, as the SDK would.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        api_key: str,
        timeout: float,
        max_retries: int = 3,
        backoff: float = 0.5,
        cooldown: float = 5.0,
    ):
        self.balancer = Balancer(urls, cooldown=cooldown)
        self.max_retries = max_retries
        self.backoff = backoff
        self.clients = [openai.AsyncOpenAI(base_url=u, api_key=api_key, timeout=timeout, max_retries=0) for u in urls]
        self.chat = _Chat(self)

    async def _call(self, send: Any) -> Any:
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            i = self.balancer.acquire()
            try:
                result = await send(self.clients[i])
            except Exception as exc:
                transient = is_transient(exc)
                self.balancer.release(i, ok=not transient)
                if not transient or attempt == self.max_retries:
                    raise
                if self.balancer.all_cooling():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 8.0)
                continue
            self.balancer.release(i)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
