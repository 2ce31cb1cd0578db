"""A Parquet item table read in batches, its vector table written to disk in vocabulary order.

`read_item_parquet` is `items.read_item_table` for the case that scales (a Parquet file
with one vector column, no modality columns): the same ItemTable, the same rejects in the
same order, the same bytes of item_mm.npy, with memory bounded by a batch and a window:

1. the id and category columns only (not the vectors): validity, duplicates and the
   vocabulary order (`items.item_keys`);
2. the vector column, `BATCH_ROWS` rows at a time: L2-normalised (float32); each kept
   item's usable row is appended to the scratch file of its output window (`WINDOW_ROWS`
   rows of item_mm.npy), with its output row;
3. item_mm.npy, window by window: each window's scratch files read, its rows placed.
   The vectors are written twice and read once: no pass over the whole table per window.

The returned table's `mm` is the written file, memory-mapped read-only (nothing of it is
resident until read). The vector size is the most common vector length, as in
`vectors_from_column`: step 2 assumes the first batch's and checks at the end (a file
where that differs is read a second time).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.items import ItemTable, category_table, check_vector_type, item_keys
from data_prep.limits import DEFAULT_MAX_ID_LENGTH
from data_prep.rejects import InputError, RejectLog
from data_prep.similarity import normalize_rows
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
    dim = None
    while True:
        bad, lengths, dim_used = _normalised_by_window(
            parquet, file, vector_column, scratch, dest, WINDOW_ROWS, dim
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
    _write_in_vocab_order(scratch, mm_path, len(keys.order) + FIRST_ID, dim, WINDOW_ROWS)
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


def _normalised_by_window(
    parquet: pq.ParquetFile,
    file: str,
    column: str,
    scratch: Path,
    dest: np.ndarray,
    window: int,
    dim: int | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Normalise the vectors batch by batch; the usable row of each kept item is appended to
    the scratch files of its output window (`scratch`/wK.f32, with its output row in wK.idx).
    `dest` (N,) int64: output row of each file row (-1: not kept); dim None: the first
    batch's most common length. Returns (bad (N,) bool, count of each vector length, dim)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    files: dict[int, tuple[BinaryIO, BinaryIO]] = {}
    bad_parts: list[np.ndarray] = []
    lengths = np.zeros(1, dtype=np.int64)
    first = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
            values = batch.column(0)
            size = values.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
            count = np.bincount(size.astype(np.int64))
            lengths = np.pad(lengths, (0, max(0, len(count) - len(lengths))))
            lengths[: len(count)] += count
            if dim is None and (size > 0).any():
                dim = int(np.bincount(size[size > 0]).argmax())
            ok = size == dim
            bad = ~ok
            if ok.any():
                flat = (values.filter(pa.array(ok)) if not ok.all() else values).flatten()
                flat = flat.to_numpy(zero_copy_only=False)
                normed, bad_norm = normalize_rows(flat.reshape(-1, dim))
                bad[ok] = bad_norm
                to = dest[first : first + len(size)][ok]
                use = (to >= 0) & ~bad_norm  # kept items with a usable vector (else: zero)
                _append_by_window(files, scratch, normed[use], to[use], window)
            bad_parts.append(bad)
            first += len(size)
    except (pa.ArrowException, OSError) as error:
        raise InputError(
            f"{file}: not a readable Parquet file (after row {first}): {error}"
        ) from None
    finally:
        for data, index in files.values():
            data.close()
            index.close()
    bad = np.concatenate(bad_parts) if bad_parts else np.zeros(0, dtype=bool)
    return bad, lengths, dim or 0


def _append_by_window(files, scratch: Path, rows: np.ndarray, to: np.ndarray, window: int) -> None:
    if len(to) == 0:
        return
    which = (to - FIRST_ID) // window
    order = np.argsort(which, kind="stable")
    which, rows, to = which[order], rows[order], to[order]
    bounds = np.flatnonzero(np.r_[True, which[1:] != which[:-1], True])
    for begin, end in zip(bounds[:-1], bounds[1:]):
        k = int(which[begin])
        if k not in files:
            files[k] = ((scratch / f"w{k}.f32").open("wb"), (scratch / f"w{k}.idx").open("wb"))
        files[k][0].write(np.ascontiguousarray(rows[begin:end]))
        files[k][1].write(np.ascontiguousarray(to[begin:end]))


def _write_in_vocab_order(
    scratch: Path, target: Path, vocab_rows: int, dim: int, window: int
) -> None:
    """target: a .npy (vocab_rows, dim) float32; each window of output rows filled from its
    scratch files (rows not there stay zero: padding, OOV, unusable vectors)."""
    header = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(vocab_rows, dim))
    offset = header.offset
    del header  # only the header and the file's size: the rows are written below
    buffer = np.empty((BATCH_ROWS, dim), dtype=np.float32)
    block = np.empty((window + FIRST_ID, dim), dtype=np.float32)  # reused: no fresh pages
    with target.open("r+b") as out:
        out.seek(offset)
        for k, low in enumerate(range(FIRST_ID, vocab_rows, window)):
            shift = FIRST_ID if k == 0 else 0  # the first window also holds rows 0 and 1
            rows = block[: min(low + window, vocab_rows) - low + shift]
            rows.fill(0.0)
            data, index = scratch / f"w{k}.f32", scratch / f"w{k}.idx"
            if data.exists():
                to = np.fromfile(index, dtype=np.int64) - low + shift
                with data.open("rb", buffering=0) as f:
                    for begin in range(0, len(to), BATCH_ROWS):
                        part = to[begin : begin + BATCH_ROWS]
                        values = buffer[: len(part)]
                        f.readinto(values)
                        rows[part] = values
            out.write(rows)
