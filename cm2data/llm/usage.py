"""Token and request accounting per pipeline stage, safe to update from threads and coroutines."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class StageUsage:
    """Counters of one stage.

    ``requests``: answers received (every HTTP 200, including answers then found invalid); ``prompt_tokens`` and
    ``completion_tokens``: as the server reported them, summed over those answers; ``retries``: requests repeated
    after a transient failure (5xx, 408, 429, timeout, lost connection); ``invalid``: answers rejected as malformed
    or invalid JSON; ``failures``: calls that finally raised; ``seconds``: summed request latency.
    """

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    invalid: int = 0
    failures: int = 0
    seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: StageUsage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["total_tokens"] = self.total_tokens
        return d


_FIELDS = tuple(f.name for f in fields(StageUsage))


class Usage:
    """:class:`StageUsage` counters keyed by stage name (``"annotate"``, ``"judge"``, …).

    One instance can be shared by many clients, threads and coroutines. Reads return copies. ``as_dict`` /
    ``from_dict`` / ``merge`` carry counts across processes (distilabel runs each step in its own process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, StageUsage] = {}

    def record(self, stage: str, **counts: float) -> None:
        """Add to the counters of ``stage``: ``record("annotate", requests=1, prompt_tokens=812, …)``."""
        unknown = set(counts) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown usage counters: {sorted(unknown)}")
        with self._lock:
            s = self._stages.setdefault(stage, StageUsage())
            for name, value in counts.items():
                setattr(s, name, getattr(s, name) + value)

    def __getitem__(self, stage: str) -> StageUsage:
        with self._lock:
            s = self._stages.get(stage)
            return StageUsage(**asdict(s)) if s else StageUsage()

    def __contains__(self, stage: object) -> bool:
        with self._lock:
            return stage in self._stages

    def stages(self) -> list[str]:
        with self._lock:
            return list(self._stages)

    def total(self) -> StageUsage:
        out = StageUsage()
        with self._lock:
            for s in self._stages.values():
                out.add(s)
        return out

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{stage: counters}`` plus ``"total"``: JSON-ready, for run reports."""
        with self._lock:
            out = {name: s.as_dict() for name, s in self._stages.items()}
        out["total"] = self.total().as_dict()
        return out

    def merge(self, other: Usage | dict[str, dict[str, Any]]) -> None:
        """Add another :class:`Usage` (or its ``as_dict()``) into this one."""
        data = other.as_dict() if isinstance(other, Usage) else other
        for stage, counts in data.items():
            if stage == "total":
                continue
            self.record(stage, **{k: v for k, v in counts.items() if k in _FIELDS})

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> Usage:
        usage = cls()
        usage.merge(data)
        return usage

    def reset(self) -> None:
        with self._lock:
            self._stages.clear()

    def __repr__(self) -> str:
        t = self.total()
        return f"Usage(stages={self.stages()}, requests={t.requests}, tokens={t.prompt_tokens}+{t.completion_tokens})"
