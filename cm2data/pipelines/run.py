"""Running a stage's distilabel ``Pipeline`` over a list of rows (:func:`run_rows`), and what a stage runs with
(:class:`StageContext`).
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cm2data.llm import LLMConfig, LLMError
from cm2data.pipelines.registry import stages
from cm2data.pipelines.rows import fingerprint, reject_json
from cm2data.pipelines.steps import JSONTask, ReadRows, RecordStep, llm_settings


@dataclass
class StageRun:
    """The rows a stage's pipeline returned, and what it cost."""

    rows: list[dict[str, Any]]
    seconds: float
    pipeline_seconds: float = 0.0


def _quiet_environment() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    import datasets

    datasets.disable_progress_bars()  # the Distiset's "Generating train split" bars (the env var is read at import)


def _warn(message: str) -> None:
    # stderr, not logging: distilabel routes the root logger through a queue that a lost Ray run has closed
    print(f"cm2data: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _forkserver() -> Iterator[None]:
    """Run distilabel's processes from a fork server instead of forking this process.

    distilabel 1.5.3 forks its step processes (``multiprocessing``'s default on Linux). Forking a process that has
    used polars (the gate's pandera tables) leaves polars' thread pool dead in the child: the child's next polars
    call waits forever (seen here: the annotate step hung in ``LazyFrame.collect`` after the test process had run
    the gate). A fork server is a fresh process that preloads distilabel and the step modules without touching
    polars; the step processes fork from it. The start method is switched only around ``Pipeline.run``.
    """
    import multiprocessing as mp
    import multiprocessing.context

    import distilabel.pipeline.local as local

    class ForkServerNoDaemonContext(multiprocessing.context.ForkServerContext):
        Process = local._NoDaemonProcess

    # distilabel builds its pool with ``_NoDaemonContext``, a subclass of the context type that was the default when
    # it was imported (fork): its queues would be fork-context objects shared with fork-server processes, which
    # multiprocessing refuses. Swap in the fork-server flavour for the duration of the run.
    previous = mp.get_start_method(allow_none=True)
    previous_context = local._NoDaemonContext
    mp.set_forkserver_preload(
        [
            "cm2data.pipelines",
            "distilabel.pipeline.local",  # first: its warning filter
            *dict.fromkeys(s.module for s in stages().values()),
        ]
    )  # the stage modules
    mp.set_start_method("forkserver", force=True)
    local._NoDaemonContext = ForkServerNoDaemonContext
    try:
        yield
    finally:
        local._NoDaemonContext = previous_context
        mp.set_start_method(previous, force=True)


def run_rows(
    name: str,
    rows: Sequence[dict[str, Any]],
    build: Callable[[], Sequence[Any]],
    work: Path,
    *,
    batch_size: int = 50,
    api_key: str | None = None,
) -> StageRun:
    """Run ``rows`` through a distilabel ``Pipeline``: :class:`ReadRows` → the steps ``build()`` makes (called
    inside the pipeline's context, in order, each connected to the previous one) → back, in input order.

    Returns one row per input id: if distilabel returned a row twice the last copy counts, and a row it lost comes
    back rejected (rule ``lost_in_pipeline``) so that nothing disappears silently.

    Under :func:`cm2data.pipelines.ray.on_ray` the same steps run as a ``RayPipeline`` on a Ray cluster, each
    LLM-using step (journaled) in the settings' number of replicas (see :mod:`cm2data.pipelines.ray`).
    """
    from distilabel.pipeline import Pipeline
    from distilabel.steps import StepResources

    from cm2data.pipelines import ray as on_ray

    _quiet_environment()
    started = time.monotonic()
    rows = list(rows)
    if not rows:
        return StageRun([], 0.0)
    work.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    path = work / f"{name}-input.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    size = max(1, batch_size)
    ray = on_ray.current()

    def assemble(cls: Any) -> Any:
        with cls(name=f"cm2data-{name}", cache_dir=str(work / "distilabel")) as pipeline:
            previous: Any = ReadRows(
                name="read_rows",
                path=str(path),
                columns=columns,
                batch_size=size,
                fingerprint=fingerprint(str(path), len(rows), time.time()),
            )
            for step in build():
                if isinstance(step, RecordStep):
                    step._api_key = api_key
                if ray is not None and (ray.replicas or 1) > 1 and isinstance(step, RecordStep | JSONTask):
                    step.resources = StepResources(replicas=ray.replicas or 1)
                previous.connect(step)
                previous = step
        return pipeline

    if ray is None:
        with _forkserver():  # before the pipeline exists: it creates multiprocessing objects of the current context
            pipeline = assemble(Pipeline)
            t0 = time.monotonic()
            distiset = pipeline.run(use_cache=False)
            pipeline_seconds = time.monotonic() - t0
    else:
        t0 = time.monotonic()
        distiset = on_ray.run_on_ray(assemble, ray, work, say=_warn)
        pipeline_seconds = time.monotonic() - t0
    got: dict[str, dict[str, Any]] = {}
    for config in distiset:
        for split in distiset[config]:
            for row in distiset[config][split].to_list():
                got[row["id"]] = row
    ordered = []
    for row in rows:
        new = got.get(row["id"])
        if new is None:
            new = {
                **row,
                "reject": reject_json(name, "lost_in_pipeline", "the pipeline returned no row for this input"),
            }
        ordered.append({k: ("" if v is None else v) for k, v in new.items()})
    return StageRun(ordered, time.monotonic() - started, pipeline_seconds)


@dataclass
class StageContext:
    """What a stage runs with: its work folder (journals, distilabel cache, the simulator's cache), the endpoint
    (model already decided) and the schema form the server takes, the batch size, the default seed, and whether
    LLM requests carry a ``seed`` (off by default, see docs/pipelines.md, "Resume and determinism")."""

    work: Path
    llm: LLMConfig | None = None
    schema_form: str = "structured_outputs"
    batch_size: int = 50
    seed: int = 42
    request_seeds: bool = False

    @property
    def llm_settings(self) -> dict[str, Any]:
        if self.llm is None:
            raise LLMError("this stage needs an LLM endpoint and none was configured")
        return llm_settings(self.llm)

    @property
    def model(self) -> str | None:
        return self.llm.model if self.llm is not None else None

    @property
    def api_key(self) -> str | None:
        return self.llm.api_key if self.llm is not None else None
