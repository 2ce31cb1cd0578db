"""`python -m data_prep default`: the embedded synthetic default dataset.

Generates raw logs into DIR/raw/ and runs the generic `logs` job on them, exactly as a
user would on their own logs. Skips all work when DIR/manifest.json and every file it
lists are intact (sha256 checked) and were built from the same settings and raw files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from data_prep.logs_job import LogsConfig, run_logs
from data_prep.manifest import input_record, read_manifest
from data_prep.protocols import Protocol
from data_prep.synthetic import SyntheticConfig, modality_columns, write_raw


def logs_config(out: Path, generator: SyntheticConfig) -> LogsConfig:
    raw = out / "raw"
    return LogsConfig(
        interactions=str(raw / "interactions.parquet"),
        items=str(raw / "items.parquet"),
        out=out,
        protocol=Protocol(name="temporal"),
        job="synthetic",
        created_by=f"python -m data_prep default --seed {generator.seed}",
        modalities=modality_columns(generator),  # text and image, kept apart (DMAE)
    )


def expected_protocol(config: LogsConfig, generator: SyntheticConfig) -> dict[str, Any]:
    return config.protocol.settings() | {"generator": generator.as_dict()}


def is_up_to_date(out: Path, config: LogsConfig, generator: SyntheticConfig) -> bool:
    """The folder is complete and intact (every file's sha256 checked), was built from the
    same settings, and its raw files are the ones it was built from."""
    manifest = read_manifest(out, full=True)
    if manifest is None:
        return False
    if manifest["job"] != "synthetic" or manifest["protocol"] != expected_protocol(
        config, generator
    ):
        return False
    raw = out / "raw"
    for name, record in manifest.get("inputs", {}).items():
        path = raw / name
        if not path.is_file() or input_record(path) != record:
            return False
    return True


def build_default(out: Path, seed: int = 0) -> dict[str, Any] | None:
    """Build the default dataset in `out`; returns the manifest, or None when skipped."""
    generator = SyntheticConfig(seed=seed)
    config = logs_config(out, generator)
    if is_up_to_date(out, config, generator):
        return None
    write_raw(generator, out / "raw")
    return run_logs(config, extra_protocol={"generator": generator.as_dict()})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")


def main(args: argparse.Namespace, command: str) -> None:
    start = time.perf_counter()
    manifest = build_default(args.out, args.seed)
    if manifest is None:
        print(f"{args.out} is up to date (manifest.json from the same settings): skipped")
    else:
        print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {manifest['counts']}")
