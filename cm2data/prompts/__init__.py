"""Versioned prompts of the pipelines, one YAML file per prompt (``<name>.yaml``).

A prompt file holds ``name``, ``version`` (an integer, bumped whenever the wording changes in a way that can change
outputs), ``description``, and the message templates ``system`` and ``user``; optionally an ``example`` (any YAML
value, offered to the templates as ``$example``, compact JSON) and ``retired_examples`` (the examples of earlier
versions, never shown: rules that catch answers copied from a prompt's example check them too). Templates use
``$name`` placeholders (:class:`string.Template`), so JSON braces in a prompt need no escaping. Every record a prompt
touched carries its tag ``name@version`` in ``provenance.prompt_version`` (and in the stage's ``provenance.history``
entry), so a dataset says which wording produced it.

>>> p = load_prompt("annotate")
>>> p.tag
'annotate@2'
>>> messages = p.messages(tools="…", dialogue="…", num_turns=2, example_section="")
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

PROMPT_NAMES = ("scenario", "user_simulator", "assistant", "tool_mock", "quality_filter", "compress", "annotate")


@dataclass(frozen=True)
class Prompt:
    name: str
    version: int
    description: str
    system: str
    user: str
    example: Any = None
    retired_examples: tuple[Any, ...] = ()
    #: any other top-level keys of the file (templates or settings a stage reads itself)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def examples(self) -> list[Any]:
        """The current example (if any), then the retired ones."""
        return ([self.example] if self.example is not None else []) + list(self.retired_examples)

    @property
    def tag(self) -> str:
        """``name@version``: what goes into ``provenance.prompt_version``."""
        return f"{self.name}@{self.version}"

    def render(self, template: str, **values: Any) -> str:
        if self.example is not None:
            values = {"example": json.dumps(self.example, ensure_ascii=False), **values}
        try:
            return string.Template(template).substitute({k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise KeyError(f"prompt {self.tag} needs a value for ${exc.args[0]}") from None

    def messages(self, **values: Any) -> list[dict[str, str]]:
        """The system and user messages with ``values`` filled in (a template left empty is omitted)."""
        out = []
        if self.system.strip():
            out.append({"role": "system", "content": self.render(self.system, **values).strip()})
        if self.user.strip():
            out.append({"role": "user", "content": self.render(self.user, **values).strip()})
        return out


_FIELDS = ("name", "version", "description", "system", "user", "example", "retired_examples")


@cache
def load_prompt(name: str) -> Prompt:
    """The prompt ``name`` shipped in this package (``cm2data/prompts/<name>.yaml``)."""
    try:
        text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no prompt named {name!r}; shipped: {', '.join(PROMPT_NAMES)}") from None
    data = yaml.safe_load(text)
    if data.get("name") != name or not isinstance(data.get("version"), int):
        raise ValueError(f"prompt file {name}.yaml must declare name: {name} and an integer version")
    return Prompt(
        name=name,
        version=data["version"],
        description=data.get("description", ""),
        system=data.get("system", ""),
        user=data.get("user", ""),
        example=data.get("example"),
        retired_examples=tuple(data.get("retired_examples") or ()),
        extras={k: v for k, v in data.items() if k not in _FIELDS},
    )


def merge_prompt_versions(current: str | None, *tags: str) -> str:
    """Add ``tags`` to a record's ``prompt_version`` (``;``-separated ``name@version`` list, first use first)."""
    seen = [t for t in (current or "").split(";") if t]
    for tag in tags:
        if tag not in seen:
            seen.append(tag)
    return ";".join(seen)
