"""Where the LLM is and how to talk to it: :class:`LLMConfig`, read from arguments, the environment or a YAML file."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cm2data.llm.errors import LLMConfigError

#: Environment variables read by :meth:`LLMConfig.from_env` (and so by :func:`resolve_config`).
ENV_VARS = {
    "base_url": "CM2DATA_LLM_BASE_URL",
    "model": "CM2DATA_LLM_MODEL",
    "api_key": "CM2DATA_LLM_API_KEY",
    "timeout": "CM2DATA_LLM_TIMEOUT",
    "max_retries": "CM2DATA_LLM_MAX_RETRIES",
    "max_concurrency": "CM2DATA_LLM_MAX_CONCURRENCY",
    "structured_output": "CM2DATA_LLM_STRUCTURED_OUTPUT",
}

StructuredOutput = Literal["auto", "structured_outputs", "json_schema", "json_object", "prompt"]


class LLMConfig(BaseModel):
    """One OpenAI-compatible endpoint and the client's behaviour towards it.

    ``structured_output`` picks how a JSON schema reaches the server: ``structured_outputs`` (vLLM ≥ 0.12:
    ``extra_body={"structured_outputs": {"json": S}}``), ``json_schema`` (the OpenAI ``response_format``; vLLM and
    OpenAI), ``json_object`` (llama.cpp style: ``response_format={"type": "json_object", "schema": S}``), ``prompt``
    (the schema is only described in the prompt) or ``auto``: ``structured_outputs`` when the server says it is vLLM
    (``owned_by`` in ``/models``), else ``json_schema``, falling back along ``json_object`` → ``prompt`` when the
    server rejects a form with HTTP 400/422.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    extra_base_urls: tuple[str, ...] = Field(
        (),
        description="More endpoints serving the same model: requests are balanced over base_url and these "
        "(least busy first, failing over when one breaks; docs/scale.md)",
    )
    model: str | None = Field(None, description="Served model name; None: the first model the server lists")
    api_key: str = Field("EMPTY", repr=False, description="Bearer token; local servers accept any")
    timeout: float = Field(120.0, gt=0, description="Seconds one request may take (read timeout)")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection; also the reachability check")
    max_retries: int = Field(3, ge=0, description="Retries after a 5xx, 408, 429, timeout or lost connection")
    backoff_initial: float = Field(0.5, ge=0, description="First retry delay in seconds (exponential, jittered)")
    backoff_max: float = Field(8.0, ge=0, description="Longest retry delay in seconds")
    max_concurrency: int = Field(32, ge=1, description="Requests in flight at once, per client")
    max_invalid_retries: int = Field(2, ge=0, description="Extra tries when JSON output is malformed or invalid")
    structured_output: StructuredOutput = "auto"
    compact_json: bool = Field(
        True,
        description="Ask vLLM for JSON without free whitespace (small models otherwise "
        "pad constrained output with newlines)",
    )
    check_on_first_use: bool = Field(
        True,
        description="Check reachability once before the first request, so a "
        "missing server fails in seconds with its URL",
    )

    @model_validator(mode="before")
    @classmethod
    def _several(cls, data: Any) -> Any:
        """``base_url`` may name several endpoints: a list, or one string with commas (``CM2DATA_LLM_BASE_URL``);
        the first becomes ``base_url``, the others ``extra_base_urls`` (duplicates dropped)."""
        if not isinstance(data, dict) or data.get("base_url") is None:
            return data
        given = data["base_url"]
        urls = [u for u in given.split(",")] if isinstance(given, str) else list(given)
        if isinstance(given, str) and len(urls) == 1:
            return data
        urls = [*urls, *data.get("extra_base_urls", ())]
        urls = list(dict.fromkeys(u.strip().rstrip("/") if isinstance(u, str) else u for u in urls if u != ""))
        if not urls:
            raise ValueError("base_url: no endpoint given")
        return {**data, "base_url": urls[0], "extra_base_urls": tuple(urls[1:])}

    @field_validator("base_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return _check_url(v)

    @field_validator("extra_base_urls")
    @classmethod
    def _strip_all(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_check_url(u) for u in v))

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint, ``base_url`` first."""
        return (self.base_url, *(u for u in self.extra_base_urls if u != self.base_url))

    # ---------------------------------------------------------------------------------------------- constructors

    @classmethod
    def env_values(cls, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The settings present in the environment (``CM2DATA_LLM_*``), unvalidated."""
        environ = os.environ if environ is None else environ
        return {field: environ[var] for field, var in ENV_VARS.items() if environ.get(var)}

    @classmethod
    def yaml_values(cls, path: str | Path) -> dict[str, Any]:
        """The settings in a YAML file: either at the top level or under an ``llm:`` key (so a pipeline config can
        carry its endpoint), unvalidated."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise LLMConfigError(f"cannot read the LLM config {path}: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("llm"), dict):
            data = data["llm"]
        if not isinstance(data, dict):
            raise LLMConfigError(f"{path}: expected a mapping of LLM settings")
        return data

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMConfig:
        """Build from ``CM2DATA_LLM_BASE_URL`` / ``_MODEL`` / ``_API_KEY`` (and ``_TIMEOUT``, ``_MAX_RETRIES``,
        ``_MAX_CONCURRENCY``, ``_STRUCTURED_OUTPUT``); keyword arguments win."""
        return cls._build({**cls.env_values(), **_given(overrides)}, "the environment (CM2DATA_LLM_BASE_URL)")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> LLMConfig:
        """Build from a YAML file (top level or an ``llm:`` section); keyword arguments win."""
        return cls._build({**cls.yaml_values(path), **_given(overrides)}, str(path))

    @classmethod
    def _build(cls, values: dict[str, Any], where: str) -> LLMConfig:
        if not values.get("base_url"):
            raise LLMConfigError(f"no LLM base_url in {where}")
        try:
            return cls(**values)
        except ValueError as exc:
            raise LLMConfigError(f"invalid LLM settings from {where}: {exc}") from None

    def with_(self, **changes: Any) -> LLMConfig:
        """A copy with some settings changed (validated)."""
        return type(self)(**{**self.model_dump(), **changes})


def _check_url(v: str) -> str:
    v = v.strip().rstrip("/")
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
    return v


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def resolve_config(
    base_url: str | Sequence[str] | None = None,
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    start_embedded: bool = True,
    **settings: Any,
) -> LLMConfig:
    """The endpoint every LLM-using command talks to.

    Precedence, highest first: the arguments (a command's ``--base-url``/``--model``/…), the environment
    (``CM2DATA_LLM_*``), ``config_file`` (YAML), the defaults. When no base URL is set anywhere, the embedded server
    is started or reused (:func:`cm2data.llm.server.ensure_server`) unless ``start_embedded`` is false, in which case
    :class:`LLMConfigError` is raised. Arguments that are None count as not given.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(LLMConfig.yaml_values(config_file))
    values.update(LLMConfig.env_values())
    if isinstance(base_url, list | tuple) and not base_url:
        base_url = None
    values.update(_given({"base_url": base_url, "model": model, **settings}))
    if not values.get("base_url"):
        if not start_embedded:
            raise LLMConfigError(
                "no LLM endpoint configured: pass --base-url, set CM2DATA_LLM_BASE_URL, or start "
                "the embedded server with `cm2data serve`"
            )
        from cm2data.llm.server import ensure_server

        embedded = ensure_server()
        values = {**values, "base_url": embedded.base_url, "model": values.get("model") or embedded.model}
    return LLMConfig._build(values, "the given settings")
