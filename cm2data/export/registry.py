"""The registry of trainer exports that ``cm2data publish --with NAME`` adds to a published dataset as extra configs.

An entry names its config, says how the card and error messages call it, and where its table builder is: either
``build`` itself, or ``target`` (``"module:function"``), imported lazily and only if its ``requires`` module
imports, so that an exporter that is not installed makes ``--with`` fail with a message naming it. The builder's
interface is explicit, never guessed from its signature:

* ``build(records, split) -> pyarrow.Table`` — the default (:class:`ConfigTable`);
* ``build(records, split, start=...)`` — when the entry says ``indexed=True`` (:class:`IndexedConfigTable`):
  ``start`` is the position of ``records[0]`` in its split (builds are called chunk by chunk).

:meth:`Exporter.builder` returns the one form the publisher calls, ``(records, split, start)``. A name is registered
once: :func:`register_exporter` refuses a name already taken.

>>> from cm2data.export.registry import EXPORTERS
>>> [(e.name, e.config, e.indexed) for e in EXPORTERS.values()]
[('sft', 'sft_llamafactory', False), ('rl', 'rl_verl', True)]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from cm2data.schema import Dialogue


class ConfigTable(Protocol):
    """A config's rows for some records of one split."""

    def __call__(self, records: Sequence[Dialogue], split: str, /) -> pa.Table: ...


class IndexedConfigTable(Protocol):
    """A config's rows for some records of one split, ``records[0]`` being at position ``start`` in the split."""

    def __call__(self, records: Sequence[Dialogue], split: str, /, *, start: int) -> pa.Table: ...


#: What the publisher calls: ``(records, split, start)``.
TableBuilder = Callable[["Sequence[Dialogue]", str, int], "pa.Table"]


@dataclass
class Exporter:
    """A trainer export published as an extra config (``--with NAME``); see the module docstring."""

    name: str
    config: str
    label: str
    command: str
    target: str | None = None
    description: str = ""
    build: ConfigTable | IndexedConfigTable | None = None
    requires: str | None = None
    indexed: bool = False

    def load(self) -> Any:
        """The builder as registered (``build``, or ``target`` imported), or None when its module is not there."""
        if self.build is not None:
            return self.build
        if not self.target:
            return None
        module_name, _, attr = self.target.partition(":")
        for name in (self.requires, module_name):
            if name is None:
                continue
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                    return None
                raise
        fn = getattr(module, attr, None)
        return fn if callable(fn) else None

    def builder(self) -> TableBuilder | None:
        """The builder in the one form the publisher calls, ``(records, split, start)``; None when not there."""
        fn = self.load()
        if fn is None:
            return None
        if self.indexed:
            return lambda records, split, start: fn(records, split, start=start)
        return lambda records, split, start: fn(records, split)


#: ``--with`` names → exporters. The built-in ones are imported only when asked for.
EXPORTERS: dict[str, Exporter] = {
    "sft": Exporter(
        "sft",
        "sft_llamafactory",
        "LLaMA-Factory SFT export",
        "cm2data export llamafactory",
        "cm2data.export.llamafactory:hub_table",
        "LLaMA-Factory rows (sharegpt formatting with role/content tags, `messages` + `tools`; "
        "inline tool calls, qwen3 template) for the supervised cold start",
        requires="cm2data.export.llamafactory",
    ),
    "rl": Exporter(
        "rl",
        "rl_verl",
        "VeRL RL export",
        "cm2data export verl",
        "cm2data.export.verl:hub_table",
        "rows in VeRL 0.9.1's RL dataset schema (`prompt`, `reward_model` with the checklists as ground "
        "truth, `extra_info` with the dialogue and tools as JSON strings) for GRPO with checklist rewards",
        requires="cm2data.export.verl",
        indexed=True,
    ),
}


def register_exporter(
    name: str,
    config: str,
    build: ConfigTable | IndexedConfigTable | None = None,
    *,
    label: str | None = None,
    command: str = "",
    description: str = "",
    indexed: bool = False,
) -> Any:
    """Register the exporter published by ``--with NAME`` as the config ``config``; a name already registered is
    refused. With ``build`` it returns the :class:`Exporter`; without, it is a decorator of the builder::

        @register_exporter("ids", "ids_only", label="id list")
        def ids_table(records, split): ...
    """

    def add(fn: ConfigTable | IndexedConfigTable) -> Exporter:
        if name in EXPORTERS:
            raise ValueError(
                f"exporter {name!r} is already registered (config {EXPORTERS[name].config}); choose another name"
            )
        exporter = Exporter(name, config, label or name, command, None, description, fn, indexed=indexed)
        EXPORTERS[name] = exporter
        return exporter

    if build is not None:
        return add(build)

    def decorate(fn: Any) -> Any:
        add(fn)
        return fn

    return decorate
