"""Sharded Parquet writer for one split.

Shards are `SPLIT/part-PPPPP-SSSSS.parquet` (partition P, shard S of that partition). Blocks
passed to `write` must hold whole users, so a user's rows never straddle two shards; a
shard is closed after the block that takes it past `max_shard_rows`. Row groups hold
exactly `row_group_size` rows except the last of each shard.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.samples import Samples

DEFAULT_ROW_GROUP_SIZE = 65_536
DEFAULT_MAX_SHARD_ROWS = 4_194_304


class ShardWriter:
    """Writes the samples of one split (and one partition) into Parquet shards."""

    def __init__(
        self,
        out_dir: Path,
        split: str,
        partition: int = 0,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
        max_shard_rows: int = DEFAULT_MAX_SHARD_ROWS,
    ) -> None:
        self.out_dir = out_dir
        self.split = split
        self.partition = partition
        self.row_group_size = row_group_size
        self.max_shard_rows = max_shard_rows
        self.paths: list[str] = []  # shard paths relative to out_dir
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._shard_rows = 0

    def write(self, samples: Samples) -> None:
        """Append a block of whole users."""
        if len(samples) == 0:
            return
        table = samples.to_arrow()
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        self._shard_rows += table.num_rows
        self._flush(full_groups_only=True)
        if self._shard_rows >= self.max_shard_rows:
            self._close_shard()

    def close(self) -> list[str]:
        """Finish the last shard; returns the shard paths relative to out_dir."""
        self._close_shard()
        return self.paths

    def _flush(self, full_groups_only: bool) -> None:
        if self._pending_rows == 0 or (
            full_groups_only and self._pending_rows < self.row_group_size
        ):
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._open_shard(table.schema)
        stop = (
            self._pending_rows - self._pending_rows % self.row_group_size
            if full_groups_only
            else self._pending_rows
        )
        for start in range(0, stop, self.row_group_size):
            rows = table.slice(start, min(self.row_group_size, stop - start))
            self._writer.write_table(rows, row_group_size=self.row_group_size)
        rest = table.slice(stop)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def _open_shard(self, schema: pa.Schema) -> None:
        rel = f"{self.split}/part-{self.partition:05d}-{len(self.paths):05d}.parquet"
        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.paths.append(rel)

    def _close_shard(self) -> None:
        self._flush(full_groups_only=False)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._shard_rows = 0
