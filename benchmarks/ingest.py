"""Benchmark: local ``cm2data ingest`` — the streamed path (Arrow where it can) against the record path.

Generates ``--n`` synthetic dialogues with the generator of ``benchmarks/validate.py`` (3 user turns, 2 tool calls
per turn, 5 checklist items per turn, ``--broken`` of them damaged by rule, which ingest does not check), writes them
as a dataset folder (and, with ``--jsonl``, as a ``cm2`` JSON-lines file), lets the records go, then times each phase
in a fresh child process (so that one phase's freed memory cannot hide the next one's peak), in this order:

* ``read_table``: ``pyarrow.parquet.read_table`` of every shard (the floor: decoding the columns);
* ``streamed``: :func:`cm2data.ingest_local.ingest_local` of the folder into a new folder (what ``ingest`` does now);
* ``records``: ``sources.load`` then :func:`cm2data.ingest.write_ingested` (what ``ingest`` did before);
* with ``--jsonl``: ``jsonl_streamed`` and ``jsonl_records``, the same two for the JSON-lines file (every row
  becomes a record on both paths; the streamed one holds a batch, not the dataset).

Each phase prints dialogues per wall and per CPU second and its peak resident memory (``VmHWM``, reset after the
child's imports; ``+`` is the growth over the RSS the work started from);
then the CPU-time and peak-memory ratios, and whether the outputs are equal (rows, less the provenance column whose
timestamps differ between runs; provenance sources; rejects file)::

    taskset -c 1 $VENV/bin/python benchmarks/ingest.py --n 20000 --jsonl --json bench-ingest.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cm2data import store
from cm2data.formats import write_records
from cm2data.ingest import write_ingested
from cm2data.ingest_local import ingest_local
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


def _child(kind: str, src: Path, out: Path) -> dict[str, Any]:
    """``--child``: one phase's work, in this (fresh) process; its figures as a dict."""
    import cm2data.validate.columnar_screens  # noqa: F401  (imports are not the phase's work)

    mem = _validate_bench().PeakMemory()
    work: dict[str, Callable[[], Any]] = {
        "read_table": lambda: _read_all(src),
        "streamed": lambda: ingest_local(src, out),
        "records": lambda: _records_ingest(src, out),
    }
    _, wall, cpu, peak, before = _validate_bench().measured(mem, work[kind])
    return {"seconds": wall, "cpu_seconds": cpu, "peak": peak, "before": before, "method": mem.method}


def _phase(name: str, kind: str, n: int, src: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(src), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"phase {name} failed:\n{proc.stderr}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return _validate_bench().rate_figures(name, n, got["seconds"], got["cpu_seconds"], got["peak"], got["before"])


def _read_all(folder: Path) -> int:
    rows = 0
    for paths in store.split_files(folder).values():
        for path in paths:
            rows += pq.read_table(path).num_rows  # let each table go: the floor is decoding, not holding
    return rows


def _records_ingest(src: Path, out: Path) -> None:
    records, rejects = load(src)
    write_ingested(out, records, rejects, source=str(src))


def _same(a: Path, b: Path) -> bool:
    """Equal rows apart from the provenance timestamps, equal provenance sources, equal rejects files."""
    ta, tb = store.read_table(a), store.read_table(b)
    sources_equal = pc.struct_field(ta.column("provenance"), "source").equals(
        pc.struct_field(tb.column("provenance"), "source")
    )
    rows_equal = ta.drop_columns(["provenance"]).equals(tb.drop_columns(["provenance"]))
    rejects_equal = (a / store.REJECTS_FILE).read_bytes() == (b / store.REJECTS_FILE).read_bytes()
    return bool(sources_equal and rows_equal and rejects_equal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of dialogues (default 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broken", type=float, default=0.01, help="fraction of records to damage (default 0.01)")
    parser.add_argument("--jsonl", action="store_true", help="also time both paths on a cm2 JSON-lines file")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the figures here")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, src, out = args.child
        print(json.dumps(_child(kind, Path(src), Path(out))))
        return 0
    vb = _validate_bench()
    print(
        f"cm2data ingest benchmark: n={args.n} seed={args.seed} broken={args.broken}; "
        f"python {sys.version.split()[0]}; peak memory: {vb.PeakMemory().method}, one child process per phase",
        flush=True,
    )
    phases: dict[str, Any] = {}
    same: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="cm2data-bench-ingest-") as tmp:
        root = Path(tmp)
        folder, jsonl = root / "ds", root / "rows.jsonl"
        records, _ = vb.generate(args.n, args.seed, args.broken)
        store.write_dataset(folder, records)
        if args.jsonl:
            write_records(records, jsonl, "cm2")
        del records
        phases["read_table"] = _phase("read_table", "read_table", args.n, folder, root / "unused")
        phases["streamed"] = _phase("streamed", "streamed", args.n, folder, root / "new")
        phases["records"] = _phase("records", "records", args.n, folder, root / "old")
        same["folder"] = _same(root / "new", root / "old")
        if args.jsonl:
            phases["jsonl_streamed"] = _phase("jsonl_streamed", "streamed", args.n, jsonl, root / "jnew")
            phases["jsonl_records"] = _phase("jsonl_records", "records", args.n, jsonl, root / "jold")
            same["jsonl"] = _same(root / "jnew", root / "jold")
    cpu = {k: v["cpu_seconds"] for k, v in phases.items()}
    rss = {k: v["peak_rss_delta_mib"] for k, v in phases.items()}
    ratios = {
        "streamed_speedup_over_records": round(cpu["records"] / cpu["streamed"], 2),
        "streamed_cpu_over_read_table": round(cpu["streamed"] / cpu["read_table"], 2),
        "records_peak_delta_over_streamed": round(rss["records"] / max(rss["streamed"], 0.1), 2),
    }
    if args.jsonl:
        ratios["jsonl_speedup"] = round(cpu["jsonl_records"] / cpu["jsonl_streamed"], 2)
        ratios["jsonl_records_peak_delta_over_streamed"] = round(
            rss["jsonl_records"] / max(rss["jsonl_streamed"], 0.1), 2
        )
    print("ratios: " + "; ".join(f"{k} = {v}" for k, v in ratios.items()) + f"; same output: {same}")
    if args.json is not None:
        payload = {"n": args.n, "seed": args.seed, "broken": args.broken, "phases": phases, **ratios, "same": same}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
