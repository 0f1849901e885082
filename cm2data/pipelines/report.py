"""The run report: ``report.json`` (everything, machine-readable) and ``report.html`` (one self-contained page with
tables and PNG plots embedded as base64): records in and out of every stage, rejections per stage and rule with an
example each, LLM requests and tokens per stage, timings and resumed work, checklist statistics of the result
(:func:`cm2data.describe.dataset_stats`)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cm2data.describe import dataset_stats
from cm2data.rejects import Reject
from cm2data.schema import Dialogue

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def usage_by_stage(stages: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Token usage summed per pipeline stage (its LLM sub-stages — ``synthesize.assistant``, … — added up)."""
    out: dict[str, dict[str, Any]] = {}
    for s in stages:
        total: dict[str, int | float] = {}
        for counters in (s.get("usage") or {}).values():
            for k, v in counters.items():
                if isinstance(v, int | float):
                    total[k] = total.get(k, 0) + v
        out[s["stage"]] = {k: round(v, 3) if isinstance(v, float) else v for k, v in total.items()}
    return out


def build_report(
    *,
    name: str,
    stages: Sequence[Mapping[str, Any]],
    records: Sequence[Dialogue],
    rejects: Sequence[Reject],
    llm: Mapping[str, Any] | None,
    started_at: str,
    seconds: float,
    output: str,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    by_stage_rule = Counter((r.stage, r.rule) for r in rejects)
    examples: dict[str, str] = {}
    for r in rejects:
        examples.setdefault(f"{r.stage}/{r.rule}", f"{r.where()}: {r.message[:240]}")
    usage = usage_by_stage(stages)
    total: Counter[str] = Counter()
    for counters in usage.values():
        total.update({k: v for k, v in counters.items() if isinstance(v, int | float)})
    return {
        "name": name,
        "output": output,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(seconds, 2),
        "llm": dict(llm) if llm else None,
        "records": len(records),
        "stages": [dict(s) for s in stages],
        "rejects": {
            "total": len(rejects),
            "by_stage": dict(Counter(r.stage for r in rejects).most_common()),
            "by_stage_and_rule": [
                {"stage": s, "rule": rule, "count": n, "example": examples[f"{s}/{rule}"]}
                for (s, rule), n in by_stage_rule.most_common()
            ],
        },
        "usage": {
            "by_stage": usage,
            "total": dict(total),
            "detail": {s["stage"]: s.get("usage") or {} for s in stages},
        },
        "dataset": dataset_stats(list(records)),
        "config": dict(config) if config else None,
    }


# --------------------------------------------------------------------------------------------------------- plots


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


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plots(report: Mapping[str, Any]) -> dict[str, str]:
    """The report's figures as base64 PNGs: ``funnel``, ``rejects``, ``tokens``, ``checklists``."""
    plt = _plt()
    out: dict[str, str] = {}
    stages = report["stages"]

    fig, ax = plt.subplots(figsize=(7, 2.8))
    if stages:
        labels = [s["stage"] for s in stages]
        ax.bar(labels, [s["input"] for s in stages], color="#C9D6EA", label="in")
        ax.bar(labels, [s["accepted"] for s in stages], color="#4C72B0", label="kept")
        for i, s in enumerate(stages):
            ax.text(i, s["accepted"], str(s["accepted"]), ha="center", va="bottom")
        ax.set_ylabel("records")
        ax.legend()
        ax.set_title("records into and out of each stage")
    else:
        _empty(ax, "no stages ran")
    out["funnel"] = _png(fig)
    plt.close(fig)

    rows = report["rejects"]["by_stage_and_rule"]
    fig, ax = plt.subplots(figsize=(7, max(1.8, 0.32 * len(rows) + 0.8)))
    if rows:
        labels = [f"{r['stage']}: {r['rule']}" for r in rows][::-1]
        ax.barh(labels, [r["count"] for r in rows][::-1], color="#DD8452")
        ax.set_xlabel("rejected records")
        ax.set_title("rejections by stage and rule")
    else:
        _empty(ax, "nothing was rejected")
    out["rejects"] = _png(fig)
    plt.close(fig)

    usage = report["usage"]["by_stage"]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    named = [(k, v) for k, v in usage.items() if v.get("requests") or v.get("failures")]
    if named:
        labels = [k for k, _ in named]
        prompt = [v.get("prompt_tokens", 0) for _, v in named]
        completion = [v.get("completion_tokens", 0) for _, v in named]
        ax.bar(labels, prompt, color="#8C8C8C", label="prompt tokens")
        ax.bar(labels, completion, bottom=prompt, color="#55A868", label="completion tokens")
        ax.set_ylabel("tokens")
        ax.legend()
        ax.set_title("LLM tokens per stage")
    else:
        _empty(ax, "no LLM calls")
    out["tokens"] = _png(fig)
    plt.close(fig)

    c = report["dataset"]["checklists"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), gridspec_kw={"width_ratios": [1, 1.3]})
    hist = c["items_per_turn"]["histogram"]
    if hist:
        axes[0].bar([str(k) for k in hist], list(hist.values()), color="#4C72B0")
        axes[0].set_xlabel("items")
        axes[0].set_title("checklist items per turn")
    else:
        _empty(axes[0], "no checklists")
    focus = c["focus_on"]
    if focus:
        axes[1].barh(list(focus)[::-1], list(focus.values())[::-1], color="#4C72B0")
        axes[1].set_title("items by focus_on")
    else:
        _empty(axes[1], "no checklist items")
    out["checklists"] = _png(fig)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------------- html

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
font-size:13px;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right}h2{margin-top:1.6em}
.note{color:#666;font-size:13px}code{background:#f3f3f3;padding:0 3px}"""


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="n"' if isinstance(v, int | float) else ""
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _img(data: str, alt: str) -> str:
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def render_html(report: Mapping[str, Any]) -> str:
    figs = plots(report)
    llm = report.get("llm") or {}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>cm2data run {html.escape(report['name'])}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>cm2data run: {html.escape(report['name'])}</h1>",
        f"<p class='note'>{html.escape(report['started_at'])} · {report['seconds']} s · output "
        f"<code>{html.escape(report['output'])}</code>"
        + (
            f" · LLM <code>{html.escape(str(llm.get('model')))}</code> at "
            f"<code>{html.escape(str(llm.get('base_url')))}</code>"
            if llm
            else ""
        )
        + "</p>",
        f"<p><b>{report['records']}</b> records in the output; <b>{report['rejects']['total']}</b> rejected "
        "along the way (every one in <code>rejects.jsonl</code> with its reason and the record).</p>",
        "<h2>Stages</h2>",
        _table(
            ["stage", "in", "kept", "rejected", "resumed", "seconds", "requests", "prompt tokens", "completion tokens"],
            [
                [
                    s["stage"],
                    s["input"],
                    s["accepted"],
                    s["rejected"],
                    s.get("resumed", 0),
                    s.get("seconds", 0),
                    report["usage"]["by_stage"].get(s["stage"], {}).get("requests", 0),
                    report["usage"]["by_stage"].get(s["stage"], {}).get("prompt_tokens", 0),
                    report["usage"]["by_stage"].get(s["stage"], {}).get("completion_tokens", 0),
                ]
                for s in report["stages"]
            ],
        ),
        _img(figs["funnel"], "records per stage"),
        "<h2>Rejections</h2>",
        _table(
            ["stage", "rule", "count", "example"],
            [[r["stage"], r["rule"], r["count"], r["example"]] for r in report["rejects"]["by_stage_and_rule"]],
        )
        if report["rejects"]["by_stage_and_rule"]
        else "<p>Nothing was rejected.</p>",
        _img(figs["rejects"], "rejections"),
        "<h2>LLM usage</h2>",
        _table(
            [
                "stage",
                "LLM call kind",
                "requests",
                "prompt tokens",
                "completion tokens",
                "retries",
                "invalid",
                "failures",
                "seconds",
            ],
            [
                [
                    stage,
                    kind,
                    c.get("requests", 0),
                    c.get("prompt_tokens", 0),
                    c.get("completion_tokens", 0),
                    c.get("retries", 0),
                    c.get("invalid", 0),
                    c.get("failures", 0),
                    c.get("seconds", 0),
                ]
                for stage, kinds in report["usage"]["detail"].items()
                for kind, c in kinds.items()
            ],
        ),
        _img(figs["tokens"], "tokens per stage"),
        "<p class='note'>requests: answers received (invalid ones included); invalid: answers rejected as "
        "malformed or failing validation (asked again); failures: calls that finally failed; seconds: summed "
        "request latency.</p>",
    ]
    ds = report["dataset"]
    c = ds["checklists"]
    parts += [
        "<h2>Output dataset</h2>",
        _table(
            ["dialogues", "annotated", "checklist items", "must-pass share", "items with dependencies"],
            [
                [
                    ds["dialogues"],
                    c["annotated_dialogues"],
                    c["items_total"],
                    c["must_pass_fraction"],
                    c["items_with_dependencies"],
                ]
            ],
        ),
        _table(
            ["statistic", "min", "mean", "median", "max"],
            [[k, v["min"], v["mean"], v["median"], v["max"]] for k, v in ds["statistics"].items()],
        ),
        _img(figs["checklists"], "checklists"),
    ]
    for s in report["stages"]:
        if s.get("details"):
            parts.append(
                f"<h3>{html.escape(s['stage'])}: details</h3><pre>"
                f"{html.escape(json.dumps(s['details'], indent=2, ensure_ascii=False))}</pre>"
            )
    if report.get("config"):
        parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(report["config"], indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    html_path = folder / REPORT_HTML
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
