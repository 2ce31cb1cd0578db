"""Scatter parsed records into user partitions on disk (hash of the raw user id).

A partition holds every record of its users, so per-user rules and histories need only
that partition: memory is bounded by partition size, not dataset size. Files are
`WORK/scatter/pPPPPP/TAG.parquet`, one per (partition, scattering task).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.events import RawEvents, concat_raw
from data_prep.hashing import splitmix64

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item", pa.int64()),
        ("ts", pa.int64()),
        ("click", pa.int8()),
        ("source", pa.int32()),
        ("line", pa.int64()),
    ]
)


EXTRA_PREFIX = "x_"  # RawEvents.extra columns (the schema's event features)


def user_partition(user_ids: np.ndarray, partitions: int) -> np.ndarray:
    """Raw user ids (N,) str -> partition (N,) int64, stable across runs and machines.

    A polynomial hash over the Unicode code points, finished by splitmix64; it does not
    depend on the other ids of the batch.
    """
    ids = np.ascontiguousarray(user_ids, dtype=str)
    if len(ids) == 0 or partitions == 1:
        return np.zeros(len(ids), dtype=np.int64)
    width = ids.dtype.itemsize // 4
    codes = ids.view(np.uint32).reshape(len(ids), width).astype(np.uint64)
    h = np.zeros(len(ids), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(width):
            code = codes[:, column]  # 0 = padding past the end of a shorter id: skipped
            h = np.where(code != 0, h * np.uint64(1_000_003) ^ code, h)
    return (splitmix64(h) % np.uint64(partitions)).astype(np.int64)


def partition_dir(work: Path, partition: int) -> Path:
    return work / "scatter" / f"p{partition:05d}"


class ScatterWriter:
    """Appends RawEvents batches to per-partition Parquet files named by `tag`."""

    def __init__(self, work: Path, partitions: int, tag: str) -> None:
        self.work = work
        self.partitions = partitions
        self.tag = tag
        self._writers: dict[int, pq.ParquetWriter] = {}

    def write(self, raw: RawEvents) -> None:
        part = user_partition(raw.user, self.partitions)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.partitions + 1))
        for p in range(self.partitions):
            rows = order[bounds[p] : bounds[p + 1]]
            if len(rows):
                table = self._table(raw, rows)
                self._writer(p, table.schema).write_table(table)

    def _table(self, raw: RawEvents, rows: np.ndarray) -> pa.Table:
        columns = [
            raw.user[rows].tolist(),
            raw.item[rows],
            raw.ts[rows],
            raw.click[rows],
            raw.source[rows],
            raw.line[rows],
        ]
        arrays = [pa.array(c, t.type) for c, t in zip(columns, SCHEMA)]
        names = list(SCHEMA.names)
        for name, values in raw.extra.items():  # the schema's event features
            arrays.append(pa.array(values[rows]))
            names.append(EXTRA_PREFIX + name)
        return pa.Table.from_arrays(arrays, names=names)

    def _writer(self, p: int, schema: pa.Schema) -> pq.ParquetWriter:
        if p not in self._writers:
            path = partition_dir(self.work, p) / f"{self.tag}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writers[p] = pq.ParquetWriter(path, schema, compression="lz4")
        return self._writers[p]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def read_partition(work: Path, partition: int, files: list[str]) -> RawEvents:
    """Every scattered record of a partition, in file order (source, line)."""
    parts = []
    for path in sorted(partition_dir(work, partition).glob("*.parquet")):
        table = pq.read_table(path)
        parts.append(
            RawEvents(
                user=table.column("user_id").to_numpy(zero_copy_only=False).astype(str),
                item=table.column("item").to_numpy(),
                ts=table.column("ts").to_numpy(),
                click=table.column("click").to_numpy(),
                source=table.column("source").to_numpy(),
                line=table.column("line").to_numpy(),
                files=files,
                extra={
                    name[len(EXTRA_PREFIX) :]: table.column(name).to_numpy()
                    for name in table.column_names
                    if name.startswith(EXTRA_PREFIX)
                },
            )
        )
    raw = concat_raw(parts, files)
    return raw.take(np.lexsort((raw.line, raw.source)))
