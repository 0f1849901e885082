"""Benchmark: exporting synthetic dialogues for the trainers (LLaMA-Factory inline and native; VeRL).

Generates ``--n`` synthetic dialogues with the generator of ``benchmarks/validate.py`` (3 user turns, 2 tool calls
per turn as one parallel action or two sequential ones, thinking in every assistant message, a final reply per turn;
``--broken`` of them damaged in known ways, some of which LLaMA-Factory cannot alternate), then, in the same process,
times each export of the same in-memory records to a temporary folder:

* ``llamafactory-inline``: :func:`cm2data.export.llamafactory.export_llamafactory`, ``style="inline"``;
* ``llamafactory-native``: the same with ``style="native"``;
* ``verl``: :func:`cm2data.export.verl.export_verl` (``train.parquet``, no validation split).

Each phase prints dialogues per wall second and per CPU second (they agree on an idle core; a shared machine inflates
wall time) and its peak resident memory (``VmHWM`` reset per phase, as in benchmarks/validate.py), and is checked
afterwards: the data file parses, holds one row per exported dialogue, and every reject names a rule.
The target is ≥ 5,000 dialogues/s per style on one core::

    taskset -c 0 $VENV/bin/python benchmarks/export.py --n 100000 --json bench-export.json

``--stream`` adds the streaming phases: the same records written as a dataset folder of ``n`` rows and one of
``4n`` rows (four copies, ids made unique at the Arrow level), and ``cm2data export llamafactory`` and ``export
verl`` run on each in a child process (so that its peak RSS is its own: ``VmHWM`` of the child, imports included).
Peak RSS should stay roughly flat from ``n`` to ``4n``; ``--no-memory`` skips the in-memory phases::

    taskset -c 1 $VENV/bin/python benchmarks/export.py --n 20000 --stream --no-memory
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cm2data import store
from cm2data.export.llamafactory import RULES, ExportOptions, export_llamafactory
from cm2data.export.verl import export_verl

TARGET = 5000.0


def _validate_bench() -> Any:
    """benchmarks/validate.py (its generator and memory meter), loaded by path."""
    path = Path(__file__).with_name("validate.py")
    spec = importlib.util.spec_from_file_location("cm2data_bench_validate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _check_llamafactory(out: Path, result: Any) -> list[str]:
    problems = []
    rows = 0
    with result.data_file.open(encoding="utf-8") as fh:  # one compact row per line: parse them one at a time
        for line in fh:
            line = line.rstrip("\n").removesuffix(",")
            if line in ("[", "]", "[]"):
                continue
            row = json.loads(line)
            if set(row) != {"messages", "tools"} or not row["messages"]:
                problems.append(f"{result.data_file.name}: malformed row {rows}")
                break
            rows += 1
    if rows != result.rows or result.rows != result.exported_records:
        problems.append(
            f"{result.data_file.name}: {rows} rows on disk, {result.rows} reported, "
            f"{result.exported_records} dialogues exported"
        )
    if result.records != result.exported_records + result.dropped:
        problems.append("records != exported + dropped")
    unknown = {r.rule for r in result.rejects} - set(RULES)
    if unknown:
        problems.append(f"rejects with unknown rules: {sorted(unknown)}")
    if not (out / "dataset_info.json").is_file():
        problems.append("no dataset_info.json")
    return problems


def _stream_child(kind: str, folder: Path, out: Path) -> int:
    """Run in a child process: ``cm2data export KIND FOLDER --out OUT``; print its figures as JSON."""
    from cm2data.cli import app

    vb = _validate_bench()
    t0, c0 = time.perf_counter(), time.process_time()
    app(["export", kind, str(folder), "--out", str(out)], standalone_mode=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    fig = {
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_mib": round(vb.PeakMemory._hwm() / 2**20, 1),
    }
    print(json.dumps(fig))
    return 0


def _write_folder(folder: Path, records: list[Any], copies: int) -> int:
    """``records`` as a dataset folder of ``copies`` shards, each a copy with ids suffixed ``-k``; returns rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = store.records_table(records)
    target = store.data_dir(folder)
    target.mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        ids = pc.binary_join_element_wise(table.column("id"), f"-{k}", "")
        pq.write_table(table.set_column(0, "id", ids), target / f"train-{k:05d}-of-{copies:05d}.parquet")
    return table.num_rows * copies


def _stream_phases(records: list[Any], tmp: Path) -> dict[str, Any]:
    """The streaming exports of folders of n and 4n rows, each in a child process."""
    phases: dict[str, Any] = {}
    for copies in (1, 4):
        folder = tmp / f"ds-x{copies}"
        rows = _write_folder(folder, records, copies)
        for kind in ("llamafactory", "verl"):
            name = f"stream-{kind}-x{copies}"
            cmd = [sys.executable, __file__, "--stream-child", kind, str(folder), str(tmp / name)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            fig["rows"] = rows
            fig["dialogues_per_cpu_s"] = round(rows / fig["cpu_seconds"], 1)
            phases[name] = fig
            print(
                f"{name:<26} {rows:8d} rows {fig['seconds']:7.2f} s wall   {fig['cpu_seconds']:7.2f} s CPU "
                f"{fig['dialogues_per_cpu_s']:9,.0f}/s   peak RSS {fig['peak_rss_mib']:7.1f} MiB (child)",
                flush=True,
            )
        shutil.rmtree(folder)
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of dialogues (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broken", type=float, default=0.01, help="fraction of records to damage (default 0.01)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the figures here")
    parser.add_argument("--stream", action="store_true", help="add the streaming exports of folders of n and 4n rows")
    parser.add_argument("--no-memory", action="store_true", help="skip the exports of in-memory records")
    parser.add_argument("--stream-child", nargs=3, metavar=("KIND", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream_child:
        kind, folder, out = args.stream_child
        return _stream_child(kind, Path(folder), Path(out))
    vb = _validate_bench()
    mem = vb.PeakMemory()
    print(
        f"cm2data export benchmark: n={args.n} seed={args.seed} broken={args.broken}; "
        f"python {sys.version.split()[0]}; peak memory: {mem.method}",
        flush=True,
    )
    (records, broken_ids), gen = vb.timed_phase(
        "generate", args.n, mem, lambda: vb.generate(args.n, args.seed, args.broken)
    )
    phases: dict[str, Any] = {"generate": gen}
    outputs: dict[str, Any] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cm2data-bench-export-") as tmp:
        if args.stream:
            phases.update(_stream_phases(records, Path(tmp)))
        for style in ("inline", "native") if not args.no_memory else ():
            out = Path(tmp) / style
            name = f"llamafactory-{style}"
            result, fig = vb.timed_phase(
                name,
                args.n,
                mem,
                lambda out=out, style=style: export_llamafactory(records, out, ExportOptions(style=style)),
            )
            size = result.data_file.stat().st_size
            fig.update(
                {
                    "rows": result.rows,
                    "truncated": result.truncated,
                    "dropped": result.dropped,
                    "data_mib": round(size / 2**20, 1),
                    "rejects_by_rule": dict(result.counts),
                }
            )
            phases[name] = fig
            problems += [f"{name}: {p}" for p in _check_llamafactory(out, result)]
            print(
                f"{'':20} {result.rows} rows, {size / 2**20:.1f} MiB; {result.truncated} truncated, "
                f"{result.dropped} dropped ({', '.join(f'{k} {v}' for k, v in result.counts.most_common())})",
                flush=True,
            )
            outputs[style] = result
        if not args.no_memory:
            out = Path(tmp) / "verl"
            _, fig = vb.timed_phase("verl", args.n, mem, lambda: export_verl(records, out))
            phases["verl"] = fig
    slow = [k for k, v in phases.items() if k.startswith("llamafactory") and v["dialogues_per_s"] < TARGET]
    slow_cpu = [k for k, v in phases.items() if k.startswith("llamafactory") and v["dialogues_per_cpu_s"] < TARGET]
    if not args.no_memory:
        print(
            f"target ≥ {TARGET:,.0f} dialogues/s per style: wall {'met' if not slow else 'missed: ' + ', '.join(slow)}"
            f"; CPU time {'met' if not slow_cpu else 'missed: ' + ', '.join(slow_cpu)}"
        )
    for p in problems:
        print(f"  PROBLEM {p}")
    if args.json is not None:
        payload = {
            "n": args.n,
            "seed": args.seed,
            "broken": args.broken,
            "injected": len(broken_ids),
            "python": sys.version.split()[0],
            "memory_method": mem.method,
            "phases": phases,
            "target_dialogues_per_s": TARGET,
            "target_met_wall": not slow,
            "target_met_cpu": not slow_cpu,
            "problems": problems,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
