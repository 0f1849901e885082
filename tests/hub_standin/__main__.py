"""Run the Hub stand-in on its own: ``PYTHONPATH=tests python -m hub_standin --root DIR --token T:USER``.

Prints one JSON line ``{"url": …, "storage_url": …}`` on stdout once it listens, then serves until killed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

from hub_standin import HubStandin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hub_standin", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="storage folder (default: a temporary one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", action="append", default=[], help="TOKEN:USER[:ORG,ORG…][:read] (repeatable)")
    parser.add_argument("--multipart-chunk-size", type=int, default=64 * 2**20)
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="hub-standin-"))
    standin = HubStandin(root, multipart_chunk_size=args.multipart_chunk_size, host=args.host).start()
    for spec in args.token:
        parts = spec.split(":")
        orgs = tuple(o for o in (parts[2].split(",") if len(parts) > 2 else []) if o)
        role = parts[3] if len(parts) > 3 else "write"
        standin.add_token(parts[0], parts[1], orgs, role)
    print(json.dumps({"url": standin.url, "storage_url": standin.storage_url, "root": str(root)}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
