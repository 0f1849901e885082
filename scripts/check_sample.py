#!/usr/bin/env python3
"""Standalone consistency checker for the shipped seed data of cm2data.

Checks
  cm2data/data/catalog/tools.json    (seed tool catalog)
  cm2data/data/sample/dialogues.json (checklist-annotated sample dialogues, CM2 reference layout)

against the rules of the CM2 data format (docs/cm2-method.md sections 1-3): role order, tool-call/response
pairing, argument types against the schema (a boolean is not a number), enums, required and unknown
parameters, JSON tool content, <think> tags, checklist shape, weights, dependence rules and evidence
snippets located at the right turn and step.

Standard library only. Prints one line per violation and exits 1 when there is any; otherwise prints a
summary and exits 0.

    python scripts/check_sample.py [--catalog PATH] [--dialogues PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import uuid as uuidlib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = REPO / "cm2data" / "data" / "catalog" / "tools.json"
DEFAULT_DIALOGUES = REPO / "cm2data" / "data" / "sample" / "dialogues.json"

MIN_TOOLS = 66
MIN_CATALOG_DOMAINS = 11
MIN_DIALOGUES = 32
MIN_DIALOGUE_DOMAINS = 10
MIN_USER_TURNS, MAX_USER_TURNS = 2, 4
MIN_CANDIDATE_TOOLS, MAX_CANDIDATE_TOOLS = 2, 6
MIN_ITEMS, MAX_ITEMS = 3, 6
MIN_FAILURE_EXAMPLES, MAX_FAILURE_EXAMPLES = 2, 3
WEIGHT_TOL = 1e-6

JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object"}
SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
THINK = re.compile(r"^<think>\n(.+?)\n</think>\n", re.S)
EVIDENCE_FROM = {
    "user.content": "user",
    "assistant.content.thinking": "assistant",
    "assistant.content.user_visible_reply": "assistant",
    "assistant.tool_calls": "assistant",
    "tool.content": "tool",
}
FOCUS_ON = {
    "assistant.tool_calls",
    "assistant.content.thinking",
    "assistant.content.user_visible_reply",
    "tool.content",
}
ITEM_KEYS = {
    "id",
    "evidence",
    "focus_on",
    "question",
    "pass_condition",
    "failure_examples",
    "required_for_next_turn",
    "dependence",
    "weight",
}
EVIDENCE_KEYS = {"turn", "step", "from", "snippet"}
DIALOGUE_KEYS = {"uuid", "domain", "messages", "tools", "checklists"}
INDEX_MENTION = re.compile(r"\b(?:turn|step)s?\s*(?:#|no\.?|number)?\s*\d", re.I)
CONDITIONAL_START = re.compile(r"^\s*(?:if|when|whenever|in case)\b", re.I)
TAG_LEAK = re.compile(r"</?(?:tool_call|tool_response)>")


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")


# ----------------------------------------------------------------------------------------------- schema helpers
def type_ok(value, typ: str) -> bool:
    """JSON-schema primitive type test; bool is neither integer nor number."""
    if typ == "string":
        return isinstance(value, str)
    if typ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if typ == "boolean":
        return isinstance(value, bool)
    if typ == "array":
        return isinstance(value, list)
    if typ == "object":
        return isinstance(value, dict)
    return False


def check_schema_node(rep: Report, where: str, node, top_level_param: bool) -> None:
    """Validate a property schema of the catalog (recursively for arrays and objects)."""
    if not isinstance(node, dict):
        rep.err(where, "schema node is not an object")
        return
    typ = node.get("type")
    if typ not in JSON_TYPES:
        rep.err(where, f"invalid or missing type {typ!r}")
        return
    if top_level_param and not (isinstance(node.get("description"), str) and node["description"].strip()):
        rep.err(where, "parameter has no description")
    if "enum" in node:
        enum = node["enum"]
        if not isinstance(enum, list) or not enum:
            rep.err(where, "enum must be a non-empty list")
        else:
            for v in enum:
                if not type_ok(v, typ):
                    rep.err(where, f"enum value {v!r} does not match type {typ}")
            if len({json.dumps(v) for v in enum}) != len(enum):
                rep.err(where, "enum has duplicate values")
    if "default" in node:
        d = node["default"]
        if not type_ok(d, typ):
            rep.err(where, f"default {d!r} does not match type {typ}")
        elif "enum" in node and isinstance(node["enum"], list) and d not in node["enum"]:
            rep.err(where, f"default {d!r} is not one of the enum values")
    if typ == "array":
        if "items" not in node:
            rep.err(where, "array parameter has no items schema")
        else:
            check_schema_node(rep, where + ".items", node["items"], False)
    if typ == "object" and "properties" in node:
        props = node["properties"]
        if not isinstance(props, dict):
            rep.err(where, "properties is not an object")
        else:
            for k, sub in props.items():
                check_schema_node(rep, f"{where}.{k}", sub, False)
            req = node.get("required", [])
            if not isinstance(req, list) or any(r not in props for r in req):
                rep.err(where, f"required {req!r} names unknown properties")


def check_value(rep: Report, where: str, value, schema: dict) -> None:
    """Validate an argument value against a property schema."""
    typ = schema.get("type")
    if not type_ok(value, typ):
        rep.err(where, f"expected {typ}, got {type(value).__name__} {json.dumps(value)[:60]}")
        return
    if "enum" in schema and value not in schema["enum"]:
        rep.err(where, f"value {value!r} not in enum {schema['enum']}")
    if typ == "array" and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            check_value(rep, f"{where}[{i}]", v, schema["items"])
    if typ == "object" and isinstance(schema.get("properties"), dict):
        check_object(rep, where, value, schema["properties"], schema.get("required", []))


def check_object(rep: Report, where: str, obj: dict, props: dict, required: list) -> None:
    for r in required:
        if r not in obj:
            rep.err(where, f"missing required parameter {r!r}")
    for k, v in obj.items():
        if k not in props:
            rep.err(where, f"unknown parameter {k!r}")
        else:
            check_value(rep, f"{where}.{k}", v, props[k])


# ----------------------------------------------------------------------------------------------- catalog
def check_catalog(rep: Report, catalog) -> dict:
    by_name: dict[str, dict] = {}
    if not isinstance(catalog, list):
        rep.err("catalog", "top level is not a list")
        return by_name
    feature = Counter()
    for i, entry in enumerate(catalog):
        where = f"catalog[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"domain", "type", "function"}:
            got = sorted(entry) if isinstance(entry, dict) else entry
            rep.err(where, f"keys must be exactly domain/type/function, got {got!r}")
            continue
        fn = entry["function"]
        name = fn.get("name") if isinstance(fn, dict) else None
        where = f"catalog[{i}] {name}"
        if not (isinstance(entry["domain"], str) and SNAKE.match(entry["domain"])):
            rep.err(where, f"domain {entry['domain']!r} is not a snake_case string")
        if entry["type"] != "function":
            rep.err(where, "type must be 'function'")
        if not isinstance(fn, dict) or set(fn) != {"name", "description", "parameters"}:
            rep.err(where, "function must have exactly name/description/parameters")
            continue
        if not (isinstance(name, str) and SNAKE.match(name)):
            rep.err(where, "name is not snake_case")
        if name in by_name:
            rep.err(where, "duplicate tool name")
        by_name[name] = entry
        if not (isinstance(fn["description"], str) and len(fn["description"].strip()) >= 15):
            rep.err(where, "description missing or too short")
        params = fn["parameters"]
        if (
            not isinstance(params, dict)
            or params.get("type") != "object"
            or not isinstance(params.get("properties"), dict)
        ):
            rep.err(where, "parameters must be an object schema with properties")
            continue
        req = params.get("required")
        if not isinstance(req, list) or len(set(req)) != len(req) or any(r not in params["properties"] for r in req):
            rep.err(where, f"required {req!r} invalid (list of distinct known properties expected)")
            req = []
        for pname, p in params["properties"].items():
            if not SNAKE.match(pname):
                rep.err(where, f"parameter {pname!r} is not snake_case")
            check_schema_node(rep, f"{where}.{pname}", p, True)
            if isinstance(p, dict):
                feature[p.get("type")] += 1
                feature["enum"] += "enum" in p
                feature["default"] += "default" in p
                feature["optional"] += pname not in req
                feature["required"] += pname in req
    domains = Counter(e["domain"] for e in catalog if isinstance(e, dict) and "domain" in e)
    if len(by_name) < MIN_TOOLS:
        rep.err("catalog", f"{len(by_name)} tools, need at least {MIN_TOOLS}")
    if len(domains) < MIN_CATALOG_DOMAINS:
        rep.err("catalog", f"{len(domains)} domains, need at least {MIN_CATALOG_DOMAINS}")
    for f in ("string", "integer", "number", "boolean", "array", "object", "enum", "default", "optional", "required"):
        if feature[f] == 0:
            rep.err("catalog", f"no parameter uses {f}")
    return by_name


# ----------------------------------------------------------------------------------------------- dialogues
def split_think(content: str):
    """Return (thinking, user_visible_reply) of an assistant content, or None if malformed."""
    m = THINK.match(content)
    if not m:
        return None
    return m.group(1), content[m.end() :].strip()


def call_texts(msg: dict) -> list[str]:
    """Texts that an assistant.tool_calls evidence snippet may be a substring of."""
    calls = msg.get("tool_calls") or []
    out = [json.dumps(calls), json.dumps(calls, ensure_ascii=False)]
    for c in calls:
        out.append(json.dumps(c))
        fn = c.get("function", {}) if isinstance(c, dict) else {}
        out.append(json.dumps(fn))
        out.append(json.dumps(fn, ensure_ascii=False))
        if isinstance(fn.get("arguments"), str):
            out.append(fn["arguments"])
    return out


def segment_turns(messages: list) -> list[list[list[dict]]]:
    """turns -> steps -> messages (step 0 = user message; each assistant message is a step;
    a run of consecutive tool messages is one step). The system message is not part of any turn."""
    turns: list[list[list[dict]]] = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        if role == "system":
            continue
        if role == "user":
            turns.append([[m]])
        elif not turns:
            continue
        elif role == "tool" and turns[-1][-1][0].get("role") == "tool":
            turns[-1][-1].append(m)
        else:
            turns[-1].append([m])
    return turns


def check_messages(rep: Report, where: str, d: dict, tools_by_name: dict, stats: Counter) -> set:
    """Role order, think tags, call/response pairing and argument validation. Returns called tool names."""
    msgs = d["messages"]
    called: set = set()
    if not isinstance(msgs, list) or not msgs:
        rep.err(where, "messages must be a non-empty list")
        return called
    seen_ids: set = set()
    pending: list = []  # tool calls still waiting for a response, in order
    prev = None
    for i, m in enumerate(msgs):
        w = f"{where} msg[{i}]"
        if not isinstance(m, dict):
            rep.err(w, "message is not an object")
            return called
        role = m.get("role")
        content = m.get("content")
        if role not in ("system", "user", "assistant", "tool"):
            rep.err(w, f"unknown role {role!r}")
            return called
        if not isinstance(content, str) or not content.strip():
            rep.err(w, f"{role} message has empty or non-string content")
            content = content if isinstance(content, str) else ""
        # ---- role order
        if role == "system":
            if i != 0:
                rep.err(w, "system message is only allowed first")
        elif role == "user":
            if pending:
                rep.err(w, f"user message while {len(pending)} tool call(s) still await a response")
                pending = []
            if prev not in (None, "system", "assistant_reply"):
                rep.err(w, f"user message must follow system/assistant reply or start the dialogue, follows {prev}")
        elif role == "assistant":
            if pending:
                rep.err(w, f"assistant message while {len(pending)} tool call(s) still await a response")
                pending = []
            if prev not in ("user", "tool"):
                rep.err(w, f"assistant message must follow a user or tool message, follows {prev}")
        elif role == "tool":
            if not pending:
                rep.err(w, "tool message without a pending tool call")
        # ---- think tags
        if role != "assistant" and ("<think>" in content or "</think>" in content):
            rep.err(w, f"{role} message contains think tags")
        if role in ("user", "system") and m.get("tool_calls"):
            rep.err(w, f"{role} message carries tool_calls")
        if role == "assistant":
            if content.count("<think>") != 1 or content.count("</think>") != 1:
                rep.err(w, "assistant content must contain exactly one <think>...</think> block")
            parts = split_think(content)
            if parts is None:
                rep.err(w, "assistant content must start with '<think>\\n...\\n</think>\\n'")
                parts = ("", "")
            thinking, reply = parts
            if not thinking.strip():
                rep.err(w, "empty thinking")
            if TAG_LEAK.search(content):
                rep.err(w, "assistant content contains tool_call/tool_response tags")
            calls = m.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    rep.err(w, "tool_calls is not a list")
                    calls = []
                stats["actions"] += 1
                if len(calls) > 1:
                    stats["parallel_actions"] += 1
                for k, c in enumerate(calls):
                    cw = f"{w} call[{k}]"
                    if not isinstance(c, dict) or set(c) != {"id", "type", "function"}:
                        rep.err(cw, "tool call must have exactly id/type/function")
                        continue
                    cid = c["id"]
                    if not (isinstance(cid, str) and cid.startswith("call_") and len(cid) > 5):
                        rep.err(cw, f"tool call id {cid!r} must look like 'call_<unique>'")
                    if cid in seen_ids:
                        rep.err(cw, f"duplicate tool call id {cid!r}")
                    seen_ids.add(cid)
                    if c["type"] != "function":
                        rep.err(cw, "type must be 'function'")
                    fn = c["function"]
                    if not isinstance(fn, dict) or set(fn) != {"name", "arguments"}:
                        rep.err(cw, "function must have exactly name/arguments")
                        continue
                    name = fn["name"]
                    stats["tool_calls"] += 1
                    called.add(name)
                    pending.append((cid, name))
                    if name not in tools_by_name:
                        rep.err(cw, f"calls {name!r}, which is not among the dialogue's candidate tools")
                        continue
                    if not isinstance(fn["arguments"], str):
                        rep.err(cw, "arguments must be a JSON string")
                        continue
                    try:
                        args = json.loads(fn["arguments"])
                    except json.JSONDecodeError as e:
                        rep.err(cw, f"arguments are not valid JSON: {e}")
                        continue
                    if not isinstance(args, dict):
                        rep.err(cw, "arguments must decode to an object")
                        continue
                    params = tools_by_name[name]["function"]["parameters"]
                    check_object(rep, f"{cw} {name}", args, params["properties"], params.get("required", []))
                prev = "assistant_call"
            else:
                if "tool_calls" in m and m["tool_calls"] not in (None, []):
                    rep.err(w, "tool_calls must be a list")
                if not reply:
                    rep.err(w, "final assistant reply has no user-visible text after </think>")
                prev = "assistant_reply"
        elif role == "tool":
            if set(m) != {"role", "tool_call_id", "name", "content"}:
                rep.err(w, f"tool message keys must be role/tool_call_id/name/content, got {sorted(m)}")
            try:
                json.loads(content)
            except (json.JSONDecodeError, TypeError):
                rep.err(w, "tool content is not valid JSON")
            if pending:
                cid, name = pending.pop(0)
                if m.get("tool_call_id") != cid:
                    rep.err(w, f"tool_call_id {m.get('tool_call_id')!r} does not answer the next pending call {cid!r}")
                if m.get("name") != name:
                    rep.err(w, f"tool name {m.get('name')!r} does not match the call's {name!r}")
            prev = "tool"
        elif role == "user":
            prev = "user"
        else:
            prev = "system"
    if pending:
        rep.err(where, f"{len(pending)} tool call(s) never answered")
    if prev != "assistant_reply":
        rep.err(where, "dialogue must end with an assistant reply without tool calls")
    return called


def evidence_texts(step_msgs: list[dict], src: str) -> list[str]:
    role = EVIDENCE_FROM[src]
    if step_msgs[0].get("role") != role:
        return []
    if src == "user.content" or src == "tool.content":
        return [m.get("content", "") for m in step_msgs]
    m = step_msgs[0]
    parts = split_think(m.get("content", "")) or ("", "")
    if src == "assistant.content.thinking":
        return [parts[0]]
    if src == "assistant.content.user_visible_reply":
        return [parts[1]]
    return call_texts(m)


def check_checklists(rep: Report, where: str, d: dict, turns, stats: Counter) -> None:
    cls = d["checklists"]
    if not isinstance(cls, list) or len(cls) != 1:
        rep.err(where, "checklists must be a list holding exactly one variant")
        return
    variant = cls[0]
    if not isinstance(variant, list):
        rep.err(where, "checklist variant must be a list of turn blocks")
        return
    if len(variant) != len(turns):
        rep.err(where, f"{len(variant)} checklist blocks but {len(turns)} user turns")
    for t, block in enumerate(variant):
        bw = f"{where} checklist turn {t}"
        if not isinstance(block, list) or not (MIN_ITEMS <= len(block) <= MAX_ITEMS):
            rep.err(bw, f"block must be a list of {MIN_ITEMS}-{MAX_ITEMS} items")
            if not isinstance(block, list):
                continue
        turn_steps = turns[t] if t < len(turns) else []
        turn_has_calls = any(s[0].get("role") == "assistant" and s[0].get("tool_calls") for s in turn_steps)
        turn_has_tools = any(s[0].get("role") == "tool" for s in turn_steps)
        items = {}
        for k, it in enumerate(block):
            iw = f"{bw} item[{k}]"
            if not isinstance(it, dict):
                rep.err(iw, "item is not an object")
                continue
            if set(it) != ITEM_KEYS:
                missing, extra = sorted(ITEM_KEYS - set(it)), sorted(set(it) - ITEM_KEYS)
                rep.err(iw, f"keys differ from the reference: missing {missing}, extra {extra}")
            iid = it.get("id")
            iw = f"{bw} {iid}"
            if iid != f"C{k}":
                rep.err(iw, f"ids must run C0, C1, ... in order; expected C{k}")
            if iid in items:
                rep.err(iw, "duplicate id within the turn")
            items[iid] = it
        weights = []
        for iid, it in items.items():
            iw = f"{bw} {iid}"
            stats["items"] += 1
            focus = it.get("focus_on")
            if focus not in FOCUS_ON:
                rep.err(iw, f"invalid focus_on {focus!r}")
            if focus == "assistant.tool_calls" and not turn_has_calls:
                rep.err(iw, "focuses on tool calls in a turn without tool calls")
            if focus == "tool.content" and not turn_has_tools:
                rep.err(iw, "focuses on tool content in a turn without tool responses")
            for key in ("question", "pass_condition"):
                v = it.get(key)
                if not (isinstance(v, str) and v.strip()):
                    rep.err(iw, f"{key} must be a non-empty string")
            q = it.get("question", "")
            if isinstance(q, str) and not q.rstrip().endswith("?"):
                rep.err(iw, "question is not phrased as a question")
            if isinstance(q, str) and CONDITIONAL_START.match(q):
                rep.err(iw, "conditional (if/when) item")
            fe = it.get("failure_examples")
            if not (
                isinstance(fe, list)
                and MIN_FAILURE_EXAMPLES <= len(fe) <= MAX_FAILURE_EXAMPLES
                and all(isinstance(x, str) and x.strip() for x in fe)
            ):
                rep.err(iw, f"failure_examples must be {MIN_FAILURE_EXAMPLES}-{MAX_FAILURE_EXAMPLES} non-empty strings")
                fe = []
            for text in [it.get("question", ""), it.get("pass_condition", ""), *fe]:
                if isinstance(text, str) and INDEX_MENTION.search(text):
                    rep.err(iw, f"text mentions a turn/step index: {text[:80]!r}")
            if not isinstance(it.get("required_for_next_turn"), bool):
                rep.err(iw, "required_for_next_turn must be a boolean")
            dep = it.get("dependence")
            if not isinstance(dep, list):
                rep.err(iw, "dependence must be a list of ids")
                dep = []
            for did in dep:
                if did == iid:
                    rep.err(iw, "item depends on itself")
                elif did not in items:
                    rep.err(iw, f"depends on {did!r}, which is not an item of this turn")
                elif items[did].get("focus_on") != "tool.content":
                    rep.err(iw, f"depends on {did!r}, whose focus_on is not tool.content")
            wgt = it.get("weight")
            if isinstance(wgt, bool) or not isinstance(wgt, (int, float)) or not (0 < wgt <= 1):
                rep.err(iw, f"weight {wgt!r} must be a number in (0, 1]")
            else:
                weights.append(wgt)
            ev = it.get("evidence")
            if not isinstance(ev, list) or not ev:
                rep.err(iw, "evidence must be a non-empty list")
                continue
            for e_i, e in enumerate(ev):
                ew = f"{iw} evidence[{e_i}]"
                if not isinstance(e, dict) or set(e) != EVIDENCE_KEYS:
                    rep.err(ew, "evidence must have exactly turn/step/from/snippet")
                    continue
                et, es, src, snip = e["turn"], e["step"], e["from"], e["snippet"]
                if src not in EVIDENCE_FROM:
                    rep.err(ew, f"invalid from {src!r}")
                    continue
                if not (type_ok(et, "integer") and type_ok(es, "integer")):
                    rep.err(ew, "turn and step must be integers")
                    continue
                if not (0 <= et <= t and et < len(turns)):
                    rep.err(ew, f"evidence turn {et} is not this turn or an earlier one")
                    continue
                if not (0 <= es < len(turns[et])):
                    rep.err(ew, f"step {es} out of range (turn {et} has {len(turns[et])} steps)")
                    continue
                if not (isinstance(snip, str) and snip.strip()):
                    rep.err(ew, "empty snippet")
                    continue
                step_msgs = turns[et][es]
                want_role = EVIDENCE_FROM[src]
                if step_msgs[0].get("role") != want_role:
                    rep.err(ew, f"from {src} but turn {et} step {es} holds a {step_msgs[0].get('role')} message")
                    continue
                if src == "assistant.tool_calls" and not step_msgs[0].get("tool_calls"):
                    rep.err(ew, f"from assistant.tool_calls but turn {et} step {es} has no tool calls")
                    continue
                if not any(snip in txt for txt in evidence_texts(step_msgs, src)):
                    rep.err(ew, f"snippet not found in {src} at turn {et} step {es}: {snip[:70]!r}")
        if weights and abs(sum(weights) - 1.0) > WEIGHT_TOL:
            rep.err(bw, f"weights sum to {sum(weights):.9f}, not 1")
        if (
            t == 0
            and turn_has_calls
            and not any(
                it.get("focus_on") == "assistant.tool_calls" and it.get("required_for_next_turn") is True
                for it in items.values()
            )
        ):
            rep.err(bw, "first turn has tool calls but no must-pass tool-call item")


def check_dialogues(rep: Report, dialogues, catalog_by_name: dict, stats: Counter) -> None:
    if not isinstance(dialogues, list):
        rep.err("dialogues", "top level is not a list")
        return
    catalog_domains = {e["domain"] for e in catalog_by_name.values()}
    uuids: set = set()
    domains = Counter()
    for i, d in enumerate(dialogues):
        where = f"dialogue[{i}]"
        if not isinstance(d, dict):
            rep.err(where, "not an object")
            continue
        where = f"dialogue[{i}] {d.get('uuid')}"
        if set(d) != DIALOGUE_KEYS:
            rep.err(where, f"keys must be {sorted(DIALOGUE_KEYS)}, got {sorted(d)}")
            if not DIALOGUE_KEYS <= set(d):
                continue
        try:
            uuidlib.UUID(str(d["uuid"]))
        except ValueError:
            rep.err(where, "uuid is not a valid UUID")
        if d["uuid"] in uuids:
            rep.err(where, "duplicate uuid")
        uuids.add(d["uuid"])
        if d["domain"] not in catalog_domains:
            rep.err(where, f"domain {d['domain']!r} is not a catalog domain")
        domains[d["domain"]] += 1
        # ---- candidate tools
        tools = d["tools"]
        tools_by_name: dict = {}
        if not isinstance(tools, list) or not (MIN_CANDIDATE_TOOLS <= len(tools) <= MAX_CANDIDATE_TOOLS):
            rep.err(where, f"tools must be a list of {MIN_CANDIDATE_TOOLS}-{MAX_CANDIDATE_TOOLS} schemas")
            tools = tools if isinstance(tools, list) else []
        for k, tl in enumerate(tools):
            tw = f"{where} tools[{k}]"
            if not isinstance(tl, dict) or set(tl) != {"type", "function"} or tl.get("type") != "function":
                rep.err(tw, "tool must be {type: 'function', function: {...}} without other keys")
                continue
            name = tl["function"].get("name") if isinstance(tl["function"], dict) else None
            if name in tools_by_name:
                rep.err(tw, f"duplicate candidate tool {name!r}")
            tools_by_name[name] = tl
            ref = catalog_by_name.get(name)
            if ref is None:
                rep.err(tw, f"tool {name!r} is not in the catalog")
            elif tl["function"] != ref["function"]:
                rep.err(tw, f"tool {name!r} differs from its catalog entry")
        # ---- messages
        called = check_messages(rep, where, d, tools_by_name, stats)
        unused = set(tools_by_name) - called
        if not unused:
            rep.err(where, "no distractor: every candidate tool is called")
        msgs = d["messages"] if isinstance(d["messages"], list) else []
        turns = segment_turns(msgs)
        if not (MIN_USER_TURNS <= len(turns) <= MAX_USER_TURNS):
            rep.err(where, f"{len(turns)} user turns, need {MIN_USER_TURNS}-{MAX_USER_TURNS}")
        stats["turns"] += len(turns)
        for steps in turns:
            n_actions = sum(1 for s in steps if s[0].get("role") == "assistant" and s[0].get("tool_calls"))
            if n_actions == 0:
                stats["turns_without_tools"] += 1
            if n_actions >= 2:
                stats["multi_step_turns"] += 1
        if any(isinstance(m, dict) and m.get("role") == "tool" and '"error"' in str(m.get("content")) for m in msgs):
            stats["dialogues_with_tool_error"] += 1
        if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system":
            stats["with_system"] += 1
        check_checklists(rep, where, d, turns, stats)
    stats["dialogues"] = len(dialogues)
    stats["dialogue_domains"] = len(domains)
    if len(dialogues) < MIN_DIALOGUES:
        rep.err("dialogues", f"{len(dialogues)} dialogues, need at least {MIN_DIALOGUES}")
    if len(domains) < MIN_DIALOGUE_DOMAINS:
        rep.err("dialogues", f"{len(domains)} domains covered, need at least {MIN_DIALOGUE_DOMAINS}")
    for key, need in (
        ("parallel_actions", 1),
        ("multi_step_turns", 1),
        ("turns_without_tools", 1),
        ("dialogues_with_tool_error", 1),
    ):
        if stats[key] < need:
            rep.err("dialogues", f"need at least {need} {key.replace('_', ' ')}, found {stats[key]}")


def load(rep: Report, path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        rep.err(str(path), f"cannot load: {e}")
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    ap.add_argument("--dialogues", type=Path, default=DEFAULT_DIALOGUES)
    a = ap.parse_args(argv)
    rep = Report()
    stats: Counter = Counter()
    catalog = load(rep, a.catalog)
    dialogues = load(rep, a.dialogues)
    by_name = check_catalog(rep, catalog) if catalog is not None else {}
    if dialogues is not None:
        check_dialogues(rep, dialogues, by_name, stats)
    for e in rep.errors:
        print(f"ERROR {e}")
    if rep.errors:
        print(f"\n{len(rep.errors)} violation(s)", file=sys.stderr)
        return 1
    domains = len({e["domain"] for e in by_name.values()})
    print(f"catalog: {len(by_name)} tools in {domains} domains")
    print(
        f"dialogues: {stats['dialogues']} in {stats['dialogue_domains']} domains, {stats['turns']} user turns, "
        f"{stats['tool_calls']} tool calls in {stats['actions']} actions ({stats['parallel_actions']} parallel), "
        f"{stats['multi_step_turns']} multi-step turns, {stats['turns_without_tools']} turns without tools, "
        f"{stats['dialogues_with_tool_error']} dialogues with a tool error, {stats['with_system']} with a system "
        f"message, {stats['items']} checklist items"
    )
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
