"""`python -m data_prep verify --data DIR`: check a prepared folder against its manifest.

Checks the manifest's own checksum and every file it lists (size and sha256; sizes only
with `--sizes-only`, what the trainer checks at every start). Exits with status 1 and a
message naming the first bad file, else prints what was checked.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_prep.manifest import verify_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="prepared folder")
    parser.add_argument(
        "--sizes-only", action="store_true", help="check sizes, not sha256 (what readers do)"
    )


def main(args: argparse.Namespace, command: str) -> None:
    start = time.perf_counter()
    manifest = verify_folder(args.data, full=not args.sizes_only)
    files = manifest["files"]
    size = sum(entry["bytes"] for entry in files.values())
    what = "sizes" if args.sizes_only else "sizes and sha256"
    print(
        f"{args.data}: intact ({len(files)} files, {size:,} bytes, {what} checked in "
        f"{time.perf_counter() - start:.1f} s)"
    )
