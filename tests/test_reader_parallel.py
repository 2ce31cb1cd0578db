"""The reader with DataLoader workers (pipeline/loader.py): the same batches as the
synchronous reader, exactly once per epoch across ranks, exact resume positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.features import HIST_ITEM
from pipeline.data import PreparedData
from pipeline.loader import (
    SPARE_SLOTS,
    SharedArena,
    columns_to_batch,
    iter_windows,
    pack_window,
    table_columns,
    window_batches,
)
from tests.fixtures import write_prepared
from tests.test_reader import _all_rows


def _keys(batches) -> list[tuple[int, int, float]]:
    """(user, item, sum of history sims) per row, summed in float64 as _all_rows does (a
    float32 sum's rounding depends on where the slice sits in memory)."""
    out = []
    for b in batches:
        lengths = b.sparse_features[HIST_ITEM].lengths().tolist()
        sims = torch.split(b.hist_sims.double(), lengths)
        items = b.sparse_features["item"].values().tolist()
        for u, i, s in zip(b.users().tolist(), items, sims):
            out.append((u, i, round(float(s.sum()), 5)))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """203 train rows in row groups of 16 (windows of 2 groups: 32 rows), with categories."""
    root = tmp_path_factory.mktemp("prepared")
    return PreparedData(
        write_prepared(
            root, samples_per_split={"train": 203, "test": 61}, categories=True, max_history=6
        )
    )


def _reader(data: PreparedData, **kwargs):
    settings = {"shuffle": True, "seed": 5, "shuffle_buffer_row_groups": 2, **kwargs}
    batch = settings.pop("batch_size", 24)  # > a row group: batches span windows
    return data.reader("train", batch, **settings)


def _tensors(batch) -> tuple:
    kjt = batch.sparse_features
    return (
        tuple(kjt.keys()),
        kjt.values().tolist(),
        kjt.lengths().tolist(),
        batch.hist_sims.tolist(),
        batch.labels.tolist(),
    )


def _epoch(reader, epoch: int = 0, start: int = 0) -> list[tuple]:
    return [_tensors(b) for b in reader.iter_batches(epoch, start_batch=start)]


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
@pytest.mark.parametrize("shuffle", [True, False])
def test_workers_give_the_synchronous_batches(data: PreparedData, shuffle: bool) -> None:
    for rank in range(2):
        ranks = {"rank": rank, "world_size": 2, "shuffle": shuffle}
        want = _epoch(_reader(data, **ranks), epoch=1)
        assert len(want) == len(_reader(data, **ranks))
        for workers in (1, 2):
            assert _epoch(_reader(data, num_workers=workers, **ranks), epoch=1) == want


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_exactly_once_across_ranks_with_workers(data: PreparedData) -> None:
    seen = []
    for rank in range(3):
        reader = _reader(data, rank=rank, world_size=3, num_workers=2, batch_size=8)
        seen += _keys(reader.iter_batches(epoch=2))
    assert sorted(seen) == sorted(_all_rows(data, "train"))


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_resume_positions_are_exact(data: PreparedData) -> None:
    full = _epoch(_reader(data), epoch=3)
    # 0: first; 1: a batch cut by a window edge; 5: mid-epoch; last batch.
    for start in (0, 1, 5, len(full) - 1):
        assert _epoch(_reader(data), epoch=3, start=start) == full[start:]
    assert _epoch(_reader(data, num_workers=2), epoch=3, start=5) == full[5:]
    assert _epoch(_reader(data), epoch=3, start=len(full)) == []


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_batches_held_to_the_end_keep_their_values(data: PreparedData) -> None:
    """Workers reuse shared buffers (ArenaPool): one the consumer still holds a batch of
    is never packed into again, however many batches it keeps."""
    want = _epoch(_reader(data, batch_size=4), epoch=1)
    held = list(_reader(data, num_workers=1, batch_size=4).iter_batches(1))
    assert [_tensors(b) for b in held] == want


def _window_in_arena(index: int, empty) -> dict[str, np.ndarray]:
    """Window `index`: 1000 int64s of value index, and where the worker packed them (the
    start of its arena's buffer, 0 outside one)."""
    values = empty(1000, np.int64)
    values[:] = index
    buffer = empty.buffer if isinstance(empty, SharedArena) else None
    start = buffer.data_ptr() if buffer is not None else 0
    return {"values": values, "buffer": np.array([start], np.int64)}


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_workers_reuse_the_buffers_the_consumer_released() -> None:
    # Releasing each window as the next comes: after the first (sizes unknown), every window is
    # packed into one of a few pooled buffers (at most the prefetched ones and the one in use).
    stream = iter_windows(_window_in_arena, range(12), num_workers=1)
    seen = [(int(w["buffer"][0]), int(w["values"][0])) for w in stream]
    starts = [start for start, _ in seen]
    assert starts[0] == 0 and 0 not in starts[1:]
    assert len(set(starts[1:])) <= 4
    assert [value for _, value in seen] == list(range(12))
    # Holding every window: no buffer is reused while held (they are all still intact above),
    # so once the pool's slots are taken the worker packs into fresh segments again.
    held = list(iter_windows(_window_in_arena, range(12), num_workers=1))
    assert all((w["values"] == i).all() for i, w in enumerate(held))
    assert len({int(w["buffer"][0]) for w in held} - {0}) == 2 + SPARE_SLOTS  # prefetch 2


def test_order_depends_on_seed_and_epoch(data: PreparedData) -> None:
    a, b = _epoch(_reader(data), epoch=0), _epoch(_reader(data), epoch=1)
    assert a != b
    assert _epoch(_reader(data, seed=6), epoch=0) != a
    assert _epoch(_reader(data), epoch=0) == a


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_stopping_early_stops_the_workers(data: PreparedData) -> None:
    reader = _reader(data, num_workers=2, batch_size=4)
    stream = reader.iter_batches(0)
    first = [next(stream) for _ in range(3)]
    stream.close()  # what the trainer's segment loop does at a segment end
    assert [_tensors(b) for b in first] == _epoch(_reader(data, batch_size=4))[:3]


def test_packed_batches_equal_the_table_conversion(data: PreparedData) -> None:
    """pack_window's whole batches and fragments hold the rows columns_to_batch makes."""
    import pyarrow.parquet as pq

    table = pq.read_table(data.split_files("train")[0])
    cols = table_columns(table, has_categories=True)
    n = table.num_rows
    order = np.random.default_rng(0).permutation(n)
    bounds = np.array([0, 10, 40, 41, n + 20], np.int64)  # the last batch leaves the window
    packed = pack_window(cols, 0, bounds, 1, True, order)
    assert packed["batches"][:, 0].tolist() == [1, 2] and packed["fragments"].tolist() == [3]
    taken = table.take(order)
    from pipeline.data import table_to_batch
    from pipeline.loader import _batch_of

    for row in packed["batches"]:
        b = int(row[0])
        want = table_to_batch(taken.slice(bounds[b], bounds[b + 1] - bounds[b]), True)
        assert _tensors(_batch_of(packed, row, True)) == _tensors(want)
    fragment = {k.split(".", 1)[1]: v for k, v in packed.items() if k.startswith("frag0.")}
    want = table_to_batch(taken.slice(41), True)
    assert _tensors(columns_to_batch(fragment, True)) == _tensors(want)
    assert window_batches(50, 30, np.array([0, 40, 60, 100]), 0) == [
        (1, 0, 10, False),
        (2, 10, 30, False),
    ]


def test_pinned_batches_only_with_cuda(data: PreparedData) -> None:
    if not torch.cuda.is_available():
        pytest.skip("pinning needs a CUDA device")
    batch = next(_reader(data, pin_memory=True).iter_batches(0))
    assert batch.sparse_features.values().is_pinned() and batch.labels.is_pinned()


def test_reader_keeps_rows_of_files_with_several_row_groups(tmp_path: Path) -> None:
    data = PreparedData(write_prepared(tmp_path / "d", row_group_size=7))
    rows = [k for b in data.reader("train", 13).iter_batches() for k in _keys([b])]
    assert sorted(rows) == sorted(_all_rows(data, "train"))


def test_bench_reader_reports_rates_and_the_machine_ceiling(
    data: PreparedData, tmp_path: Path
) -> None:
    from pipeline import bench_reader

    out = tmp_path / "reader.json"
    argv = ["--data", str(data.root), "--batch-size", "16", "--workers", "0,2", "--repeat", "1",
            "--max-batches", "3", "--ceiling-seconds", "0.2", "--json", str(out)]  # fmt: skip
    assert bench_reader.main(argv) == 0
    record = __import__("json").loads(out.read_text())
    assert set(record["samples_per_s"]) == {"0", "2"} and min(record["samples_per_s"].values()) > 0
    assert record["median_run"]["2"]["batches"] == 3
    assert 0.3 < record["machine_scaling"]["2"] < 2.5
