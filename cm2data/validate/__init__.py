"""Validation: the rule filters (method §2.2), checklist rules (method §3) and the pandera gate."""

from cm2data.validate.gate import STAGES, GateResult, rule_names, run_gate, run_gate_stream
from cm2data.validate.rules import RULE_FILTERS, RuleConfig

__all__ = ["RULE_FILTERS", "STAGES", "GateResult", "RuleConfig", "rule_names", "run_gate", "run_gate_stream"]
