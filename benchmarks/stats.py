"""Benchmark: ``cm2data stats`` on a dataset folder — the columnar path against the record path.

Generates ``--n`` synthetic dialogues with the generator of ``benchmarks/validate.py`` (3 user turns, 2 tool calls
per turn, 5 checklist items per turn, ``--broken`` of them damaged), writes them as a dataset folder, lets the records
go, then times three phases over the same parquet files, in this order, in the same process:

* ``read_table``: ``pyarrow.parquet.read_table`` of every shard (the floor: decoding the columns);
* ``columnar``: :func:`cm2data.describe.folder_stats` (Arrow batches, records only where the screen cannot clear);
* ``records``: ``sources.load`` then :func:`cm2data.describe.dataset_stats` (what ``stats`` did before).

Each phase prints dialogues per wall and per CPU second and its peak resident memory (``VmHWM`` reset per phase);
then the CPU-time ratios, and whether the two stats are equal (they must be)::

    taskset -c 1 $VENV/bin/python benchmarks/stats.py --n 100000 --json bench-stats.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cm2data import store
from cm2data.describe import dataset_stats, folder_stats
from cm2data.sources import load


def _validate_bench() -> Any:
    """benchmarks/validate.py (its generator and memory meter), loaded by path."""
    path = Path(__file__).with_name("validate.py")
    spec = importlib.util.spec_from_file_location("cm2data_bench_validate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _read_all(folder: Path) -> int:
    rows = 0
    for paths in store.split_files(folder).values():
        for path in paths:
            rows += pq.read_table(path).num_rows  # let each table go: the floor is decoding, not holding
    return rows


def _records_stats(folder: Path) -> tuple[dict[str, Any], int]:
    records, rejects = load(folder)
    return dataset_stats(records), len(rejects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of dialogues (default 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broken", type=float, default=0.01, help="fraction of records to damage (default 0.01)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the figures here")
    args = parser.parse_args(argv)
    vb = _validate_bench()
    mem = vb.PeakMemory()
    print(
        f"cm2data stats benchmark: n={args.n} seed={args.seed} broken={args.broken}; "
        f"python {sys.version.split()[0]}; peak memory: {mem.method}",
        flush=True,
    )
    phases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cm2data-bench-stats-") as tmp:
        folder = Path(tmp) / "ds"
        records, _ = vb.generate(args.n, args.seed, args.broken)
        store.write_dataset(folder, records)
        del records
        _, phases["read_table"] = vb.timed_phase("read_table", args.n, mem, lambda: _read_all(folder))
        (columnar, col_rejects), phases["columnar"] = vb.timed_phase(
            "columnar", args.n, mem, lambda: folder_stats(folder)
        )
        (expected, rec_rejects), phases["records"] = vb.timed_phase(
            "records", args.n, mem, lambda: _records_stats(folder)
        )
    same = columnar == expected and json.dumps(columnar) == json.dumps(expected) and len(col_rejects) == rec_rejects
    cpu = {k: v["cpu_seconds"] for k, v in phases.items()}
    ratios = {
        "columnar_speedup_over_records": round(cpu["records"] / cpu["columnar"], 2),
        "columnar_cpu_over_read_table": round(cpu["columnar"] / cpu["read_table"], 2),
    }
    print(
        f"CPU time: records / columnar = {ratios['columnar_speedup_over_records']}×; "
        f"columnar / read_table = {ratios['columnar_cpu_over_read_table']}×; same stats: {same}"
    )
    if args.json is not None:
        payload = {"n": args.n, "seed": args.seed, "broken": args.broken, "phases": phases, **ratios, "same": same}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
