"""The errors of :mod:`cm2data.llm`. Every one is an :class:`LLMError`; each message names the server's URL."""

from __future__ import annotations


class LLMError(Exception):
    """Base class of the LLM layer's errors."""


class LLMConfigError(LLMError):
    """No usable endpoint configuration (missing base URL, unreadable YAML, invalid setting)."""


class LLMUnreachableError(LLMError):
    """The server did not answer the reachability check (refused, unknown host, connect timeout)."""

    def __init__(self, base_url: str, reason: str):
        self.base_url = base_url
        self.reason = reason
        super().__init__(
            f"cannot reach the LLM server at {base_url}: {reason}. Start the embedded one with "
            f"`cm2data serve`, or point --base-url / CM2DATA_LLM_BASE_URL at a running "
            f"OpenAI-compatible server (e.g. `vllm serve MODEL`)."
        )


class LLMRequestError(LLMError):
    """A request failed for good: a 4xx answer (not retried), or a 5xx/timeout/lost connection after all retries.

    ``status`` is the HTTP status (None for timeouts and connection errors); ``attempts`` how many were made.
    """

    def __init__(self, message: str, *, base_url: str, status: int | None = None, attempts: int = 1):
        self.base_url = base_url
        self.status = status
        self.attempts = attempts
        super().__init__(message)


class LLMOutputError(LLMError):
    """The model's answers never passed: malformed JSON, a schema or validation failure, or a truncated answer,
    on every try. ``reasons`` has one entry per try; ``texts`` the raw answers; the caller records the rejection."""

    def __init__(self, message: str, *, reasons: list[str], texts: list[str]):
        self.reasons = reasons
        self.texts = texts
        super().__init__(message)

    @property
    def last_text(self) -> str:
        return self.texts[-1] if self.texts else ""
