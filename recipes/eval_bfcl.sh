#!/usr/bin/env bash
# BFCL v4 multi-turn on a GPU machine: serve a model with vLLM (its tool-call parser on), run `cm2data eval bfcl`
# against it, stop the server. See docs/eval.md.
#
#   bash recipes/eval_bfcl.sh MODEL --out runs/bfcl-rl [cm2data eval bfcl options …]
#   bash recipes/eval_bfcl.sh Qwen/Qwen3-8B --out runs/bfcl-qwen3 --categories multi_turn_base --limit 20
#   bash recipes/eval_bfcl.sh /ckpt/rl/global_step_200/hf --name cm2-rl --out runs/bfcl-rl
#   bash recipes/eval_bfcl.sh MODEL --out runs/x --dry-run      # print the two commands, run nothing
#
# MODEL is a Hub id or a local folder (a merged checkpoint). Options of this script (the rest go to cm2data eval
# bfcl): --name NAME (served model name; default: the folder's name or the id), --port N (default 8000), --parser P
# (vLLM --tool-call-parser; default hermes, right for Qwen2.5 and Qwen3: their chat templates emit
# <tool_call>{…}</tool_call>; llama3_json for Llama 3.x, mistral for Mistral, qwen3_coder for Qwen3-Coder),
# --dry-run.
#
# Environment: VLLM (the server command, default `vllm`; vLLM's own GPU install, not the project's CPU build),
# VLLM_ARGS (more server arguments, e.g. "--tensor-parallel-size 2 --reasoning-parser qwen3"), MAX_MODEL_LEN (default
# 32768: the long_context category's conversations are long), GPU_MEMORY_UTILIZATION (default 0.9), CONCURRENCY
# (entries in flight, default 32), CM2DATA (the cm2data command, default: the checkout's own environment through
# scripts/bootstrap.sh), READY_TIMEOUT (seconds to wait for the server, default 900).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
model="$1"; shift
case "$model" in -*) usage ;; esac
name="" port=8000 parser=hermes dry=0 rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --parser) parser="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) rest+=("$1"); shift ;;
  esac
done
[ -n "$name" ] || name="$(basename "${model%/}")"
vllm_cmd=(${VLLM:-vllm} serve "$model" --served-model-name "$name" --host 127.0.0.1 --port "$port"
          --enable-auto-tool-choice --tool-call-parser "$parser"
          --max-model-len "${MAX_MODEL_LEN:-32768}" --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.9}")
# shellcheck disable=SC2206  # VLLM_ARGS is a list of arguments
vllm_cmd+=(${VLLM_ARGS:-})
if [ -n "${CM2DATA:-}" ]; then cm2=("$CM2DATA"); else cm2=("$(bash "$here/scripts/bootstrap.sh")/bin/cm2data"); fi
eval_cmd=("${cm2[@]}" eval bfcl --base-url "http://127.0.0.1:$port/v1" --model "$name"
          --concurrency "${CONCURRENCY:-32}" "${rest[@]}")
if [ "$dry" = 1 ]; then
  printf '%q ' "${vllm_cmd[@]}"; echo
  printf '%q ' "${eval_cmd[@]}"; echo
  exit 0
fi
log="$(mktemp -t eval-bfcl-vllm.XXXXXX.log)"
echo "eval_bfcl: starting vLLM for $model as $name on port $port (log $log)…" >&2
"${vllm_cmd[@]}" >"$log" 2>&1 &
server=$!
stop() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
trap stop EXIT
deadline=$(( $(date +%s) + ${READY_TIMEOUT:-900} ))
until curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "eval_bfcl: vLLM exited during start-up; its log ends:" >&2; tail -n 30 "$log" >&2; exit 1
  fi
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "eval_bfcl: vLLM not ready after ${READY_TIMEOUT:-900} s; its log ends:" >&2; tail -n 30 "$log" >&2; exit 1
  fi
  sleep 2
done
echo "eval_bfcl: vLLM ready; running BFCL v4 multi-turn" >&2
status=0
"${eval_cmd[@]}" || status=$?
exit "$status"
