"""Per-row journals: how a stage resumes after a kill.

Every LLM-using step appends each finished row to ``<work>/journal/<step>.jsonl`` the moment
it finishes, keyed by a hash of the step's settings and the row's input. A stage started again after a kill sends
every row through the pipeline as before, and the step answers the journaled ones from the journal without calling
the LLM: finished work is not redone, and since the output is built from the pipeline's rows (one per input id),
nothing is duplicated. A step run as several replicas (``cm2data run --ray``: one process each, perhaps on several
machines sharing the output folder) writes one file per process, ``<step>.<host>-<pid>.jsonl``, and every process
reads them all. distilabel's own ``use_cache`` is *not* used for this: in distilabel 1.5.3 a pipeline killed
with SIGKILL and run again with ``use_cache=True`` hangs (measured: the generator resumed at its offset and the next
step never received a batch), and its batch-level cache would redo every row of an unfinished batch anyway.
"""

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.pipelines.rows import fingerprint, merge_meta


class Journal:
    """Append-only JSON lines ``{"key", "update"}``, one per finished row; the last entry of a key wins and a
    torn last line (a kill mid-write) is ignored. One writer per file (one step process); ``also`` are the files of
    the step's other processes (replicas), read but never written."""

    def __init__(self, path: Path, also: tuple[Path, ...] = ()):
        self.path = path
        self.also = tuple(p for p in also if p != path)
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        for path in (*self.also, self.path):
            if path.exists():
                _read(path, done)
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as fh:  # a torn last line: end it, so the next entry starts a line of its own
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            if torn:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write("\n")
        return done

    def append(self, key: str, update: dict[str, Any]) -> None:
        line = json.dumps({"key": key, "update": update}, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()


def _read(path: Path, done: dict[str, dict[str, Any]]) -> None:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
                done[entry["key"]] = entry["update"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue


class _Journaled:
    """Journal plumbing shared by :class:`RecordStep` and :class:`JSONTask` (which declare its private attributes
    ``_journal``, ``_done``, ``_fp``)."""

    if TYPE_CHECKING:  # the fields of the distilabel step this is mixed into
        name: str
        work_dir: str

    def step_fingerprint(self) -> str:
        raise NotImplementedError

    def _open_journal(self) -> None:
        folder = Path(self.work_dir) / "journal"
        path = folder / f"{self.name}.jsonl"
        replicas = getattr(getattr(self, "resources", None), "replicas", 1) or 1
        if replicas > 1:  # several writers: a file per process
            path = folder / f"{self.name}.{socket.gethostname()}-{os.getpid()}.jsonl"
        others = tuple(sorted(folder.glob(f"{self.name}.*.jsonl"))) if folder.exists() else ()
        self._journal = Journal(path, (folder / f"{self.name}.jsonl", *others))
        self._done = self._journal.load()
        self._fp = self.step_fingerprint()

    def _key(self, row: dict[str, Any]) -> str:
        return fingerprint(self._fp, row["id"], row.get("record", ""), row.get("spec", ""), row.get("scenario", ""))

    def _from_journal(self, row: dict[str, Any]) -> dict[str, Any] | None:
        update = self._done.get(self._key(row))
        if update is None:
            return None
        out = {**row, **update}
        out["meta"] = merge_meta(out.get("meta", "{}"), resumed=[self.name])
        return out
