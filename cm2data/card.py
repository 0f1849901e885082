"""The dataset card of a published checklist dataset: YAML header, Markdown body and PNG plots.

Everything here is a pure function of the records, the rejects summary and the options, so that publishing the same
content twice writes byte-identical files (no dates, no run ids; PNGs are written without the software tag).
The plots are saved under ``assets/`` in the repository and linked from the card with relative paths.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cm2data import __version__
from cm2data.describe import dataset_stats, summarize
from cm2data.rejects import Reject
from cm2data.schema import STAT_NAMES, Dialogue

ASSETS = "assets"

CITATION = """@article{cm2_2026,
  title   = {CM2: Reinforcement Learning with Checklist Rewards for Multi-Turn and Multi-Step Agentic Tool Use},
  journal = {arXiv preprint arXiv:2602.12268},
  year    = {2026}
}"""

DEFAULT_TAGS = [
    "cm2",
    "checklist",
    "reward-modeling",
    "tool-use",
    "function-calling",
    "agents",
    "multi-turn",
    "cm2data",
]
TASK_CATEGORIES = ["text-generation"]

#: Column descriptions, per config, for the card's schema section.
SCHEMA_DOCS: dict[str, list[tuple[str, str, str]]] = {
    "dialogues": [
        ("id", "string", "stable record id"),
        ("source", "string", "format or data source the record came from"),
        ("tools", "string (JSON)", "candidate tools as OpenAI function schemas (`json.loads` it)"),
        (
            "messages",
            "list of structs",
            "`role`, `content`, `thinking`, `tool_calls` (`id`, `name`, `arguments` as "
            "a JSON string), `tool_call_id`, `name`",
        ),
        (
            "checklists",
            "list of variants",
            "a variant is a list of `{turn, items}` blocks, one per user turn; items "
            "as in `checklist_items` (`evidence` as structs, `extra_info` JSON)",
        ),
        ("metadata", "string (JSON)", "anything else the source carried, e.g. `domain`"),
        (
            "provenance",
            "struct",
            "`source`, `source_id`, `generator_model`, `labeller_model`, `prompt_version`, "
            "`created_at`, `history` (JSON list of processing stages)",
        ),
        ("review", "struct", "`status`, `reviewers`, `decisions` (JSON), `agreement` (JSON)"),
    ],
    "checklist_items": [
        ("dialogue_id", "string", "id of the dialogue in `dialogues`"),
        ("variant", "int64", "index of the checklist variant (0 for the first)"),
        ("turn", "int64", "user turn the item belongs to (0-based)"),
        ("item_id", "string", "item id within the turn (`C0`, `C1`, …)"),
        ("question", "string", "the binary question the judge answers"),
        ("pass_condition", "string", "what must be observable for the item to pass"),
        (
            "focus_on",
            "string",
            "`assistant.tool_calls`, `assistant.content.thinking`, "
            "`assistant.content.user_visible_reply` or `tool.content`",
        ),
        ("weight", "float64", "weight of the item; a turn's weights sum to 1"),
        ("required_for_next_turn", "bool", "the item must pass for the dialogue to continue"),
        ("depends_on", "list of strings", "ids of `tool.content` items of the same turn this item depends on"),
        ("evidence", "string (JSON)", "list of `{turn, step, from, snippet}` pointers into the dialogue"),
        ("failure_examples", "list of strings", "examples of answers that fail the item"),
        ("domain", "string", "`metadata.domain` of the dialogue, when it has one"),
        ("source", "string", "source of the dialogue"),
        ("extra_info", "string (JSON)", "anything else the labeller attached (e.g. `price_usd`)"),
    ],
    "rl_verl": [
        ("data_source", "string", "`cm2data` (what VeRL passes to `compute_score`)"),
        ("agent_name", "string", "the agent loop that rolls the dialogue out (`cm2_agent`)"),
        ("prompt", "list of structs", "the messages up to the first user message (`role`, `content`)"),
        ("ability", "string", "`tool_use`"),
        ("reward_model", "struct", "`style` and `ground_truth` (JSON: the checklists and the number of turns)"),
        (
            "extra_info",
            "struct",
            "`index`, `split`, `uuid`, `need_tools_kwargs`, and as JSON strings `messages`, "
            "`tools`, `tools_kwargs`, `tool_selection`",
        ),
    ],
    "sft_llamafactory": [
        ("dialogue_id", "string", "id of the dialogue in `dialogues`"),
        (
            "messages",
            "list of structs",
            "`role` (`system`, `user`, `assistant`, `observation`) and `content`; tool "
            "calls inline as `<tool_call>` blocks after the `<think>` block",
        ),
        ("tools", "string (JSON)", "the candidate tools, as LLaMA-Factory's `tools` column expects"),
    ],
}


# ------------------------------------------------------------------------------------------------ summary


class Summary:
    """Everything the card says about the records, accumulated chunk by chunk, so that a large dataset is never
    held in memory at once. :meth:`stats` has the shape of :func:`cm2data.describe.dataset_stats` and the same
    values as it would have on all the records together."""

    def __init__(self) -> None:
        self.dialogues = 0
        self.hist: dict[str, Counter[Any]] = {name: Counter() for name in STAT_NAMES}
        self.items_per_turn: Counter[int] = Counter()
        self.variants: Counter[int] = Counter()
        self.annotated = 0
        self.items_total = 0
        self.must_pass = 0
        self.with_deps = 0
        self.counters: dict[str, Counter[Any]] = {
            k: Counter()
            for k in (  # None counts as a value
                "focus_on",
                "sources",
                "review_status",
                "domains",
                "source",
                "generator_model",
                "labeller_model",
                "prompt_version",
                "stages",
            )
        }
        self.agreement: dict[str, list[float]] = {}

    def add(self, records: Sequence[Dialogue]) -> None:
        part = dataset_stats(records)
        self.dialogues += part["dialogues"]
        for name in STAT_NAMES:
            self.hist[name].update(part["statistics"][name]["histogram"])
        c = part["checklists"]
        self.items_per_turn.update(c["items_per_turn"]["histogram"])
        self.variants.update(c["variants"]["histogram"])
        self.annotated += c["annotated_dialogues"]
        self.items_total += c["items_total"]
        self.with_deps += c["items_with_dependencies"]
        self.must_pass += sum(
            it.required_for_next_turn for d in records for v in d.checklists for b in v for it in b.items
        )
        self.counters["focus_on"].update(c["focus_on"])
        self.counters["sources"].update(part["sources"])
        self.counters["review_status"].update(part["review_status"])
        self.counters["domains"].update(part.get("domains", {}))
        for d in records:
            p = d.provenance
            self.counters["source"][p.source or d.source] += 1
            self.counters["generator_model"][p.generator_model] += 1
            self.counters["labeller_model"][p.labeller_model] += 1
            self.counters["prompt_version"][p.prompt_version] += 1
            self.counters["stages"].update({str(h.get("stage")) for h in p.history if isinstance(h, dict)})
            for key, value in d.review.agreement.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.agreement.setdefault(str(key), []).append(float(value))

    @staticmethod
    def _dist(hist: Counter[Any]) -> dict[str, Any]:
        values = [v for v, n in sorted(hist.items()) for _ in range(n)]
        return {**summarize(values), "histogram": dict(sorted(hist.items()))}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dialogues": self.dialogues,
            "statistics": {name: self._dist(self.hist[name]) for name in STAT_NAMES},
        }
        out["checklists"] = {
            "annotated_dialogues": self.annotated,
            "variants": self._dist(self.variants),
            "items_per_turn": self._dist(self.items_per_turn),
            "items_total": self.items_total,
            "must_pass_fraction": round(self.must_pass / self.items_total, 3) if self.items_total else 0.0,
            "items_with_dependencies": self.with_deps,
            "focus_on": dict(self.counters["focus_on"].most_common()),
        }
        out["sources"] = dict(self.counters["sources"].most_common())
        out["review_status"] = dict(self.counters["review_status"].most_common())
        if self.counters["domains"]:
            out["domains"] = dict(self.counters["domains"].most_common())
        return out

    def provenance(self, key: str) -> dict[Any, int]:
        return dict(self.counters[key].most_common())


# --------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _bar(ax: Any, counts: Mapping[Any, int], title: str, xlabel: str, *, horizontal: bool = False) -> None:
    labels = [str(k) for k in counts]
    values = list(counts.values())
    if not values:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    elif horizontal:
        ax.barh(labels[::-1], values[::-1], color="#4C72B0")
        ax.set_xlabel("count")
    else:
        from matplotlib.ticker import MaxNLocator

        ax.bar(labels, values, color="#4C72B0")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(labels) > 12:
            step = -(-len(labels) // 12)
            ax.set_xticks(range(0, len(labels), step), labels[::step])
    ax.set_title(title)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # no "Software" text chunk: the same data gives the same bytes, so an unchanged dataset re-publishes as a no-op
    fig.savefig(path, format="png", metadata={"Software": None})


def write_plots(folder: Path, stats: Mapping[str, Any], agreement: Mapping[str, list[float]]) -> dict[str, str]:
    """Write the card's plots as PNG files under ``folder/assets``; returns ``{name: relative path}``."""
    plt = _plt()
    out: dict[str, str] = {}

    def emit(name: str, fig: Any) -> None:
        rel = f"{ASSETS}/{name}.png"
        _save(fig, folder / rel)
        plt.close(fig)
        out[name] = rel

    st = stats["statistics"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    _bar(axes[0], st["num_turns"]["histogram"], "user turns per dialogue", "turns")
    _bar(axes[1], st["tool_calls_total"]["histogram"], "tool calls per dialogue", "tool calls")
    emit("turns_and_tool_calls", fig)

    c = stats["checklists"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), gridspec_kw={"width_ratios": [1, 1.3]})
    _bar(axes[0], c["items_per_turn"]["histogram"], "checklist items per turn", "items")
    _bar(axes[1], c["focus_on"], "items by focus_on", "", horizontal=True)
    emit("checklist_items", fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    _bar(axes[0], stats["review_status"], "review status", "status")
    if agreement:
        for key, values in sorted(agreement.items()):
            axes[1].hist(values, bins=10, range=(min(0.0, *values), max(1.0, *values)), alpha=0.6, label=key)
        axes[1].set_title("reviewer agreement")
        axes[1].set_xlabel("agreement")
        axes[1].legend()
    else:
        axes[1].text(0.5, 0.5, "no agreement scores yet", ha="center", va="center", transform=axes[1].transAxes)
        axes[1].set_axis_off()
    emit("review", fig)
    return out


# ---------------------------------------------------------------------------------------------------- card


def size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < bound:
            return label
    return "10M<n<100M"


def card_header(
    *, n_dialogues: int, license: str, pretty_name: str, source_header: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The YAML header keys besides ``configs:``/``dataset_info:`` (which :func:`cm2data.store.write_card` adds).

    Keys the source folder's card already has (language, extra tags, …) are kept; ours win for the ones we own.
    """
    header: dict[str, Any] = {k: v for k, v in (source_header or {}).items() if k not in ("configs", "dataset_info")}
    tags = list(header.get("tags") or [])
    header.update(
        {
            "license": license,
            "pretty_name": pretty_name,
            "task_categories": sorted(set(TASK_CATEGORIES) | set(header.get("task_categories") or [])),
            "tags": [*DEFAULT_TAGS, *(t for t in tags if t not in DEFAULT_TAGS)],
            "size_categories": [size_category(n_dialogues)],
        }
    )
    return header


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out


def _counts(counter: Mapping[Any, int], what: str) -> list[str]:
    if not counter:
        return [f"_no {what} recorded_"]
    return _table([what, "dialogues"], [(f"`{k}`" if k not in (None, "") else "(none)", v) for k, v in counter.items()])


def rejects_summary(rejects: Sequence[Reject]) -> list[dict[str, Any]]:
    """Counts of the source folder's rejects by stage and rule (the rows themselves are never published)."""
    by = Counter((r.stage, r.rule) for r in rejects)
    return [{"stage": s, "rule": r, "count": n} for (s, r), n in sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))]


def card_body(
    *,
    title: str,
    repo_id: str | None,
    summary: Summary,
    stats: Mapping[str, Any],
    configs: Mapping[str, Mapping[str, int]],
    config_docs: Mapping[str, str],
    plots: Mapping[str, str],
    gate_rules: Sequence[str],
    thinking: str,
    rejects: Sequence[Mapping[str, Any]],
    license: str,
    pipeline_config: tuple[str, str] | None = None,
    extra_schema: Mapping[str, list[tuple[str, str, str]]] | None = None,
    judge_agreement: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown body: what it is, how to load it, how it was produced, schema, statistics, review, judge
    agreement (when ``judge_agreement``, a ``cm2data judge agree`` report, is given), rejects, license and
    citation. One helper per section; sections are separated by a blank line."""
    name = repo_id or "<org>/<name>"
    sections = [
        _intro_section(title, summary.dialogues, stats["checklists"]["items_total"], len(gate_rules)),
        _configs_section(configs, config_docs),
        _usage_section(name),
        _production_section(summary, gate_rules, thinking, pipeline_config),
        _schema_section(configs, extra_schema),
        _statistics_section(stats, plots),
        _review_section(stats, summary.agreement, plots, judge_agreement),
        _rejects_section(rejects),
        _license_section(license),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _intro_section(title: str, n_dialogues: int, n_items: int, n_rules: int) -> list[str]:
    return [
        f"# {title}",
        "",
        f"A checklist-reward dataset for multi-turn, multi-step tool-using agents, in the form used by CM2 "
        f'("Reinforcement Learning with Checklist Rewards for Multi-Turn and Multi-Step Agentic Tool Use", '
        f"arXiv 2602.12268): **{n_dialogues}** dialogues with their candidate tools, and **{n_items}** binary, "
        f"evidence-grounded checklist items that say, turn by turn, what a correct assistant does. A judge model "
        f"checks a policy's rollout against the items; their weights give the reward.",
        "",
        f"Every record passed all {n_rules} rules of the cm2data validation gate before upload; records "
        f"that failed were not published (see *Rejects*).",
    ]


def _configs_section(configs: Mapping[str, Mapping[str, int]], config_docs: Mapping[str, str]) -> list[str]:
    rows = [
        (f"`{cfg}`", ", ".join(f"{s}: {k}" for s, k in splits.items()), config_docs.get(cfg, ""))
        for cfg, splits in configs.items()
    ]
    return ["## Configs", "", *_table(["config", "rows per split", "what"], rows)]


def _usage_section(name: str) -> list[str]:
    return [
        "## Usage",
        "",
        "```python",
        "import json",
        "from datasets import load_dataset",
        "",
        f'dialogues = load_dataset("{name}", "dialogues", split="train")',
        f'items = load_dataset("{name}", "checklist_items", split="train")',
        "row = dialogues[0]",
        'tools = json.loads(row["tools"])          # JSON strings: tools, metadata, arguments, extra_info',
        'first_turn = row["checklists"][0][0]      # variant 0, turn 0: {"turn": 0, "items": [...]}',
        "```",
        "",
        f"`cm2data pull {name} --out DIR` turns the repository back into a cm2data dataset folder.",
    ]


_PROVENANCE = (
    ("source", "source", "Sources"),
    ("generator_model", "generator model", "Generator models"),
    ("labeller_model", "labeller model", "Labeller models"),
    ("prompt_version", "prompt version", "Prompt versions"),
)


def _production_section(
    summary: Summary, gate_rules: Sequence[str], thinking: str, pipeline_config: tuple[str, str] | None
) -> list[str]:
    lines = ["## How it was produced", ""]
    for key, what, heading in _PROVENANCE:
        lines += [f"**{heading}**", "", *_counts(summary.provenance(key), what), ""]
    lines += [
        "**Processing stages** (from each record's provenance history)",
        "",
        *_counts(summary.provenance("stages"), "stage"),
        "",
    ]
    lines += [
        f"**Validation**: the cm2data gate (rule filters of method §2.2, checklist rules, pandera tables; "
        f"thinking `{thinking}`): " + ", ".join(f"`{r}`" for r in gate_rules) + ".",
        "",
    ]
    if pipeline_config is not None:
        fname, text = pipeline_config
        lang = "json" if fname.endswith(".json") else "yaml"
        lines += [f"**Pipeline configuration** (`{fname}`)", "", f"```{lang}", text.rstrip("\n"), "```", ""]
    return [*lines, f"Published with cm2data {__version__}."]


def _schema_section(
    configs: Mapping[str, Mapping[str, int]], extra_schema: Mapping[str, list[tuple[str, str, str]]] | None
) -> list[str]:
    lines = ["## Schema"]
    for cfg, cols in {**SCHEMA_DOCS, **(extra_schema or {})}.items():
        if cfg in configs:
            lines += [
                "",
                f"### `{cfg}`",
                "",
                *_table(["column", "type", "description"], [(f"`{a}`", b, d) for a, b, d in cols]),
            ]
    return lines


def _statistics_section(stats: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    st = stats["statistics"]
    c = stats["checklists"]
    ipt = c["items_per_turn"]
    lines = ["## Statistics", ""]
    lines += _table(
        ["statistic (per dialogue)", "min", "mean", "median", "max"],
        [(name, st[name]["min"], st[name]["mean"], st[name]["median"], st[name]["max"]) for name in STAT_NAMES],
    )
    lines += [
        "",
        *_table(
            ["checklists", "value"],
            [
                ("annotated dialogues", c["annotated_dialogues"]),
                ("checklist items", c["items_total"]),
                ("items per turn (min / mean / max)", f"{ipt['min']} / {ipt['mean']} / {ipt['max']}"),
                ("required for next turn", f"{c['must_pass_fraction']:.1%}"),
                ("items with dependencies", c["items_with_dependencies"]),
            ],
        ),
    ]
    if stats.get("domains"):
        lines += ["", *_table(["domain", "dialogues"], list(stats["domains"].items()))]
    for key, caption in (
        ("turns_and_tool_calls", "Turns and tool calls per dialogue"),
        ("checklist_items", "Checklist items per turn and by focus"),
    ):
        if key in plots:
            lines += ["", f"![{caption}]({plots[key]})"]
    return lines


def _review_section(
    stats: Mapping[str, Any],
    agreement: Mapping[str, list[float]],
    plots: Mapping[str, str],
    judge_agreement: Mapping[str, Any] | None,
) -> list[str]:
    lines = ["## Review", "", *_table(["status", "dialogues"], list(stats["review_status"].items()))]
    if agreement:
        lines += [
            "",
            *_table(
                ["agreement", "dialogues", "mean", "min", "max"],
                [
                    (k, len(v), round(statistics.fmean(v), 3), round(min(v), 3), round(max(v), 3))
                    for k, v in sorted(agreement.items())
                ],
            ),
        ]
    else:
        lines += ["", "No reviewer agreement scores recorded yet."]
    if "review" in plots:
        lines += ["", f"![Review status and agreement]({plots['review']})"]
    if judge_agreement is not None:
        from cm2data.fidelity.report import card_section

        lines += ["", *card_section(judge_agreement)]
    return lines


def _rejects_section(rejects: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rejects:
        return ["## Rejects", "", "No rejections were recorded while this dataset was built."]
    total = sum(r["count"] for r in rejects)
    return [
        "## Rejects",
        "",
        f"{total} rejections were recorded while this dataset was built (one per record and rule; the "
        "rejected rows are not part of this repository):",
        "",
        *_table(["stage", "rule", "count"], [(r["stage"], f"`{r['rule']}`", r["count"]) for r in rejects]),
    ]


def _license_section(license: str) -> list[str]:
    return [
        "## License",
        "",
        f"`{license}`" + (" (not stated by the publisher)" if license == "unknown" else ""),
        "",
        "## Citation",
        "",
        "If you use this dataset, please cite the CM2 method:",
        "",
        "```bibtex",
        CITATION,
        "```",
    ]


def read_pipeline_config(folder: Path) -> tuple[str, str] | None:
    """A pipeline configuration saved next to the dataset (``pipeline.yaml``/``.yml``/``.json``), if any."""
    for name in ("pipeline.yaml", "pipeline.yml", "pipeline.json"):
        path = folder / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if name.endswith(".json"):
                text = json.dumps(json.loads(text), indent=2, sort_keys=True)
            return name, text
    return None


#: The file a dataset folder may hold with the report of ``cm2data judge agree … --out DIR`` (its card section).
JUDGE_AGREEMENT_FILE = "agreement.json"


def read_judge_agreement(folder: Path) -> dict[str, Any] | None:
    """The ``cm2data judge agree`` report saved in the dataset folder (``agreement.json`` whose ``kind`` is
    ``cm2data.judge_agreement``), if any; a file of another kind is ignored."""
    path = folder / JUDGE_AGREEMENT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == "cm2data.judge_agreement" else None
