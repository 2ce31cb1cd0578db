"""Rows of a saved item table (.npy), read by block instead of whole.

A build task needs, per block of whole users, only the rows of the items that block's
samples name (targets and history items): at most a few hundred thousand rows, whatever
the catalogue. `NpyRows.fetch` maps the file one `WINDOW_BYTES` window at a time, copies
the block's rows of that window and unmaps it: the file's pages stay in the page cache,
one copy per node shared by every task, and a task's resident memory holds at most one
window of them (a mapping of the whole table would count every page a task touched;
positioned reads of single rows cost a system call per row, measured 5x slower).

`BlockItems` is one block's view: the local tables (R, d) and the global -> local index.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data_prep.vocab import FIRST_ID

WINDOW_BYTES = 64 << 20  # the most of the table mapped at once by one task


class NpyRows:
    """A 1-d or 2-d C-order .npy file, read by rows."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or len(shape) not in (1, 2):
            raise ValueError(f"{path}: expected a C-order 1-d or 2-d array, got {shape}")
        self.shape: tuple[int, ...] = shape
        self.dtype = dtype
        self.row_bytes = dtype.itemsize * (shape[1] if len(shape) == 2 else 1)

    def __len__(self) -> int:
        return self.shape[0]

    def fetch(self, rows: np.ndarray) -> np.ndarray:
        """rows (R,) sorted unique int64 -> the table's rows (R, d) (or (R,) for a 1-d table)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        if rows[0] < 0 or rows[-1] >= len(self):
            raise IndexError(f"{self.path}: rows outside 0..{len(self) - 1}")
        per_window = max(1, WINDOW_BYTES // self.row_bytes)
        window = rows // per_window
        bounds = np.flatnonzero(np.r_[True, window[1:] != window[:-1], True])
        with self.path.open("rb") as f:
            for begin, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                first = int(window[begin]) * per_window
                last = min(first + per_window, len(self))
                at = self.offset + first * self.row_bytes
                aligned = at - at % mmap.ALLOCATIONGRANULARITY
                length = at - aligned + (last - first) * self.row_bytes
                view = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=aligned)
                try:
                    table = np.frombuffer(view, self.dtype, offset=at - aligned)
                    table = table.reshape(last - first, *self.shape[1:])
                    out[begin:end] = table[rows[begin:end] - first]
                    del table  # the mapping closes only when no array uses it
                finally:
                    view.close()
        return out


class BlockItems:
    """The item tables restricted to one block's rows.

    rows (R,) sorted unique global item indices; mm (R, d) float32; category (R,) int64 or
    None; modalities name -> (R, d_k). `local(index)` maps global indices (any shape) that
    are in `rows` to positions 0..R-1 through a dense (V,) int32 map that is allocated
    once per task and only written at the block's rows (untouched pages stay unallocated).
    """

    def __init__(self, store: ItemStore, rows: np.ndarray) -> None:
        self.rows = rows
        self.mm = store.mm.fetch(rows)
        self.category = store.category.fetch(rows) if store.category is not None else None
        self.modalities = {name: t.fetch(rows) for name, t in store.modalities.items()}
        store.lookup[rows] = np.arange(len(rows), dtype=np.int32)
        self._lookup = store.lookup

    def local(self, index: np.ndarray) -> np.ndarray:
        return self._lookup[index]


class ItemStore:
    """The saved item side of a prepared folder (item_mm.npy, item_mm_NAME.npy,
    item_category.npy, vocab/item.parquet), read by block."""

    def __init__(self, out: Path, modality_names: list[str]) -> None:
        self.size = vocab_size(out / "vocab" / "item.parquet")
        self.mm = NpyRows(out / "item_mm.npy")
        category = out / "item_category.npy"
        self.category = NpyRows(category) if category.exists() else None
        self.modalities = {n: NpyRows(out / f"item_mm_{n}.npy") for n in modality_names}
        self.lookup = np.zeros(self.size, dtype=np.int32)  # calloc: pages appear when written

    def block(self, rows: np.ndarray) -> BlockItems:
        return BlockItems(self, rows)


def vocab_size(path: Path) -> int:
    """Rows of the embedding table of a saved vocabulary (padding and OOV included), from the
    Parquet footer: the vocabulary itself is not read."""
    return pq.ParquetFile(path).metadata.num_rows + FIRST_ID
