"""`python -m data_prep logs`: generic click logs + item table -> prepared folder.

Interactions: Parquet or CSV files (a glob), columns user_id, item_id, timestamp (int
seconds or a timestamp type), optional click (0/1; absent = every event is a positive);
names configurable. Items: Parquet or CSV with item_id, optional mm_vector
(list<float>), title and category; without mm_vector the titles are embedded.
Modalities (`--modality NAME=COLUMN`, two or more): vector columns kept apart as
item_mm_NAME.npy with per-modality similarities hist_sims_NAME in the samples; without
mm_vector the fused vector is built from them (data_prep/items.py).
Feature schema (`--schema FILE`, docs/feature-schema.md): the columns it names are read
from the interaction rows (source event), the item table (source item) and a user table
(`--users FILE`, source user), encoded, validated and written to the shards and the
manifest (data_prep/features.py).
Files are streamed in batches and scattered into user partitions
(`--partitions`), processed by `--workers` processes (or torch.distributed ranks).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.columns import ColumnTypeError, as_ids, as_int64
from data_prep.coordination import Coordinator
from data_prep.embed import EmbedSettings, add_embed_arguments, add_title_vectors, embed_settings
from data_prep.engines import add_engine_argument, make_coordinator
from data_prep.events import RawEvents, drop_unknown_items
from data_prep.features import SchemaPrep
from data_prep.item_stream import read_item_parquet
from data_prep.items import ItemTable, read_item_table
from data_prep.limits import (
    Limits,
    add_limit_arguments,
    at_least_two,
    fraction,
    limits_from_args,
    non_negative_int,
    positive_int,
)
from data_prep.manifest import input_record
from data_prep.partitions import (
    DEFAULT_BLOCK_EVENTS,
    PipelineSettings,
    load_candidates,
    run_pipeline,
    work_dir,
)
from data_prep.protocols import Protocol
from data_prep.rejects import InputError, RejectLog, summary
from data_prep.scatter import ScatterWriter
from data_prep.tables import Batch, expand_inputs, iter_batches, read_batch
from data_prep.vocab import Vocab
from data_prep.writer import DEFAULT_ROW_GROUP_SIZE
from models.schema import FeatureSchema, SchemaError, load_schema

DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "click": "click"}


@dataclass
class LogsConfig:
    interactions: str
    items: str
    out: Path
    protocol: Protocol = field(default_factory=Protocol)
    num_buckets: int = 35
    strict: bool = False
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    columns: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    embedding: EmbedSettings = field(default_factory=EmbedSettings)
    partitions: int = 1
    workers: int = 1
    engine: str = "local"  # coordination.ENGINES
    batch_rows: int = 1_000_000
    block_events: int = DEFAULT_BLOCK_EVENTS
    distributed: bool | None = False
    job: str = "logs"
    created_by: str = ""
    limits: Limits = field(default_factory=Limits)
    modalities: dict[str, str] = field(default_factory=dict)  # name -> vector column
    schema: FeatureSchema | None = None  # None: the default four keys
    users: Path | None = None  # the user table of the schema's user features

    def schema_prep(self) -> SchemaPrep | None:
        """The schema's side of the run; None for the default schema (nothing to read)."""
        if self.schema is None or not self.schema.extended:
            return None
        return SchemaPrep(self.schema, self.users, self.limits)


def load_items(
    path: Path,
    embedding: EmbedSettings,
    rejects: RejectLog,
    limits: Limits | None = None,
    modalities: dict[str, str] | None = None,
    features: SchemaPrep | None = None,
    spill: Path | None = None,
) -> ItemTable:
    """The item table; titles are embedded when it has no mm_vector column (nor modalities).
    `features`: the schema's item columns are read first (rows with a bad value rejected).
    `spill`: a folder for the vector table: a Parquet table with mm_vector (and neither
    modalities nor features) is then read in batches and its `mm` is a memory-mapped file
    there (data_prep/item_stream.py); other tables are read whole."""
    limits = limits or Limits()
    if spill is not None and path.suffix == ".parquet" and not modalities and features is None:
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{path.name}: not a readable Parquet file: {error}") from None
        if "mm_vector" in names:  # the case that scales: read in batches (item_stream.py)
            spill.mkdir(parents=True, exist_ok=True)
            return read_item_parquet(
                path, spill / "item_mm.npy", rejects, max_id_length=limits.max_id_length
            )

    def bad_row(line: int, reason: str, excerpt: str) -> None:
        rejects.add_read(1)
        rejects.reject(path.name, line, reason, excerpt)

    batch = read_batch(path, bad_row, limits.max_line_bytes)
    table, lines = batch.table, batch.lines
    if features is not None:
        table, lines = features.filter_items(table, lines, path.name, rejects)
    common = {
        "lines": lines,
        "max_id_length": limits.max_id_length,
        "modality_columns": modalities,
    }
    if "mm_vector" in table.column_names or modalities or "title" not in table.column_names:
        return read_item_table(table, path.name, rejects, **common)
    try:
        table, source, _ = add_title_vectors(table, embedding)
    except ColumnTypeError as error:
        raise InputError(f"{path.name}: column 'title': {error}") from None
    return read_item_table(
        table, path.name, rejects, bad_vector_reason="empty_title", source=source, **common
    )


class LogsItems:
    """Item side of the logs job: the item table is the catalogue, kept whole."""

    def __init__(
        self,
        path: Path,
        embedding: EmbedSettings,
        limits: Limits | None = None,
        modalities: dict[str, str] | None = None,
        features: SchemaPrep | None = None,
        spill: Path | None = None,
    ) -> None:
        self.spill = spill
        self.features = features
        self.path = path
        self.embedding = embedding
        self.limits = limits or Limits()
        self.modalities = dict(modalities or {})
        self.items: ItemTable | None = None

    def load(self, rejects: RejectLog) -> np.ndarray:
        self.items = load_items(
            self.path, self.embedding, rejects, self.limits, self.modalities, self.features,
            self.spill,
        )  # fmt: skip
        return self.items.vocab.raw_ids

    def finalize(self, used: np.ndarray, rejects: RejectLog) -> tuple[ItemTable, np.ndarray]:
        assert self.items is not None, "load() runs first"
        return self.items, np.arange(len(self.items.vocab), dtype=np.int64)


def parse_batch(
    batch: Batch,
    files: list[str],
    source: int,
    columns: dict[str, str],
    items: Vocab,
    rejects: RejectLog,
    limits: Limits | None = None,
    features: SchemaPrep | None = None,
) -> tuple[RawEvents, np.ndarray]:
    """One batch of rows -> (RawEvents, raw item ids (N,)); rows with a bad field are rejected."""
    limits = limits or Limits()
    table, file = batch.table, files[source]
    for key in ("user", "item", "timestamp"):
        if columns[key] not in table.column_names:
            raise InputError(f"{file}: no column {columns[key]!r} (columns: {table.column_names})")
    rejects.add_read(table.num_rows)
    try:
        name = columns["user"]
        user = as_ids(table.column(name), limits.max_id_length)
        name = columns["item"]
        item = as_ids(table.column(name), limits.max_id_length)
        name = columns["timestamp"]
        ts = as_int64(table.column(name))
        if columns["click"] in table.column_names:
            name = columns["click"]
            click = as_int64(table.column(name))
            click_bad = click.malformed | click.overflow
            click_bad |= ~click.missing & ~np.isin(click.values, (0, 1))
            click_values, click_missing = click.values, click.missing
        else:
            click_values = np.ones(table.num_rows, dtype=np.int64)
            click_missing = click_bad = np.zeros(table.num_rows, dtype=bool)
    except ColumnTypeError as error:
        raise InputError(f"{file}: column {name!r}: {error}") from None
    out_of_window = ts.overflow | ~(
        (ts.values >= limits.min_timestamp) & (ts.values <= limits.max_timestamp)
    )
    keep = np.ones(table.num_rows, dtype=bool)
    reason = np.full(table.num_rows, "", dtype=object)
    for name, mask in (
        ("not_utf8", user.not_utf8 | item.not_utf8),
        ("missing_field", user.missing | item.missing | ts.missing | click_missing),
        ("id_too_long", user.too_long | item.too_long),
        ("malformed", ts.malformed | click_bad),
        ("timestamp_out_of_range", out_of_window),
    ):
        reason[keep & mask] = name
        keep &= ~mask
    extra = features.encode_events(table, file, keep, reason) if features is not None else {}
    for row in np.flatnonzero(~keep):
        rejects.reject(
            file, int(batch.lines[row]), reason[row], table.slice(int(row), 1).to_pylist()[0]
        )
    rows = np.flatnonzero(keep)
    raw = RawEvents(
        user=user.values[rows],
        item=items.encode(item.values[rows]),
        ts=ts.values[rows],
        click=click_values[rows].astype(np.int8),
        source=np.full(len(rows), source, dtype=np.int32),
        line=batch.lines[rows].astype(np.int64),
        files=files,
        extra={name: values[rows] for name, values in extra.items()},
    )
    return raw, item.values[rows]


@dataclass(frozen=True)
class LogsScatterTask:
    """Parse one interaction file in batches and scatter it into user partitions."""

    path: Path
    source: int
    files: list[str]
    columns: dict[str, str]
    work: Path
    partitions: int
    strict: bool
    batch_rows: int
    limits: Limits = field(default_factory=Limits)
    features: SchemaPrep | None = None

    def run(self) -> dict[str, Any]:
        items = load_candidates(self.work)
        writer = ScatterWriter(self.work, self.partitions, f"s{self.source:05d}")
        rejects_path = self.work / "rejects" / f"b-scatter-{self.source:05d}.jsonl"
        file = self.files[self.source]
        try:
            with RejectLog(rejects_path, self.strict) as rejects:

                def bad_row(line: int, reason: str, excerpt: str) -> None:
                    rejects.add_read(1)
                    rejects.reject(file, line, reason, excerpt)

                for batch in iter_batches(
                    self.path, self.batch_rows, bad_row, self.limits.max_line_bytes
                ):
                    raw, raw_items = parse_batch(
                        batch,
                        self.files,
                        self.source,
                        self.columns,
                        items,
                        rejects,
                        self.limits,
                        self.features,
                    )
                    writer.write(drop_unknown_items(raw, rejects, raw_items))
        finally:
            writer.close()
        return rejects.as_manifest()


def run_logs(
    config: LogsConfig,
    extra_protocol: dict[str, Any] | None = None,
    coordinator: Coordinator | None = None,
) -> dict[str, Any] | None:
    """Run the job; returns the manifest (None on ranks other than the leader)."""
    if coordinator is None:
        coordinator = make_coordinator(config.workers, config.distributed, config.engine)
        try:
            return run_logs(config, extra_protocol, coordinator)
        finally:
            coordinator.close()
    paths = expand_inputs(config.interactions)
    items_path = Path(config.items)
    if not items_path.is_file():
        raise InputError(f"{items_path}: no such item table")
    files = [p.name for p in paths]
    work = work_dir(config.out)
    features = config.schema_prep()
    tasks = [
        LogsScatterTask(
            p, i, files, config.columns, work, config.partitions, config.strict,
            config.batch_rows, config.limits, features,
        )
        for i, p in enumerate(paths)
    ]  # fmt: skip
    settings = PipelineSettings(
        out=config.out,
        job=config.job,
        created_by=config.created_by,
        protocol=config.protocol,
        partitions=config.partitions,
        num_buckets=config.num_buckets,
        row_group_size=config.row_group_size,
        block_events=config.block_events,
        strict=config.strict,
        limits=config.limits,
        features=features,
    )
    inputs = (
        {
            p.name: input_record(p)
            for p in [*paths, items_path, *([config.users] if features and config.users else [])]
        }
        if coordinator.is_leader
        else {}
    )
    manifest = run_pipeline(
        settings,
        coordinator,
        LogsItems(
            items_path,
            config.embedding,
            config.limits,
            config.modalities,
            features,
            work / "items",
        ),  # fmt: skip
        tasks,
        files,
        inputs,
        extra_protocol,
    )
    if manifest is not None:
        print(summary(manifest["records"]))
    return manifest


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-history", type=positive_int, default=50)
    parser.add_argument("--num-buckets", type=at_least_two, default=35)
    parser.add_argument("--seed", type=int, default=0, help="negative sampling seed (next-item)")
    parser.add_argument(
        "--valid-days", type=non_negative_int, default=1, help="temporal: days before the test days"
    )
    parser.add_argument("--test-days", type=positive_int, default=1, help="temporal: last days")
    parser.add_argument(
        "--valid-frac", type=fraction, default=0.0, help="next-item: users with a valid pair (0..1)"
    )


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partitions", type=positive_int, default=1, help="user partitions (hash of the user id)"
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="local processes")
    parser.add_argument(
        "--block-events",
        type=positive_int,
        default=DEFAULT_BLOCK_EVENTS,
        help="events per build block",
    )
    parser.add_argument(
        "--batch-rows", type=positive_int, default=1_000_000, help="rows per scattered input batch"
    )
    parser.add_argument(
        "--distributed", action="store_true", help="torch.distributed ranks (torchrun/TorchX)"
    )
    add_engine_argument(parser)
    parser.add_argument("--row-group-size", type=positive_int, default=DEFAULT_ROW_GROUP_SIZE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interactions", required=True, help="interaction file or glob (.parquet or .csv)"
    )
    parser.add_argument(
        "--items", required=True, help="item table (.parquet or .csv): item_id, mm_vector or title"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--protocol", choices=("temporal", "next-item"), default="temporal")
    add_protocol_arguments(parser)
    add_scale_arguments(parser)
    parser.add_argument("--strict", action="store_true", help="fail at the first bad record")
    parser.add_argument(
        "--modality",
        action="append",
        default=[],
        metavar="NAME=COLUMN",
        help="a modality's vector column of the item table, repeated (two or more): kept "
        "apart as item_mm_NAME.npy with per-modality similarities hist_sims_NAME",
    )
    parser.add_argument(
        "--schema",
        type=Path,
        help="feature schema (.yaml/.json, docs/feature-schema.md): extra user, context and "
        "item columns; default: the four keys user, item, history, category",
    )
    parser.add_argument(
        "--users", type=Path, help="user table (.parquet/.csv, user_id + the schema's user columns)"
    )
    add_limit_arguments(parser)
    add_embed_arguments(parser, ("minilm", "hashed"))
    for key, default in DEFAULT_COLUMNS.items():
        parser.add_argument(f"--{key}-column", default=default)


def modalities_from_args(entries: list[str]) -> dict[str, str]:
    """["text=text_vector", ...] -> {"text": "text_vector", ...}; InputError when malformed."""
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, column = entry.partition("=")
        if not sep or not name or not column or name in out:
            raise InputError(f"--modality {entry!r}: expected NAME=COLUMN, each NAME once")
        out[name] = column
    return out


def schema_from_args(args: argparse.Namespace) -> FeatureSchema | None:
    """--schema FILE, checked (InputError naming the file), or None."""
    if getattr(args, "schema", None) is None:
        return None
    try:
        return load_schema(args.schema)
    except SchemaError as error:
        raise InputError(str(error)) from None


def protocol_from_args(args: argparse.Namespace, name: str) -> Protocol:
    return Protocol(
        name=name,
        max_history=args.max_history,
        valid_days=getattr(args, "valid_days", 1),
        test_days=getattr(args, "test_days", 1),
        seed=args.seed,
        valid_frac=args.valid_frac,
    )


def main(args: argparse.Namespace, command: str) -> None:
    config = LogsConfig(
        interactions=args.interactions,
        items=args.items,
        out=args.out,
        protocol=protocol_from_args(args, args.protocol),
        num_buckets=args.num_buckets,
        strict=args.strict,
        row_group_size=args.row_group_size,
        columns={key: getattr(args, f"{key}_column") for key in DEFAULT_COLUMNS},
        embedding=embed_settings(args),
        partitions=args.partitions,
        workers=args.workers,
        engine=args.engine,
        block_events=args.block_events,
        batch_rows=args.batch_rows,
        distributed=args.distributed or None,
        created_by=command,
        limits=limits_from_args(args),
        modalities=modalities_from_args(args.modality),
        schema=schema_from_args(args),
        users=args.users,
    )
    manifest = run_logs(config)
    if manifest is not None:
        print(f"wrote {config.out}: {manifest['counts']}")
