"""Publish a validated dataset folder to the Hugging Face Hub in one commit, and pull one back.

The package, by concern:

* :mod:`~cm2data.publish.tree` — ``build_tree(src, out)`` runs the validation gate and writes into ``out`` exactly
  the repository tree that ``publish`` uploads (the ``dialogues`` and ``checklist_items`` configs, the trainer
  exports asked for with ``--with`` from :mod:`cm2data.export.registry`, the card and its plots);
* :mod:`~cm2data.publish.hub` — ``publish(src, repo_id)``: the tree, then one ``create_commit`` with
  ``parent_commit`` (a concurrent change is refused, identical content makes no commit), an optional tag, and the
  Hub's errors turned into messages that say what happened and what to do;
* :mod:`~cm2data.publish.manifest` — the manifest every tree carries (``cm2data-publish.json``: gate and build keys,
  a sha256 per source shard, the tree's files), and the republish plan made from it: an unchanged dataset is not
  gated, built or committed again, a changed one is gated only over its changed shards;
* :mod:`~cm2data.publish.pull` — ``pull(repo_id, out)``: a published dataset back into a dataset folder;
* :mod:`~cm2data.publish.errors` — :class:`PublishError` and :class:`GateFailed`.

Everything public is importable from ``cm2data.publish`` itself.
"""

from cm2data.export.registry import EXPORTERS, Exporter, register_exporter
from cm2data.publish.errors import GateFailed, PublishError
from cm2data.publish.hub import (
    ALWAYS_KEEP,
    BRANCH,
    REPO_TYPE,
    PublishResult,
    check_repo_id,
    check_tag,
    endpoint,
    hub_errors,
    publish,
    resolve_token,
)
from cm2data.publish.manifest import MANIFEST, Manifest, SourceShard
from cm2data.publish.pull import PullResult, pull
from cm2data.publish.tree import (
    CHECKLIST_ITEM_SCHEMA,
    CHECKLIST_ITEMS,
    Tree,
    build_tree,
    checklist_items_table,
    resolve_exporters,
)

__all__ = [
    "ALWAYS_KEEP",
    "BRANCH",
    "CHECKLIST_ITEMS",
    "CHECKLIST_ITEM_SCHEMA",
    "EXPORTERS",
    "MANIFEST",
    "REPO_TYPE",
    "Exporter",
    "GateFailed",
    "Manifest",
    "PublishError",
    "PublishResult",
    "PullResult",
    "SourceShard",
    "Tree",
    "build_tree",
    "check_repo_id",
    "check_tag",
    "checklist_items_table",
    "endpoint",
    "hub_errors",
    "publish",
    "pull",
    "register_exporter",
    "resolve_exporters",
    "resolve_token",
]
