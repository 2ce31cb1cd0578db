"""The item side of a prepared folder: item vocabulary, multimodal table, categories.

Rules for bad item records (docs/data-prep.md): an item row without an id is rejected
(`missing_field`), a repeated id is rejected (`duplicate_item`, the first row wins). An
item whose vector is missing, of the wrong size, non-finite or of zero norm is kept with a
zero vector (`bad_vector`, repaired): its similarity to everything is 0.

Modalities: an item table may also carry one vector column per modality (text, image, ...;
`modality_columns`, at least two). Each is L2-normalised and kept apart
(`ItemTable.modalities`, saved as `item_mm_<name>.npy`); an unusable vector of modality
NAME is a zero row, repaired as `bad_vector_NAME`. Without a fused `mm_vector` column the
fused vector is the L2-normalised concatenation of the normalised modality vectors, so its
cosine is the mean of the modalities' cosines (items with a vector in every modality).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.columns import ColumnTypeError, as_id_array, fixed_width_bytes, to_str_array
from data_prep.limits import DEFAULT_MAX_ID_LENGTH
from data_prep.rejects import InputError, RejectLog
from data_prep.similarity import normalize_rows
from data_prep.vocab import FIRST_ID, OOV, PAD, Vocab


@dataclass
class ItemTable:
    """Items keyed by dense index.

    mm: (len(vocab), d) float32, L2-normalised rows, rows 0 and 1 zero.
    category: (len(vocab),) int64 category index (0 for padding, 1 for unknown) or None.
    modalities: modality name -> (len(vocab), d_k) float32, L2-normalised rows, rows 0 and
        1 zero (empty: the items have one modality, `mm`); modality_sources: name -> source.
    """

    vocab: Vocab
    mm: np.ndarray
    mm_source: str
    category_vocab: Vocab | None = None
    category: np.ndarray | None = None
    modalities: dict[str, np.ndarray] = field(default_factory=dict)
    modality_sources: dict[str, str] = field(default_factory=dict)


MODALITY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def check_modality_columns(modality_columns: dict[str, str] | None) -> dict[str, str]:
    """name -> column; names are lowercase identifiers (file names), two or more of them."""
    columns = dict(modality_columns or {})
    if not columns:
        return columns
    bad = [name for name in columns if not MODALITY_NAME.match(name)]
    if bad:
        raise InputError(f"modality name {bad[0]!r}: use lowercase letters, digits and _")
    if len(columns) < 2:
        raise InputError(
            "give two or more modalities (one modality is the item vector itself, mm_vector)"
        )
    return columns


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """Bool mask (N,) of the first occurrence of every id in input order."""
    _, first = np.unique(ids, return_index=True)
    keep = np.zeros(len(ids), dtype=bool)
    keep[first] = True
    return keep


def category_table(
    vocab: Vocab, raw_category: np.ndarray | pa.Array | None
) -> tuple[Vocab | None, np.ndarray | None]:
    """Leaf category per item: raw strings aligned with vocab.raw_ids ("" = none) -> (vocab, (V,) index).

    `raw_category` numpy strings, or Arrow strings (`item_keys`): those are encoded by their
    distinct values (a dictionary), so only the few categories become numpy strings."""
    if isinstance(raw_category, (pa.Array, pa.ChunkedArray)):
        return _category_table_arrow(vocab, raw_category)
    if raw_category is None or not np.any(raw_category != ""):
        return None, None
    category_vocab = Vocab(raw_category[raw_category != ""])
    category = np.full(len(vocab), OOV, dtype=np.int64)
    category[PAD] = PAD
    category[FIRST_ID:] = category_vocab.encode(raw_category)
    return category_vocab, category


def _category_table_arrow(
    vocab: Vocab, raw_category: pa.Array | pa.ChunkedArray
) -> tuple[Vocab | None, np.ndarray | None]:
    """`category_table` of Arrow strings: the same vocabulary and indices."""
    encoded = pc.dictionary_encode(raw_category)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()  # one dictionary
    names = to_str_array(encoded.dictionary)  # distinct values, in order of first occurrence
    if not np.any(names != ""):
        return None, None
    category_vocab = Vocab(names[names != ""])
    category = np.full(len(vocab), OOV, dtype=np.int64)
    category[PAD] = PAD
    category[FIRST_ID:] = category_vocab.encode(names)[encoded.indices.to_numpy()]
    return category_vocab, category


def vectors_from_column(
    column: pa.ChunkedArray, file: str = "item table"
) -> tuple[np.ndarray, np.ndarray]:
    """list<float> column (N,) -> (vectors (N, d), bad (N,)); d is the most common length.

    vectors are float32 for float16/float32 values (exact), float64 otherwise (float64 or
    integer values, so no value is rounded): a 20.9M x 64 float32 table is 5.4 GB, not
    the 10.7 GB a float64 copy would be. normalize_rows computes in float64 per chunk.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or pa.types.is_nested(
        kind.value_type
    ):
        raise InputError(f"{file}: the vector column is {kind}, expected list<float>")
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    dim = int(np.bincount(lengths[lengths > 0]).argmax()) if np.any(lengths > 0) else 0
    if dim == 0:
        raise InputError(f"{file}: no item has a vector")
    ok = lengths == dim
    value_type = kind.value_type
    dtype = (
        np.float32
        if pa.types.is_float32(value_type) or pa.types.is_float16(value_type)
        else np.float64
    )
    values = column.filter(pa.array(ok)) if not ok.all() else column
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if ok.all():
        return flat.reshape(-1, dim), ~ok
    vectors = np.zeros((len(column), dim), dtype=dtype)
    vectors[ok] = flat.reshape(-1, dim)
    return vectors, ~ok


def align_rows(
    ids: np.ndarray, vectors: np.ndarray, bad: np.ndarray, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `vectors` (N, d) keyed by `ids` (N,) for the ids `wanted` (W,).

    Returns (aligned (W, d), missing (W,)): ids absent from `ids` or with a bad vector get
    zero rows and are flagged. A repeated id uses its first row.
    """
    unique, first = np.unique(ids, return_index=True)
    pos = np.minimum(np.searchsorted(unique, wanted), max(len(unique) - 1, 0))
    found = (unique[pos] == wanted) if len(unique) else np.zeros(len(wanted), dtype=bool)
    source = first[pos]
    missing = ~found | bad[source]
    aligned = np.where(missing[:, None], 0.0, vectors[source])
    return aligned, missing


def read_item_table(
    table: pa.Table,
    file: str,
    rejects: RejectLog,
    id_column: str = "item_id",
    vector_column: str = "mm_vector",
    category_column: str = "category",
    bad_vector_reason: str = "bad_vector",
    source: str | None = None,
    lines: np.ndarray | None = None,
    max_id_length: int = DEFAULT_MAX_ID_LENGTH,
    modality_columns: dict[str, str] | None = None,
) -> ItemTable:
    """Item table with vectors (one row per item) -> ItemTable.

    `lines`: the 1-based line (CSV) or row (Parquet) of each row, row + 1 by default.
    Rows whose vector is unusable are repaired under `bad_vector_reason` (zero vector).
    `modality_columns`: modality name -> vector column (module docstring); without
    `vector_column` in the table the fused vector is built from them.
    """
    modality_columns = check_modality_columns(modality_columns)
    if id_column not in table.column_names:
        raise InputError(f"{file}: no column {id_column!r} (columns: {table.column_names})")
    fused = vector_column not in table.column_names and bool(modality_columns)
    if vector_column not in table.column_names and not fused:
        raise InputError(
            f"{file}: no column {vector_column!r}; embed titles first (python -m data_prep embed-items)"
        )
    for column in [*([] if fused else [vector_column]), *modality_columns.values()]:
        if column not in table.column_names:
            raise InputError(
                f"{file}: no modality column {column!r} (columns: {table.column_names})"
            )
        check_vector_type(table, column, file)
    lines = np.arange(1, table.num_rows + 1) if lines is None else lines
    keys = item_keys(
        table, file, rejects, lines, id_column, category_column, max_id_length,
        lambda row: _row(table, row),
    )  # fmt: skip
    keep = keys.keep
    per_modality = {}
    for name, column in modality_columns.items():
        vectors_k, bad_k = vectors_from_column(table.column(column), file)
        normed_k, bad_norm_k = normalize_rows(vectors_k)
        bad_k |= bad_norm_k
        for row in np.flatnonzero(keep & bad_k):
            rejects.repair(file, int(lines[row]), f"bad_vector_{name}", _row(table, row))
        per_modality[name] = (normed_k, bad_k)  # normalize_rows leaves bad rows zero
    if fused:  # the concatenation of the normalised modality vectors
        vectors = np.concatenate([v for v, _ in per_modality.values()], axis=1)
        normed, bad = normalize_rows(vectors)
    else:
        vectors, bad = vectors_from_column(table.column(vector_column), file)
        normed, bad_norm = normalize_rows(vectors)
        bad |= bad_norm
        for row in np.flatnonzero(keep & bad):
            rejects.repair(file, int(lines[row]), bad_vector_reason, _row(table, row))
    del vectors  # only the normalised float32 rows are kept
    rejects.add_used(int(keep.sum()))

    vocab, order = keys.vocab, keys.order
    mm = np.zeros((len(vocab), normed.shape[1]), dtype=np.float32)
    take_rows(normed, order, mm[FIRST_ID:])
    mm[FIRST_ID:][bad[order]] = 0.0
    category_vocab, category_index = category_table(vocab, keys.raw_category)
    modalities = {}
    for name, (normed_k, _) in per_modality.items():
        modalities[name] = np.zeros((len(vocab), normed_k.shape[1]), dtype=np.float32)
        take_rows(normed_k, order, modalities[name][FIRST_ID:])
    sources = {name: f"{file}:{column}" for name, column in modality_columns.items()}
    if fused:
        source = source or "concat(" + ", ".join(sources.values()) + ")"
    source = source or f"{file}:{vector_column}"
    return ItemTable(vocab, mm, source, category_vocab, category_index, modalities, sources)


def take_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray, chunk: int = 1 << 16) -> None:
    """out[k] = source[rows[k]] for (R, d) tables, in chunks: no whole-table temporary."""
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = source[rows[start : start + chunk]]


@dataclass
class ItemKeys:
    """The id side of an item table of N rows: keep (N,) bool, the rows used (a valid id, its
    first occurrence); order (V,) int64, the kept rows in vocabulary order; vocab; the raw
    category (V,) of each vocabulary item, Arrow strings ("" = none), or None without the
    column."""

    keep: np.ndarray
    order: np.ndarray
    vocab: Vocab
    raw_category: pa.Array | None


def item_keys(
    table: pa.Table,
    file: str,
    rejects: RejectLog,
    lines: np.ndarray,
    id_column: str,
    category_column: str,
    max_id_length: int,
    excerpt: Callable[[int], object],
) -> ItemKeys:
    """Read ids and categories of `table` (its other columns are not read): counts the N
    records read, rejects bad ids (not_utf8, missing_field, id_too_long) and repeated ids
    (duplicate_item, the first row wins), each with `excerpt(row)`.

    The ids stay UTF-8 in Arrow (`as_id_array`): sorted and compared by pyarrow.compute (the
    order of UTF-8 bytes is the order of code points, numpy's order of str), and only the
    vocabulary, once, becomes numpy strings (`to_str_array`)."""
    rejects.add_read(table.num_rows)
    try:
        ids = as_id_array(table.column(id_column), max_id_length)
        category = (
            as_id_array(table.column(category_column), max_id_length)
            if category_column in table.column_names
            else None
        )
    except ColumnTypeError as error:
        raise InputError(f"{file}: {error}") from None
    keep = np.ones(table.num_rows, dtype=bool)
    category_too_long = category.too_long if category is not None else np.zeros_like(keep)
    for reason, mask in (
        ("not_utf8", ids.not_utf8),
        ("missing_field", ids.missing),
        ("id_too_long", ids.too_long | category_too_long),
    ):
        for row in np.flatnonzero(keep & mask):
            rejects.reject(file, int(lines[row]), reason, excerpt(row))
        keep &= ~mask
    # One stable sort by id (Arrow's sort_indices is stable; the rows not kept, sorted too,
    # are dropped after): a repeated id follows its first row, so it is a duplicate, and the
    # kept rows come out in vocabulary order.
    values = ids.values
    del ids
    fixed = fixed_width_bytes(values)  # numpy bytes, or None: Arrow sorts and compares
    if fixed is not None:
        by_id = np.argsort(fixed[0], kind="stable")
    else:
        by_id = pc.sort_indices(values).to_numpy()
    if not keep.all():
        by_id = by_id[keep[by_id]]
    repeated = np.zeros(len(by_id), dtype=bool)
    if fixed is not None:
        del values
        for start in range(1, len(by_id), 1 << 20):  # in chunks: no (N,) temporaries
            stop = min(start + (1 << 20), len(by_id))
            repeated[start:stop] = (
                fixed[0][by_id[start:stop]] == fixed[0][by_id[start - 1 : stop - 1]]
            )
    else:
        ordered = values.take(pa.array(by_id))
        del values
        if len(by_id) > 1:
            repeated[1:] = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).to_numpy()
    duplicate = np.zeros(table.num_rows, dtype=bool)
    duplicate[by_id[repeated]] = True
    for row in np.flatnonzero(duplicate):
        rejects.reject(file, int(lines[row]), "duplicate_item", excerpt(row))
    keep &= ~duplicate
    order = by_id[~repeated]
    del by_id, duplicate
    if fixed is not None:
        width = fixed[0].itemsize  # ASCII: each byte is its code point (not astype: 30x slower)
        raw_ids = fixed[0][order].view(np.uint8).reshape(len(order), width)
        raw_ids = raw_ids.astype(np.uint32).view(f"<U{width}").reshape(len(order))
        del fixed
    else:
        raw_ids = to_str_array(ordered, np.flatnonzero(~repeated))
        del ordered
    vocab = Vocab.of_sorted(raw_ids)
    del repeated, raw_ids
    raw_category = None
    if category is not None:
        unusable = (category.missing | category.not_utf8 | category.too_long)[order]
        raw_category = category.values.take(pa.array(order))
        del category
        if unusable.any():
            raw_category = pc.if_else(
                pa.array(unusable), pa.scalar("", raw_category.type), raw_category
            )
    pa.default_memory_pool().release_unused()  # the sort's buffers, back to the OS
    return ItemKeys(keep, order, vocab, raw_category)


def check_vector_type(table: pa.Table, column: str, file: str) -> None:
    kind = table.schema.field(column).type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not (
        pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)
    ):
        raise InputError(f"{file}: column {column!r} is {kind}, expected list<float>")


def _row(table: pa.Table, row: int) -> dict[str, object]:
    return table.slice(int(row), 1).to_pylist()[0]


def save_item_arrays(out_dir: Path, items: ItemTable) -> None:
    """Write vocab/item.parquet, item_mm.npy, item_mm_<name>.npy per modality and the
    category files when present."""
    items.vocab.save(out_dir / "vocab" / "item.parquet")
    if isinstance(items.mm, np.memmap) and items.mm.dtype == np.float32 and items.mm.filename:
        # A table written to disk by item_stream.py (a .npy, as np.save writes it): moved
        # into place, not read back into memory.
        os.replace(items.mm.filename, out_dir / "item_mm.npy")
    else:
        np.save(out_dir / "item_mm.npy", items.mm.astype(np.float32))
    for name, table in items.modalities.items():
        np.save(out_dir / modality_file(name), table.astype(np.float32))
    if items.category_vocab is not None and items.category is not None:
        items.category_vocab.save(out_dir / "vocab" / "category.parquet")
        np.save(out_dir / "item_category.npy", items.category.astype(np.int64))


def modality_file(name: str) -> str:
    """The file of modality `name`'s item table, relative to the prepared folder."""
    return f"item_mm_{name}.npy"
