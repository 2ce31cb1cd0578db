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


def messy_items(path, first_rows_without_vector: int = 0, first_rows_short: int = 0):
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
            "mm_vector": pa.array(vectors, pa.list_(pa.float64())),
        }
    )
    pq.write_table(table, path, row_group_size=64)
    return table


@pytest.mark.parametrize("without_vector, short", [(0, 0), (40, 0), (0, 16)])
def test_batched_reader_equals_the_whole_table_reader(tmp_path, monkeypatch, without_vector, short):
    table = messy_items(tmp_path / "items.parquet", without_vector, short)
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
