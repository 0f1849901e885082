"""The judge-agreement report as one self-contained HTML page (tables, PNG plots embedded as base64, like the run
report of the pipelines) and as a Markdown section of the dataset card (``## Judge agreement``)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cm2data.card import _plt

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
font-size:13px;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right}h2{margin-top:1.6em}
.note{color:#666;font-size:13px}code{background:#f3f3f3;padding:0 3px}"""


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "—" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def comparison_label(c: Mapping[str, Any]) -> str:
    return f"{c['compared']} ({c['mode']}) vs {c['reference']}"


# ----------------------------------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _kappa_bars(ax: Any, labels: Sequence[str], figures: Sequence[Mapping[str, Any]], title: str) -> None:
    """Horizontal κ bars with their bootstrap intervals; undefined κ drawn as a gap with a note."""
    if not figures:
        _empty(ax, "nothing to compare")
        return
    ys = list(range(len(figures)))[::-1]
    for y, f in zip(ys, figures, strict=True):
        k = f.get("kappa")
        if k is None:
            ax.text(0.0, y, "  κ undefined", va="center", fontsize=8)
            continue
        ax.barh(y, k, color="#4C72B0" if k >= 0 else "#C44E52")
        ci = f.get("kappa_ci")
        if ci:
            ax.errorbar(k, y, xerr=[[k - ci[0]], [ci[1] - k]], fmt="none", ecolor="#222", capsize=3)
    ax.set_yticks(ys, [f"{lab} (n={f['n']})" for lab, f in zip(labels, figures, strict=True)])
    ax.axvline(0.0, color="#888", lw=0.8)
    ax.set_xlim(-1.0, 1.0)
    ax.set_xlabel("Cohen's κ (bar) with bootstrap interval")
    ax.set_title(title)


def plots(report: Mapping[str, Any]) -> dict[str, str]:
    """``kappa`` (every comparison), ``kappa_by_focus`` (one panel per comparison), ``confusion`` (one matrix per
    comparison) and ``pass_rates`` (each judge's pass rate per focus), as base64 PNGs."""
    plt = _plt()
    out: dict[str, str] = {}
    comps = list(report.get("comparisons") or [])

    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * max(1, len(comps))))
    _kappa_bars(ax, [comparison_label(c) for c in comps], [c["overall"] for c in comps], "agreement, all items")
    out["kappa"] = _png(fig)
    plt.close(fig)

    if comps:
        fig, axes = plt.subplots(
            len(comps), 1, figsize=(8, sum(0.6 + 0.4 * max(1, len(c["by_focus"])) for c in comps)), squeeze=False
        )
        for ax, c in zip(axes[:, 0], comps, strict=True):
            focus = list(c["by_focus"])
            _kappa_bars(ax, focus, [c["by_focus"][f] for f in focus], comparison_label(c))
        out["kappa_by_focus"] = _png(fig)
        plt.close(fig)

        fig, axes = plt.subplots(1, len(comps), figsize=(2.8 * len(comps), 2.8), squeeze=False)
        for ax, c in zip(axes[0], comps, strict=True):
            m = c["overall"]["confusion"]
            grid = [[m["tp"], m["fn"]], [m["fp"], m["tn"]]]
            ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, *grid[0], *grid[1]))
            top = max(1, *grid[0], *grid[1])
            for i in range(2):
                for j in range(2):
                    ax.text(
                        j,
                        i,
                        str(grid[i][j]),
                        ha="center",
                        va="center",
                        color="white" if grid[i][j] > top / 2 else "black",
                    )
            ax.set_xticks([0, 1], ["pass", "fail"])
            ax.set_yticks([0, 1], ["pass", "fail"])
            ax.set_xlabel(f"{c['compared']} ({c['mode']})", fontsize=8)
            ax.set_ylabel(str(c["reference"]), fontsize=8)
        out["confusion"] = _png(fig)
        plt.close(fig)

    judges = [*report.get("judges", []), *([report["against"]] if report.get("against") else [])]
    focus = sorted({f for j in judges for f in j["by_focus"]})
    fig, ax = plt.subplots(figsize=(8, 3))
    if judges and focus:
        width = 0.8 / len(judges)
        for i, j in enumerate(judges):
            xs = [k + i * width for k in range(len(focus))]
            ax.bar(
                xs,
                [j["by_focus"].get(f, {}).get("pass_rate") or 0.0 for f in focus],
                width,
                label=f"{j['name']} ({j['mode']})",
            )
        ax.set_xticks(
            [k + 0.4 - width / 2 for k in range(len(focus))], [f.replace("assistant.", "a.") for f in focus], fontsize=7
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel("pass rate on the reference")
        ax.legend(fontsize=7)
        ax.set_title("judge pass rate per focus (reference dialogues are known-good)")
    else:
        _empty(ax, "no verdicts")
    out["pass_rates"] = _png(fig)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------------ html


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="n"' if isinstance(v, int | float) else ""
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _img(data: str | None, alt: str) -> str:
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>' if data else ""


def _figure_row(label: str, f: Mapping[str, Any]) -> list[Any]:
    m = f["confusion"]
    return [
        label,
        f["n"],
        _fmt(f["accuracy"]),
        _ci(f["accuracy_ci"]),
        _fmt(f["kappa"]),
        _ci(f["kappa_ci"]),
        m["tp"],
        m["fn"],
        m["fp"],
        m["tn"],
        _fmt(f["false_negative_rate"]),
        _fmt(f["false_positive_rate"]),
    ]


_FIG_HEAD = [
    "",
    "n",
    "accuracy",
    "95% CI",
    "κ",
    "95% CI",
    "both pass",
    "ref pass, judge fail",
    "ref fail, judge pass",
    "both fail",
    "false-negative rate",
    "false-positive rate",
]


def render_html(report: Mapping[str, Any]) -> str:
    figs = plots(report)
    boot = report["bootstrap"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>judge agreement</title><style>{_CSS}</style>"
        "</head><body>",
        "<h1>Judge agreement</h1>",
        f"<p class='note'>Cohen's κ and accuracy with {int(boot['level'] * 100)}% percentile-bootstrap intervals "
        f"({boot['resamples']} resamples, seed {boot['seed']}). The reference of each comparison is the "
        "standard (people's majority, or the careful judge); the confusion matrix's rows are the reference's "
        "verdicts.</p>",
        "<h2>Judges</h2>",
        _table(
            ["judge", "mode", "model", "prompt", "items", "pass rate", "failed calls", "short-circuit"],
            [
                [
                    j["name"],
                    j["mode"],
                    j["judge_model"],
                    j["prompt_version"],
                    j["items"],
                    _fmt(j["pass_rate"]),
                    j["failed_calls_items"],
                    j["short_circuit_items"],
                ]
                for j in [*report["judges"], *([report["against"]] if report.get("against") else [])]
            ],
        ),
        _img(figs.get("pass_rates"), "pass rates"),
        "<h2>Agreement</h2>",
    ]
    comps = report.get("comparisons") or []
    if comps:
        parts.append(_table(_FIG_HEAD, [_figure_row(comparison_label(c), c["overall"]) for c in comps]))
        parts.append(_img(figs.get("kappa"), "kappa per comparison"))
        parts.append(_img(figs.get("confusion"), "confusion matrices"))
        parts.append("<h2>Per focus</h2>")
        for c in comps:
            parts.append(f"<h3>{html.escape(comparison_label(c))}</h3>")
            parts.append(_table(["focus_on", *_FIG_HEAD[1:]], [_figure_row(f, v) for f, v in c["by_focus"].items()]))
            parts.append("<p class='note'>alignment: " + html.escape(json.dumps(c["alignment"])) + "</p>")
        parts.append(_img(figs.get("kappa_by_focus"), "kappa per focus"))
    else:
        parts.append("<p>No comparison: give <code>--human</code> and/or <code>--against</code>.</p>")
    h = report.get("human")
    if h:
        inter = h["inter_reviewer"]
        parts += [
            "<h2>People</h2>",
            f"<p>{len(h['reviewers'])} reviewers ({html.escape(', '.join(h['reviewers']))}); "
            f"{h['items_with_majority']} items with a majority verdict. Between reviewers: Krippendorff's α "
            f"{_fmt(inter['alpha'])}, mean pairwise κ {_fmt(inter['kappa_mean'])} over {inter['units']} items "
            f"with two answers or more (the ceiling a judge can be expected to reach).</p>",
            _table(
                ["reviewer", "judge", *_FIG_HEAD[1:]],
                [
                    [who, name, *_figure_row("", f)[1:]]
                    for who, by in h["per_reviewer"].items()
                    for name, f in by.items()
                ],
            ),
        ]
    parts += [
        "<h2>Bad input (counted, left out)</h2>",
        "<pre>" + html.escape(json.dumps(report["bad_input"], indent=2)) + "</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------------ card


def card_section(report: Mapping[str, Any]) -> list[str]:
    """The dataset card's ``## Judge agreement`` section (Markdown lines): each judge's pass rate on the reference
    dialogues and every comparison's κ and accuracy with their intervals. Deterministic (no dates)."""

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    boot = report["bootstrap"]
    lines = [
        "## Judge agreement",
        "",
        "How far the checklist judge agrees with people and with a careful judge on this dataset's items "
        f"(`cm2data judge agree`; Cohen's κ and accuracy with {int(boot['level'] * 100)}% percentile-bootstrap "
        f"intervals, {boot['resamples']} resamples).",
        "",
        "| judge | mode | model | prompt | items | pass rate on the reference dialogues |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for j in [*report["judges"], *([report["against"]] if report.get("against") else [])]:
        lines.append(
            f"| {cell(j['name'])} | `{cell(j['mode'])}` | `{cell(j['judge_model'])}` | "
            f"`{cell(j['prompt_version'])}` | {j['items']} | {_fmt(j['pass_rate'])} |"
        )
    comps = report.get("comparisons") or []
    if comps:
        lines += [
            "",
            "| judge (mode) | against | n | accuracy | κ | κ 95% CI | false-negative rate |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in comps:
            f = c["overall"]
            lines.append(
                f"| {cell(c['compared'])} (`{cell(c['mode'])}`) | {cell(c['reference'])} | {f['n']} | "
                f"{_fmt(f['accuracy'])} {_ci(f['accuracy_ci'])} | {_fmt(f['kappa'])} | {_ci(f['kappa_ci'])} "
                f"| {_fmt(f['false_negative_rate'])} |"
            )
    h = report.get("human")
    if h:
        inter = h["inter_reviewer"]
        lines += [
            "",
            f"People: {len(h['reviewers'])} reviewers, {h['items_with_majority']} items with a majority "
            f"verdict; between reviewers α {_fmt(inter['alpha'])}, mean κ {_fmt(inter['kappa_mean'])}.",
        ]
    left_out = left_out_counts(report)
    if left_out:
        lines += [
            "",
            "Left out of the comparisons (counted): " + ", ".join(f"{k} {v}" for k, v in left_out.items()) + ".",
        ]
    lines.append("")
    return lines


#: bad-input counters that are totals, not exclusions
_TOTALS = ("rows", "usable", "submitted", "reviewers", "items_answered", "revised")


def left_out_counts(report: Mapping[str, Any]) -> dict[str, int]:
    """Every non-zero exclusion of ``report["bad_input"]`` and of the comparisons' alignments, summed by
    ``group/reason`` (``verdicts/duplicate_rows``, ``human/skipped``, ``judge vs human/unreviewed``, …)."""
    out: dict[str, int] = {}

    def add(name: str, counts: Mapping[str, Any]) -> None:
        for k, v in counts.items():
            if isinstance(v, int) and v and k not in _TOTALS:
                out[f"{name}/{k}"] = out.get(f"{name}/{k}", 0) + v

    bad = report["bad_input"]
    for group in ("verdicts", "against"):
        for counts in (bad.get(group) or {}).values():
            add(group, counts)
    if bad.get("human"):
        add("human", bad["human"])
    for c in report.get("comparisons") or []:
        add(f"judge vs {'human' if c['kind'] == 'human' else 'judge'}", c["alignment"])
    return dict(sorted(out.items()))


def print_agreement(report: Mapping[str, Any], console: Any) -> None:
    """The report's headline figures as rich tables (for the CLI)."""
    from rich.table import Table

    table = Table(title="judges (pass rate on the reference dialogues)")
    for col in ("judge", "mode", "model", "items", "pass rate", "failed calls"):
        table.add_column(col)
    for j in [*report["judges"], *([report["against"]] if report.get("against") else [])]:
        table.add_row(
            j["name"], j["mode"], j["judge_model"], str(j["items"]), _fmt(j["pass_rate"]), str(j["failed_calls_items"])
        )
    console.print(table)
    comps = report.get("comparisons") or []
    if comps:
        table = Table(title="agreement")
        for col in ("judge", "against", "n", "accuracy", "κ", "κ CI", "FN rate"):
            table.add_column(col)
        for c in comps:
            f = c["overall"]
            table.add_row(
                f"{c['compared']} ({c['mode']})",
                c["reference"],
                str(f["n"]),
                _fmt(f["accuracy"]),
                _fmt(f["kappa"]),
                _ci(f["kappa_ci"]),
                _fmt(f["false_negative_rate"]),
            )
        console.print(table)
    h = report.get("human")
    if h:
        inter = h["inter_reviewer"]
        console.print(
            f"people: {len(h['reviewers'])} reviewers, {h['items_with_majority']} items with a majority; "
            f"between reviewers α {_fmt(inter['alpha'])}, mean κ {_fmt(inter['kappa_mean'])}"
        )
    left_out = left_out_counts(report)
    console.print("left out (counted): " + (", ".join(f"{k} {v}" for k, v in left_out.items()) or "nothing"))
