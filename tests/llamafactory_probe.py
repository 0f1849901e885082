"""Tokenize an exported dataset with LLaMA-Factory's own loader and dump what it trains on.

Runs with the Python of LLaMA-Factory's environment (not the toolkit's), called by tests/test_llamafactory.py::

    $LF_VENV/bin/python tests/llamafactory_probe.py --dataset-dir OUT --dataset NAME --template qwen3 \
        --model TINY_MODEL --out probe.json

Writes ``{"examples": [{"input_ids", "labels", "segments": [[trained, text], …]}, …]}`` where ``segments`` are the
maximal runs of tokens with and without a label, decoded; with ``--official`` each example also gets the model's own
chat-template rendering of the same conversation. Uses LLaMA-Factory's real path: argument parsing, tokenizer
loading, template fixing, ``get_dataset`` (dataset_info.json lookup, sharegpt converter, alignment, supervised
processor), so a row LLaMA-Factory would skip is missing from the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cutoff", type=int, default=32768)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--official",
        type=Path,
        help="JSON list of {messages, tools}: also render each with the "
        "model's own chat template (tokenizer.apply_chat_template) as 'official'",
    )
    args = parser.parse_args(argv)

    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_args, data_args, training_args, _, _ = get_train_args(
            {
                "stage": "sft",
                "do_train": True,
                "model_name_or_path": args.model,
                "finetuning_type": "full",
                "dataset": args.dataset,
                "dataset_dir": args.dataset_dir,
                "template": args.template,
                "cutoff_len": args.cutoff,
                "overwrite_cache": True,
                "output_dir": tmp,
                "report_to": "none",
                "use_cpu": True,
                "bf16": False,
                "per_device_train_batch_size": 1,
            }
        )
        tokenizer_module = load_tokenizer(model_args)
        tokenizer = tokenizer_module["tokenizer"]
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
        module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    examples = []
    for ex in module["train_dataset"]:
        ids, labels = list(ex["input_ids"]), list(ex["labels"])
        segments: list[list] = []
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
                trained = labels[start] != IGNORE_INDEX
                if trained and labels[start:i] != ids[start:i]:
                    raise SystemExit(f"labels differ from input ids in a trained span at {start}")
                segments.append([trained, tokenizer.decode(ids[start:i], skip_special_tokens=False)])
                start = i
        examples.append({"input_ids": ids, "labels": labels, "segments": segments})
    if args.official is not None:
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(args.model)  # untouched by LLaMA-Factory's template fixing
        for ex, conv in zip(examples, json.loads(args.official.read_text()), strict=False):
            ex["official"] = own.apply_chat_template(conv["messages"], tools=conv["tools"] or None, tokenize=False)
    args.out.write_text(json.dumps({"examples": examples, "eos_token": tokenizer.eos_token}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
