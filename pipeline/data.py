"""Streams prepared Parquet shards (docs/data-format.md) into `Batch`es, one part per rank.

Partitioning: the split's row groups are put in one global order (shuffled by seed and
epoch when training) and the rows of that order are cut into `world_size` contiguous,
nearly equal ranges, one per rank. Every sample is read exactly once per epoch across all
ranks, and every rank yields the same number of batches (DistributedModelParallel runs
collectives every step, so a rank with one batch more would hang the others).
Memory is bounded by a few row groups, not by the split's size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.batch import Batch
from models.features import CATEGORY, HIST_CATEGORY, HIST_ITEM, ITEM, USER, FeatureSpec

SCHEMA_VERSION = 1


class DataError(ValueError):
    """Prepared data that cannot be read: names the file and what is wrong."""


class PreparedData:
    """A prepared-data folder: its manifest, bucket boundaries and multimodal table."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise DataError(f"{path}: no manifest; run `python -m data_prep ...` first")
        self.manifest: dict = json.loads(path.read_text())
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(f"{path}: schema_version {version}, this code reads {SCHEMA_VERSION}")

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
        return np.load(self.root / self.manifest["item_embeddings"]["path"], mmap_mode="r")

    def feature_spec(self) -> FeatureSpec:
        """What the model needs of this data: table sizes and bucket boundaries."""
        sizes = self.vocab_sizes
        return FeatureSpec(
            num_users=sizes["user"],
            num_items=sizes["item"],
            num_categories=sizes.get("category", 0),
            bucket_boundaries=tuple(self.manifest["buckets"]["boundaries"]),
        )

    def split_files(self, split: str) -> list[Path]:
        names = self.manifest.get("splits", {}).get(split)
        if names is None:
            names = sorted(p.relative_to(self.root) for p in (self.root / split).glob("*.parquet"))
        return [self.root / name for name in names]

    def has_split(self, split: str) -> bool:
        return self.manifest.get("counts", {}).get(split, 0) > 0

    def reader(self, split: str, batch_size: int, **kwargs) -> ShardReader:
        return ShardReader(
            self.split_files(split), batch_size, has_categories=self.has_categories, **kwargs
        )


@dataclass(frozen=True)
class _RowGroup:
    file: Path
    index: int
    rows: int


def table_to_batch(table: pa.Table, has_categories: bool) -> Batch:
    """Sample rows (docs/data-format.md) -> Batch. Pure; used by reader and serving jobs."""
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
    return Batch(
        sparse_features=kjt,
        hist_sims=torch.from_numpy(sims.astype(np.float32)),
        labels=torch.from_numpy(table.column("label").to_numpy().astype(np.float32)),
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
    ) -> None:
        if not files:
            raise DataError("no shard files for this split")
        self.batch_size = batch_size
        self.has_categories = has_categories
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.buffer_groups = max(1, shuffle_buffer_row_groups)
        self.row_groups = [
            _RowGroup(f, i, pq.ParquetFile(f).metadata.row_group(i).num_rows)
            for f in files
            for i in range(pq.ParquetFile(f).metadata.num_row_groups)
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

    def _rows(self, epoch: int) -> Iterator[pa.Table]:
        """This rank's rows in order, as tables of about one row group each."""
        order = list(range(len(self.row_groups)))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        start, stop = self._rank_range()
        position = 0
        for gi in order:
            group = self.row_groups[gi]
            lo, hi = max(start, position), min(stop, position + group.rows)
            if lo < hi:
                table = pq.ParquetFile(group.file).read_row_group(group.index)
                yield table.slice(lo - position, hi - lo)
            position += group.rows
            if position >= stop:
                break

    def _shuffled(self, tables: Iterator[pa.Table], epoch: int) -> Iterator[pa.Table]:
        """Shuffle rows within windows of `shuffle_buffer_row_groups` row groups."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        window: list[pa.Table] = []
        for table in tables:
            window.append(table)
            if len(window) == self.buffer_groups:
                merged = pa.concat_tables(window)
                yield merged.take(rng.permutation(merged.num_rows))
                window = []
        if window:
            merged = pa.concat_tables(window)
            yield merged.take(rng.permutation(merged.num_rows))

    def iter_batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of `epoch`, skipping the first `start_batch` (resuming mid-epoch)."""
        tables = self._rows(epoch)
        if self.shuffle:
            tables = self._shuffled(tables, epoch)
        pending: list[pa.Table] = []
        pending_rows = 0
        sizes = iter(self._batch_sizes())
        for index, size in enumerate(sizes):
            while pending_rows < size:
                table = next(tables)
                pending.append(table)
                pending_rows += table.num_rows
            merged = pa.concat_tables(pending)
            batch_table, rest = merged.slice(0, size), merged.slice(size)
            pending, pending_rows = [rest], rest.num_rows
            if index >= start_batch:
                yield table_to_batch(batch_table, self.has_categories)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_batches(0)
