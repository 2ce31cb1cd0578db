"""The batched Parquet item reader (data_prep/item_stream.py) and the block reads of the build
tasks (data_prep/item_rows.py) against the whole-table forms they replace."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import item_stream
from data_prep.item_rows import NpyRows
from data_prep.items import read_item_table
from data_prep.rejects import InputError, RejectLog


def messy_items(
    path, first_rows_without_vector: int = 0, first_rows_short: int = 0, value_type=None
):
    """Items with every kind of bad row: repeated, missing, too-long and non-UTF-8 ids, null,
    short, zero, NaN vectors, float64 values; the first rows possibly without a vector."""
    rng = np.random.default_rng(0)
    ids, vectors, categories = [], [], []
    for i in range(200):
        ids.append(f"i{rng.integers(150)}")  # repeats
        vectors.append(rng.normal(size=3).tolist())
        categories.append(None if i % 7 == 0 else f"c{i % 4}")
    for i in range(first_rows_without_vector):
        vectors[i] = None
    for i in range(first_rows_short):  # the first batch's most common length is not the file's
        vectors[i] = [1.0, 2.0]
    ids[10], ids[11], ids[12] = None, "", "x" * 300
    vectors[20], vectors[21], vectors[22], vectors[23] = (
        None,
        [1.0],
        [0.0, 0.0, 0.0],
        [np.nan, 1, 2],
    )
    table = pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "category": pa.array(categories, pa.string()),
            "mm_vector": pa.array(vectors, pa.list_(value_type or pa.float64())),
        }
    )
    pq.write_table(table, path, row_group_size=64)
    return table


@pytest.mark.parametrize(
    "without_vector, short, value_type",
    [(0, 0, pa.float64()), (40, 0, pa.float64()), (0, 16, pa.float64()), (0, 0, pa.float32())],
)
def test_batched_reader_equals_the_whole_table_reader(
    tmp_path, monkeypatch, without_vector, short, value_type
):
    table = messy_items(tmp_path / "items.parquet", without_vector, short, value_type)
    monkeypatch.setattr(item_stream, "BATCH_ROWS", 16)  # many batches
    monkeypatch.setattr(item_stream, "WINDOW_ROWS", 10)  # many output windows
    with RejectLog(tmp_path / "whole.jsonl", False) as whole_log:
        whole = read_item_table(table, "items.parquet", whole_log)
    with RejectLog(tmp_path / "batched.jsonl", False) as batched_log:
        batched = item_stream.read_item_parquet(
            tmp_path / "items.parquet", tmp_path / "spill" / "item_mm.npy", batched_log
        )
    assert np.array_equal(whole.vocab.raw_ids, batched.vocab.raw_ids)
    assert whole.mm.tobytes() == np.asarray(batched.mm).tobytes()
    assert np.array_equal(whole.category, batched.category)
    assert whole.mm_source == batched.mm_source
    assert whole_log.as_manifest() == batched_log.as_manifest()
    assert (tmp_path / "whole.jsonl").read_bytes() == (tmp_path / "batched.jsonl").read_bytes()
    assert batched_log.as_manifest()["repaired"]["bad_vector"] >= 4
    assert not (tmp_path / "spill" / "item_mm.npy.windows").exists()


def test_batched_reader_names_a_table_without_vectors(tmp_path):
    pq.write_table(
        pa.table({"item_id": ["a"], "mm_vector": pa.array([None], pa.list_(pa.float32()))}),
        tmp_path / "t.parquet",
    )
    with (
        RejectLog(tmp_path / "r.jsonl", False) as log,
        pytest.raises(InputError, match="t.parquet: no item has a vector"),
    ):
        item_stream.read_item_parquet(tmp_path / "t.parquet", tmp_path / "mm.npy", log)


def test_npy_rows_fetch_equals_fancy_indexing(tmp_path):
    table = np.random.default_rng(1).normal(size=(1000, 5)).astype(np.float32)
    np.save(tmp_path / "t.npy", table)
    rows = np.unique(np.random.default_rng(2).integers(1000, size=300))
    rows = np.r_[rows, 999] if rows[-1] != 999 else rows
    assert np.array_equal(NpyRows(tmp_path / "t.npy").fetch(rows), table[rows])
    np.save(tmp_path / "c.npy", np.arange(1000, dtype=np.int64))
    assert np.array_equal(NpyRows(tmp_path / "c.npy").fetch(rows), rows)
    with pytest.raises(IndexError):
        NpyRows(tmp_path / "t.npy").fetch(np.array([1000]))


def reference_item_keys(table, file, rejects, lines, max_id_length=256):
    """`items.item_keys` as it was before the ids stayed in Arrow (numpy str arrays, a numpy
    stable sort), with `category_table` over numpy strings: the reference of the tests below."""
    from data_prep.columns import as_ids
    from data_prep.items import category_table

    rejects.add_read(table.num_rows)
    ids = as_ids(table.column("item_id"), max_id_length)
    category = (
        as_ids(table.column("category"), max_id_length)
        if "category" in table.column_names
        else None
    )
    keep = np.ones(table.num_rows, dtype=bool)
    too_long = ids.too_long | (category.too_long if category is not None else False)
    for reason, mask in (
        ("not_utf8", ids.not_utf8),
        ("missing_field", ids.missing),
        ("id_too_long", too_long),
    ):
        for row in np.flatnonzero(keep & mask):
            rejects.reject(file, int(lines[row]), reason, {"row": int(row)})
        keep &= ~mask
    values = np.where(keep, ids.values, "")
    by_id = np.argsort(values, kind="stable")
    by_id = by_id[keep[by_id]]
    repeated = np.r_[False, values[by_id[1:]] == values[by_id[:-1]]]
    duplicate = np.zeros(table.num_rows, dtype=bool)
    duplicate[by_id[repeated]] = True
    for row in np.flatnonzero(duplicate):
        rejects.reject(file, int(lines[row]), "duplicate_item", {"row": int(row)})
    keep &= ~duplicate
    order = by_id[~repeated]
    raw_ids = values[order]
    raw_category = None
    if category is not None:
        raw_category = category.values[order]
        raw_category[(category.missing | category.not_utf8 | category.too_long)[order]] = ""
    from data_prep.vocab import Vocab

    vocab = Vocab.of_sorted(raw_ids)
    return keep, order, vocab, category_table(vocab, raw_category)


def awkward_ids(rng, n, kind):
    """Ids with repeats, blanks, whitespace, NULs (trailing and inside), non-ASCII text,
    too-long ids, nulls; as text, binary with non-UTF-8 values, integers or dictionaries."""
    if kind == "int":
        values = [None if rng.random() < 0.05 else int(rng.integers(-50, 50)) for _ in range(n)]
        return pa.array(values, pa.int64())
    pool = ["a", "b", "a\x00", "a\x00b", "\x00", "", "  ", " a", "a ", "\t", "é", "éa", "z" * 20]
    pool += ["ab", "aa", "b\x00\x00", "ÿ", "日本", "x" * 40]
    values = []
    for _ in range(n):
        r = rng.random()
        values.append(
            None
            if r < 0.05
            else pool[int(rng.integers(len(pool)))]
            if r < 0.5
            else f"i{rng.integers(n)}"
        )
    if kind == "binary":
        raw = [None if v is None else v.encode() for v in values]
        raw[3] = b"\xff\xfe"  # not UTF-8
        return pa.array(raw, pa.binary())
    array = pa.array(values, pa.string())
    return array.dictionary_encode() if kind == "dictionary" else array


@pytest.mark.parametrize("kind", ["ascii", "ascii_wide", "text", "binary", "int", "dictionary"])
@pytest.mark.parametrize("max_id_length", [256, 30, 8])
def test_item_keys_equal_the_numpy_string_reference(tmp_path, kind, max_id_length):
    from data_prep.items import category_table, item_keys

    rng = np.random.default_rng(len(kind) * 7 + max_id_length)
    n = 3000
    ids = awkward_ids(rng, n, kind)
    if kind.startswith("ascii"):  # ASCII: the fixed-width numpy path, unless one id is long
        values = [None if rng.random() < 0.05 else f"i{rng.integers(n)}" for _ in range(n)]
        values[5] = "w" * (200 if kind == "ascii_wide" else 2)
        ids = pa.array(values)
    cats = [None if i % 9 == 0 else ["c1", "c2", "", " ", "c\x00", "ç"][i % 6] for i in range(n)]
    table = pa.table({"item_id": ids, "category": pa.array(cats, pa.string())})
    table = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])  # several chunks
    lines = np.arange(1, n + 1) * 2
    with RejectLog(tmp_path / "ref.jsonl", False) as ref_log:
        keep, order, vocab, (category_vocab, category) = reference_item_keys(
            table, "t", ref_log, lines, max_id_length
        )
    with RejectLog(tmp_path / "new.jsonl", False) as new_log:
        keys = item_keys(
            table, "t", new_log, lines, "item_id", "category", max_id_length,
            lambda row: {"row": int(row)},
        )  # fmt: skip
        new_category_vocab, new_category = category_table(keys.vocab, keys.raw_category)
    assert np.array_equal(keys.keep, keep)
    assert np.array_equal(keys.order, order)
    assert keys.vocab.raw_ids.dtype.kind == "U"
    assert keys.vocab.raw_ids.tolist() == vocab.raw_ids.tolist()
    assert np.array_equal(new_category, category)
    assert new_category_vocab.raw_ids.tolist() == category_vocab.raw_ids.tolist()
    assert (tmp_path / "ref.jsonl").read_bytes() == (tmp_path / "new.jsonl").read_bytes()
    assert ref_log.as_manifest() == new_log.as_manifest()
    assert keys.vocab.encode(vocab.raw_ids).tolist() == list(range(2, len(vocab)))
    assert new_log.as_manifest()["rejected"].get("duplicate_item", 0) > 0
