"""Raw id -> dense index vocabularies (docs/data-format.md, "Indices").

Index 0 is padding, 1 is out of vocabulary, and real ids get 2.. in sorted order of the
raw id string, so the same set of ids always gives the same indices.

`encode` is a binary search over the sorted ids, or, for a vocabulary given a hash index
(`hash_index`, built once and memory-mapped by the tasks that encode against the item
candidates), a binary search over 64-bit integers: a hash of the id (`id_hashes`) in the
high bits, the id's position in the low bits. A hash found is confirmed by comparing the
ids; a hash shared with another id falls back to the binary search over the ids, so both
give the same indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.hashing import splitmix64

PAD = 0
OOV = 1
FIRST_ID = 2


def id_hashes(raw: np.ndarray | Sequence[str]) -> np.ndarray:
    """Raw ids (N,) -> uint64 (N,): a hash of each id's code points that does not depend on
    the width of the array (the padding code points, 0, add nothing)."""
    raw = np.ascontiguousarray(raw, dtype=str)
    width = raw.dtype.itemsize // 4
    codes = raw.view(np.uint32).reshape(len(raw), width)
    weights = splitmix64(np.arange(width, dtype=np.uint64)) | np.uint64(1)  # odd: no loss
    h = np.zeros(len(raw), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(width):
            h += codes[:, column] * weights[column]
    return splitmix64(h)


def _position_bits(size: int) -> int:
    return max(1, (size - 1).bit_length())


def hash_index(raw_ids: np.ndarray) -> np.ndarray:
    """Sorted unique ids (V,) -> (V,) uint64 sorted: each id's hash (`id_hashes`) with its low
    bits replaced by the id's position, for `Vocab.of_sorted(raw_ids, index)`."""
    bits = np.uint64(_position_bits(len(raw_ids)))
    keys = id_hashes(raw_ids) >> bits << bits
    return np.sort(keys | np.arange(len(raw_ids), dtype=np.uint64))


class Vocab:
    """A sorted vocabulary of raw string ids."""

    def __init__(self, raw_ids: np.ndarray | Sequence[str]) -> None:
        # (V,) sorted unique raw ids; the index of raw_ids[k] is k + 2.
        self.raw_ids: np.ndarray = np.unique(np.asarray(raw_ids, dtype=str))
        self.index: np.ndarray | None = None

    @classmethod
    def of_sorted(cls, raw_ids: np.ndarray, index: np.ndarray | None = None) -> Vocab:
        """A vocabulary over ids that are already sorted and unique (a saved vocabulary's
        `raw_ids`, possibly memory-mapped: one read-only copy in the page cache shared by
        every task of a node), without sorting them again; `index`: their `hash_index`
        (possibly memory-mapped too), for a faster `encode` of many ids."""
        vocab = cls.__new__(cls)
        vocab.raw_ids = raw_ids
        vocab.index = index
        return vocab

    def __len__(self) -> int:
        """Rows of an embedding table for this vocabulary: padding and OOV included."""
        return len(self.raw_ids) + FIRST_ID

    def encode(self, raw: np.ndarray | Sequence[str]) -> np.ndarray:
        """Raw ids (N,) -> int64 indices (N,); unknown ids map to OOV."""
        raw = np.asarray(raw, dtype=str)
        if len(self.raw_ids) == 0:
            return np.full(raw.shape, OOV, dtype=np.int64)
        if self.index is None or raw.ndim != 1:
            pos, known = self._search(raw)
        else:
            pos, known = self._hashed(raw)
        return np.where(known, pos + FIRST_ID, OOV).astype(np.int64)

    def _search(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position of each raw id in raw_ids, whether it is there): binary search."""
        pos = np.minimum(np.searchsorted(self.raw_ids, raw), len(self.raw_ids) - 1)
        return pos, self.raw_ids[pos] == raw

    def _hashed(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`_search` through the hash index: the ids' hashes looked up in sorted order (the
        searches walk the index forwards, not at random)."""
        assert self.index is not None
        bits = np.uint64(_position_bits(len(self.raw_ids)))
        needle = id_hashes(raw) >> bits << bits
        order = np.argsort(needle)
        at = np.empty(len(raw), dtype=np.int64)
        at[order] = np.searchsorted(self.index, needle[order])
        key = self.index[np.minimum(at, len(self.index) - 1)]
        hashed = (key >> bits) == (needle >> bits)  # else no id has this hash: unknown
        pos = (key & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)
        known = hashed.copy()
        known[hashed] = self.raw_ids[pos[hashed]] == raw[hashed]
        shared = hashed & ~known  # the hash of another id (or of several): search the ids
        if shared.any():
            pos[shared], known[shared] = self._search(raw[shared])
        return pos, known

    def save(self, path: Path) -> None:
        """Write `raw_id (string) -> index (int64)` as Parquet."""
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "raw_id": pa.array(self.raw_ids, pa.string()),  # no Python strings
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
