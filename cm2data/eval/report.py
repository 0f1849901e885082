"""``report.html`` of an eval run: one self-contained page (tables, PNG plots embedded as base64) — accuracy per
category, error types per category, every entry's outcome; and the same for ``cm2data eval compare``."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_HTML = "report.html"
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
font-size:13px;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right}h2{margin-top:1.6em}
.note{color:#666;font-size:13px}code{background:#f3f3f3;padding:0 3px}td.pass{color:#1a7f37}td.fail{color:#b42318}
td.error{color:#9a6700;font-weight:bold}"""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str | None] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for k, v in enumerate(row):
            cls = classes[k] if classes and classes[k] else ("n" if isinstance(v, int | float) else "")
            if cls == "outcome":
                cls = str(v)
            cells.append(f"<td{f' class={cls!r}' if cls else ''}>{html.escape('' if v is None else str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _img(data: str, alt: str) -> str:
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def plots(summary: Mapping[str, Any], outcomes: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``accuracy``: accuracy per category (bars, with passed/entries); ``errors``: error types, stacked by
    category (horizontal bars)."""
    plt = _plt()
    figs: dict[str, str] = {}
    cats = list(summary["categories"])
    fig, ax = plt.subplots(figsize=(7, 2.8))
    if cats:
        acc = [100 * summary["categories"][c]["accuracy"] for c in cats]
        labels = [c.replace("multi_turn_", "") for c in cats]
        ax.bar(labels, acc, color="#4C72B0")
        for i, c in enumerate(cats):
            s = summary["categories"][c]
            ax.text(i, acc[i], f"{acc[i]:.1f}% ({s['passed']}/{s['entries']})", ha="center", va="bottom")
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy per category")
    figs["accuracy"] = _png(fig)
    plt.close(fig)

    types = list(summary["error_types"])
    fig, ax = plt.subplots(figsize=(7, max(1.8, 0.34 * len(types) + 0.9)))
    if types:
        left = [0] * len(types)
        palette = ["#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3"]
        for k, c in enumerate(cats):
            counts = Counter(o["error_type"] for o in outcomes if o["category"] == c and o["error_type"])
            values = [counts.get(t, 0) for t in types][::-1]
            ax.barh(
                types[::-1],
                values,
                left=left[::-1],
                color=palette[k % len(palette)],
                label=c.replace("multi_turn_", ""),
            )
            left = [a + b for a, b in zip(left, values[::-1], strict=True)]
        ax.set_xlabel("entries")
        ax.legend(fontsize=8)
        ax.set_title("why entries failed (error type), by category")
    else:
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    figs["errors"] = _png(fig)
    plt.close(fig)
    return figs


def render_bfcl(summary: Mapping[str, Any], outcomes: Sequence[Mapping[str, Any]]) -> str:
    from cm2data.eval.bfcl import OWN_ERROR_TYPES

    figs = plots(summary, outcomes)
    o = summary["overall"]
    title = f"BFCL v4 multi-turn: {summary.get('model')}"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>endpoint <code>{html.escape(str(summary.get('base_url')))}</code> · bfcl-eval "
        f"{html.escape(str(summary.get('bfcl_eval')))} · {html.escape(str(summary.get('started_at')))} · "
        f"{summary.get('seconds')} s</p>",
        f"<p>Overall accuracy <b>{_pct(o['accuracy'])}</b> (unweighted mean over the categories run, as BFCL "
        f"reports it); {o['passed']} of {o['entries']} entries passed ({_pct(o['micro_accuracy'])}).</p>",
    ]
    if summary.get("error_rows"):
        parts.append(
            f"<p class='note'><b>{len(summary['error_rows'])} entries did not run to the end</b> (a request "
            "failed: <code>inference_error</code>); they count as failures here, and running the same "
            "command again runs them again.</p>"
        )
    parts += [
        "<h2>Per category</h2>",
        _table(
            ["category", "entries", "passed", "failed", "errors", "accuracy"],
            [
                [c, s["entries"], s["passed"], s["failed"], s["errors"], _pct(s["accuracy"])]
                for c, s in summary["categories"].items()
            ],
        ),
        _img(figs["accuracy"], "accuracy per category"),
        "<h2>Error types</h2>",
        _table(
            ["error type", "entries", "what it means"],
            [[t, n, OWN_ERROR_TYPES.get(t, "BFCL's multi-turn checker")] for t, n in summary["error_types"].items()],
        )
        if summary["error_types"]
        else "<p>No failures.</p>",
        _img(figs["errors"], "error types"),
        "<h2>Entries</h2>",
        _table(
            ["id", "outcome", "error type", "turns", "steps", "tool calls", "undecodable steps", "message"],
            [
                [
                    r["id"],
                    r["outcome"],
                    r.get("error_type"),
                    r.get("turns"),
                    r.get("steps"),
                    r.get("tool_calls"),
                    r.get("undecodable_steps"),
                    (r.get("error_message") or "")[:160],
                ]
                for r in outcomes
            ],
            classes=[None, "outcome", None, None, None, None, None, None],
        ),
        "<h2>Settings</h2><pre>" + html.escape(json.dumps(summary.get("settings"), indent=2)) + "</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_bfcl_report(out: Path, summary: Mapping[str, Any], outcomes: Sequence[Mapping[str, Any]]) -> Path:
    path = out / REPORT_HTML
    path.write_text(render_bfcl(summary, outcomes), encoding="utf-8")
    return path
