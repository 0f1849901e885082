"""What every ``cm2data`` command module shares (``cm2data.cli`` and the ``review``, ``judge``, ``eval`` and pipeline
command modules): the consoles, the exit codes, one way to fail, one reject summary, typed option aliases, and the
choice enums (the exporters' own enums, so the CLI accepts exactly what the code accepts).

**Exit codes.**

* ``0`` (:data:`EXIT_OK`): done.
* ``1`` (:data:`EXIT_FAILED`): the command ran and the answer is no: records break a rule (``validate``), rows were
  rejected under ``--strict`` or nothing could be exported, the gate or the Hub refused a publish, a pull did not
  read, a record id is not there (``show``), or a service a ``review``/``judge``/``serve`` command drives failed;
  ``eval`` runs with request errors.
* ``2`` (:data:`EXIT_USAGE`): the command could not start or could not read what it was given: bad options or
  settings, unreadable or missing input, an unwritable output, an unreachable LLM server, a bad pipeline file.

Every failure goes through :func:`fail`: ``error: <message>`` on stderr (the message printed as text, never as
rich markup), then the exit code.

**Output streams and ``--json``.** Results go to stdout, progress, notes and warnings to stderr. ``--json`` asks for
the machine-readable result: as a flag (:data:`JsonFlag`: ``validate``, ``serve``, ``review status``,
``review stack start|status``) the JSON is the only thing on stdout and all human text goes to stderr; as
``--json PATH`` (:data:`JsonPath`: ``stats``, ``eval compare``) the same result is written to ``PATH`` as well, and
``--json -`` prints it on stdout instead, the human text then going to stderr (:func:`human_console`).

>>> [t.value for t in Template]
['qwen3', 'qwen3_nothink', 'qwen']
>>> Thinking("auto") is Thinking.auto
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cm2data.export import llamafactory as lf
from cm2data.formats import FORMATS
from cm2data.rejects import Reject, count_by_rule

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

console = Console()
# soft_wrap: a reject line (file, line, record, rule, message) stays one line in logs instead of being cut at 80
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr and return the :class:`typer.Exit` to raise (``raise fail(...)``)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def print_rejects(
    rejects: Sequence[Reject], *, headline: str | None = None, by_rule: bool = False, examples: int = 10
) -> None:
    """The one reject summary on stderr: an optional headline (rich markup), the count per rule (most first) when
    ``by_rule``, then up to ``examples`` rejects with their rule, place and message."""
    if headline is not None:
        err.print(headline)
    if by_rule:
        for rule, n in count_by_rule(rejects).most_common():
            err.print(f"  {rule}: {n}")
    for r in rejects[:examples]:
        err.print(f"  [yellow]{r.rule}[/] {escape(r.where())}: {escape(r.message)}")
    if examples and len(rejects) > examples:
        err.print(f"  … and {len(rejects) - examples} more (see the rejects file)")


def human_console(json_path: Path | None) -> Console:
    """Where human text goes: stderr when ``--json -`` puts the JSON on stdout, else stdout."""
    return err if json_path is not None and str(json_path) == "-" else console


def emit_json(data: Any, json_path: Path | None, *, indent: int = 2) -> None:
    """``--json PATH``: write ``data`` to PATH (its folder created); ``--json -``: print it on stdout."""
    if json_path is None:
        return
    text = json.dumps(data, indent=indent)
    if str(json_path) == "-":
        print(text)
        return
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(text, encoding="utf-8")


class Thinking(StrEnum):
    """The thinking rule of the gate: the values of :data:`cm2data.validate.rules.ThinkingPolicy` (not imported
    here: it would import pandera into every command; ``tests/test_registries.py`` checks they agree)."""

    auto = "auto"
    required = "required"
    forbidden = "forbidden"


# The LLaMA-Factory export's options: the exporter's own enums
Style = lf.Style
Template = lf.Template
HistoryThinking = lf.HistoryThinking
OnBroken = lf.OnBroken
CallFormat = lf.CallFormat

# ------------------------------------------------------------------------------------------ option aliases

FORMAT_HELP = f"Input format: auto, dataset, {', '.join(FORMATS)}."
Format = Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)]
InPath = Annotated[
    Path, typer.Option("--in", "-i", help="Input: a dataset folder, or a file/folder in a registered format.")
]
StageOut = Annotated[
    Path, typer.Option("--out", "-o", help="Output dataset folder (also rejects.jsonl, report.html, report.json).")
]
BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint (default: CM2DATA_LLM_BASE_URL, else the embedded server, started if needed).",
    ),
]
BaseUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint; repeat it for several servers of the same model, balanced (docs/scale.md) "
        "(default: CM2DATA_LLM_BASE_URL, else the embedded server, started if needed).",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run the stages' pipelines on this Ray cluster: auto, HOST:PORT or ray://HOST:PORT (run the Ray "
        "environment's cm2data: scripts/install_ray.sh; docs/scale.md).",
    ),
]
Model = Annotated[str | None, typer.Option("--model", help="Served model name (default: the first the server lists).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="Bearer token (default: CM2DATA_LLM_API_KEY).")]
Fresh = Annotated[
    bool, typer.Option("--fresh", help="Ignore checkpoints and earlier results in OUT; run everything again.")
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="distilabel input_batch_size (keep >= 50).")]
Seed = Annotated[int, typer.Option("--seed", help="Sampling seed.")]
ThinkingOpt = Annotated[Thinking, typer.Option("--thinking", help="Whether assistant messages must carry <think>.")]
MinWords = Annotated[
    int,
    typer.Option(
        "--min-words",
        min=0,
        help="degenerate_message: fewest words in a user message or assistant reply (1 admits 'yes').",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (human text on stderr).")]
JsonPath = Annotated[
    Path | None,
    typer.Option(
        "--json",
        metavar="PATH",
        help="Also write the result as JSON to PATH (- prints it on stdout, human text on stderr).",
    ),
]
