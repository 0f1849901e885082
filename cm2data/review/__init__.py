"""Human review of checklists in Argilla (docs/review.md).

``cm2data.review.stack`` runs a local Argilla stack (Redis, an in-memory OpenSearch, argilla-server 2.8.0) and
imports only the standard library; ``cm2data review …`` is the command line (``cm2data.review.commands``).
Nothing is imported here, so that ``import cm2data.review.stack`` works without argilla installed.
"""
