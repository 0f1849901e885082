"""Helpers shared by the VeRL adapter pieces: decoding the exported columns, the checklist, the judge client."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from cm2data.judge import JudgeOptions
from cm2data.llm import LLMClient, LLMConfig
from cm2data.schema import ChecklistItem

#: Environment variables the adapter reads (documented in docs/rl.md).
JUDGE_ENV = {
    "base_url": "CM2DATA_JUDGE_BASE_URL",  # else CM2DATA_LLM_BASE_URL, else verl's reward_router_address
    "model": "CM2DATA_JUDGE_MODEL",
    "order": "CM2DATA_JUDGE_ORDER",  # prefix (default) | reference
    "grouped": "CM2DATA_JUDGE_GROUPED",  # 0 (default) | 1
    "grouped_answer": "CM2DATA_JUDGE_GROUPED_ANSWER",  # object (default) | letters (one Y/N per item: fewer tokens)
    "concurrency": "CM2DATA_JUDGE_CONCURRENCY",
    "timeout": "CM2DATA_JUDGE_TIMEOUT",
    "retries": "CM2DATA_JUDGE_RETRIES",
}
SIM_ENV = {"base_url": "CM2DATA_SIM_BASE_URL", "model": "CM2DATA_SIM_MODEL", "cache": "CM2DATA_SIM_CACHE"}


def decode(value: Any, default: Any = None) -> Any:
    """A JSON-string column back to its value (values that are not strings pass through)."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return default if default is not None else value
    return value


def decode_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call ``arguments`` as dicts, right before templating: Qwen2.5's chat template applies ``tojson`` to a
    string and would double-encode it (platform notes); Qwen3's accepts both."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            for c in calls:
                fn = dict(c.get("function", {}))
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args)
                    except json.JSONDecodeError:
                        pass
                fixed.append({**c, "function": fn})
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out


def checklist_from_ground_truth(ground_truth: Any, variant: int = 0) -> tuple[list[list[ChecklistItem]], int]:
    """(items per reference turn, L) from ``reward_model.ground_truth`` as ``cm2data export verl`` writes it
    (``{"checklists": variants → turns → items, "num_turns": L}``, a JSON string). Bad input gives ([], 0)."""
    gt = decode(ground_truth, {})
    if isinstance(gt, list):
        gt = {"checklists": gt}
    if not isinstance(gt, dict):
        return [], 0
    variants = gt.get("checklists") or []
    if not variants or not isinstance(variants, list):
        return [], int(gt.get("num_turns") or 0)
    chosen = variants[min(variant, len(variants) - 1)]
    turns: list[list[ChecklistItem]] = []
    for block in chosen:
        if isinstance(block, dict):  # labeller block form {turn, checklist, dependence, weight}
            deps, weights = block.get("dependence") or {}, block.get("weight") or {}
            block = [
                {**i, "dependence": deps.get(i.get("id"), []), "weight": weights.get(i.get("id"), 0.0)}
                for i in block.get("checklist", [])
            ]
        turns.append([ChecklistItem.model_validate(i) for i in block])
    return turns, int(gt.get("num_turns") or len(turns))


_clients: dict[tuple[str, str | None, float, int], LLMClient] = {}
_lock = threading.Lock()


def judge_client(reward_router_address: str | None = None, environ: dict[str, str] | None = None) -> LLMClient | None:
    """The shared judge client: ``CM2DATA_JUDGE_BASE_URL``, else ``CM2DATA_LLM_BASE_URL``, else verl's reward router
    (``reward.reward_model.enable=True``); None when none is set."""
    env = os.environ if environ is None else environ
    base = env.get(JUDGE_ENV["base_url"]) or env.get("CM2DATA_LLM_BASE_URL")
    if not base and reward_router_address:
        base = reward_router_address if "://" in reward_router_address else f"http://{reward_router_address}"
        base = base.rstrip("/") + ("" if base.rstrip("/").endswith("/v1") else "/v1")
    if not base:
        return None
    model = env.get(JUDGE_ENV["model"]) or env.get("CM2DATA_LLM_MODEL") or None
    timeout = float(env.get(JUDGE_ENV["timeout"]) or 120)
    retries = int(env.get(JUDGE_ENV["retries"]) or 3)
    key = (base, model, timeout, retries)
    with _lock:
        client = _clients.get(key)
        if client is None:
            concurrency = int(env.get(JUDGE_ENV["concurrency"]) or 64)
            client = _clients[key] = LLMClient(
                LLMConfig(base_url=base, model=model, timeout=timeout, max_retries=retries, max_concurrency=concurrency)
            )
        return client


def judge_options(environ: dict[str, str] | None = None) -> JudgeOptions:
    env = os.environ if environ is None else environ
    order = env.get(JUDGE_ENV["order"]) or "prefix"
    return JudgeOptions(
        order="reference" if order == "reference" else "prefix",
        grouped=(env.get(JUDGE_ENV["grouped"]) or "0") in ("1", "true", "yes"),
        grouped_answer="letters" if env.get(JUDGE_ENV["grouped_answer"]) == "letters" else "object",
        max_concurrency=int(env.get(JUDGE_ENV["concurrency"]) or 16),
    )
