"""Runs inside VeRL's own environment (recipes/install_verl.sh) with the checkout on PYTHONPATH; driven by
tests/test_verl.py. Each sub-command exercises real VeRL 0.9.1 code with cm2data's adapter and prints one JSON line.

    python tests/verl_probe.py dataset PARQUET TOKENIZER_DIR
    python tests/verl_probe.py tools PARQUET
    python tests/verl_probe.py reward PARQUET TOKENIZER_DIR
    python tests/verl_probe.py agent PARQUET TOKENIZER_DIR [--judge-url URL]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from scripted_openai import Garbage, Reply, ScriptedOpenAI  # noqa: E402


def rows(parquet: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(parquet).to_pylist()


def pick(parquet: str) -> dict:
    """A row with at least two user turns and a tool call."""
    for row in rows(parquet):
        msgs = json.loads(row["extra_info"]["messages"])
        if sum(m["role"] == "user" for m in msgs) >= 2 and any(m.get("tool_calls") for m in msgs):
            return row
    raise SystemExit("no multi-turn row with tool calls")


def dataset(parquet: str, tokenizer_dir: str) -> dict:
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import get_dataset_class

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 8192, "filter_overlong_prompts": True,
                            "filter_overlong_prompts_workers": 1, "return_raw_chat": True,
                            "custom_cls": {"path": str(ROOT / "adapters/verl/dataset.py"), "name": "CM2RLDataset"},
                            "tool_config_path": str(ROOT / "adapters/verl/tool_config.yaml")})
    cls = get_dataset_class(cfg)
    ds = cls(data_files=[parquet], tokenizer=tok, config=cfg)
    item = ds[0]
    text = ds.render_prompt(0)
    tools = item["extra_info"]["tools"]
    return {"class": cls.__name__, "len": len(ds), "rows": len(rows(parquet)),
            "raw_prompt_roles": [m["role"] for m in item["raw_prompt"]],
            "tools_decoded": isinstance(tools, list), "tools_kwargs_decoded": isinstance(item["tools_kwargs"], dict),
            "tool_in_prompt": bool(tools) and tools[0]["function"]["name"] in text and "<tools>" in text,
            "ends_with_generation_prompt": text.rstrip().endswith("<|im_start|>assistant")}


def code_of(text: str) -> str:
    data = json.loads(text)
    return (data.get("error_tool_call") or data)["code"]


def tools(parquet: str) -> dict:
    from verl.tools.tool_registry import load_all_tools

    from adapters.verl.env import LocalToolEnvironment, SQLiteCache

    row = pick(parquet)
    extra = row["extra_info"]
    msgs, row_tools = json.loads(extra["messages"]), json.loads(extra["tools"])
    (base,) = load_all_tools(tool_config_path=str(ROOT / "adapters/verl/tool_config.yaml"), function_tool_path=None)
    call = next(m for m in msgs if m.get("tool_calls"))["tool_calls"][0]["function"]
    args = json.loads(call["arguments"]) if isinstance(call["arguments"], str) else call["arguments"]
    schema = next(t for t in row_tools if t["function"]["name"] == call["name"])
    out: dict = {"loaded": type(base).__name__}

    async def go(server_url: str, cache_path: str) -> None:
        from cm2data.llm import LLMClient, LLMConfig

        llm = LLMClient(LLMConfig(base_url=server_url, model="scripted-model", max_retries=0))
        if os.environ.get("PROBE_SIMULATOR") == "1":
            from adapters.verl.env import SimulatorEnvironment
            from cm2data.simulator import ToolSimulator

            env = SimulatorEnvironment(ToolSimulator(llm, cache_path))
        else:
            env = LocalToolEnvironment(llm, SQLiteCache(cache_path))
        base._env = env
        tool = base.for_schema(schema)
        ckw = {"record_id": extra["uuid"], "messages": msgs, "tools": row_tools}
        iid, _ = await tool.create(create_kwargs=ckw)
        resp, _, info = await tool.execute(iid, args)
        out["replay"] = info["source"]
        out["replay_matches"] = resp.text in [m["content"] for m in msgs if m["role"] == "tool"]
        required = (schema["function"].get("parameters") or {}).get("required") or []
        if required:
            bad = {k: v for k, v in args.items() if k != required[0]}
            resp, _, info = await tool.execute(iid, bad)
            out["missing_required"] = code_of(resp.text)
        resp, _, info = await tool.execute(iid, {**args, "zz_unexpected": 1})
        out["unexpected"] = code_of(resp.text)
        unknown = base.for_schema({"type": "function", "function": {"name": "no_such_tool", "parameters": {}}})
        uid, _ = await unknown.create(create_kwargs=ckw)
        resp, _, info = await unknown.execute(uid, {})
        out["unknown_tool"] = code_of(resp.text)
        # a new, valid call: mocked by the LLM, then served from the persistent cache
        props = (schema["function"].get("parameters") or {}).get("properties") or {}
        changed = dict(args)
        for k, p in props.items():
            if p.get("type") == "string" and k in changed:
                changed[k] = str(changed[k]) + " (other)"
                break
        resp, _, info = await tool.execute(iid, changed)
        out["mock"] = info["source"]
        out["mock_text"] = resp.text
        resp2, _, info2 = await tool.execute(iid, changed)
        out["second"] = info2["source"]
        out["same_result"] = resp2.text == resp.text
        await tool.release(iid)

    with ScriptedOpenAI(default=Reply('{"analysis": "ok", "execution_result": {"status": "done"}}')) as server:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(go(server.base_url, os.path.join(tmp, "sim.sqlite")))
            out["mock_requests"] = len(server.requests)
    return out


def reward(parquet: str, tokenizer_dir: str) -> dict:
    """VeRL's naive reward manager (the reward-loop one the agent-loop trainer uses) calling our compute_score."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = OmegaConf.create({"reward": {"custom_reward_function": {"path": str(ROOT / "adapters/verl/reward.py"),
                                                                   "name": "compute_score"}}})
    fn = get_custom_reward_fn(cfg)
    row = pick(parquet)
    convo = json.loads(row["extra_info"]["messages"])

    def item(extra_fields: dict) -> DataProto:
        ids = torch.tensor([tok.encode("hello")], dtype=torch.int64)
        batch = {"responses": ids, "attention_mask": torch.ones_like(ids), "prompts": ids}
        nt = {"data_source": np.array([row["data_source"]], dtype=object),
              "reward_model": np.array([row["reward_model"]], dtype=object),
              "extra_info": np.array([dict(row["extra_info"])], dtype=object),
              "tool_extra_fields": np.array([extra_fields], dtype=object)}
        return DataProto.from_dict(tensors=batch, non_tensors=nt)

    out: dict = {}

    async def go() -> None:
        mgr = NaiveRewardManager(cfg, tok, fn)
        r = await mgr.run_single(item({"cm2_messages": json.dumps(convo)}))
        out["all_true"] = {k: r["reward_extra_info"][k] for k in ("score", "judge_failures", "items_passed",
                                                                   "items_total", "turn_scores", "error")}
        out["all_true_reward"] = r["reward_score"]

    async def go_garbage() -> None:
        mgr = NaiveRewardManager(cfg, tok, fn)
        r = await mgr.run_single(item({"cm2_messages": json.dumps(convo)}))
        out["garbage"] = {k: r["reward_extra_info"][k] for k in ("score", "judge_failures", "error")}
        r = await mgr.run_single(item({}))
        out["no_conversation"] = {k: r["reward_extra_info"][k] for k in ("score", "error")}

    with ScriptedOpenAI(default=Reply('{"answer": true}')) as server:
        os.environ["CM2DATA_JUDGE_BASE_URL"] = server.base_url
        os.environ["CM2DATA_JUDGE_RETRIES"] = "0"
        asyncio.run(go())
    with ScriptedOpenAI(default=Garbage()) as server:
        os.environ["CM2DATA_JUDGE_BASE_URL"] = server.base_url
        asyncio.run(go_garbage())
    return out


class ScriptedPolicy:
    """VeRL's server manager interface (``generate`` → ``TokenOutput``) backed by a scripted OpenAI-compatible
    server on loopback: each generation is the next scripted chat completion, tokenized."""

    def __init__(self, server: ScriptedOpenAI, tokenizer) -> None:
        self.server = server
        self.tokenizer = tokenizer
        self.prompts: list[int] = []

    async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
        import httpx
        from verl.workers.rollout.replica import TokenOutput

        self.prompts.append(len(prompt_ids))
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{self.server.base_url}/chat/completions",
                                  json={"model": "policy", "messages": [{"role": "user", "content": "(tokens)"}]})
        text = r.json()["choices"][0]["message"]["content"]
        ids = self.tokenizer.encode(text + "<|im_end|>", add_special_tokens=False)
        return TokenOutput(token_ids=ids, log_probs=[0.0] * len(ids), stop_reason="completed")


def policy_script(convo: list[dict], unknown_tool: bool = False) -> list[str]:
    """The reference's assistant messages as the policy's generations (hermes tool calls, no thinking)."""
    out = []
    for m in convo:
        if m["role"] != "assistant":
            continue
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c["function"]
                args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
                name = "no_such_tool" if unknown_tool else fn["name"]
                calls.append(f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>')
            out.append("\n".join(calls))
        else:
            content = m["content"]
            if "</think>" in content:
                content = content.split("</think>", 1)[1].strip()
            out.append(content or "Done.")
    return out


def agent(parquet: str, tokenizer_dir: str, judge_url: str | None) -> dict:
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.tools.tool_registry import load_all_tools

    from adapters.verl.agent_loop import CM2AgentLoop
    from adapters.verl.dataset import CM2RLDataset, decode_row
    from adapters.verl.dry_run import compose

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = compose([f"actor_rollout_ref.model.path={tokenizer_dir}", "actor_rollout_ref.rollout.response_length=6000",
                   "actor_rollout_ref.rollout.prompt_length=4096", "actor_rollout_ref.rollout.multi_turn.enable=True",
                   "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=30", "data.max_response_length=6000"])
    row = pick(parquet)
    convo = json.loads(row["extra_info"]["messages"])
    n_users = sum(m["role"] == "user" for m in convo)
    tool_list = load_all_tools(tool_config_path=str(ROOT / "adapters/verl/tool_config.yaml"), function_tool_path=None)
    results: dict = {"reference_turns": n_users}

    def run(script: list[str]) -> dict:
        with ScriptedOpenAI(default=Reply("I am done.")) as policy_server:
            policy_server.push(*[Reply(s) for s in script])
            policy = ScriptedPolicy(policy_server, tok)

            async def go():
                loop = CM2AgentLoop(trainer_config=DictConfigWrap(cfg), server_manager=policy, tokenizer=tok,
                                    processor=None, dataset_cls=CM2RLDataset, data_config=DictConfigWrap(cfg.data),
                                    hf_model_type="qwen3", tools=ToolListWrap(tool_list))
                r = decode_row(dict(row))
                from adapters.verl.common import decode_arguments

                raw_prompt = decode_arguments(list(r["prompt"]))
                return await loop.run({"temperature": 1.0}, raw_prompt=raw_prompt, extra_info=row["extra_info"],
                                      reward_model=row["reward_model"],
                                      tools_kwargs=r["extra_info"].get("tools_kwargs"))

            out = asyncio.run(go())
        ef = out.extra_fields
        messages = json.loads(ef["cm2_messages"])
        judgements = json.loads(ef["cm2_judgements"])
        mask = out.response_mask
        # every masked-in token is the policy's; user/tool tokens are masked out
        decoded_policy = tok.decode([t for t, m in zip(out.response_ids, mask, strict=True) if m == 1])
        decoded_context = tok.decode([t for t, m in zip(out.response_ids, mask, strict=True) if m == 0])
        return {"stop": ef["cm2_stop_reason"], "roles": [m["role"] for m in messages],
                "judged_turns": len(judgements), "turn_scores": ef["turn_scores"],
                "judge_failures": sum(j["failures"] for j in judgements),
                "mask_ones": sum(mask), "mask_zeros": len(mask) - sum(mask),
                "len_ok": len(mask) == len(out.response_ids),
                "policy_tokens_have_tool_call": "<tool_call>" in decoded_policy,
                "context_has_tool_response": "<tool_response>" in decoded_context,
                "context_has_user": "<|im_start|>user" in decoded_context,
                "num_turns": out.num_turns}

    script = policy_script(convo)
    if judge_url is None:
        with ScriptedOpenAI(default=Reply('{"answer": true}')) as judge:
            os.environ["CM2DATA_JUDGE_BASE_URL"] = judge.base_url
            results["replay"] = run(script)
            results["unknown_tool"] = run(policy_script(convo, unknown_tool=True))
        with ScriptedOpenAI(default=Garbage()) as judge:
            os.environ["CM2DATA_JUDGE_BASE_URL"] = judge.base_url
            os.environ["CM2DATA_JUDGE_RETRIES"] = "0"
            results["garbage_judge"] = run(script)
    else:
        os.environ["CM2DATA_JUDGE_BASE_URL"] = judge_url
        results["replay"] = run(script)
    return results


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dataset":
        out = dataset(*args)
    elif cmd == "tools":
        out = tools(*args)
    elif cmd == "reward":
        out = reward(*args)
    elif cmd == "agent":
        judge_url = args[args.index("--judge-url") + 1] if "--judge-url" in args else None
        out = agent(args[0], args[1], judge_url)
    else:
        raise SystemExit(f"unknown command {cmd}")
    print("PROBE " + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
