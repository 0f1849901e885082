"""Benchmark: memory and speed of ``cm2data ingest hf://…`` (streamed, sharded) against ``cm2data ingest FILES``
(local, `cm2data ingest FILES`: streamed too since the local ingest streams) on the same rows, at two sizes.

A Hub stand-in (tests/hub_standin) is started in this process and serves one dataset repo of nemotron-style JSON
lines built from the shipped sample (33 dialogues repeated with fresh ids, ~``--files`` files). Each ingest runs as
its own ``cm2data`` process (as a user runs it); its peak resident memory is the child's ``ru_maxrss``. It prints,
per size, rows/s and peak RSS of both, and the ratios hub/local; then the growth of each one's peak RSS from the
small to the large size (a streamed ingest should grow by little more than its id set: 50 MB per million rows).
Exit status 1 when the Hub ingest's peak RSS grows by more than ``--max-growth`` (default 1.25×) while the rows
grow by ``--factor``.

    $VENV/bin/python benchmarks/hub_ingest.py --rows 20000 --factor 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub_standin import HubStandin  # noqa: E402

from cm2data.formats import FORMATS  # noqa: E402
from cm2data.sources import load  # noqa: E402

TOKEN = "hf_bench_hub_ingest"
SAMPLE = ROOT / "cm2data" / "data" / "sample" / "dialogues.json"
#: runs one command and prints its peak RSS (KiB, Linux) after it ends
MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def write_rows(folder: Path, n: int, files: int) -> int:
    """``n`` nemotron rows in ``files`` JSON-lines files; returns the bytes written."""
    records, _ = load(SAMPLE, "cm2")
    rows = [FORMATS["nemotron"].write(r) for r in records]
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n // files)
    written = 0
    for f in range(files):
        with (folder / f"train-{f:03d}.jsonl").open("w", encoding="utf-8") as fh:
            for i in range(f * per, min(n, (f + 1) * per)):
                row = {**rows[i % len(rows)], "uuid": str(uuid.UUID(int=i))}
                line = json.dumps(row, ensure_ascii=False) + "\n"
                fh.write(line)
                written += len(line.encode())
    return written


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    rc, rss = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(cmd)} exited {rc}")
    return seconds, int(rss) // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the small size")
    parser.add_argument("--factor", type=int, default=4, help="the large size is rows × factor")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--max-growth", type=float, default=1.25)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "cm2data.cli", "ingest"]
    with tempfile.TemporaryDirectory(prefix="cm2data-bench-hub-") as tmp_:
        tmp = Path(tmp_)
        standin = HubStandin(tmp / "hub").start()
        standin.add_token(TOKEN, "bench", ("acme",))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(standin.env(token=TOKEN, home=tmp / "hf-home"))
        os.environ.update(env)
        from huggingface_hub import HfApi

        api = HfApi(endpoint=standin.url, token=TOKEN)
        results = {}
        for size in (args.rows, args.rows * args.factor):
            src = tmp / f"src-{size}"
            nbytes = write_rows(src / "data", size, args.files)
            repo = f"acme/bench-{size}"
            api.create_repo(repo, repo_type="dataset")
            api.upload_folder(folder_path=src, repo_id=repo, repo_type="dataset", commit_message="bench")
            local_s, local_mb = run([*cli, str(src / "data"), "--out", str(tmp / f"local-{size}")], env)
            hub_s, hub_mb = run(
                [
                    *cli,
                    f"hf://datasets/{repo}",
                    "--out",
                    str(tmp / f"hub-{size}"),
                    "--shard-rows",
                    str(args.shard_rows),
                ],
                env,
            )
            results[size] = (local_mb, hub_mb)
            print(
                f"{size:>8} rows ({nbytes / 2**20:6.1f} MiB of JSON lines): "
                f"local {size / local_s:7.0f} rows/s, peak RSS {local_mb:5d} MiB | "
                f"hub {size / hub_s:7.0f} rows/s, peak RSS {hub_mb:5d} MiB | "
                f"hub/local: speed {local_s / hub_s:.2f}, memory {hub_mb / local_mb:.2f}"
            )
        standin.stop()
    small, large = results[args.rows], results[args.rows * args.factor]
    local_growth, hub_growth = large[0] / small[0], large[1] / small[1]
    print(f"peak RSS growth for {args.factor}× the rows: local {local_growth:.2f}×, hub {hub_growth:.2f}×")
    return 0 if hub_growth <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
