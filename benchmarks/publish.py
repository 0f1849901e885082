"""Benchmark: publishing a dataset to the Hub stand-in versus writing the same parquet files to local disk.

Generates ``--n`` synthetic dialogues with the generator of ``benchmarks/validate.py`` (all valid) into a dataset
folder, starts the Hub stand-in (``tests/hub_standin``) in its own process on loopback, then runs each phase in a
fresh process of its own (so that one phase's memory does not count in the next one's peak):

* ``read_table`` — the floor: ``pyarrow.parquet.read_table`` of the folder's shards (the ratios in CPU time);
* ``local_parquet`` — the record-based baseline (what publish did before it worked on Arrow rows, minus the gate
  and the card): read the folder's records and write the parquet files the publish uploads
  (the ``dialogues`` and ``checklist_items`` configs, zstd, one shard of 50,000 records at a time, as the store
  shards) to local disk — no gate, no card;
* ``dry_run`` — ``cm2data publish --dry-run``: stream the folder through the whole gate and write the tree (both
  configs, the card and its plots) to local disk;
* ``publish`` — ``cm2data publish`` to the stand-in, configured by ``HF_ENDPOINT`` only: the same work plus
  whoami, create, pre-upload, LFS batch and uploads (multipart above ``--chunk-mib``), verify and one commit; the
  upload part is timed on its own from the moment the tree is built;
* ``republish`` — the same command again on identical content: builds and hashes the tree, finds nothing changed,
  makes no upload and no commit.

MB/s are 10^6 bytes per second: of the parquet files for ``local_parquet``, of the whole tree for the others, of
the bytes actually uploaded for the upload part. Peak memory is each phase process's peak RSS (``VmHWM``), with its
RSS after imports beside it; the stand-in's own peak RSS is read from ``/proc/<pid>/status`` at the end. Run::

    $VENV/bin/python benchmarks/publish.py --n 100000 --json publish-bench.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "hf_benchmark_token"
REPO = "bench-org/checklists"
PHASES = ("read_table", "local_parquet", "dry_run", "publish", "republish")
SHARD = 50_000  # rows per parquet file, as cm2data.store writes them
CHUNK = 5_000  # records in memory at a time


def _status(key: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _validate_bench() -> Any:
    spec = importlib.util.spec_from_file_location("cm2data_bench_validate", HERE / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ one phase, one process


def _write_shard(folder: Path, index: int, total: int, table: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"train-{index:05d}-of-{total:05d}.parquet", compression="zstd")


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_phase(name: str, src: Path, work: Path) -> dict[str, Any]:
    from cm2data import publish as pub
    from cm2data import store

    rss_start = _status("VmRSS")
    marks: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    extra: dict[str, Any] = {}
    if name == "generate":
        # validate.py's generate(n, seed, broken=0) record for record, written shard by shard as the store shards
        import random

        vb = _validate_bench()
        n, rng = int(os.environ["BENCH_N"]), random.Random(int(os.environ["BENCH_SEED"]))
        n_files = max(1, -(-n // SHARD))
        for i in range(n_files):
            parts = []
            for start in range(i * SHARD, min(n, (i + 1) * SHARD), CHUNK):
                stop = min(n, (i + 1) * SHARD, start + CHUNK)
                parts.append(store.records_table([vb.make_dialogue(rng, k) for k in range(start, stop)]))
            _write_shard(store.data_dir(src), i, n_files, pa.concat_tables(parts).combine_chunks())
        store.write_card(src)
        size = _tree_bytes(src / "data")
    elif name == "read_table":
        # the floor: pyarrow reading the folder's parquet shards into one Arrow table
        table = pa.concat_tables(pq.read_table(p) for paths in store.split_files(src).values() for p in paths)
        size = sum(p.stat().st_size for paths in store.split_files(src).values() for p in paths)
        extra["arrow_mib"] = round(table.nbytes / 2**20, 1)
    elif name == "local_parquet":
        # the same parquet files the publish uploads, straight from the records, one shard of records at a time
        out = work / "local"
        paths = store.split_files(src)["train"]
        for i, path in enumerate(paths):
            dialogues, items = [], []
            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK):
                records = [store.from_row(row) for row in batch.to_pylist()]
                dialogues.append(store.records_table(records))
                items.append(pub.checklist_items_table(records))
            _write_shard(store.data_dir(out), i, len(paths), pa.concat_tables(dialogues).combine_chunks())
            _write_shard(
                store.data_dir(out, pub.CHECKLIST_ITEMS), i, len(paths), pa.concat_tables(items).combine_chunks()
            )
        size = sum(p.stat().st_size for p in (out / "data").rglob("*.parquet"))
    elif name == "dry_run":
        tree = pub.build_tree(src, work / "dry", repo_id=REPO)
        size = tree.total_bytes()
        extra["files"] = len(tree.files)
    else:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()

        def step(message: str) -> None:
            if message.startswith("uploading"):
                marks["upload"] = time.perf_counter()

        result = pub.publish(src, REPO, token=TOKEN, on_step=step)
        marks["end"] = time.perf_counter()
        size = _tree_bytes(work / "dry")
        extra.update(
            {
                "commit": result.commit,
                "bytes_uploaded": result.bytes_uploaded,
                "files_added": len(result.added),
                "files_unchanged": len(result.unchanged),
            }
        )
        if "upload" in marks:
            up = marks["end"] - marks["upload"]
            extra.update(
                {
                    "build_seconds": round(marks["upload"] - t0, 3),
                    "upload_seconds": round(up, 3),
                    "upload_mb_per_s": round(result.bytes_uploaded / 1e6 / up, 2),
                }
            )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "phase": name,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "bytes": size,
        "mb_per_s": round(size / 1e6 / wall, 2),
        "rss_after_imports_mib": round(rss_start / 2**20, 1),
        "peak_rss_mib": round(_status("VmHWM") / 2**20, 1),
        **extra,
    }


def _spawn(name: str, src: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--src", str(src), "--work", str(work)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _start_standin(root: Path, chunk: int) -> tuple[subprocess.Popen, dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub_standin",
            "--root",
            str(root),
            "--token",
            f"{TOKEN}:bench:bench-org",
            "--multipart-chunk-size",
            str(chunk),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the Hub stand-in did not start")
    return proc, json.loads(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of dialogues (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-mib", type=int, default=64, help="stand-in multipart chunk size (default 64 MiB)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the figures here")
    parser.add_argument("--phase", choices=("generate", *PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.src, args.work)), flush=True)
        return 0

    print(
        f"cm2data publish benchmark: n={args.n} seed={args.seed}; python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs; each phase in its own process",
        flush=True,
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base_env.update({"HF_HUB_DISABLE_TELEMETRY": "1", "BENCH_N": str(args.n), "BENCH_SEED": str(args.seed)})
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cm2data-publish-bench-") as tmp:
        tmp_path = Path(tmp)
        src, work = tmp_path / "dataset", tmp_path / "work"
        work.mkdir()
        gen = _spawn("generate", src, work, base_env)
        print(
            f"generated {args.n} dialogues in {gen['seconds']:.1f} s: {gen['bytes'] / 1e6:.1f} MB of parquet",
            flush=True,
        )
        standin, urls = _start_standin(tmp_path / "hub", args.chunk_mib * 2**20)
        try:
            hub_env = {
                **base_env,
                "HF_HOME": str(tmp_path / "hf"),
                "HF_ENDPOINT": urls["url"],
                "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            }
            for name in PHASES:
                fig = _spawn(name, src, work, hub_env if name in ("publish", "republish") else base_env)
                figures[name] = fig
                print(
                    f"{name:<14} {fig['seconds']:8.2f} s (cpu {fig['cpu_seconds']:7.2f} s)  "
                    f"{fig['bytes'] / 1e6:7.1f} MB  {fig['mb_per_s']:7.2f} MB/s  "
                    f"{args.n / fig['seconds']:8,.0f} dialogues/s  peak RSS {fig['peak_rss_mib']:8.1f} MiB "
                    f"(after imports {fig['rss_after_imports_mib']:.0f})",
                    flush=True,
                )
                if "upload_seconds" in fig:
                    print(
                        f"  of which build {fig['build_seconds']:.2f} s, upload + commit "
                        f"{fig['upload_seconds']:.2f} s for {fig['bytes_uploaded'] / 1e6:.1f} MB = "
                        f"{fig['upload_mb_per_s']:.2f} MB/s",
                        flush=True,
                    )
            figures["standin_peak_rss_mib"] = round(_status("VmHWM", standin.pid) / 2**20, 1)
        finally:
            standin.terminate()
            standin.wait(timeout=30)
        same = all(
            (work / "dry" / p.relative_to(work / "local")).read_bytes() == p.read_bytes()
            for p in (work / "local" / "data").rglob("*.parquet")
        )
    problems = []
    if not same:
        problems.append("the dry-run parquet files differ from the local baseline's")
    if figures["publish"].get("commit") is None:
        problems.append("the first publish made no commit")
    if figures["republish"].get("commit") is not None:
        problems.append("publishing identical content made a commit")
    print(
        f"stand-in process peak RSS {figures['standin_peak_rss_mib']} MiB; parquet files of the tree identical "
        f"to the local baseline: {same}"
    )
    cpu = {name: figures[name]["cpu_seconds"] for name in PHASES}
    print(
        f"CPU ratios: publish / read_table = {cpu['publish'] / cpu['read_table']:6.2f}; local_parquet (records) / "
        f"publish = {cpu['local_parquet'] / cpu['publish']:6.2f}; publish / dry_run = "
        f"{cpu['publish'] / cpu['dry_run']:6.2f}; republish / publish = {cpu['republish'] / cpu['publish']:6.4f}; "
        f"publish dialogues per CPU s = {args.n / cpu['publish']:,.0f}"
    )
    for p in problems:
        print(f"PROBLEM: {p}")
    if args.json is not None:
        out = {
            "n": args.n,
            "seed": args.seed,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "generate": gen,
            "phases": figures,
            "parquet_identical_to_local": same,
            "cpu_ratios": {
                "publish_to_read_table": round(cpu["publish"] / cpu["read_table"], 3),
                "local_parquet_to_publish": round(cpu["local_parquet"] / cpu["publish"], 3),
            },
            "problems": problems,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
