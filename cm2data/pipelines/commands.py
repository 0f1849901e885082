"""What the pipeline commands of ``cm2data`` do (the CLI functions only parse options and call these)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cm2data.llm import LLMError
from cm2data.pipelines.config import PipelineConfig, load_pipeline_config
from cm2data.pipelines.ray import RaySettings, require_ray
from cm2data.pipelines.registry import stage
from cm2data.pipelines.report import REPORT_HTML
from cm2data.pipelines.runner import resolve_endpoint, run_pipeline, run_stage


class CommandError(Exception):
    """A user-facing failure: bad options or config, unreadable input, unreachable LLM server."""


def _table(title: str, stages: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("stage", "in", "kept", "rejected", "top rules", "resumed", "s"):
        table.add_column(col)
    for s in stages:
        rules = ", ".join(f"{k} {v}" for k, v in list((s.get("rejects_by_rule") or {}).items())[:3])
        state = "reused" if s.get("reused") else str(s.get("resumed", 0))
        table.add_row(
            s["stage"], str(s["input"]), str(s["accepted"]), str(s["rejected"]), rules, state, str(s.get("seconds", ""))
        )
    return table


def read_drop_ratios(text: str | None) -> dict[str, Any] | None:
    """``--drop-ratios``: a YAML/JSON mapping metric → {value: ratio}, or a file holding one (None: the defaults)."""
    if text is None:
        return None
    import yaml

    source = Path(text).read_text(encoding="utf-8") if Path(text).is_file() else text
    try:
        return yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise CommandError(f"--drop-ratios is not YAML/JSON: {exc}") from None


def stage_command(
    name: str,
    settings: dict[str, Any],
    *,
    src: Path | None,
    out: Path,
    fmt: str = "auto",
    base_url: str | Sequence[str] | None = None,
    model: str | None = None,
    seed: int = 42,
    batch_size: int = 50,
    fresh: bool = False,
    ray: RaySettings | None = None,
    console: Console,
    err: Console,
) -> int:
    """``cm2data <stage> --in SRC --out OUT``: one stage, its dataset folder, rejects and report (``--ray``: its
    pipeline on a Ray cluster)."""
    entry = stage(name)
    try:
        cfg = entry.config(**{k: v for k, v in settings.items() if v is not None})
    except ValueError as exc:
        raise CommandError(f"invalid {name} settings: {exc}") from None
    if src is not None and not src.exists():
        raise CommandError(f"input {src} does not exist")
    try:
        if ray is not None:
            require_ray()
        endpoint = None
        if entry.uses_llm(cfg):
            endpoint = resolve_endpoint(base_url, model, settings=cfg.llm)
            where = ", ".join(endpoint.config.endpoints)
            err.print(f"[dim]LLM: {endpoint.config.model} at {where} ({endpoint.kind})[/]")
        outcome = run_stage(
            name,
            cfg,
            out,
            src=src,
            fmt=fmt,
            endpoint=endpoint,
            seed=seed,
            batch_size=batch_size,
            fresh=fresh,
            ray=ray,
            say=lambda m: err.print(f"[dim]{m}[/]"),
        )
    except LLMError as exc:
        raise CommandError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
    console.print(_table(f"{name} → {out}", [{**outcome.summary, "reused": outcome.reused}]))
    console.print(f"report → {out / REPORT_HTML}; rejects → {out / 'rejects.jsonl'}")
    return 0


def run_command(
    path: Path,
    *,
    out: Path | None,
    base_url: str | Sequence[str] | None,
    model: str | None,
    fresh: bool,
    console: Console,
    err: Console,
    ray: RaySettings | None = None,
) -> int:
    """``cm2data run PIPELINE.yaml`` (``--ray``: the stages' pipelines on a Ray cluster)."""
    try:
        config = load_pipeline_config(path)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    target = out or Path("out") / config.name
    return run_config(config, target, base_url=base_url, model=model, fresh=fresh, console=console, err=err, ray=ray)


def run_config(
    config: PipelineConfig,
    out: Path,
    *,
    base_url: str | Sequence[str] | None,
    model: str | None,
    fresh: bool,
    console: Console,
    err: Console,
    ray: RaySettings | None = None,
) -> int:
    try:
        result = run_pipeline(
            config,
            out,
            base_url=base_url,
            model=model,
            fresh=fresh,
            ray=ray,
            say=lambda m: err.print(f"[dim]{m}[/]"),
        )
    except LLMError as exc:
        raise CommandError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
    console.print(_table(f"pipeline {config.name} → {out}", result.stages))
    console.print(
        f"{result.records} records in {out}; {result.rejects} rejects in {out / 'rejects.jsonl'}; "
        f"report → {out / REPORT_HTML} ({result.seconds:.0f} s)"
    )
    return 0
