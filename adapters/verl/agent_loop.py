"""``CM2AgentLoop`` (registered as ``cm2_agent``; ``agent_loop.yaml`` for ``rollout.agent.agent_loop_config_path``).

VeRL ≥ 0.7 removed "interactions"; CM2 needs scripted follow-up user turns, so this loop extends VeRL's
``ToolAgentLoop``: the policy generates, tool calls go to the row's own simulated tools, and when the assistant gives
a final reply the turn is judged against its checklist (:func:`cm2data.judge.judge_turn`). The rollout ends on a failed
must-pass item, a tool error (``error_tool_call``, unknown tool, unparseable call), the length limits, or after the
last reference turn; otherwise the next reference user message is appended (mask 0) and generation goes on.

Stored for ``compute_score`` (``extra_fields`` → ``extra_info``): ``cm2_messages`` (the structured conversation, a
JSON string), ``cm2_judgements`` (the verdicts per judged turn, JSON), ``cm2_stop_reason``; ``turn_scores`` holds
``R_t / L`` per judged turn (what goes on each turn's last token); ``cm2_spans`` holds ``[turn, step, start, end]``
per policy generation (token offsets in the response).

The loop returns a :class:`CM2AgentLoopOutput`: with ``algorithm.adv_estimator=cm2_turn|cm2_step`` its ``as_dict``
(called by VeRL after the reward is computed) writes the credit record of :mod:`adapters.verl.credit` into
``rm_scores`` and its status into ``extra_fields["cm2_credit"]``; otherwise it is VeRL's output unchanged.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import uuid4

from pydantic import PrivateAttr
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.tool_agent_loop import AgentData, AgentState, ToolAgentLoop

from adapters.verl.common import checklist_from_ground_truth, decode, decode_arguments, judge_client, judge_options
from adapters.verl.credit import attach_record, credit_mode
from adapters.verl.dataset import decode_row
from adapters.verl.tool import CM2SimulatedTool
from cm2data.judge import judge_turn
from cm2data.reward import turn_reward_placement
from cm2data.schema import ChecklistItem

logger = logging.getLogger(__name__)


class CM2AgentLoopOutput(AgentLoopOutput):
    """VeRL's output plus the CM2 credit record: VeRL's worker sets ``reward_score`` and
    ``extra_fields["reward_extra_info"]`` after the loop returns, then calls ``as_dict``, which builds ``rm_scores``;
    the record goes in there (:func:`adapters.verl.credit.attach_record`)."""

    _cm2_mode: str | None = PrivateAttr(default=None)
    _cm2_checklist: list[list[ChecklistItem]] = PrivateAttr(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        output = super().as_dict()
        if self._cm2_mode:
            status = attach_record(output, self.extra_fields, self._cm2_checklist, self._cm2_mode)
            output.setdefault("extra_fields", {})["cm2_credit"] = status
        return output


@register("cm2_agent")
class CM2AgentLoop(ToolAgentLoop):
    def __init__(self, *args: Any, tools: Any = None, **kwargs: Any):
        super().__init__(*args, tools=tools, **kwargs)
        self.factory = next(
            (t for t in self.tools.values() if isinstance(t, CM2SimulatedTool)), None
        ) or CM2SimulatedTool({}, None)

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs: Any) -> AgentLoopOutput:
        extra = decode_row({"extra_info": kwargs.get("extra_info")})["extra_info"]
        reference = decode(extra.get("messages"), []) or []
        row_tools = decode(extra.get("tools"), []) or []
        checklist, num_turns = checklist_from_ground_truth((kwargs.get("reward_model") or {}).get("ground_truth"))
        users = [m for m in reference if m.get("role") == "user"]
        num_turns = num_turns or len(users)

        agent_data = AgentData(
            messages=decode_arguments(list(kwargs["raw_prompt"])),
            image_data=None,
            video_data=None,
            audio_data=None,
            mm_processor_kwargs=None,
            metrics={},
            request_id=uuid4().hex,
            tools_kwargs=decode(kwargs.get("tools_kwargs"), {}) or {},
        )
        active = {}
        for schema in row_tools:
            tool = self.factory.for_schema(schema)
            active[tool.name] = tool
        agent_data._active_tools = active
        agent_data._active_tool_schemas = row_tools
        agent_data.extra_fields["cm2_reference"] = {"id": extra.get("uuid"), "messages": reference, "tools": row_tools}

        client = judge_client()
        options = judge_options()
        judgements: list[dict[str, Any]] = []
        scores: list[float] = []
        turn = 0
        step = 0
        spans: list[list[int]] = []  # [turn, step, start, end] per generation, offsets into the response
        reason = "end"
        await self._handle_pending_state(agent_data, sampling_params)
        while True:
            start = len(agent_data.response_mask)
            state = await self._handle_generating_state(agent_data, sampling_params)
            spans.append([turn, step, start, len(agent_data.response_mask)])
            step += 1
            if state == AgentState.PROCESSING_TOOLS:
                bad = [c.name for c in agent_data.tool_calls if c.name not in active]
                state = await self._handle_processing_tools_state(agent_data)
                if bad:
                    reason = "unknown_tool"
                    break
                if agent_data.extra_fields.get("cm2_tool_error"):
                    reason = "tool_error"
                    break
                if state == AgentState.TERMINATED:
                    reason = "length"
                    break
                continue
            last = agent_data.messages[-1] if agent_data.messages else {}
            finished = last.get("role") == "assistant" and not last.get("tool_calls") and not agent_data.tool_calls
            if not finished:
                reason = "length"
                break
            if client is not None and turn < len(checklist):
                tj = await judge_turn(client, agent_data.messages, turn, checklist[turn], options)
                judgements.append(tj.to_dict())
                scores.append(tj.score)
                if not tj.gate_passed:
                    reason = "gate_failed"
                    break
            turn += 1
            step = 0
            if turn >= min(len(users), num_turns):
                reason = "end"
                break
            if not await self._add_user(agent_data, users[turn]):
                reason = "length"
                break

        output = self._finish(agent_data)
        output._cm2_mode = credit_mode(self.config)
        output._cm2_checklist = checklist
        output.extra_fields.pop("cm2_reference", None)
        output.extra_fields.pop("cm2_tool_error", None)
        output.extra_fields.update(
            {
                "cm2_messages": json.dumps(agent_data.messages, ensure_ascii=False, default=str),
                "cm2_judgements": json.dumps(judgements, ensure_ascii=False),
                "cm2_stop_reason": reason,
                "turn_scores": turn_reward_placement(scores, num_turns),
                "tool_rewards": agent_data.tool_rewards,
                "cm2_spans": spans,
            }
        )
        return output

    async def _add_user(self, agent_data: AgentData, message: dict[str, Any]) -> bool:
        """Append the next reference user message to the context (not trained on); False past the length limit."""
        previous = list(agent_data.messages)
        agent_data.messages.append({"role": "user", "content": message.get("content") or ""})
        merge, mask, logprobs = await self.ct_merge_context_msg(
            previous,
            agent_data.messages,
            agent_data.prompt_ids,
            agent_data.response_mask,
            agent_data.response_logprobs or None,
            tools=agent_data._active_tool_schemas,
        )
        if len(mask) >= self.response_length:
            return False
        agent_data.prompt_ids = merge.token_ids
        agent_data.response_mask = mask
        if agent_data.response_logprobs:
            agent_data.response_logprobs = logprobs or []
        agent_data.user_turns += 1
        return True

    def _finish(self, agent_data: AgentData) -> CM2AgentLoopOutput:
        n = len(agent_data.response_mask)
        response_ids = agent_data.prompt_ids[-n:] if n else []
        prompt_ids = agent_data.prompt_ids[: len(agent_data.prompt_ids) - n]
        return CM2AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids[: self.response_length],
            response_mask=agent_data.response_mask[: self.response_length],
            multi_modal_data={},
            response_logprobs=agent_data.response_logprobs[: self.response_length]
            if agent_data.response_logprobs
            else None,
            num_turns=agent_data.user_turns + agent_data.assistant_turns + 1,
            metrics=agent_data.metrics,
            extra_fields=agent_data.extra_fields,
        )
