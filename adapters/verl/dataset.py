"""``CM2RLDataset``: VeRL's ``RLHFDataset`` for ``cm2data export verl`` files (``data.custom_cls``).

It decodes the JSON-string columns (``extra_info.tools``, ``tools_kwargs``, ``messages``, ``tool_selection``;
``reward_model.ground_truth`` stays a string for ``compute_score``), renders each prompt with the row's own tools
(not the global tool config's placeholder) when filtering long prompts, and turns tool-call arguments back into dicts
before templating (Qwen2.5's template double-encodes strings).

Importing this module also registers the ``cm2_turn``/``cm2_step`` advantage estimators (:mod:`adapters.verl.credit`):
VeRL's trainer loads this file (``data.custom_cls.path``) in the process that computes advantages, before training.
"""

from __future__ import annotations

from typing import Any

from verl.utils.dataset.rl_dataset import RLHFDataset

import adapters.verl.credit  # noqa: F401  (registers cm2_turn / cm2_step where the trainer computes advantages)
from adapters.verl.common import decode, decode_arguments


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    extra = dict(decode(row.get("extra_info"), {}) or {})
    for key, default in (("tools", []), ("tools_kwargs", {}), ("messages", []), ("tool_selection", [])):
        if key in extra:
            extra[key] = decode(extra[key], default)
    row["extra_info"] = extra
    return row


class CM2RLDataset(RLHFDataset):
    def maybe_filter_out_long_prompts(self, dataframe=None):
        if not self.filter_overlong_prompts or dataframe is None:
            return dataframe
        tokenizer, key, limit = self.tokenizer, self.prompt_key, self.max_prompt_length
        kwargs = {
            k: v
            for k, v in dict(self.apply_chat_template_kwargs).items()
            if k not in ("tokenize", "return_dict", "return_tensors", "tools")
        }

        def length(doc: dict[str, Any]) -> int:
            try:
                tools = decode(decode(doc.get("extra_info"), {}).get("tools"), []) or None
                ids = tokenizer.apply_chat_template(
                    decode_arguments(list(doc[key])), tools=tools, add_generation_prompt=True, tokenize=True, **kwargs
                )
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                return len(ids)
            except Exception:
                return limit + 1

        return dataframe.filter(lambda doc: length(doc) <= limit, desc=f"Filtering prompts longer than {limit}")

    def __getitem__(self, item):
        row = self.dataframe[item]
        decode_row(row)
        row["raw_prompt"] = decode_arguments(self._build_messages(row, key=self.prompt_key))
        import torch

        row["dummy_tensor"] = torch.tensor([0], dtype=torch.uint8)
        extra = row["extra_info"]
        row["index"] = extra.get("index", 0)
        row["tools_kwargs"] = extra.get("tools_kwargs") or {}
        row["interaction_kwargs"] = {}
        return row

    def render_prompt(self, item: int) -> str:
        """The prompt text the policy sees for row ``item`` (its own tools included)."""
        row = self[item]
        return self.tokenizer.apply_chat_template(
            row["raw_prompt"], tools=row["extra_info"].get("tools") or None, add_generation_prompt=True, tokenize=False
        )
