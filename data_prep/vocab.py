"""Raw id -> dense index vocabularies (docs/data-format.md, "Indices").

Index 0 is padding, 1 is out of vocabulary, and real ids get 2.. in sorted order of the
raw id string, so the same set of ids always gives the same indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PAD = 0
OOV = 1
FIRST_ID = 2


class Vocab:
    """A sorted vocabulary of raw string ids."""

    def __init__(self, raw_ids: np.ndarray | Sequence[str]) -> None:
        # (V,) sorted unique raw ids; the index of raw_ids[k] is k + 2.
        self.raw_ids: np.ndarray = np.unique(np.asarray(raw_ids, dtype=str))

    @classmethod
    def of_sorted(cls, raw_ids: np.ndarray) -> Vocab:
        """A vocabulary over ids that are already sorted and unique (a saved vocabulary's
        `raw_ids`, possibly memory-mapped: one read-only copy in the page cache shared by
        every task of a node), without sorting them again."""
        vocab = cls.__new__(cls)
        vocab.raw_ids = raw_ids
        return vocab

    def __len__(self) -> int:
        """Rows of an embedding table for this vocabulary: padding and OOV included."""
        return len(self.raw_ids) + FIRST_ID

    def encode(self, raw: np.ndarray | Sequence[str]) -> np.ndarray:
        """Raw ids (N,) -> int64 indices (N,); unknown ids map to OOV."""
        raw = np.asarray(raw, dtype=str)
        if len(self.raw_ids) == 0:
            return np.full(raw.shape, OOV, dtype=np.int64)
        pos = np.searchsorted(self.raw_ids, raw)
        pos = np.minimum(pos, len(self.raw_ids) - 1)
        known = self.raw_ids[pos] == raw
        return np.where(known, pos + FIRST_ID, OOV).astype(np.int64)

    def save(self, path: Path) -> None:
        """Write `raw_id (string) -> index (int64)` as Parquet."""
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "raw_id": pa.array(self.raw_ids.tolist(), pa.string()),
                "index": pa.array(np.arange(FIRST_ID, len(self), dtype=np.int64)),
            }
        )
        pq.write_table(table, path)

    @classmethod
    def load(cls, path: Path) -> Vocab:
        table = pq.read_table(path)
        raw = table.column("raw_id").to_numpy(zero_copy_only=False).astype(str)
        index = table.column("index").to_numpy()
        if not np.array_equal(index, np.arange(FIRST_ID, FIRST_ID + len(raw))):
            raise ValueError(f"{path}: indices are not 2..N in order")
        return cls(raw)
