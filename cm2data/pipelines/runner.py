"""Running stages on dataset folders: one stage alone (``cm2data annotate --in A --out B``) or a whole pipeline
(``cm2data run PIPELINE.yaml``), with resume, the rejects table and the run report.

A stage's output folder holds the dataset (``README.md``, ``data/dialogues/``), ``rejects.jsonl`` (the input
folder's rejects carried over, then this stage's), ``stage.json`` (written last: counts, usage, timings, the
stage's fingerprint), ``report.json`` and ``report.html``, and ``.work/`` (the journals, distilabel's cache, the
tool simulator's cache). A run of ``cm2data run`` writes each stage into ``OUT/stages/NN-<stage>/`` and the result
into ``OUT`` itself (dataset, every reject, ``pipeline.yaml`` with the resolved configuration, the report).

Resume: a stage whose ``stage.json`` has the same fingerprint (stage settings, input content, model, prompt
versions) is not run again; a stage that did not finish is run again, and its steps take every row they had
finished from their journals (see :mod:`cm2data.pipelines.journal`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from cm2data import store
from cm2data.llm import LLMConfig, LLMError, SyncLLMClient, resolve_config
from cm2data.pipelines.config import PipelineConfig, StageConfig
from cm2data.pipelines.ray import RaySettings, on_ray, require_ray
from cm2data.pipelines.registry import stage
from cm2data.pipelines.report import build_report, write_report
from cm2data.pipelines.rows import fingerprint
from cm2data.pipelines.run import StageContext
from cm2data.prompts import PROMPT_NAMES, load_prompt
from cm2data.rejects import Reject, read_rejects, write_rejects
from cm2data.schema import Dialogue

STAGE_FILE = "stage.json"
WORK_DIR = ".work"

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------------------- LLM


@dataclass
class Endpoint:
    """The resolved endpoint of a run: config with the model decided, and the schema form the server takes."""

    config: LLMConfig
    kind: str
    schema_form: str

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base_url": self.config.base_url,
            "model": self.config.model,
            "server": self.kind,
            "structured_output": self.schema_form,
        }
        if self.config.extra_base_urls:  # balanced endpoints (docs/scale.md)
            out["base_urls"] = list(self.config.endpoints)
        return out


def resolve_endpoint(
    base_url: str | Sequence[str] | None = None,
    model: str | None = None,
    *,
    settings: dict[str, Any] | None = None,
    start_embedded: bool = True,
) -> Endpoint:
    """``--base-url``/``--model``, then ``CM2DATA_LLM_*``, then ``settings`` (a pipeline's ``llm:``); none of them →
    the embedded server (started or reused). Several base URLs (a list, or ``--base-url`` repeated) are balanced
    (:mod:`cm2data.llm.balance`). Checks that every server answers (fails fast, naming the URL)."""
    values = dict(settings or {})
    config = resolve_config(
        base_url=base_url or values.pop("base_url", None),
        model=model or values.pop("model", None),
        start_embedded=start_embedded,
        **{k: v for k, v in values.items() if k not in ("base_url", "model")},
    )
    with SyncLLMClient(config) as client:
        info = client.check()
    return Endpoint(config.with_(model=info.model), info.kind, info.structured_output)


# -------------------------------------------------------------------------------------------------- fingerprints


def folder_fingerprint(folder: Path) -> str:
    """A hash of a dataset folder's parquet files (what a stage reads)."""
    h = hashlib.sha256()
    for split, paths in sorted(store.split_files(folder).items()):
        for p in paths:
            h.update(f"{split}/{p.name}".encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file() and WORK_DIR not in p.parts:
                h.update(p.relative_to(path).as_posix().encode())
                h.update(p.read_bytes())
        return h.hexdigest()[:16]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def stage_fingerprint(name: str, cfg: StageConfig, input_fp: str, endpoint: Endpoint | None, seed: Any) -> str:
    prompts = [load_prompt(p).tag for p in PROMPT_NAMES]
    llm = endpoint.describe() if endpoint is not None and stage(name).llm else None
    return fingerprint(name, cfg.model_dump(mode="json"), input_fp, llm, prompts, seed)


# ------------------------------------------------------------------------------------------------------ stages


@dataclass
class StageOutcome:
    """What :func:`run_stage` did: the summary written to ``stage.json`` and whether it was reused."""

    folder: Path
    summary: dict[str, Any]
    reused: bool
    rejects: list[Reject] = field(default_factory=list)


def load_input(src: Path, fmt: str = "auto") -> tuple[list[Dialogue], list[Reject], str]:
    """Records of a dataset folder or a file (any registered format), the rejects it carries (its
    ``rejects.jsonl`` and unreadable rows), and its fingerprint."""
    from cm2data.sources import load

    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    records, read_rejects_ = load(src, fmt)
    earlier = read_rejects(src / store.REJECTS_FILE) if src.is_dir() else []
    fp = folder_fingerprint(src) if store.is_dataset_folder(src) else file_fingerprint(src)
    return records, [*earlier, *read_rejects_], fp


def run_stage(
    name: str,
    cfg: StageConfig,
    out: Path,
    *,
    src: Path | None = None,
    fmt: str = "auto",
    endpoint: Endpoint | None = None,
    seed: int = 42,
    batch_size: int = 50,
    fresh: bool = False,
    request_seeds: bool = False,
    ray: RaySettings | None = None,
    say: Say = _quiet,
) -> StageOutcome:
    """Run one stage from ``src`` (a dataset folder or file; none for ``synthesize``) into the folder ``out``;
    with ``ray``, its distilabel pipeline runs on that Ray cluster (:mod:`cm2data.pipelines.ray`)."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / WORK_DIR
    if fresh and work.exists():
        shutil.rmtree(work)
    entry = stage(name)
    if entry.source is not None:
        records: list[Dialogue] = []
        carried: list[Reject] = []
        input_fp = file_fingerprint(entry.source(cfg))
    else:
        if src is None:
            raise ValueError(f"the {name} stage needs an input (--in)")
        records, carried, input_fp = load_input(src, fmt)
    fp = stage_fingerprint(name, cfg, input_fp, endpoint, [seed, request_seeds])
    previous = _read_stage(out)
    if (
        not fresh
        and previous.get("status") == "complete"
        and previous.get("fingerprint") == fp
        and store.is_dataset_folder(out)
    ):
        say(f"{name}: up to date in {out} (same input, settings and model); --fresh to run it again")
        return StageOutcome(out, previous, reused=True, rejects=read_rejects(out / store.REJECTS_FILE))
    if endpoint is None and entry.uses_llm(cfg):
        raise LLMError(f"the {name} stage needs an LLM endpoint")
    started_at = datetime.now(UTC).isoformat()
    t0 = time.monotonic()
    ctx = StageContext(
        work=work,
        llm=endpoint.config if endpoint else None,
        schema_form=endpoint.schema_form if endpoint else "structured_outputs",
        batch_size=batch_size,
        seed=seed,
        request_seeds=request_seeds,
    )
    say(f"{name}: {len(records) if entry.takes_input else getattr(cfg, 'n', 0)} records in …")
    if ray is not None and ray.replicas is None:  # one replica of each LLM step per endpoint
        ray = dataclasses.replace(ray, replicas=len(endpoint.config.endpoints) if endpoint else 1)
    with on_ray(ray):
        result = entry.run(records, cfg, ctx)
    rejects = [*carried, *result.rejects]
    for name_ in ("data", "README.md", store.REJECTS_FILE, STAGE_FILE):
        path = out / name_
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    store.write_dataset(out, result.accepted)
    write_rejects(rejects, out / store.REJECTS_FILE)
    seconds = round(time.monotonic() - t0, 2)
    llm = endpoint.describe() if endpoint and entry.uses_llm(cfg) else None
    summary = {
        "stage": name,
        "status": "complete",
        "fingerprint": fp,
        "input": result.input,
        "accepted": len(result.accepted),
        "rejected": len(result.rejects),
        "rejects_by_rule": result.counts,
        "resumed": result.resumed,
        "seconds": seconds,
        "usage": result.usage,
        "details": result.details,
        "config": cfg.model_dump(mode="json", exclude_none=True),
        "input_folder": str(src) if src else None,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "llm": llm,
    }
    if ray is not None:
        summary["ray"] = ray.describe()
    report = build_report(
        name=name,
        stages=[summary],
        records=result.accepted,
        rejects=result.rejects,
        llm=llm,
        started_at=started_at,
        seconds=seconds,
        output=str(out),
        config={name: summary["config"]},
    )
    write_report(out, report)
    (out / STAGE_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    say(
        f"{name}: kept {summary['accepted']} of {summary['input']}, rejected {summary['rejected']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in result.counts.items())})" if result.counts else "")
        + (f"; {result.resumed} from checkpoints" if result.resumed else "")
        + f" — {summary['seconds']} s"
    )
    return StageOutcome(out, summary, reused=False, rejects=result.rejects)


def _read_stage(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------------------------------------------- pipeline


@dataclass
class RunResult:
    out: Path
    records: int
    rejects: int
    stages: list[dict[str, Any]]
    report: dict[str, Any]
    seconds: float


def run_pipeline(
    config: PipelineConfig,
    out: Path,
    *,
    base_url: str | Sequence[str] | None = None,
    model: str | None = None,
    fresh: bool = False,
    ray: RaySettings | None = None,
    say: Say = _quiet,
) -> RunResult:
    """Run every stage of ``config`` into ``out`` (see the module docstring); with ``ray``, the stages' pipelines run
    on that Ray cluster."""
    if ray is not None:
        require_ray()
    started_at = datetime.now(UTC).isoformat()
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    if fresh and (out / "stages").exists():
        shutil.rmtree(out / "stages")
    endpoint = None
    if config.uses_llm():
        endpoint = resolve_endpoint(base_url, model, settings=config.llm)
        say(f"LLM: {endpoint.config.model} at {', '.join(endpoint.config.endpoints)} ({endpoint.kind})")
    src: Path | None = Path(config.input) if config.input else None
    fmt = config.input_format
    summaries: list[dict[str, Any]] = []
    all_rejects: list[Reject] = []
    final: Path | None = None
    for i, spec in enumerate(config.stages, start=1):
        folder = out / "stages" / f"{i:02d}-{spec.name}"
        stage_endpoint = endpoint
        if spec.config.llm and spec.uses_llm():
            stage_endpoint = resolve_endpoint(None, None, settings={**(config.llm or {}), **spec.config.llm})
        outcome = run_stage(
            spec.name,
            spec.config,
            folder,
            src=src,
            fmt=fmt,
            endpoint=stage_endpoint,
            seed=config.seed,
            batch_size=config.batch_size,
            request_seeds=config.request_seeds,
            ray=ray,
            say=say,
        )
        summaries.append({**outcome.summary, "reused": outcome.reused, "folder": str(folder)})
        src, fmt, final = folder, "dataset", folder
    assert final is not None
    records = store.read_dataset(final)
    rejects = read_rejects(final / store.REJECTS_FILE)
    all_rejects = rejects
    for name_ in ("data", "README.md", store.REJECTS_FILE):
        path = out / name_
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    store.write_dataset(out, records)
    write_rejects(all_rejects, out / store.REJECTS_FILE)
    (out / "pipeline.yaml").write_text(yaml.safe_dump(config.dump(), sort_keys=False), encoding="utf-8")
    seconds = time.monotonic() - t0
    report = build_report(
        name=config.name,
        stages=summaries,
        records=records,
        rejects=[r for r in all_rejects if r.stage in {s.name for s in config.stages}],
        llm=endpoint.describe() if endpoint else None,
        started_at=started_at,
        seconds=seconds,
        output=str(out),
        config=config.dump(),
    )
    report["rejects"]["carried_from_input"] = sum(
        1 for r in all_rejects if r.stage not in {s.name for s in config.stages}
    )
    write_report(out, report)
    return RunResult(out, len(records), len(all_rejects), summaries, report, seconds)
