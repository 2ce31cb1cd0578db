"""Streams prepared Parquet shards (docs/data-format.md) into `Batch`es, one part per rank.

Partitioning: the split's row groups are put in one global order (shuffled by seed and
epoch when training) and the rows of that order are cut into `world_size` contiguous,
nearly equal ranges, one per rank. Every sample is read exactly once per epoch across all
ranks, and every rank yields the same number of batches (DistributedModelParallel runs
collectives every step, so a rank with one batch more would hang the others).
Memory is bounded by a few row groups per reading process, not by the split's size.

Reading: the rank's rows are cut into windows (one row group when evaluating,
`shuffle_buffer_row_groups` shuffled together when training), read here or by DataLoader
worker processes ahead of the training step (`num_workers`, pipeline/loader.py), with the
same batches either way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_prep.integrity import IntegrityError, safe_path
from data_prep.manifest import checksum as manifest_checksum
from data_prep.manifest import listed_paths, load_manifest, verify_folder
from models.batch import Batch
from models.features import CATEGORY, HIST_CATEGORY, HIST_ITEM, ITEM, USER, FeatureSpec
from models.schema import FeatureSchema, SchemaError, schema_from_dict
from pipeline.loader import (
    NO_EXTRAS,
    Empty,
    HistoryExtras,
    MisalignedHistory,
    assemble,
    columns_to_batch,
    concat_columns,
    iter_windows,
    num_rows,
    pack_window,
    table_columns,
)

SCHEMA_VERSION = 1
log = logging.getLogger(__name__)


class DataError(ValueError):
    """Prepared data that cannot be read: names the file and what is wrong."""


class PreparedData:
    """A prepared-data folder: its manifest, bucket boundaries and multimodal table.

    Opening it checks the folder against its manifest (docs/reliability.md): the
    manifest's checksum and the size of every file it lists (`verify="sizes"`, the
    default, cheap), their sha256 too (`verify="full"`, what `python -m data_prep verify`
    does), or nothing (`verify="none"`). A half-written, truncated or edited folder is
    refused with a DataError naming the file. Every path read from the manifest is
    resolved inside the folder. A manifest without a checksum table (written before
    checksums were added, or by hand) is read with a logged warning.
    """

    def __init__(self, root: str | Path, verify: str = "sizes") -> None:
        if verify not in ("sizes", "full", "none"):
            raise ValueError(f"verify must be sizes, full or none, not {verify!r}")
        self.root = Path(root)
        path = self.root / "manifest.json"
        try:
            self.manifest: dict = load_manifest(self.root)
            version = self.manifest.get("schema_version")
            if version != SCHEMA_VERSION:
                raise DataError(
                    f"{path}: schema_version {version}, this code reads {SCHEMA_VERSION}"
                )
            for name in listed_paths(self.manifest):
                safe_path(self.root, name, "path in the manifest")
            if verify != "none":
                if "files" in self.manifest:
                    verify_folder(self.root, full=verify == "full")
                else:
                    self._check_legacy(path)
        except IntegrityError as error:
            raise DataError(str(error)) from None
        self._check_tables()

    def _check_legacy(self, path: Path) -> None:
        """A manifest without a checksum table: its own checksum still has to match (the
        data_prep form, or the plain `json.dumps(sort_keys=True)` form of hand-written ones)."""
        recorded = self.manifest.get("checksum")
        body = {k: v for k, v in self.manifest.items() if k != "checksum"}
        plain = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if recorded is not None and recorded not in (manifest_checksum(self.manifest), plain):
            raise DataError(f"{path}: checksum mismatch: the manifest was edited or damaged")
        log.warning(
            "%s lists no file checksums (written before they were added): the files are not "
            "verified; run the data-prep job again",
            path,
        )

    def _check_tables(self) -> None:
        """The multimodal tables (the fused one and each modality's) have one row per item
        index (a cheap header read)."""
        names = [self.manifest["item_embeddings"]["path"]]
        names += [entry["path"] for entry in self.manifest.get("modalities") or []]
        for name in names:
            path = self.path(name)
            try:
                rows = np.load(path, mmap_mode="r").shape[0]
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: not a readable .npy table ({error})") from None
            if rows != self.vocab_sizes["item"]:
                raise DataError(
                    f"{path}: {rows} rows, the manifest's item vocabulary has "
                    f"{self.vocab_sizes['item']}"
                )

    def path(self, name: str) -> Path:
        """A file named by the manifest, resolved inside the folder (else DataError)."""
        try:
            return safe_path(self.root, name, "path in the manifest")
        except IntegrityError as error:
            raise DataError(str(error)) from None

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return dict(self.manifest["vocab_sizes"])

    @property
    def has_categories(self) -> bool:
        return self.vocab_sizes.get("category", 0) > 0

    @property
    def max_history(self) -> int:
        return int(self.manifest["max_history"])

    @property
    def num_buckets(self) -> int:
        return int(self.manifest["buckets"]["num_buckets"])

    @property
    def bucket_boundaries(self) -> torch.Tensor:
        """(M-1,) float32 cut points from the training similarities."""
        return torch.tensor(self.manifest["buckets"]["boundaries"], dtype=torch.float32)

    @property
    def checksum(self) -> str:
        return (
            self.manifest.get("checksum")
            or hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()
        )

    @cached_property
    def item_mm(self) -> np.ndarray:
        """(num_items, d_m) frozen L2-normalised multimodal vectors, memory-mapped."""
        return np.load(self.path(self.manifest["item_embeddings"]["path"]), mmap_mode="r")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The items' separate modalities (manifest `modalities`), () with one vector."""
        return tuple(entry["name"] for entry in self.manifest.get("modalities") or [])

    @cached_property
    def modality_mm(self) -> dict[str, np.ndarray]:
        """Modality name -> (num_items, d_k) frozen L2-normalised vectors, memory-mapped."""
        return {
            entry["name"]: np.load(self.path(entry["path"]), mmap_mode="r")
            for entry in self.manifest.get("modalities") or []
        }

    @cached_property
    def schema(self) -> FeatureSchema:
        """The feature schema the data was prepared with (manifest `features`, with the
        vocabulary sizes data prep built); folders without one have the default schema
        (without `category` when the items have none)."""
        entry = self.manifest.get("features")
        if entry is None:
            return schema_from_dict({"features": [], "category": self.has_categories})
        try:
            return schema_from_dict(entry, f"{self.root / 'manifest.json'}: features")
        except SchemaError as error:
            raise DataError(str(error)) from None

    def feature_tables(self) -> dict[str, np.ndarray]:
        """The schema features' per-user and per-item tables (features/*.npy: `user_NAME`,
        `user_NAME.offsets`, `item_NAME`), what serving looks the features up in."""
        out = {}
        for name in self.manifest.get("files", {}):
            if name.startswith("features/") and name.endswith(".npy"):
                out[name[len("features/") : -len(".npy")]] = np.load(self.path(name))
        return out

    def drop_features(self, *names: str) -> None:
        """Leave the named schema features out of `schema`, the feature spec and the
        readers (an ablation: the shards keep their columns). KeyError for an unknown name."""
        try:
            self.__dict__["schema"] = self.schema.without(*(n.strip() for n in names if n.strip()))
        except KeyError as error:
            raise DataError(f"{self.root}: {error.args[0]}") from None

    @property
    def history_extras(self) -> HistoryExtras:
        """The columns beyond the built-in ones the shards carry and batches get: the times
        (`history_times`, written by every job since it was added), the per-modality
        similarities, and the schema's pooled, dense and sequence features."""
        return extras_for(self.schema, "history_times" in self.manifest, self.modalities)

    def history_extras_for(self, arch: object) -> HistoryExtras:
        """`history_extras` without what an interest arch never reads: the behaviour times
        unless it `needs_times`, the per-modality similarities unless it
        `needs_modality_sims` (models/interest.py). The trainer's readers for that arch:
        columns no batch field of it uses are not decoded (the times are the shards'
        largest column: 36.6 of 67 MB a row group of the industrial-shaped data)."""
        extras = self.history_extras
        return replace(
            extras,
            times=extras.times and bool(getattr(arch, "needs_times", False)),
            modalities=extras.modalities if getattr(arch, "needs_modality_sims", False) else (),
        )

    def feature_spec(self) -> FeatureSpec:
        """What the model needs of this data: table sizes, bucket boundaries, modalities."""
        sizes = self.vocab_sizes
        return FeatureSpec(
            num_users=sizes["user"],
            num_items=sizes["item"],
            num_categories=sizes.get("category", 0),
            bucket_boundaries=tuple(self.manifest["buckets"]["boundaries"]),
            modalities=self.modalities,
            schema=self.schema,
        )

    def split_files(self, split: str) -> list[Path]:
        names = self.manifest.get("splits", {}).get(split)
        if names is None:
            names = sorted(
                p.relative_to(self.root).as_posix() for p in (self.root / split).glob("*.parquet")
            )
        return [self.path(name) for name in names]

    def has_split(self, split: str) -> bool:
        return self.manifest.get("counts", {}).get(split, 0) > 0

    def reader(self, split: str, batch_size: int, **kwargs) -> ShardReader:
        kwargs.setdefault("vocab_sizes", self.vocab_sizes)
        kwargs.setdefault("extras", self.history_extras)
        return ShardReader(
            self.split_files(split), batch_size, has_categories=self.has_categories, **kwargs
        )


def extras_for(
    schema: FeatureSchema, times: bool = False, modalities: tuple[str, ...] = ()
) -> HistoryExtras:
    """What a reader reads of data prepared with `schema` (`HistoryExtras`)."""
    return HistoryExtras(
        times=times,
        modalities=modalities,
        pooled=tuple(f.name for f in schema.pooled),
        multi=tuple(f.name for f in schema.pooled if f.multi_valued),
        dense=tuple(f.name for f in schema.dense),
        sequence=tuple(f.name for f in schema.extra_sequence),
    )


@dataclass(frozen=True)
class _RowGroup:
    file: Path
    index: int
    rows: int


def table_to_batch(
    table: pa.Table, has_categories: bool, extras: HistoryExtras = NO_EXTRAS
) -> Batch:
    """Sample rows (docs/data-format.md) -> Batch. Pure; used by reader and serving jobs.
    `extras`: also the times and per-modality similarities (`PreparedData.history_extras`)."""
    if extras.has_features:
        try:
            return columns_to_batch(
                table_columns(table, has_categories, extras), has_categories, extras
            )
        except MisalignedHistory as error:
            raise DataError(str(error)) from None
    n = table.num_rows
    hist = table.column("hist_items").combine_chunks()
    lengths = np.diff(hist.offsets.to_numpy())
    keys = [USER, ITEM, HIST_ITEM]
    values = [
        table.column("user").to_numpy(),
        table.column("item").to_numpy(),
        hist.flatten().to_numpy(),
    ]
    key_lengths = [np.ones(n, np.int64), np.ones(n, np.int64), lengths]
    if has_categories:
        keys += [CATEGORY, HIST_CATEGORY]
        values += [
            table.column("category").to_numpy(),
            table.column("hist_categories").combine_chunks().flatten().to_numpy(),
        ]
        key_lengths += [np.ones(n, np.int64), lengths]
    sims = table.column("hist_sims").combine_chunks().flatten().to_numpy()
    if sims.shape[0] != values[2].shape[0]:
        raise DataError("hist_sims is not aligned with hist_items")
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate(key_lengths).astype(np.int32)),
    )
    times = modality_sims = None
    if extras:
        try:
            cols = table_columns(table, has_categories, extras)
        except MisalignedHistory as error:
            raise DataError(str(error)) from None
        if extras.times:
            times = torch.from_numpy(np.ascontiguousarray(cols["hist_times"]))
        if extras.modalities:
            stacked = np.stack([cols[f"hist_sims_{m}"] for m in extras.modalities], axis=1)
            modality_sims = torch.from_numpy(stacked.astype(np.float32))
    return Batch(
        sparse_features=kjt,
        hist_sims=torch.from_numpy(sims.astype(np.float32)),
        labels=torch.from_numpy(table.column("label").to_numpy().astype(np.float32)),
        hist_times=times,
        hist_modality_sims=modality_sims,
    )


class ShardReader:
    """Iterates one rank's batches of a split.

    Args:
        files: the split's Parquet shards.
        batch_size: rows per batch on this rank (the last batch of an epoch may be smaller).
        rank, world_size: this rank's part of the split.
        shuffle: shuffle row groups and rows (training); False keeps file order (evaluation).
        seed: with `epoch`, fixes the order: the same (seed, epoch) gives the same batches.
        shuffle_buffer_row_groups: row groups mixed together when shuffling rows.
        vocab_sizes: table sizes (`PreparedData.vocab_sizes`); when given, every row group
            read is checked to hold only ids inside the tables (a DataError naming the
            shard instead of an embedding lookup out of bounds).
        num_workers: DataLoader worker processes reading windows ahead of the consumer
            (0: read in this process); the batches are the same for any number
            (pipeline/loader.py).
        pin_memory: pin every batch (for the asynchronous copy to a GPU).
        prefetch_factor: windows each worker reads ahead.
        extras: the history-aligned columns beyond hist_sims to read into the batches
            (`pipeline.loader.HistoryExtras`: times, per-modality similarities).
    """

    def __init__(
        self,
        files: list[Path],
        batch_size: int,
        *,
        has_categories: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer_row_groups: int = 4,
        vocab_sizes: dict[str, int] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        extras: HistoryExtras = NO_EXTRAS,
    ) -> None:
        if not files:
            raise DataError("no shard files for this split")
        self.vocab_sizes = vocab_sizes
        self.batch_size = batch_size
        self.has_categories = has_categories
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.buffer_groups = max(1, shuffle_buffer_row_groups)
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.prefetch_factor = prefetch_factor
        self.extras = extras
        self.row_groups = []
        for f in files:
            try:
                meta = pq.ParquetFile(f).metadata
            except (OSError, pa.ArrowException) as error:
                raise DataError(f"{f}: not a readable Parquet shard ({error})") from None
            self.row_groups += [
                _RowGroup(f, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)
            ]
        self.num_rows = sum(g.rows for g in self.row_groups)

    def _rank_range(self) -> tuple[int, int]:
        per_rank = self.num_rows / self.world_size
        return round(self.rank * per_rank), round((self.rank + 1) * per_rank)

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        longest = math.ceil(self.num_rows / self.world_size)
        return math.ceil(longest / self.batch_size) if longest else 0

    def _batch_sizes(self) -> list[int]:
        """Split this rank's rows into exactly len(self) batches of at most batch_size."""
        start, stop = self._rank_range()
        rows, steps = stop - start, len(self)
        if rows < steps:
            raise DataError(f"rank {self.rank} has {rows} rows for {steps} batches")
        full = min(self.batch_size, rows // steps) if steps else 0
        sizes = [full] * steps
        remainder = rows - full * steps
        for i in range(steps - 1, -1, -1):  # fill the last batches up to batch_size
            extra = min(remainder, self.batch_size - sizes[i])
            sizes[i] += extra
            remainder -= extra
        return sizes

    def _windows(self, epoch: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
        """This rank's rows of `epoch` as windows read (and shuffled) together:
        [(offset of the window's first row among the rank's rows, [(row group, lo, hi)])].

        Row groups are in one global order (shuffled by seed and epoch when training); the
        rank takes rows start..stop-1 of it. A window is one row group (evaluation) or
        `shuffle_buffer_row_groups` of them (training)."""
        order = list(range(len(self.row_groups)))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        start, stop = self._rank_range()
        pieces, position = [], 0
        for gi in order:
            rows = self.row_groups[gi].rows
            lo, hi = max(start, position), min(stop, position + rows)
            if lo < hi:
                pieces.append((gi, lo - position, hi - position))
            position += rows
            if position >= stop:
                break
        per_window = self.buffer_groups if self.shuffle else 1
        windows, offset = [], 0
        for w in range(0, len(pieces), per_window):
            chunk = pieces[w : w + per_window]
            windows.append((offset, chunk))
            offset += sum(hi - lo for _, lo, hi in chunk)
        return windows

    def _read_window(
        self,
        epoch: int,
        start_batch: int,
        windows: list[tuple[int, list[tuple[int, int, int]]]],
        bounds: np.ndarray,
        index: int,
        empty: Empty = np.empty,
    ) -> dict[str, np.ndarray]:
        """Window `index` of `windows` (`_windows(epoch)`) packed as its batches from
        `start_batch` on (`pipeline.loader.pack_window`; `bounds`: `_bounds()`), rows
        shuffled by a generator keyed by (seed, epoch, rank, window) when training: the
        same in any process. `empty` allocates the packed arrays (shared memory in a
        DataLoader worker)."""
        offset, pieces = windows[index]
        parts = []
        for gi, lo, hi in pieces:
            group = self.row_groups[gi]
            table = self._read(group).slice(lo, hi - lo)
            try:
                parts.append(table_columns(table, self.has_categories, self.extras))
            except MisalignedHistory as error:
                raise DataError(f"{group.file}: row group {group.index}: {error}") from None
        cols = concat_columns(parts)
        order = None
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, self.rank, 1, index])
            order = rng.permutation(num_rows(cols))
        return pack_window(
            cols, offset, bounds, start_batch, self.has_categories, order, empty, self.extras
        )

    def _bounds(self) -> np.ndarray:
        """(steps+1,) batch b is rows bounds[b]..bounds[b+1]-1 of this rank's rows."""
        return np.concatenate([[0], np.cumsum(self._batch_sizes())]).astype(np.int64)

    def _read(self, group: _RowGroup) -> pa.Table:
        """One row group, checked: columns present, histories aligned, ids in the tables."""
        where = f"{group.file}: row group {group.index}"
        need = ["user", "item", "label", "hist_items", "hist_sims"]
        if self.has_categories:
            need += ["category", "hist_categories"]
        need += self.extras.source_columns() + self.extras.row_columns()
        try:
            file = pq.ParquetFile(group.file)
            missing = [c for c in need if c not in file.schema_arrow.names]
            if missing:
                raise DataError(f"{where}: no column {missing[0]!r}")
            # Only the columns the batches get (the shards also hold `ts`, and the times
            # or per-modality similarities a model may not read: not decoded). One thread:
            # the reader's parallelism is its worker processes (`num_workers`), not
            # Arrow's pool competing with the training step for the rank's cores.
            table = file.read_row_group(group.index, columns=need, use_threads=False)
        except (OSError, pa.ArrowException) as error:
            raise DataError(f"{where}: cannot be read ({error})") from None
        if table.num_rows and self.vocab_sizes is not None:
            tables = {"user": "user", "item": "item", "hist_items": "item"}
            if self.has_categories:
                tables |= {"category": "category", "hist_categories": "category"}
            for name in self.extras.pooled:
                tables[name] = name
            for name in self.extras.sequence:
                tables |= {name: name, f"hist_{name}": name}
            for column, vocab in tables.items():
                values = table.column(column)
                if pa.types.is_list(values.type):
                    values = pc.list_flatten(values)
                if values.null_count:
                    raise DataError(f"{where}: null {column}")
                bounds = pc.min_max(values).as_py()
                size = self.vocab_sizes.get(vocab, 0)
                if bounds["min"] is not None and (bounds["min"] < 0 or bounds["max"] >= size):
                    bad = bounds["max"] if bounds["max"] >= size else bounds["min"]
                    raise DataError(
                        f"{where}: {column} id {bad} is outside the {vocab} table [0, {size}): "
                        "the shard does not belong to this manifest"
                    )
        return table

    def iter_batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of `epoch` from batch `start_batch` on (resuming mid-epoch: the windows
        before it are not read). The same batches for any `num_workers`."""
        bounds = self._bounds()
        if start_batch >= bounds.size - 1:
            return
        windows = self._windows(epoch)
        offsets = [offset for offset, _ in windows]
        first = int(np.searchsorted(offsets, bounds[start_batch], side="right")) - 1
        read = functools.partial(self._read_window, epoch, start_batch, windows, bounds)
        stream = iter_windows(
            read,
            range(first, len(windows)),
            self.num_workers,
            self.prefetch_factor,
            self.pin_memory,
        )
        yield from assemble(
            stream, bounds, start_batch, self.has_categories, self.pin_memory, self.extras
        )

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_batches(0)
