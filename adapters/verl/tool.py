"""``CM2SimulatedTool``: a native VeRL ``BaseTool`` backed by the simulated tool environment (``adapters.verl.env``).

Declared once in ``tool_config.yaml`` (a placeholder schema); the agent loop makes one instance per tool schema of
each row (:meth:`CM2SimulatedTool.for_schema`), so every dialogue gets its own candidate tools. The reference
dialogue the simulator replays from comes from the agent loop (``agent_data.extra_fields["cm2_reference"]``) or from
``create_kwargs`` (``record_id``, ``messages``, ``tools``).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from adapters.verl.env import ToolEnvironment, default_environment


def _verl_schema(schema: dict[str, Any]) -> OpenAIFunctionToolSchema:
    """VeRL's schema model for a tool; schemas it cannot express (nested or untyped properties) keep name and
    description only — the prompt is rendered from the row's raw schemas anyway."""
    fn = schema.get("function", schema)
    try:
        return OpenAIFunctionToolSchema.model_validate({"type": "function", "function": fn})
    except Exception:
        return OpenAIFunctionToolSchema.model_validate(
            {
                "type": "function",
                "function": {"name": fn.get("name", "tool"), "description": fn.get("description") or ""},
            }
        )


class CM2SimulatedTool(BaseTool):
    def __init__(
        self,
        config: dict,
        tool_schema: OpenAIFunctionToolSchema | None,
        *,
        raw_schema: dict[str, Any] | None = None,
        env: ToolEnvironment | None = None,
    ):
        # BaseTool.__init__ prints every schema; with a tool per row schema that floods the log
        self.config = config or {}
        self.tool_schema = tool_schema or _verl_schema({"name": "cm2_simulated", "description": "CM2 simulator"})
        self.name = self.tool_schema.function.name
        self.raw_schema = raw_schema or self.tool_schema.model_dump(exclude_unset=True, exclude_none=True)
        self._env = env
        self._instances: dict[str, dict[str, Any]] = {}

    @property
    def env(self) -> ToolEnvironment:
        if self._env is None:
            self._env = default_environment()
        return self._env

    def for_schema(self, schema: dict[str, Any]) -> CM2SimulatedTool:
        """A tool with this row's schema, sharing this one's config and environment."""
        return CM2SimulatedTool(self.config, _verl_schema(schema), raw_schema=schema, env=self._env)

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        instance_id = instance_id or str(uuid4())
        self._instances[instance_id] = dict(kwargs.get("create_kwargs") or {})
        return instance_id, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict]:
        agent_data = kwargs.get("agent_data")
        extra = getattr(agent_data, "extra_fields", None) or {}
        ref = extra.get("cm2_reference") or {}
        ckw = self._instances.get(instance_id, {})
        dialogue_id = str(ref.get("id") or ckw.get("record_id") or "")
        messages = ref.get("messages") or ckw.get("messages") or []
        tools = ref.get("tools") or ckw.get("tools") or [self.raw_schema]
        result = await self.env.call(dialogue_id, messages, tools, self.name, parameters)
        if result.error and isinstance(extra, dict) and agent_data is not None:
            agent_data.extra_fields["cm2_tool_error"] = True
        return ToolResponse(text=result.text), 0.0, {"source": result.source, "error": result.error}

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._instances.pop(instance_id, None)


def describe(result: tuple[ToolResponse, float, dict]) -> str:
    return json.dumps({"text": result[0].text, **result[2]})
