"""`python -m data_prep logs`: generic click logs + item table -> prepared folder.

Interactions: Parquet or CSV files (a glob), columns user_id, item_id, timestamp (int
seconds or a timestamp type), optional click (0/1; absent = every event is a positive),
optional impression_id; names configurable. Items: Parquet or CSV with item_id,
mm_vector (list<float>), optional title and category.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.columns import as_int64, as_strings
from data_prep.embed import EmbedSettings, add_embed_arguments, add_title_vectors, embed_settings
from data_prep.events import RawEvents, clean_events
from data_prep.items import ItemTable, read_item_table
from data_prep.manifest import input_record
from data_prep.output import write_prepared
from data_prep.protocols import DAY_SECONDS, next_item_samples, temporal_samples
from data_prep.rejects import RejectLog
from data_prep.tables import expand_inputs, read_table
from data_prep.writer import DEFAULT_ROW_GROUP_SIZE


@dataclass
class LogsConfig:
    interactions: str
    items: str
    out: Path
    protocol: str = "temporal"
    max_history: int = 50
    num_buckets: int = 35
    seed: int = 0
    valid_days: int = 1
    test_days: int = 1
    day_seconds: int = DAY_SECONDS
    valid_frac: float = 0.0
    strict: bool = False
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    columns: dict[str, str] = field(
        default_factory=lambda: {
            "user": "user_id",
            "item": "item_id",
            "timestamp": "timestamp",
            "click": "click",
        }
    )
    embedding: EmbedSettings = field(default_factory=EmbedSettings)
    job: str = "logs"
    created_by: str = ""

    def protocol_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "name": self.protocol,
            "max_history": self.max_history,
            "min_events": 2,
        }
        if self.protocol == "temporal":
            settings |= {
                "valid_days": self.valid_days,
                "test_days": self.test_days,
                "day_seconds": self.day_seconds,
            }
        else:
            settings |= {
                "seed": self.seed,
                "valid_frac": self.valid_frac,
                "negatives_per_positive": 1,
            }
        return settings


def read_interactions(paths: list[Path], columns: dict[str, str], rejects: RejectLog) -> RawEvents:
    """Read interaction files; records with a missing or malformed field are rejected here."""
    parts: list[RawEvents] = []
    files = [p.name for p in paths]
    for source, path in enumerate(paths):
        table = read_table(path, binary_strings=True)
        for key in ("user", "item", "timestamp"):
            if columns[key] not in table.column_names:
                raise ValueError(
                    f"{path}: no column {columns[key]!r} (columns: {table.column_names})"
                )
        rejects.add_read(table.num_rows)
        first_line = 2 if path.suffix != ".parquet" else 1  # CSV line 1 is the header
        user, user_missing, user_bad = as_strings(table.column(columns["user"]))
        item, item_missing, item_bad = as_strings(table.column(columns["item"]))
        ts, ts_missing, ts_bad = as_int64(table.column(columns["timestamp"]))
        if columns["click"] in table.column_names:
            click, click_missing, click_bad = as_int64(table.column(columns["click"]))
            click_bad |= ~click_missing & ~np.isin(click, (0, 1))
        else:
            click = np.ones(table.num_rows, dtype=np.int64)
            click_missing = click_bad = np.zeros(table.num_rows, dtype=bool)
        reasons = [
            ("not_utf8", user_bad | item_bad),
            ("missing_field", user_missing | item_missing | ts_missing | click_missing),
            ("malformed", ts_bad | click_bad),
        ]
        keep = np.ones(table.num_rows, dtype=bool)
        bad_reason = np.full(table.num_rows, "", dtype=object)
        for reason, mask in reasons:
            bad_reason[keep & mask] = reason
            keep &= ~mask
        for row in np.flatnonzero(~keep):
            record = table.slice(int(row), 1).to_pylist()[0]
            rejects.reject(path.name, int(row) + first_line, bad_reason[row], record)
        rows = np.flatnonzero(keep)
        parts.append(
            RawEvents(
                user=user[rows],
                item=item[rows],
                ts=ts[rows],
                click=click[rows].astype(np.int8),
                source=np.full(len(rows), source, dtype=np.int32),
                line=rows.astype(np.int64) + first_line,
                files=files,
            )
        )
    return RawEvents(
        user=np.concatenate([p.user for p in parts]),
        item=np.concatenate([p.item for p in parts]),
        ts=np.concatenate([p.ts for p in parts]),
        click=np.concatenate([p.click for p in parts]),
        source=np.concatenate([p.source for p in parts]),
        line=np.concatenate([p.line for p in parts]),
        files=files,
    )


def load_items(path: Path, embedding: EmbedSettings, rejects: RejectLog) -> ItemTable:
    """The item table; titles are embedded when it has no mm_vector column."""
    table = read_table(path)
    if "mm_vector" in table.column_names or "title" not in table.column_names:
        return read_item_table(table, path.name, rejects)
    table, source, _ = add_title_vectors(table, embedding)
    return read_item_table(
        table, path.name, rejects, bad_vector_reason="empty_title", source=source
    )


def run_logs(config: LogsConfig, extra_protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the job; returns the manifest. `extra_protocol` is recorded in manifest["protocol"]."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(config.interactions)
    items_path = Path(config.items)
    with RejectLog(out / "rejects.jsonl", strict=config.strict) as rejects:
        items = load_items(items_path, config.embedding, rejects)
        raw = read_interactions(paths, config.columns, rejects)
        events, user_vocab = clean_events(raw, items.vocab, rejects)
        if config.protocol == "temporal":
            splits = temporal_samples(
                events, config.max_history, config.valid_days, config.test_days, config.day_seconds
            )
            protocol_counts = {name: len(s) for name, s in splits.items()}
        elif config.protocol == "next-item":
            splits, protocol_counts = next_item_samples(
                events, len(items.vocab), config.max_history, config.seed, config.valid_frac
            )
        else:
            raise ValueError(f"unknown protocol {config.protocol!r}")
        protocol = (
            config.protocol_settings()
            | (extra_protocol or {})
            | {"counts_before_valid": protocol_counts}
        )
        manifest = write_prepared(
            out,
            config.job,
            splits,
            user_vocab,
            items,
            rejects,
            created_by=config.created_by,
            max_history=config.max_history,
            num_buckets=config.num_buckets,
            inputs={p.name: input_record(p) for p in [*paths, items_path]},
            protocol=protocol,
            row_group_size=config.row_group_size,
        )
        print(rejects.summary())
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interactions", required=True, help="interaction file or glob (.parquet or .csv)"
    )
    parser.add_argument(
        "--items", required=True, help="item table (.parquet or .csv) with item_id, mm_vector"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--protocol", choices=("temporal", "next-item"), default="temporal")
    parser.add_argument("--max-history", type=int, default=50)
    parser.add_argument("--num-buckets", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0, help="negative sampling seed (next-item)")
    parser.add_argument(
        "--valid-days", type=int, default=1, help="temporal: days before the test days"
    )
    parser.add_argument("--test-days", type=int, default=1, help="temporal: last days")
    parser.add_argument(
        "--valid-frac", type=float, default=0.0, help="next-item: users with a valid pair"
    )
    parser.add_argument("--row-group-size", type=int, default=DEFAULT_ROW_GROUP_SIZE)
    parser.add_argument("--strict", action="store_true", help="fail at the first bad record")
    add_embed_arguments(parser, ("minilm", "hashed"))
    for key, default in (
        ("user", "user_id"),
        ("item", "item_id"),
        ("timestamp", "timestamp"),
        ("click", "click"),
    ):
        parser.add_argument(f"--{key}-column", default=default)


def main(args: argparse.Namespace, command: str) -> None:
    config = LogsConfig(
        interactions=args.interactions,
        items=args.items,
        out=args.out,
        protocol=args.protocol,
        max_history=args.max_history,
        num_buckets=args.num_buckets,
        seed=args.seed,
        valid_days=args.valid_days,
        test_days=args.test_days,
        valid_frac=args.valid_frac,
        strict=args.strict,
        row_group_size=args.row_group_size,
        columns={
            "user": args.user_column,
            "item": args.item_column,
            "timestamp": args.timestamp_column,
            "click": args.click_column,
        },
        embedding=embed_settings(args),
        created_by=command,
    )
    manifest = run_logs(config)
    print(f"wrote {config.out}: {manifest['counts']}")
