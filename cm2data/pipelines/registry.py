"""The stage registry: the one table of pipeline stages (name → settings class, run function, whether it calls an
LLM, where its input comes from), filled by each stage module with :func:`register_stage` and read by the runner,
the pipeline config and the CLI stage commands.

A stage module registers its run function, which takes the input records, the stage's settings and the
:class:`~cm2data.pipelines.run.StageContext`::

    @register_stage("annotate", config=AnnotateConfig, llm=True)
    def run_annotate(records, cfg, ctx) -> StageResult: ...

A name can be registered once: a second registration is refused (a typo or a second module claiming a stage would
otherwise silently replace the first). Importing :mod:`cm2data.pipelines` registers the built-in stages, in the
order of a pipeline (synthesize, filter, compress, select, annotate).

>>> from cm2data.pipelines.registry import stage
>>> stage("select").llm, stage("select").takes_input
(False, True)
>>> stage("synthesize").takes_input
False
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from cm2data.pipelines.config import StageConfig
    from cm2data.pipelines.results import StageResult
    from cm2data.pipelines.run import StageContext
    from cm2data.schema import Dialogue


class StageRunner(Protocol):
    """A stage's run function: the input records (empty for a stage that reads none), its settings, its context."""

    def __call__(self, records: list[Dialogue], cfg: Any, ctx: StageContext, /) -> StageResult: ...


@dataclass(frozen=True)
class Stage:
    """One registered stage.

    ``llm``: the stage may call an LLM (its endpoint then enters the stage's fingerprint; whether a given
    configuration does is :meth:`uses_llm`). ``source``: for a stage that reads no records (``synthesize``), the
    file its input is, given its settings (its content is the input's fingerprint).
    """

    name: str
    config: type[StageConfig]
    run: StageRunner
    llm: bool = False
    source: Callable[[Any], Path] | None = None

    @property
    def takes_input(self) -> bool:
        return self.source is None

    @property
    def module(self) -> str:
        return self.run.__module__

    def uses_llm(self, cfg: StageConfig) -> bool:
        """Whether the stage calls an LLM with these settings (the filter with ``passes: 0`` does not)."""
        return self.llm and cfg.needs_llm()


_STAGES: dict[str, Stage] = {}

F = TypeVar("F", bound=Callable[..., Any])


def register_stage(
    name: str, *, config: type[StageConfig], llm: bool = False, source: Callable[[Any], Path] | None = None
) -> Callable[[F], F]:
    """Register the decorated run function as the stage ``name``; a name already registered is refused."""

    def decorate(fn: F) -> F:
        if name in _STAGES:
            raise ValueError(f"stage {name!r} is already registered (by {_STAGES[name].module}); choose another name")
        _STAGES[name] = Stage(name, config, fn, llm, source)
        return fn

    return decorate


def stages() -> Mapping[str, Stage]:
    """Every registered stage, in registration order (read-only)."""
    return MappingProxyType(_STAGES)


def stage(name: str) -> Stage:
    """The stage ``name``; :class:`ValueError` naming the known ones if there is none."""
    found = _STAGES.get(name)
    if found is None:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(_STAGES)}")
    return found
