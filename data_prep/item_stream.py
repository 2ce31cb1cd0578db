"""A Parquet item table read in batches, its vector table written to disk in vocabulary order.

`read_item_parquet` is `items.read_item_table` for the case that scales (a Parquet file
with one vector column, no modality columns): the same ItemTable, the same rejects in the
same order, the same bytes of item_mm.npy, with memory bounded by a batch and a window:

1. the id and category columns only (not the vectors): validity, duplicates and the
   vocabulary order (`items.item_keys`);
2. the vector column, `BATCH_ROWS` rows at a time: each kept item's vector L2-normalised
   (float32, computed in float64 in reused buffers: `normalize_rows`'s bytes) and written
   into item_mm.npy itself, in the rows of its output window (`WINDOW_ROWS` rows), in the
   order the rows come, its output row appended to a small scratch file of the window;
3. item_mm.npy, window by window: each window's rows read back, put in place, written over
   the same rows. No scratch copy of the vectors: the second write goes over the file's
   own pages, usually still in the page cache, and no 1 GB of scratch files is created,
   read and deleted (with the reused buffers: 10.3-10.7 -> 7.7-9.2 CPU-s for the 4M x 64
   item load, docs/data-prep.md).

The returned table's `mm` is the written file, memory-mapped read-only (nothing of it is
resident until read). The vector size is the most common vector length, as in
`vectors_from_column`: step 2 assumes the first batch's and checks at the end (a file
where that differs is read a second time).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.items import ItemTable, category_table, check_vector_type, item_keys
from data_prep.limits import DEFAULT_MAX_ID_LENGTH
from data_prep.rejects import InputError, RejectLog
from data_prep.similarity import NORMALIZE_ROWS
from data_prep.vocab import FIRST_ID

BATCH_ROWS = (
    1 << 14
)  # small batches: decoded in the allocator's caches (measured: less system time)
WINDOW_ROWS = 1 << 18  # output rows per window (64 MiB of 64-d float32)


def read_item_parquet(
    path: Path,
    mm_path: Path,
    rejects: RejectLog,
    id_column: str = "item_id",
    vector_column: str = "mm_vector",
    category_column: str = "category",
    max_id_length: int = DEFAULT_MAX_ID_LENGTH,
) -> ItemTable:
    """Parquet item table -> ItemTable whose `mm` is `mm_path` (written here, (V, d) float32)."""
    file = path.name
    try:
        # Streamed column chunks (1 MiB buffers), not whole row groups read ahead: decoding a
        # 4M x 64 table peaked at 1.05 GB of Arrow memory with the defaults, 25 MB so.
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{file}: not a readable Parquet file: {error}") from None
    schema = parquet.schema_arrow
    for column in (id_column, vector_column):
        if column not in schema.names:
            raise InputError(f"{file}: no column {column!r} (columns: {schema.names})")
    check_vector_type(schema.empty_table(), vector_column, file)
    rows = _FullRows(parquet)
    key_columns = [c for c in (id_column, category_column) if c in schema.names]
    table = _read(parquet, file, key_columns)
    lines = np.arange(1, table.num_rows + 1)
    keys = item_keys(
        table, file, rejects, lines, id_column, category_column, max_id_length, rows.excerpt
    )
    del table
    scratch = mm_path.with_name(mm_path.name + ".windows")
    dest = np.full(len(keys.keep), -1, dtype=np.int64)
    dest[keys.order] = np.arange(FIRST_ID, FIRST_ID + len(keys.order))
    vocab_rows = len(keys.order) + FIRST_ID
    dim = None
    while True:
        bad, lengths, dim_used, counts = _normalised_by_window(
            parquet, file, vector_column, mm_path, scratch, dest, vocab_rows, WINDOW_ROWS, dim
        )
        dim = int(lengths[1:].argmax()) + 1 if lengths[1:].any() else 0  # most common length
        if dim == 0:
            raise InputError(f"{file}: no item has a vector")
        if dim == dim_used:
            break  # else the first batch's most common length was not the file's: read again
    for row in np.flatnonzero(keys.keep & bad):
        rejects.repair(file, int(lines[row]), "bad_vector", rows.excerpt(row))
    rejects.add_used(int(keys.keep.sum()))
    pa.default_memory_pool().release_unused()  # the decoded batches' buffers, back to the OS
    _put_in_vocab_order(scratch, mm_path, counts, vocab_rows, dim, WINDOW_ROWS)
    shutil.rmtree(scratch)
    category_vocab, category = category_table(keys.vocab, keys.raw_category)
    mm = np.load(mm_path, mmap_mode="r")
    return ItemTable(keys.vocab, mm, f"{file}:{vector_column}", category_vocab, category)


def _read(parquet: pq.ParquetFile, file: str, columns: list[str]) -> pa.Table:
    try:
        return parquet.read(columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{file}: not a readable Parquet file: {error}") from None


class _FullRows:
    """Whole rows of the file by row number, for reject excerpts (rare: a row group is read
    per excerpt, the last one kept)."""

    def __init__(self, parquet: pq.ParquetFile) -> None:
        self.parquet = parquet
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        self.starts = np.cumsum([0, *sizes])
        self.cached: tuple[int, pa.Table] | None = None

    def excerpt(self, row: int) -> dict[str, object]:
        group = int(np.searchsorted(self.starts, row, side="right")) - 1
        if self.cached is None or self.cached[0] != group:
            self.cached = (group, self.parquet.read_row_group(group))
        return self.cached[1].slice(int(row - self.starts[group]), 1).to_pylist()[0]


def _window_start(k: int, window: int) -> int:
    """First row of output window k in item_mm.npy (window 0 also holds rows 0 and 1)."""
    return 0 if k == 0 else FIRST_ID + k * window


def _normalised_by_window(
    parquet: pq.ParquetFile,
    file: str,
    column: str,
    target: Path,
    scratch: Path,
    dest: np.ndarray,
    vocab_rows: int,
    window: int,
    dim: int | None,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Normalise the vectors of the kept items batch by batch; the usable row of each is
    written into `target` (a .npy (vocab_rows, d) float32, created here), in the rows of its
    output window, after the rows that window already got; its output row is appended to
    `scratch`/wK.idx. `dest` (N,) int64: output row of each file row (-1: not kept); dim
    None: the first batch's most common length. Returns (bad (N,) bool, for the kept rows:
    no usable vector; count of each vector length; dim; rows written per window)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    index_files: dict[int, BinaryIO] = {}
    windows = max(1, -(-(vocab_rows - FIRST_ID) // window))
    counts = np.zeros(windows, dtype=np.int64)
    bad_parts: list[np.ndarray] = []
    lengths = np.zeros(1, dtype=np.int64)
    first = 0
    out = None
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
            values = batch.column(0)
            size = values.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
            count = np.bincount(size.astype(np.int64))
            lengths = np.pad(lengths, (0, max(0, len(count) - len(lengths))))
            lengths[: len(count)] += count
            if dim is None and (size > 0).any():
                dim = int(np.bincount(size[size > 0]).argmax())
            to = dest[first : first + len(size)]
            bad = size != dim
            wanted = ~bad & (to >= 0)  # kept items with a vector of the size: normalised
            if wanted.any():
                if out is None:
                    out = _Target(target, vocab_rows, dim)
                use = values if wanted.all() else values.filter(pa.array(wanted))
                flat = use.flatten().to_numpy(zero_copy_only=False)
                bad_norm = out.normalise(flat.reshape(-1, dim))
                bad[wanted] = bad_norm
                keep = ~bad_norm  # usable rows (the others stay zero)
                _write_by_window(out, index_files, scratch, counts, to[wanted][keep], keep, window)
            bad_parts.append(bad)
            first += len(size)
    except (pa.ArrowException, OSError) as error:
        raise InputError(
            f"{file}: not a readable Parquet file (after row {first}): {error}"
        ) from None
    finally:
        for index in index_files.values():
            index.close()
        if out is not None:
            out.close()
    if out is None and dim:  # no kept item has a usable vector: the rows stay zero
        _Target(target, vocab_rows, dim).close()
    bad = np.concatenate(bad_parts) if bad_parts else np.zeros(0, dtype=bool)
    return bad, lengths, dim or 0, counts


class _Target:
    """item_mm.npy opened for writing rows at their offsets, with the reused buffers of the
    normalisation (float64, `NORMALIZE_ROWS` rows: no fresh temporaries per batch)."""

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        self.offset = header.offset
        del header  # only the header and the file's size: the rows are written below
        self.dim = dim
        self.row_bytes = dim * 4
        self.fd = os.open(path, os.O_RDWR)
        self.work = np.empty((NORMALIZE_ROWS, dim), dtype=np.float64)
        self.square = np.empty((NORMALIZE_ROWS, dim), dtype=np.float64)
        self.norms = np.empty(NORMALIZE_ROWS, dtype=np.float64)
        self.normed = np.empty((BATCH_ROWS, dim), dtype=np.float32)
        self.sorted = np.empty((BATCH_ROWS, dim), dtype=np.float32)

    def normalise(self, vectors: np.ndarray) -> np.ndarray:
        """`normalize_rows(vectors)` into self.normed[:n] (the same float64 operations, so the
        same float32 bytes); returns bad (n,): a non-finite value or zero norm (row zero)."""
        n = len(vectors)
        if n > len(self.normed):
            self.normed = np.empty((n, self.dim), dtype=np.float32)
            self.sorted = np.empty((n, self.dim), dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        for start in range(0, n, NORMALIZE_ROWS):
            stop = min(start + NORMALIZE_ROWS, n)
            work, square, norms = (
                self.work[: stop - start],
                self.square[: stop - start],
                self.norms[: stop - start],
            )
            np.copyto(work, vectors[start:stop], casting="unsafe")  # np.asarray(, float64)
            np.multiply(work, work, out=square)  # np.linalg.norm: sqrt(add.reduce(x * x))
            np.add.reduce(square, axis=1, out=norms)
            np.sqrt(norms, out=norms)
            chunk_bad = ~np.isfinite(norms) | (norms == 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(work, norms[:, None], out=work)
            np.copyto(self.normed[start:stop], work, casting="same_kind")
            if chunk_bad.any():
                self.normed[start:stop][chunk_bad] = 0.0
            bad[start:stop] = chunk_bad
        return bad

    def write(self, rows: np.ndarray, first_row: int) -> None:
        _pwrite_all(self.fd, rows, self.offset + first_row * self.row_bytes)

    def close(self) -> None:
        os.close(self.fd)


def _write_by_window(
    out: _Target,
    index_files: dict[int, BinaryIO],
    scratch: Path,
    counts: np.ndarray,
    to: np.ndarray,
    usable: np.ndarray,
    window: int,
) -> None:
    """The usable rows of out.normed (output rows `to`), each after the rows its window got."""
    if len(to) == 0:
        return
    which = (to - FIRST_ID) // window
    order = np.argsort(which, kind="stable")
    rows = np.flatnonzero(usable)[order]
    which, to = which[order], to[order]
    ordered = out.sorted[: len(rows)]
    np.take(out.normed, rows, axis=0, out=ordered, mode="clip")  # "raise" buffers `out`
    bounds = np.flatnonzero(np.r_[True, which[1:] != which[:-1], True])
    for begin, end in zip(bounds[:-1], bounds[1:]):
        k = int(which[begin])
        if k not in index_files:
            index_files[k] = (scratch / f"w{k}.idx").open("wb")
        out.write(ordered[begin:end], _window_start(k, window) + int(counts[k]))
        counts[k] += end - begin
        index_files[k].write(np.ascontiguousarray(to[begin:end]))


def _put_in_vocab_order(
    scratch: Path, target: Path, counts: np.ndarray, vocab_rows: int, dim: int, window: int
) -> None:
    """Each window of `target`: its rows, in the order they were written (`_write_by_window`),
    read back and written in place (rows not written stay zero: padding, OOV, unusable)."""
    offset = np.load(target, mmap_mode="r").offset
    fd = os.open(target, os.O_RDWR)
    try:
        buffer = np.empty((BATCH_ROWS, dim), dtype=np.float32)
        block = np.empty((window + FIRST_ID, dim), dtype=np.float32)  # reused: no fresh pages
        for k, low in enumerate(range(FIRST_ID, vocab_rows, window)):
            start = _window_start(k, window)
            rows = block[: min(low + window, vocab_rows) - start]
            rows.fill(0.0)
            if counts[k]:
                to = np.fromfile(scratch / f"w{k}.idx", dtype=np.int64) - start
                for begin in range(0, len(to), BATCH_ROWS):
                    part = to[begin : begin + BATCH_ROWS]
                    values = buffer[: len(part)]
                    _pread_all(fd, values, offset + (start + begin) * dim * 4)
                    rows[part] = values
            _pwrite_all(fd, rows, offset + start * dim * 4)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, rows: np.ndarray, at: int) -> None:
    data = memoryview(np.ascontiguousarray(rows)).cast("B")
    while len(data):
        done = os.pwrite(fd, data, at)
        data, at = data[done:], at + done


def _pread_all(fd: int, out: np.ndarray, at: int) -> None:
    data = memoryview(out).cast("B")
    while len(data):
        done = os.preadv(fd, [data], at)
        if done == 0:
            raise OSError("item_mm.npy: shorter than its header says")
        data, at = data[done:], at + done
