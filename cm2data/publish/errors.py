"""The errors of publishing and pulling: every message is meant for the user and never contains the token."""

from __future__ import annotations

from cm2data.rejects import Reject
from cm2data.validate import GateResult


class PublishError(Exception):
    """A publish or pull that stopped. The message is meant for the user; it never contains the token."""


class GateFailed(PublishError):
    """The validation gate refused the dataset: nothing was uploaded. ``result`` is the gate's verdict over the
    whole folder (no records held), ``read_rejects`` the rows and files that did not read."""

    def __init__(self, result: GateResult, read_rejects_: list[Reject]) -> None:
        self.result = result
        self.read_rejects = read_rejects_
        failing = {rule: n for rule, n in result.counts.items() if n}
        for r in read_rejects_:
            failing[r.rule] = failing.get(r.rule, 0) + 1
        self.failing = failing
        n_bad = len(result.rejected_ids) + len(read_rejects_)
        rules = ", ".join(f"{rule} ({n})" for rule, n in sorted(failing.items(), key=lambda kv: -kv[1]))
        super().__init__(
            f"validation failed: {n_bad} of {result.checked + len(read_rejects_)} records break a rule "
            f"— {rules}; nothing was uploaded"
        )

    @property
    def rejects(self) -> list[Reject]:
        return [*self.read_rejects, *self.result.rejects]
