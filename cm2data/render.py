"""Terminal rendering of one dialogue, turn by turn and step by step, with its checklist (``cm2data show``)."""

from __future__ import annotations

import json

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cm2data.schema import Dialogue, segment


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (json.JSONDecodeError, TypeError):
        return text


def render_dialogue(d: Dialogue, variant: int = 0, show_thinking: bool = True) -> RenderableType:
    parts: list[RenderableType] = []
    head = Text.assemble(
        ("dialogue ", "bold"), (d.id, "bold cyan"), f"  source={d.source}  ", f"tools={', '.join(d.tool_names) or '-'}"
    )
    parts.append(head)
    if d.messages and d.messages[0].role == "system":
        parts.append(Panel(Text(d.messages[0].content), title="system", border_style="dim"))
    blocks = d.checklists[variant] if variant < len(d.checklists) else []
    for turn in segment(d.messages):
        rows: list[RenderableType] = []
        for step in turn.steps:
            for idx in step.message_indices:
                m = d.messages[idx]
                label = f"[{turn.index}.{step.index}] {m.role}"
                if m.role == "tool":
                    label += f" {m.name or ''}".rstrip()
                body = Text()
                if m.thinking and show_thinking:
                    body.append(f"<think> {m.thinking}\n", style="dim italic")
                if m.content:
                    body.append(_pretty_json(m.content) if m.role == "tool" else m.content)
                for call in m.tool_calls:
                    body.append(f"\n→ {call.name}({_pretty_json(call.arguments)})", style="green")
                rows.append(Text.assemble((label, "bold magenta" if m.role == "user" else "bold"), "  ", body))
        block = next((b for b in blocks if b.turn == turn.index), None)
        if block is not None:
            table = Table(title=f"checklist, turn {turn.index}", show_lines=False, expand=True)
            for col in ("id", "w", "must", "focus", "question / pass condition", "deps"):
                table.add_column(col)
            for it in block.items:
                table.add_row(
                    it.id,
                    f"{it.weight:.2f}",
                    "yes" if it.required_for_next_turn else "",
                    it.focus_on,
                    f"{escape(it.question)}\n[dim]{escape(it.pass_condition)}[/dim]",
                    ", ".join(it.depends_on),
                )
            rows.append(table)
        status = "" if turn.complete else " (incomplete)"
        parts.append(Panel(Group(*rows), title=f"turn {turn.index}{status}", title_align="left"))
    return Group(*parts)
