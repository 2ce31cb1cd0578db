"""The parallel user vocabulary (data_prep/user_vocab.py) equals the one built whole."""

from __future__ import annotations

import numpy as np

from data_prep.scatter import user_partition
from data_prep.user_vocab import (
    partition_index,
    partition_slices,
    range_tasks,
    splitters,
    users_file,
    write_vocab,
)
from data_prep.vocab import Vocab


def test_sample_sorted_vocabulary_equals_the_whole_one(tmp_path):
    n, partitions = 1_100_000, 7  # more users than one Parquet row group (1Mi rows)
    ids = np.array([f"u{(i * 7919) % n}" for i in range(n)])
    part = user_partition(ids, partitions)
    part[part == 3] = 4  # partition 3 is empty
    (tmp_path / "clean").mkdir()
    for p in range(partitions):
        np.save(users_file(tmp_path, p), np.sort(ids[part == p]))
    cuts = splitters(tmp_path, partitions, partitions)
    results = [task.run() for task in range_tasks(tmp_path, partitions, cuts)]
    assert sum(r["count"] for r in results) == n and len(results) == len(cuts) + 1
    size = write_vocab(tmp_path, len(results), tmp_path / "user.parquet")
    whole = Vocab(ids)
    whole.save(tmp_path / "whole.parquet")
    assert size == len(whole)
    assert (tmp_path / "user.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    for p in range(partitions):
        users = np.load(users_file(tmp_path, p))
        index = partition_index(tmp_path, partition_slices(results, p))
        assert np.array_equal(index, whole.encode(users)), p


def test_one_partition_and_a_single_range(tmp_path):
    (tmp_path / "clean").mkdir()
    np.save(users_file(tmp_path, 0), np.array(["a", "b", "c"]))
    cuts = splitters(tmp_path, 1, 1)
    results = [task.run() for task in range_tasks(tmp_path, 1, cuts)]
    assert cuts == [] and write_vocab(tmp_path, 1, tmp_path / "u.parquet") == 5
    assert partition_index(tmp_path, partition_slices(results, 0)).tolist() == [2, 3, 4]
    assert Vocab.load(tmp_path / "u.parquet").raw_ids.tolist() == ["a", "b", "c"]
