"""Benchmarks of a trained model (``cm2data eval``; docs/eval.md): BFCL v4 multi-turn and tau2, each run in its own
cached environment in a subprocess, and the comparison of two runs. Nothing here imports the benchmarks' packages."""

from cm2data.eval.env import EvalError

__all__ = ["EvalError"]
