#!/usr/bin/env bash
# CM2 cold-start SFT (method §7) with LLaMA-Factory: recipes/sft_qwen.yaml plus overrides from the environment.
#
#   cm2data export llamafactory ds/ --out out/llamafactory     # the data (dataset_info.json + rows)
#   bash recipes/sft_qwen.sh                                    # train with the reference settings (GPUs)
#   SMOKE=1 bash recipes/sft_qwen.sh                            # 2 steps on CPU on a tiny random Qwen3, offline
#
# Each variable overrides one key of the YAML; unset, the YAML's value (the reference's) stands:
#   MODEL             model_name_or_path           Qwen/Qwen3-8B-Base (SMOKE: a tiny Qwen3 built offline, cached)
#   DATASET_DIR       dataset_dir                  out/llamafactory
#   DATASET           dataset                      cm2data
#   TEMPLATE          template                     qwen3, or the template the export was made for (export.json)
#   CUTOFF_LEN        cutoff_len                   12000
#   LR                learning_rate                1e-5 (the paper text says 1e-6; the reference ran 1e-5)
#   EPOCHS            num_train_epochs             2
#   SCHEDULER         lr_scheduler_type            cosine
#   WARMUP_RATIO      warmup_ratio                 0.1
#   PER_DEVICE_BATCH  per_device_train_batch_size  1
#   GLOBAL_BATCH      gradient_accumulation_steps = GLOBAL_BATCH / (PER_DEVICE_BATCH x NUM_GPUS)   64
#   NUM_GPUS          GPUs to count for the global batch: auto (all visible CUDA devices; 1 on CPU)
#   FINETUNING_TYPE   finetuning_type              full
#   DEEPSPEED         deepspeed config             recipes/ds_z3.json ("none": off; needs deepspeed in the env,
#                                                  CM2DATA_LLAMAFACTORY_EXTRA=deepspeed==… for the install script)
#   BF16              bf16                         true
#   OUTPUT_DIR        output_dir                   out/sft-qwen3
#   MAX_STEPS         max_steps                    unset (the epochs decide)
#   SAVE_STEPS        save_steps, with save_strategy=steps
#   LOGGING_STEPS     logging_steps                10
#   INIT_SPECIAL_EMBEDDINGS=1  initialise the special-token embeddings first (recipes/init_special_embeddings.py)
#                              and train from OUTPUT_DIR/init-model
#   EXTRA_ARGS        more key=value overrides for llamafactory-cli, space separated
#   LF_VENV           LLaMA-Factory's environment (default: built or reused by recipes/install_llamafactory.sh)
#   SMOKE=1           CPU smoke mode: use_cpu, offline, bf16 off, no deepspeed, MAX_STEPS=2, GLOBAL_BATCH=2,
#                     a log line and a checkpoint at every step up to MAX_STEPS
# Relative paths are taken from the current directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HF_HUB_DISABLE_TELEMETRY=1
venv="${LF_VENV:-$(bash "$here/recipes/install_llamafactory.sh")}"
py="$venv/bin/python"
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
args=()
add() { args+=("$1=$2"); }

smoke="${SMOKE:-0}"
if [ "$smoke" = 1 ]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
  : "${MAX_STEPS:=2}" "${GLOBAL_BATCH:=2}" "${LOGGING_STEPS:=1}" "${DEEPSPEED:=none}" "${BF16:=false}"
  : "${SAVE_STEPS:=$MAX_STEPS}"
  if [ -z "${MODEL:-}" ]; then
    MODEL="${CM2DATA_CACHE:-$HOME/.cache/cm2data}/models/tiny-qwen3"
    if [ ! -f "$MODEL/model.safetensors" ]; then
      rm -rf "$MODEL.partial"
      "$py" "$here/cm2data/export/tiny_model.py" --out "$MODEL.partial" --family qwen3 >&2
      rm -rf "$MODEL" && mv "$MODEL.partial" "$MODEL"
    fi
  fi
  args+=(use_cpu=true preprocessing_num_workers=null dataloader_num_workers=0 plot_loss=false)
fi

dataset_dir="$(abs "${DATASET_DIR:-out/llamafactory}")"
if [ ! -f "$dataset_dir/dataset_info.json" ]; then
  echo "no $dataset_dir/dataset_info.json: run 'cm2data export llamafactory DIR --out $dataset_dir' first" \
       "(or set DATASET_DIR)" >&2
  exit 2
fi
add dataset_dir "$dataset_dir"
dataset="${DATASET:-cm2data}"
add dataset "$dataset"
template="${TEMPLATE:-}"
if [ -z "$template" ] && [ -f "$dataset_dir/export.json" ]; then
  template="$("$py" -c 'import json, sys; m = json.load(open(sys.argv[1])); print(m.get("template", "") if m.get("name") == sys.argv[2] else "")' "$dataset_dir/export.json" "$dataset")"
fi
if [ -n "$template" ]; then add template "$template"; fi

if [ "${NUM_GPUS:-auto}" = auto ]; then
  if [ "$smoke" = 1 ]; then ngpu=1; else ngpu="$("$py" -c 'import torch; print(max(1, torch.cuda.device_count()))')"; fi
else
  ngpu="$NUM_GPUS"
fi
per="${PER_DEVICE_BATCH:-1}"
global="${GLOBAL_BATCH:-64}"
if (( global % (per * ngpu) != 0 )); then
  echo "GLOBAL_BATCH=$global is not a multiple of PER_DEVICE_BATCH=$per x NUM_GPUS=$ngpu" >&2
  exit 2
fi
add per_device_train_batch_size "$per"
add gradient_accumulation_steps "$(( global / (per * ngpu) ))"

case "${DEEPSPEED:-}" in
  "") add deepspeed "$here/recipes/ds_z3.json" ;;
  none) add deepspeed null ;;
  *) add deepspeed "$(abs "$DEEPSPEED")" ;;
esac
output_dir="$(abs "${OUTPUT_DIR:-out/sft-qwen3}")"
add output_dir "$output_dir"
if [ -n "${CUTOFF_LEN:-}" ]; then add cutoff_len "$CUTOFF_LEN"; fi
if [ -n "${LR:-}" ]; then add learning_rate "$LR"; fi
if [ -n "${EPOCHS:-}" ]; then add num_train_epochs "$EPOCHS"; fi
if [ -n "${SCHEDULER:-}" ]; then add lr_scheduler_type "$SCHEDULER"; fi
if [ -n "${WARMUP_RATIO:-}" ]; then add warmup_ratio "$WARMUP_RATIO"; fi
if [ -n "${FINETUNING_TYPE:-}" ]; then add finetuning_type "$FINETUNING_TYPE"; fi
if [ -n "${BF16:-}" ]; then add bf16 "$BF16"; fi
if [ -n "${MAX_STEPS:-}" ]; then add max_steps "$MAX_STEPS"; fi
if [ -n "${SAVE_STEPS:-}" ]; then add save_strategy steps; add save_steps "$SAVE_STEPS"; fi
if [ -n "${LOGGING_STEPS:-}" ]; then add logging_steps "$LOGGING_STEPS"; fi

model="${MODEL:-}"
if [ "${INIT_SPECIAL_EMBEDDINGS:-0}" = 1 ]; then
  src="${model:-$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["model_name_or_path"])' "$here/recipes/sft_qwen.yaml")}"
  model="$output_dir/init-model"
  "$py" "$here/recipes/init_special_embeddings.py" --model "$src" --out "$model" >&2
fi
if [ -n "$model" ]; then add model_name_or_path "$model"; fi

# shellcheck disable=SC2206  # EXTRA_ARGS is a space-separated list of key=value words
args+=(${EXTRA_ARGS:-})
echo "llamafactory-cli train recipes/sft_qwen.yaml ${args[*]}" >&2
exec "$venv/bin/llamafactory-cli" train "$here/recipes/sft_qwen.yaml" "${args[@]}"
