"""Runs inside VeRL's own environment (recipes/install_verl.sh) with the checkout on PYTHONPATH; driven by
tests/test_verl.py. Each sub-command exercises real VeRL 0.9.1 code with cm2data's adapter and prints one JSON line.

    python tests/verl_probe.py dataset PARQUET TOKENIZER_DIR
    python tests/verl_probe.py tools PARQUET
    python tests/verl_probe.py reward PARQUET TOKENIZER_DIR
    python tests/verl_probe.py agent PARQUET TOKENIZER_DIR [--judge-url URL]
    python tests/verl_probe.py credit PARQUET TOKENIZER_DIR
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
    cfg = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 8192,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "return_raw_chat": True,
            "custom_cls": {"path": str(ROOT / "adapters/verl/dataset.py"), "name": "CM2RLDataset"},
            "tool_config_path": str(ROOT / "adapters/verl/tool_config.yaml"),
        }
    )
    cls = get_dataset_class(cfg)
    ds = cls(data_files=[parquet], tokenizer=tok, config=cfg)
    item = ds[0]
    text = ds.render_prompt(0)
    tools = item["extra_info"]["tools"]
    return {
        "class": cls.__name__,
        "len": len(ds),
        "rows": len(rows(parquet)),
        "raw_prompt_roles": [m["role"] for m in item["raw_prompt"]],
        "tools_decoded": isinstance(tools, list),
        "tools_kwargs_decoded": isinstance(item["tools_kwargs"], dict),
        "tool_in_prompt": bool(tools) and tools[0]["function"]["name"] in text and "<tools>" in text,
        "ends_with_generation_prompt": text.rstrip().endswith("<|im_start|>assistant"),
    }


def code_of(text: str) -> str:
    data = json.loads(text)
    return (data.get("error_tool_call") or data)["code"]


def tools(parquet: str) -> dict:
    from verl.tools.tool_registry import load_all_tools

    from adapters.verl.env import SimulatorEnvironment

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
        from cm2data.simulator import ToolSimulator

        llm = LLMClient(LLMConfig(base_url=server_url, model="scripted-model", max_retries=0))
        base._env = SimulatorEnvironment(ToolSimulator(llm, cache_path))
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
    cfg = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": str(ROOT / "adapters/verl/reward.py"), "name": "compute_score"}}}
    )
    fn = get_custom_reward_fn(cfg)
    row = pick(parquet)
    convo = json.loads(row["extra_info"]["messages"])

    def item(extra_fields: dict) -> DataProto:
        ids = torch.tensor([tok.encode("hello")], dtype=torch.int64)
        batch = {"responses": ids, "attention_mask": torch.ones_like(ids), "prompts": ids}
        nt = {
            "data_source": np.array([row["data_source"]], dtype=object),
            "reward_model": np.array([row["reward_model"]], dtype=object),
            "extra_info": np.array([dict(row["extra_info"])], dtype=object),
            "tool_extra_fields": np.array([extra_fields], dtype=object),
        }
        return DataProto.from_dict(tensors=batch, non_tensors=nt)

    out: dict = {}

    async def go() -> None:
        mgr = NaiveRewardManager(cfg, tok, fn)
        r = await mgr.run_single(item({"cm2_messages": json.dumps(convo)}))
        out["all_true"] = {
            k: r["reward_extra_info"][k]
            for k in ("score", "judge_failures", "items_passed", "items_total", "turn_scores", "error")
        }
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
            r = await client.post(
                f"{self.server.base_url}/chat/completions",
                json={"model": "policy", "messages": [{"role": "user", "content": "(tokens)"}]},
            )
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
                calls.append(f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>")
            out.append("\n".join(calls))
        else:
            content = m["content"]
            if "</think>" in content:
                content = content.split("</think>", 1)[1].strip()
            out.append(content or "Done.")
    return out


def loop_config(tokenizer_dir: str, *extra: str):
    from adapters.verl.dry_run import compose

    return compose(
        [
            f"actor_rollout_ref.model.path={tokenizer_dir}",
            "actor_rollout_ref.rollout.response_length=6000",
            "actor_rollout_ref.rollout.prompt_length=4096",
            "actor_rollout_ref.rollout.multi_turn.enable=True",
            "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=30",
            "data.max_response_length=6000",
            *extra,
        ]
    )


def run_loop(cfg, tok, row: dict, script: list[str]):
    """One CM2AgentLoop rollout of ``row`` with the policy's generations scripted; the AgentLoopOutput."""
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.tools.tool_registry import load_all_tools

    from adapters.verl.agent_loop import CM2AgentLoop
    from adapters.verl.common import decode_arguments
    from adapters.verl.dataset import CM2RLDataset, decode_row

    tool_list = load_all_tools(tool_config_path=str(ROOT / "adapters/verl/tool_config.yaml"), function_tool_path=None)
    with ScriptedOpenAI(default=Reply("I am done.")) as policy_server:
        policy_server.push(*[Reply(s) for s in script])
        policy = ScriptedPolicy(policy_server, tok)

        async def go():
            loop = CM2AgentLoop(
                trainer_config=DictConfigWrap(cfg),
                server_manager=policy,
                tokenizer=tok,
                processor=None,
                dataset_cls=CM2RLDataset,
                data_config=DictConfigWrap(cfg.data),
                hf_model_type="qwen3",
                tools=ToolListWrap(tool_list),
            )
            r = decode_row(dict(row))
            raw_prompt = decode_arguments(list(r["prompt"]))
            return await loop.run(
                {"temperature": 1.0},
                raw_prompt=raw_prompt,
                extra_info=row["extra_info"],
                reward_model=row["reward_model"],
                tools_kwargs=r["extra_info"].get("tools_kwargs"),
            )

        return asyncio.run(go())


def agent(parquet: str, tokenizer_dir: str, judge_url: str | None) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = loop_config(tokenizer_dir)
    row = pick(parquet)
    convo = json.loads(row["extra_info"]["messages"])
    n_users = sum(m["role"] == "user" for m in convo)
    results: dict = {"reference_turns": n_users}

    def run(script: list[str]) -> dict:
        out = run_loop(cfg, tok, row, script)
        ef = out.extra_fields
        messages = json.loads(ef["cm2_messages"])
        judgements = json.loads(ef["cm2_judgements"])
        mask = out.response_mask
        # every masked-in token is the policy's; user/tool tokens are masked out
        decoded_policy = tok.decode([t for t, m in zip(out.response_ids, mask, strict=True) if m == 1])
        decoded_context = tok.decode([t for t, m in zip(out.response_ids, mask, strict=True) if m == 0])
        return {
            "stop": ef["cm2_stop_reason"],
            "roles": [m["role"] for m in messages],
            "judged_turns": len(judgements),
            "turn_scores": ef["turn_scores"],
            "judge_failures": sum(j["failures"] for j in judgements),
            "mask_ones": sum(mask),
            "mask_zeros": len(mask) - sum(mask),
            "len_ok": len(mask) == len(out.response_ids),
            "policy_tokens_have_tool_call": "<tool_call>" in decoded_policy,
            "context_has_tool_response": "<tool_response>" in decoded_context,
            "context_has_user": "<|im_start|>user" in decoded_context,
            "num_turns": out.num_turns,
        }

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


# ------------------------------------------------------------------------------ turn/step-level credit (cm2_*)

# One response layout (token offsets), used by every hand-built row below:
#   turn 0: step 0 [0, 8) | tool response [8, 16) | step 1 [16, 24) | user message [24, 32)
#   turn 1: step 0 [32, 40) | tool response [40, 48) | step 1 [48, 56)
# A row that stops after turn 0 ends at 24; the batch is padded to WIDTH.
WIDTH = 60
POLICY = [(0, 8), (16, 24), (32, 40), (48, 56)]
SPANS = [[0, 0, 0, 8], [0, 1, 16, 24], [1, 0, 32, 40], [1, 1, 48, 56]]


def credit_row(mode: str, turn_scores: list[float], step_verdicts=(), checklist=(), record: bool = True):
    """(rm_scores, response_mask) of one hand-built row reaching ``len(turn_scores)`` turns, written by the
    adapter's own writer, with R = mean of the turn scores over L = 2 on the last response token (as VeRL does)."""
    import torch

    from adapters.verl import credit

    length = 56 if len(turn_scores) > 1 else 24
    mask = torch.zeros(WIDTH, dtype=torch.int64)
    for start, end in POLICY:
        if end <= length:
            mask[start:end] = 1
    rm = torch.zeros(length, dtype=torch.float32)
    rm[-1] = sum(turn_scores) / 2
    if record:
        spans = [sp for sp in SPANS if sp[3] <= length]
        assert credit.write_record(
            rm, credit.build_record(mode, spans, length, turn_scores, list(step_verdicts), list(checklist))
        )
    return torch.cat([rm, torch.zeros(WIDTH - length)]), mask


def expected_row(per_step: list[float]) -> list[float]:
    """Per-token advantages of a row: ``per_step[k]`` on the policy tokens of the k-th span of POLICY."""
    out = [0.0] * WIDTH
    for (start, end), value in zip(POLICY, per_step, strict=False):
        out[start:end] = [value] * (end - start)
    return out


def batch(rows: list, uids: list[str]):
    import numpy as np
    import torch
    from verl import DataProto

    rm = torch.stack([r[0] for r in rows])
    mask = torch.stack([r[1] for r in rows])
    return DataProto.from_dict(
        tensors={"token_level_rewards": rm, "response_mask": mask}, non_tensors={"uid": np.array(uids, dtype=object)}
    )


def advantages(data, name: str) -> list[list[float]]:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.ray_trainer import compute_advantage

    out = compute_advantage(
        data, adv_estimator=name, norm_adv_by_std_in_grpo=False, config=OmegaConf.create({"adv_estimator": name})
    )
    assert (out.batch["advantages"] == out.batch["returns"]).all()
    return out.batch["advantages"].tolist()


def close(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def credit_probe(parquet: str, tokenizer_dir: str) -> dict:
    import torch
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos
    from verl.utils.dataset.rl_dataset import get_dataset_class

    out: dict = {}
    # 1. registered through the dataset class file, loaded by path as the trainer does
    out["registered_before"] = sorted(n for n in ("cm2_turn", "cm2_step") if n in core_algos.ADV_ESTIMATOR_REGISTRY)
    get_dataset_class(
        OmegaConf.create({"custom_cls": {"path": str(ROOT / "adapters/verl/dataset.py"), "name": "CM2RLDataset"}})
    )
    out["registered"] = {
        n: f"{f.__module__}.{f.__name__}"
        for n in ("cm2_turn", "cm2_step")
        for f in [core_algos.get_adv_estimator_fn(n)]
    }

    # 2. turn level through VeRL's compute_advantage
    rows, uids, expected = [], [], []
    # group a: six samples, five reach turn 1.  A_0 = R_0 − 0.5; A_1 = R_1 − 0.5
    for r0, r1, a0, a1 in [(1, 1, 0.5, 0.5), (0, 0, -0.5, -0.5), (0.5, 1, 0, 0.5), (0.5, 0, 0, -0.5), (1, 0.5, 0.5, 0)]:
        rows.append(credit_row("turn", [r0, r1]))
        expected.append(expected_row([a0, a0, a1, a1]))
    rows.append(credit_row("turn", [0.0]))
    expected.append(expected_row([-0.5, -0.5]))
    uids += ["a"] * 6
    # group b: three samples: 4 or fewer reached every turn → 0
    for scores in ([1, 1], [0, 1], [0.5, 0]):
        rows.append(credit_row("turn", scores))
        expected.append([0.0] * WIDTH)
    uids += ["b"] * 3
    # group c: six samples, exactly four reach turn 1 (→ 0 there); turn 0 mean 0.5; plus a row without a record
    for k, r0 in enumerate([0.2, 0.4, 0.6, 0.8, 1.0, 0.0]):
        rows.append(credit_row("turn", [r0, 1.0] if k < 4 else [r0]))
        expected.append(expected_row([r0 - 0.5, r0 - 0.5, 0.0, 0.0]))
    rows.append(credit_row("turn", [1.0, 1.0], record=False))
    expected.append([0.0] * WIDTH)
    uids += ["c"] * 7
    data = batch(rows, uids)
    got = advantages(data, "cm2_turn")
    mask = data.batch["response_mask"]
    out["turn"] = {
        "max_error": close(got, expected),
        "context_tokens_zero": all(
            v == 0 for row, m in zip(got, mask.tolist(), strict=True) for v, mm in zip(row, m, strict=True) if mm == 0
        ),
        # the record adds next to nothing to a row's reward sum, and GRPO (CREDIT=trajectory) does not see it
        "reward_sum_error": max(
            abs(r[0].double().sum().item() - r[0].double()[r[0].abs() > 1e-12].sum().item()) for r in rows
        ),
        "grpo_unchanged": close(
            advantages(batch(rows, uids), "grpo"),
            advantages(batch([(torch.where(r[0].abs() > 1e-12, r[0], 0.0), r[1]) for r in rows], uids), "grpo"),
        ),
    }

    # 3. step level: turn 0 has item A; turn 1 has C0 and C1 (C1 depends on C0); sample 2 stops after turn 0
    from cm2data.schema import ChecklistItem

    def ci(cid: str, weight: float, deps=()) -> ChecklistItem:
        return ChecklistItem(
            id=cid,
            focus_on="assistant.tool_calls",
            question="q",
            pass_condition="p",
            weight=weight,
            depends_on=list(deps),
        )

    checklist = [[ci("A", 1.0)], [ci("C0", 0.5), ci("C1", 0.5, ["C0"])]]
    step_rows = [
        credit_row("step", [1.0, 1.0], [[{"A": True}, {}], [{"C0": True, "C1": False}, {"C1": True}]], checklist),
        credit_row("step", [1.0, 0.0], [[{"A": False}, {"A": True}], [{"C0": False}, {"C0": False}]], checklist),
        credit_row("step", [0.0], [[{"A": False}, {"A": False}]], checklist),
    ]
    # b_A = 2/3, b_C0 = b_C1 = 1/3 (over the three samples)
    want = {
        "plain": [
            expected_row([1 / 3, 0.0, 1 / 3, 1 / 3]),
            expected_row([1 / 3, 1 / 3, -1 / 6, -1 / 6]),
            expected_row([-2 / 3, -2 / 3]),
        ],
        # eta = 0.5: a step k steps before the satisfying one gets 0.5^k instead of 1
        "eta": [
            expected_row([1 / 3, 0.0, 1 / 3, 1 / 3]),
            expected_row([0.5 - 2 / 3, 1 / 3, -1 / 6, -1 / 6]),
            expected_row([-2 / 3, -2 / 3]),
        ],
        # normalized by the eligible weight (A: 1; C0 or C1: 0.5)
        "normalize": [
            expected_row([1 / 3, 0.0, 2 / 3, 2 / 3]),
            expected_row([1 / 3, 1 / 3, -1 / 3, -1 / 3]),
            expected_row([-2 / 3, -2 / 3]),
        ],
    }
    out["step"] = {}
    for case, env in (
        ("plain", {}),
        ("eta", {"CM2DATA_CREDIT_ETA": "0.5"}),
        ("normalize", {"CM2DATA_CREDIT_NORMALIZE": "1"}),
    ):
        os.environ.pop("CM2DATA_CREDIT_ETA", None)
        os.environ.pop("CM2DATA_CREDIT_NORMALIZE", None)
        os.environ.update(env)
        out["step"][case] = close(advantages(batch(step_rows, ["s"] * 3), "cm2_step"), want[case])
    os.environ.pop("CM2DATA_CREDIT_NORMALIZE", None)
    # a step record also serves the turn level; a turn record does not serve the step level; no record: an error
    out["turn_on_step_records"] = advantages(batch(step_rows, ["s"] * 3), "cm2_turn") == [[0.0] * WIDTH] * 3
    # a record longer than the response does not fit: that row carries none (advantage 0)
    from adapters.verl import credit

    out["overflow"] = credit.write_record(
        torch.zeros(12), credit.build_record("step", SPANS[:1], 12, [1.0], [[{"C0": True}]], checklist[1:])
    )
    for name, bad in (("step_on_turn_records", rows[:6]), ("no_records", [credit_row("turn", [1.0], record=False)])):
        try:
            advantages(batch(bad, ["a"] * len(bad)), "cm2_step")
            out[name] = "no error"
        except RuntimeError as exc:
            out[name] = str(exc)[:200]

    # 4. the real agent loop: spans, the reward's verdicts, VeRL's as_dict → a record the estimator reads
    out["loop"] = credit_loop(parquet, tokenizer_dir)
    return out


def credit_loop(parquet: str, tokenizer_dir: str) -> dict:
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from adapters.verl import credit
    from adapters.verl.reward import compute_score

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = loop_config(tokenizer_dir, "algorithm.adv_estimator=cm2_step")
    row = pick(parquet)
    convo = json.loads(row["extra_info"]["messages"])
    results = {}
    outputs = {}
    for name, judge_reply in (("all_true", Reply('{"answer": true}')), ("all_false", Reply('{"answer": false}'))):
        with ScriptedOpenAI(default=judge_reply) as judge:
            os.environ["CM2DATA_JUDGE_BASE_URL"] = judge.base_url
            os.environ["CM2DATA_JUDGE_RETRIES"] = "0"
            output = run_loop(cfg, tok, row, policy_script(convo))
            # what VeRL's worker does after the loop: the reward (naive manager: extra_info + the loop's fields)
            info = asyncio.run(
                compute_score(
                    row["data_source"],
                    "",
                    row["reward_model"]["ground_truth"],
                    {**row["extra_info"], **output.extra_fields},
                )
            )
            output.reward_score = info["score"]
            output.extra_fields["reward_extra_info"] = info
            d = output.as_dict()
        rm, mask = d["rm_scores"], d["response_mask"]
        (record,) = credit.read_records(rm[None])
        covered = torch.zeros_like(mask)
        for tc in record.turns:
            for start, end in tc.spans:
                covered[start:end] = 1
        policy_text = tok.decode(
            [t for t, c, m in zip(d["responses"].tolist(), covered.tolist(), mask.tolist(), strict=True) if c and m]
        )
        results[name] = {
            "status": d["extra_fields"]["cm2_credit"],
            "mode": record.mode,
            "turns": len(record.turns),
            "judged_turns": len(json.loads(info["turn_scores"])),
            "scores_match": [tc.score for tc in record.turns] == pytest_round(json.loads(info["turn_scores"])),
            "steps": [len(tc.spans) for tc in record.turns],
            "verdict_steps": [len(v) for v in json.loads(info["step_verdicts"])],
            "policy_tokens_covered": not bool((mask.bool() & ~covered.bool()).any()),
            "spans_hold_tool_calls": "<tool_call>" in policy_text,
            "reward": info["score"],
            "rm_sum_error": abs(float(rm.sum()) - info["score"]),
        }
        outputs[name] = (rm, mask)
    # the two rollouts as one group: the step-level estimator credits the passing one, debits the failing one
    width = max(len(rm) for rm, _ in outputs.values())
    rows = [
        (torch.cat([rm, torch.zeros(width - len(rm))]), torch.cat([m, torch.zeros(width - len(m), dtype=m.dtype)]))
        for rm, m in outputs.values()
    ]
    adv = np.array(advantages(batch(rows, ["u", "u"]), "cm2_step"))
    masks = np.array([r[1].tolist() for r in rows])
    results["group"] = {
        "passing_min": float(adv[0][masks[0] == 1].min()),
        "passing_max": float(adv[0][masks[0] == 1].max()),
        "failing_max": float(adv[1][masks[1] == 1].max()),
        "failing_min": float(adv[1][masks[1] == 1].min()),
        "context_zero": bool((adv[masks == 0] == 0).all()),
    }
    return results


def pytest_round(values: list[float]) -> list[float]:
    """The record keeps reals to 2**-20: compare at that resolution."""
    return [round(v * 2**20) / 2**20 for v in values]


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dataset":
        out = dataset(*args)
    elif cmd == "tools":
        out = tools(*args)
    elif cmd == "reward":
        out = reward(*args)
    elif cmd == "credit":
        out = credit_probe(*args)
    elif cmd == "agent":
        judge_url = args[args.index("--judge-url") + 1] if "--judge-url" in args else None
        out = agent(args[0], args[1], judge_url)
    else:
        raise SystemExit(f"unknown command {cmd}")
    print("PROBE " + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
