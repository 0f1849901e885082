"""``cm2data judge …``: measure the checklist judge (docs/judge-fidelity.md).

``judge_app`` is registered on the main command as ``judge``. Thin calls into :mod:`cm2data.fidelity`; heavy imports
happen inside the commands.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cm2data.cli_options import EXIT_FAILED, BaseUrl, Model, err, fail

judge_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Measure the checklist judge: its verdicts on a dataset, and their agreement with "
    "people and with a careful judge.",
)


# the judge's modes (cm2data.fidelity.run.MODES) and grouped answer forms (cm2data.judge.GroupedAnswer), not imported
# here to keep the command light; tests/test_registries.py checks they agree
class Mode(StrEnum):
    reference = "reference"
    prefix = "prefix"
    grouped = "grouped"


class GroupedAnswer(StrEnum):
    object = "object"
    letters = "letters"


def _variants(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise fail(f"--variants takes comma-separated integers, got {text!r}", EXIT_FAILED) from None


@judge_app.command("run")
def judge_run(
    src: Annotated[Path, typer.Argument(help="Dataset folder (or file in a registered format) with checklists.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The verdict folder to write (replaced if it is one).")],
    mode: Annotated[
        Mode,
        typer.Option(
            help="reference: criterion first, one call per item and step (careful); "
            "prefix: conversation first, one call per item and step; grouped: one "
            "call per step for all items."
        ),
    ] = Mode.prefix,
    base_url: BaseUrl = None,
    model: Model = None,
    sample: Annotated[int | None, typer.Option(help="Judge a seeded sample of this many dialogues.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    variants: Annotated[
        str | None, typer.Option(help="Checklist variants to judge, e.g. 0 or 0,1 (default: all).")
    ] = None,
    grouped_answer: Annotated[GroupedAnswer, typer.Option(help="Grouped mode's answer form.")] = GroupedAnswer.object,
    concurrency: Annotated[int, typer.Option(help="Judge requests in flight.")] = 32,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take.")] = 300.0,
) -> None:
    """Judge every checklist item of SRC's reference dialogues (each against its own checklist) and write a verdict
    folder: one row per (dialogue, variant, turn, item) with the verdict, judge model, mode, prompt version and raw
    answers."""
    from cm2data.fidelity.run import FidelityError, print_run, run_judge
    from cm2data.verdicts import VerdictError

    try:
        result = run_judge(
            src,
            out,
            mode=mode.value,
            base_url=base_url,
            model=model,
            sample=sample,
            seed=seed,
            variants=_variants(variants),
            grouped_answer=grouped_answer.value,
            concurrency=concurrency,
            timeout=timeout,
            console=err,
        )
    except (FidelityError, VerdictError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    print_run(result, Console(soft_wrap=True, highlight=False))


@judge_app.command("agree")
def judge_agree(
    verdicts: Annotated[list[Path], typer.Argument(help="One or more verdict folders (cm2data judge run).")],
    human: Annotated[
        Path | None, typer.Option("--human", help="Human verdict folder (cm2data review pull-verdicts).")
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option("--against", help="Another verdict folder taken as the standard, typically --mode reference."),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset", help="The current dataset: leave out (and count) verdicts whose item changed or is gone."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where agreement.json and agreement.html go "
            "(default: the first verdict folder). A dataset "
            "folder here puts the section on its card at "
            "publish.",
        ),
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    level: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
) -> None:
    """Cohen's κ, accuracy, confusion matrix and bootstrap intervals of each judge against people (--human) and
    against another judge (--against), overall and per focus; bad input counted, never dropped silently."""
    from cm2data.fidelity.agree import agree, write_agreement
    from cm2data.fidelity.report import print_agreement
    from cm2data.verdicts import VerdictError

    try:
        report = agree(
            verdicts, human=human, against=against, dataset=dataset, resamples=resamples, seed=seed, level=level
        )
    except (VerdictError, ValueError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    json_path, html_path = write_agreement(out or verdicts[0], report)
    print_agreement(report, Console(soft_wrap=True, highlight=False))
    Console(soft_wrap=True, highlight=False).print(f"→ {json_path}, {html_path}")
