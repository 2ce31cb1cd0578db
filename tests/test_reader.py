"""The Parquet -> Batch reader: exactly-once partitioning, equal steps, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.features import HIST_ITEM
from pipeline.data import DataError, PreparedData
from tests.fixtures import write_prepared


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("prepared")
    return PreparedData(write_prepared(root, samples_per_split={"train": 203, "test": 61}))


def _keys(batches) -> list[tuple[int, int, float]]:
    """(user, item, sum of history sims) identifies a fixture row."""
    out = []
    for b in batches:
        jt = b.sparse_features[HIST_ITEM]
        # float64 sums: a float32 sum's rounding depends on the slice's place in memory
        sims = torch.split(b.hist_sims.double(), jt.lengths().tolist())
        for u, i, s in zip(b.users().tolist(), b.sparse_features["item"].values().tolist(), sims):
            out.append((u, i, round(float(s.sum()), 5)))
    return out


def _all_rows(data: PreparedData, split: str) -> list[tuple[int, int, float]]:
    rows = []
    for f in data.split_files(split):
        t = pq.read_table(f).to_pylist()
        rows += [(r["user"], r["item"], round(float(np.sum(r["hist_sims"])), 5)) for r in t]
    return rows


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_each_sample_read_exactly_once_across_ranks(data, world_size, shuffle):
    readers = [
        data.reader("train", 16, rank=r, world_size=world_size, shuffle=shuffle, seed=3)
        for r in range(world_size)
    ]
    seen = [row for reader in readers for row in _keys(reader.iter_batches(epoch=1))]
    assert sorted(seen) == sorted(_all_rows(data, "train"))
    # DMP runs collectives every step: every rank must take the same number of steps.
    steps = {len(list(reader.iter_batches(epoch=1))) for reader in readers}
    assert steps == {len(readers[0])}


def test_batches_respect_batch_size(data):
    reader = data.reader("train", 16, rank=1, world_size=2)
    sizes = [b.batch_size for b in reader.iter_batches()]
    assert max(sizes) <= 16 and min(sizes) > 0


def test_shuffle_is_deterministic_by_seed_and_epoch(data):
    def order(seed: int, epoch: int) -> list:
        reader = data.reader("train", 16, rank=0, world_size=2, shuffle=True, seed=seed)
        return _keys(reader.iter_batches(epoch))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_start_batch_resumes_at_the_same_position(data):
    reader = data.reader("train", 16, rank=0, world_size=2, shuffle=True, seed=5)
    full = list(reader.iter_batches(epoch=2))
    tail = list(reader.iter_batches(epoch=2, start_batch=3))
    assert _keys(tail) == _keys(full[3:])


def test_history_and_similarities_stay_aligned(data):
    batch = next(data.reader("test", 64).iter_batches())
    jt = batch.sparse_features[HIST_ITEM]
    assert batch.hist_sims.shape == jt.values().shape
    mm = torch.from_numpy(np.array(data.item_mm))  # a writable copy of the read-only memmap
    targets = batch.sparse_features["item"].values().repeat_interleave(jt.lengths().long())
    expected = (mm[targets] * mm[jt.values()]).sum(-1)
    torch.testing.assert_close(batch.hist_sims, expected, atol=1e-5, rtol=0)


def test_categories_become_kjt_keys(tmp_path: Path):
    data = PreparedData(write_prepared(tmp_path, categories=True))
    batch = next(data.reader("train", 8).iter_batches())
    kjt = batch.sparse_features
    assert kjt.keys() == ["user", "item", "hist_item", "category", "hist_category"]
    assert torch.equal(kjt["hist_category"].lengths(), kjt["hist_item"].lengths())


def test_missing_manifest_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match="no manifest"):
        PreparedData(tmp_path)


def test_a_reader_decodes_only_the_columns_its_batches_get(tmp_path: Path, monkeypatch):
    """The shards hold `ts` and the behaviour times; a model that reads no times gets
    readers that never decode them (`PreparedData.history_extras_for`), DMAE's readers do,
    and the batches of both are otherwise the same."""
    from models.dmae import DMAEInterest
    from models.interest import InterestArch

    data = PreparedData(write_prepared(tmp_path / "d", categories=True, times=True))
    plain, timed = InterestArch(), DMAEInterest.__new__(DMAEInterest)
    timed.needs_times, timed.needs_modality_sims = True, False
    assert not data.history_extras_for(plain).times and data.history_extras_for(timed).times
    read: list[list[str]] = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        table = original(self, i, columns=columns, **kwargs)
        read.append(table.column_names)
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    batches = {}
    for name, arch in (("plain", plain), ("timed", timed)):
        read.clear()
        reader = data.reader("train", 8, extras=data.history_extras_for(arch))
        batches[name] = list(reader.iter_batches(0))
        assert read and all("ts" not in cols for cols in read)
        assert all(("hist_ts_delta" in cols) == (name == "timed") for cols in read)
    assert all(b.hist_times is None for b in batches["plain"])
    assert all(b.hist_times is not None for b in batches["timed"])
    for a, b in zip(batches["plain"], batches["timed"], strict=True):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.hist_sims, b.hist_sims)
