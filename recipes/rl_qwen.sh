#!/usr/bin/env bash
# GRPO with CM2 checklist rewards on VeRL 0.9.1 (docs/rl.md). Every size is an environment variable; the CM2
# reference's value is in the comment beside ours.
#
#   DATA=out/verl MODEL=/ckpt/sft JUDGE_URL=http://judge:8000/v1 bash recipes/rl_qwen.sh [extra hydra overrides]
#   DRY_RUN=1 bash recipes/rl_qwen.sh      # compose + validate against verl's own ppo_trainer config on CPU, print
#                                          # the command, launch nothing
#
# Judge/simulator: JUDGE_URL (an OpenAI-compatible server, e.g. `vllm serve Qwen/Qwen3-30B-A3B-Instruct-2507
# --enable-prefix-caching`), else START_JUDGE=1 starts `vllm serve $JUDGE_MODEL` on JUDGE_PORT here, else
# JUDGE_ROUTER=1 lets verl start the judge (reward.reward_model.enable=True → reward_router_address).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

MODEL="${MODEL:-Qwen/Qwen3-8B}"              # ref: the cold-start SFT checkpoint of Qwen3-8B-Base
DATA="${DATA:-$here/out/verl}"               # cm2data export verl DIR --out $DATA (ref: 8k RL, first 500 as val)
GPUS="${GPUS:-8}"                            # per node (ref: 64 policy GPUs in total, as many judge GPUs)
NNODES="${NNODES:-1}"                        # ref: 8
GROUP="${GROUP:-48}"                         # G, samples per prompt (ref: 48; 24 was worse)
TRAIN_BATCH="${TRAIN_BATCH:-128}"            # prompts per step (ref: not stated; 128 here)
MINI_BATCH="${MINI_BATCH:-128}"              # ref: 128
LR="${LR:-3e-6}"                             # ref: 3e-6
KL_COEF="${KL_COEF:-0.001}"                  # ref: 0.001, low_var_kl
MAX_PROMPT="${MAX_PROMPT:-2048}"             # ref: context 10k in all
MAX_RESPONSE="${MAX_RESPONSE:-8192}"         # ref: context 10k in all
MAX_TURNS="${MAX_TURNS:-30}"                 # assistant turns (ref: up to 30)
IS_THRESHOLD="${IS_THRESHOLD:-2.0}"          # token-level IS correction vs rollout log-probs (ref: 2.0)
MICRO="${MICRO:-4}"                          # micro-batch per GPU for update and log-probs (ref: not stated)
TP="${TP:-1}"                                # rollout tensor parallel
EPOCHS="${EPOCHS:-1}"
CREDIT="${CREDIT:-trajectory}"               # trajectory (the reference's final recipe; std term off) | turn | step
ETA="${ETA:-}"                               # step level: decay eta^k over k steps of delay (empty: none)
STEP_NORMALIZE="${STEP_NORMALIZE:-0}"        # step level: 1 divides A_{t,s} by the eligible items' weight
JUDGE_MODEL="${JUDGE_MODEL:-Qwen/Qwen3-30B-A3B-Instruct-2507}"  # ref: Qwen3-30B-A3B-Instruct
JUDGE_PORT="${JUDGE_PORT:-8100}"
EXPERIMENT="${EXPERIMENT:-cm2-qwen3-grpo}"

# credit assignment (method §5): trajectory = GRPO with the std term off; turn/step = cm2data's estimators
# (adapters/verl/credit.py, registered when the trainer loads adapters/verl/dataset.py)
case "$CREDIT" in
  trajectory) estimator=grpo ;;
  turn) estimator=cm2_turn ;;
  step) estimator=cm2_step ;;
  *) echo "rl_qwen.sh: CREDIT=$CREDIT: use trajectory, turn or step" >&2
     exit 2 ;;
esac

overrides=(
  "algorithm.adv_estimator=$estimator"
  algorithm.norm_adv_by_std_in_grpo=False
  algorithm.use_kl_in_reward=False
  algorithm.rollout_correction.rollout_is=token
  "algorithm.rollout_correction.rollout_is_threshold=$IS_THRESHOLD"
  "data.train_files=$DATA/train.parquet"
  "data.val_files=$DATA/val.parquet"
  "data.custom_cls.path=$here/adapters/verl/dataset.py"
  data.custom_cls.name=CM2RLDataset
  "data.train_batch_size=$TRAIN_BATCH"
  "data.max_prompt_length=$MAX_PROMPT"
  "data.max_response_length=$MAX_RESPONSE"
  data.return_raw_chat=True
  data.filter_overlong_prompts=True
  "actor_rollout_ref.model.path=$MODEL"
  "actor_rollout_ref.actor.optim.lr=$LR"
  "actor_rollout_ref.actor.ppo_mini_batch_size=$MINI_BATCH"
  "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$MICRO"
  "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=$MICRO"
  "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=$MICRO"
  actor_rollout_ref.actor.use_kl_loss=True
  "actor_rollout_ref.actor.kl_loss_coef=$KL_COEF"
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.rollout.name=vllm
  "actor_rollout_ref.rollout.n=$GROUP"
  "actor_rollout_ref.rollout.tensor_model_parallel_size=$TP"
  actor_rollout_ref.rollout.calculate_log_probs=True
  actor_rollout_ref.rollout.multi_turn.enable=True
  "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=$MAX_TURNS"
  actor_rollout_ref.rollout.multi_turn.format=hermes
  "actor_rollout_ref.rollout.multi_turn.tool_config_path=$here/adapters/verl/tool_config.yaml"
  "actor_rollout_ref.rollout.agent.agent_loop_config_path=$here/adapters/verl/agent_loop.yaml"
  actor_rollout_ref.rollout.agent.default_agent_loop=cm2_agent
  "reward.custom_reward_function.path=$here/adapters/verl/reward.py"
  reward.custom_reward_function.name=compute_score
  reward.reward_manager.name=naive
  "trainer.n_gpus_per_node=$GPUS"
  "trainer.nnodes=$NNODES"
  "trainer.total_epochs=$EPOCHS"
  trainer.project_name=cm2data
  "trainer.experiment_name=$EXPERIMENT"
  "trainer.logger=[console]"
)
if [ "${JUDGE_ROUTER:-0}" = "1" ]; then
  overrides+=(reward.reward_model.enable=True "reward.reward_model.model_path=$JUDGE_MODEL"
              reward.reward_model.rollout.name=vllm)
fi
overrides+=("$@")

export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${JUDGE_URL:-}" ]; then
  export CM2DATA_JUDGE_BASE_URL="$JUDGE_URL"
  export CM2DATA_SIM_BASE_URL="${SIM_URL:-$JUDGE_URL}"
fi
export CM2DATA_SIM_CACHE="${CM2DATA_SIM_CACHE:-${CM2DATA_CACHE:-$HOME/.cache/cm2data}/sim-cache.sqlite}"
export CM2DATA_CREDIT_ETA="$ETA" CM2DATA_CREDIT_NORMALIZE="$STEP_NORMALIZE"  # read where cm2_step runs

py="${VERL_PYTHON:-}"
if [ -z "$py" ]; then
  py="$(bash "$here/recipes/install_verl.sh")/bin/python"
fi
if [ "${DRY_RUN:-0}" = "1" ]; then
  "$py" -m adapters.verl.dry_run "${overrides[@]}"
  printf 'DRY_RUN: would run:\n  %q -m verl.trainer.main_ppo' "$py"
  printf ' %q' "${overrides[@]}"
  printf '\n'
  exit 0
fi
if [ "${START_JUDGE:-0}" = "1" ] && [ -z "${JUDGE_URL:-}" ]; then
  vllm serve "$JUDGE_MODEL" --port "$JUDGE_PORT" --enable-prefix-caching &
  judge_pid=$!
  trap 'kill $judge_pid 2>/dev/null || true' EXIT
  export CM2DATA_JUDGE_BASE_URL="http://127.0.0.1:$JUDGE_PORT/v1" CM2DATA_SIM_BASE_URL="http://127.0.0.1:$JUDGE_PORT/v1"
  until curl -sf "http://127.0.0.1:$JUDGE_PORT/v1/models" >/dev/null; do sleep 5; done
fi
exec "$py" -m verl.trainer.main_ppo "${overrides[@]}"
