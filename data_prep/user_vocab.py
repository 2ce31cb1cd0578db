"""The global user vocabulary, built in parallel from the partitions' sorted users.

Users are hash-partitioned, so every raw user id is in exactly one partition, and each
clean task leaves its partition's users sorted (`clean/pP-users.npy`). The vocabulary is
their sorted union; index FIRST_ID + k for the k-th (docs/data-format.md). Built as a
sample sort, with no process holding every user:

1. `splitters` (driver): R - 1 cut ids from an even sample of every partition's users;
2. `UserRangeTask` r, in parallel: the users in [cut r-1, cut r) of every partition (a
   slice of each sorted file, read by memory map), merged: `range-R-users.npy` (sorted)
   and `range-R-ranks.npy`, the rank within the range of each slice's users, partition
   by partition;
3. `write_vocab` (driver): vocab/user.parquet streamed from the range files in order,
   in row groups of the size `Vocab.save` writes (the same bytes);
4. a build task assembles its users' indices from its slice of every range
   (`partition_index`): offset of the range + rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.vocab import FIRST_ID

SAMPLES_PER_PARTITION = 64
ROW_GROUP_ROWS = 1 << 20  # pq.write_table's default row group size (Vocab.save)


def users_file(work: Path, partition: int) -> Path:
    return work / "clean" / f"p{partition:05d}-users.npy"


def splitters(work: Path, partitions: int, ranges: int) -> list[str]:
    """ranges - 1 increasing cut ids (the driver reads SAMPLES_PER_PARTITION ids a partition)."""
    samples = []
    for p in range(partitions):
        users = np.load(users_file(work, p), mmap_mode="r")
        if len(users):
            at = np.linspace(0, len(users) - 1, min(len(users), SAMPLES_PER_PARTITION))
            samples.append(np.asarray(users[at.astype(np.int64)]))
    if not samples or ranges == 1:
        return []
    pool = np.unique(np.concatenate(samples))
    cuts = pool[np.linspace(0, len(pool), ranges + 1)[1:-1].astype(np.int64)]
    return [str(c) for c in np.unique(cuts)]


@dataclass(frozen=True)
class UserRangeTask:
    """Merge the users in [low, high) of every partition (None: unbounded)."""

    work: Path
    index: int
    low: str | None
    high: str | None
    partitions: int

    def run(self) -> dict[str, Any]:
        values, origins = [], []
        for p in range(self.partitions):
            users = np.load(users_file(self.work, p), mmap_mode="r")
            begin = np.searchsorted(users, self.low) if self.low is not None else 0
            end = np.searchsorted(users, self.high) if self.high is not None else len(users)
            values.append(np.asarray(users[begin:end]))
            origins.append(int(end - begin))
        merged = np.concatenate(values) if values else np.array([], dtype=str)
        order = np.argsort(merged, kind="stable")
        ranks = np.empty(len(merged), dtype=np.int64)
        ranks[order] = np.arange(len(merged))
        np.save(self.work / "clean" / f"range-{self.index:05d}-users.npy", merged[order])
        np.save(self.work / "clean" / f"range-{self.index:05d}-ranks.npy", ranks)
        return {"count": len(merged), "per_partition": origins}


def range_tasks(work: Path, partitions: int, cuts: list[str]) -> list[UserRangeTask]:
    bounds = [None, *cuts, None]
    return [
        UserRangeTask(work, r, bounds[r], bounds[r + 1], partitions) for r in range(len(cuts) + 1)
    ]


def partition_slices(
    results: list[dict[str, Any]], partition: int
) -> list[tuple[int, int, int, int]]:
    """(range, first rank row, rows, first vocabulary index) of `partition`'s users, by range."""
    out, offset = [], FIRST_ID
    for r, result in enumerate(results):
        sizes = result["per_partition"]
        start = int(sum(sizes[:partition]))
        out.append((r, start, int(sizes[partition]), offset))
        offset += result["count"]
    return out


def partition_index(work: Path, slices: list[tuple[int, int, int, int]]) -> np.ndarray:
    """The vocabulary index (U_p,) int64 of each of a partition's sorted users."""
    parts = []
    for r, start, rows, offset in slices:
        ranks = np.load(work / "clean" / f"range-{r:05d}-ranks.npy", mmap_mode="r")
        parts.append(np.asarray(ranks[start : start + rows]) + offset)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def write_vocab(work: Path, ranges: int, path: Path) -> int:
    """vocab/user.parquet from the range files (as `Vocab.save` writes it); returns its size
    (len of the Vocab: padding and OOV included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("raw_id", pa.string()), ("index", pa.int64())])
    pending: list[np.ndarray] = []
    held = 0
    written = 0
    with pq.ParquetWriter(path, schema) as writer:

        def flush(rows: int) -> None:
            nonlocal pending, held, written
            values = np.concatenate(pending) if pending else np.array([], dtype=str)
            chunk, rest = values[:rows], values[rows:]
            index = np.arange(FIRST_ID + written, FIRST_ID + written + len(chunk), dtype=np.int64)
            table = pa.table(
                {"raw_id": pa.array(chunk.tolist(), pa.string()), "index": pa.array(index)},
                schema=schema,
            )
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            written += len(chunk)
            pending, held = ([rest] if len(rest) else []), len(rest)

        for r in range(ranges):
            users = np.load(work / "clean" / f"range-{r:05d}-users.npy")
            pending.append(users)
            held += len(users)
            while held >= ROW_GROUP_ROWS:
                flush(ROW_GROUP_ROWS)
        if held or written == 0:
            flush(held)
    return written + FIRST_ID
