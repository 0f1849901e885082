"""Initialise the embeddings of the chat-format special tokens before SFT (method §7, optional).

The CM2 reference set the input embeddings of ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>``,
``<|im_start|>`` and ``<|im_end|>`` to the mean embedding of a few descriptive words before the cold-start SFT of a
*base* model, whose rows for these tokens were never trained. This script does that and saves the model and its
tokenizer to a new folder; ``recipes/sft_qwen.sh`` runs it when ``INIT_SPECIAL_EMBEDDINGS=1``.

Run it with the Python of LLaMA-Factory's environment (it needs torch and transformers)::

    $LF_VENV/bin/python recipes/init_special_embeddings.py --model Qwen/Qwen3-8B-Base --out init-model \
        [--words '<think>=begin reasoning'] …

Untied output embeddings (``lm_head``) get the same treatment, from the output rows of the same words, unless
``--input-only``. Prints one JSON line per token: its id, the words and their token ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: Token → the descriptive words whose mean embedding it gets (override with --words TOKEN=WORDS).
DEFAULT_WORDS: dict[str, str] = {
    "<think>": "begin thinking reasoning",
    "</think>": "end thinking reasoning",
    "<tool_call>": "begin tool function call",
    "</tool_call>": "end tool function call",
    "<|im_start|>": "start of message",
    "<|im_end|>": "end of message",
}


def init_special_embeddings(model, tokenizer, words: dict[str, str], *, input_only: bool = False) -> list[dict]:
    """Set each token's embedding row(s) to the mean of its words' rows. Returns what was done, per token."""
    import torch

    emb = model.get_input_embeddings().weight
    out_layer = model.get_output_embeddings()
    tied = out_layer is None or out_layer.weight.data_ptr() == emb.data_ptr()
    report = []
    with torch.no_grad():
        for token, text in words.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id or token_id >= emb.shape[0]:
                raise ValueError(f"{token!r} is not a token of this tokenizer")
            ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
            if not ids:
                raise ValueError(f"no tokens for the words of {token!r}")
            emb[token_id] = emb[ids].mean(dim=0)
            if not tied and not input_only:
                out_layer.weight[token_id] = out_layer.weight[ids].mean(dim=0)
            report.append({"token": token, "id": token_id, "words": text, "word_ids": ids, "tied": tied})
    return report


def parse_words(items: list[str]) -> dict[str, str]:
    words = dict(DEFAULT_WORDS)
    for item in items:
        token, sep, text = item.partition("=")
        if not sep or not text.strip():
            raise SystemExit(f"--words expects TOKEN=WORDS, got {item!r}")
        words[token] = text
    return words


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder or hub id (offline: a local folder)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--words", action="append", default=[], help="TOKEN=WORDS (repeatable)")
    parser.add_argument("--input-only", action="store_true", help="leave untied output embeddings alone")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    report = init_special_embeddings(model, tokenizer, parse_words(args.words), input_only=args.input_only)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    for line in report:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
