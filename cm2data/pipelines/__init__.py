"""The distilabel pipelines of cm2data (method §2–3, §6): ``synthesize``, ``filter``, ``compress``, ``select``,
``annotate``, one module per stage, chained by :func:`run_pipeline` from a YAML config (``cm2data run``) or run one
at a time (:func:`run_stage`, ``cm2data synthesize|llm-filter|compress|select|annotate``). See docs/pipelines.md.

Importing this package imports distilabel (the stage modules' steps are distilabel ``Step``/``Task`` classes) and
registers the built-in stages (:mod:`cm2data.pipelines.registry`), in pipeline order.

The modules: ``rows`` (the row layout and its helpers), ``journal`` (per-row journals, resume), ``steps`` (the
distilabel base steps), ``run`` (running a distilabel pipeline over rows), ``results`` (rows → records and
rejects), ``registry`` (the stages), ``config`` (the YAML), ``runner`` (stages on dataset folders), one module per
stage, ``report`` and ``commands`` (what the CLI calls).
"""

import warnings

# distilabel 1.5.3's own models trip a pydantic 2.14 warning at import ("The 'default' attribute with value None
# was provided to the `Field()` function"); it is about distilabel's code, not ours, and repeats in every process
warnings.filterwarnings("ignore", message="The 'default' attribute with value None")

# the built-in stages register themselves on import, in the order of a pipeline
from cm2data.pipelines import synthesize, filter, compress, select, annotate  # noqa: E402, F401, I001
from cm2data.pipelines.config import (  # noqa: E402
    REFERENCE_DROP_RATIOS,
    AnnotateConfig,
    CompressConfig,
    FilterConfig,
    PipelineConfig,
    SelectConfig,
    SynthesizeConfig,
    load_pipeline_config,
)
from cm2data.pipelines.registry import Stage, register_stage, stage, stages  # noqa: E402
from cm2data.pipelines.runner import (  # noqa: E402
    Endpoint,
    RunResult,
    StageOutcome,
    resolve_endpoint,
    run_pipeline,
    run_stage,
)

__all__ = [
    "REFERENCE_DROP_RATIOS",
    "AnnotateConfig",
    "CompressConfig",
    "Endpoint",
    "FilterConfig",
    "PipelineConfig",
    "RunResult",
    "SelectConfig",
    "Stage",
    "StageOutcome",
    "SynthesizeConfig",
    "load_pipeline_config",
    "register_stage",
    "resolve_endpoint",
    "run_pipeline",
    "run_stage",
    "stage",
    "stages",
]
