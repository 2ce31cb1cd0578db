"""Scale-out pieces: user partitioning, user blocks, process pool, torch.distributed ranks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.__main__ import main
from data_prep.events import Events
from data_prep.partitions import user_blocks
from data_prep.scatter import user_partition


def test_user_partition_is_stable_and_balanced():
    ids = np.array([f"user-{i}" for i in range(20_000)])
    part = user_partition(ids, 8)
    assert np.array_equal(part, user_partition(ids[::-1], 8)[::-1])  # depends on the id only
    assert user_partition(np.array(["a", "user-1", "é"]), 1000).tolist() == [505, 766, 767]
    assert user_partition(np.array(["a"]), 1000).tolist() == [505]  # whatever else is in the batch
    counts = np.bincount(part, minlength=8)
    assert counts.min() > 0.9 * len(ids) / 8


def test_user_blocks_hold_whole_users():
    user = np.repeat(np.arange(6), [3, 1, 5, 2, 2, 1])
    events = Events(user, user, user, user.astype(np.int8))
    blocks = list(user_blocks(events, 4))
    assert [b.user.tolist() for b in blocks] == [
        [0, 0, 0, 1],
        [2, 2, 2, 2, 2],
        [3, 3, 4, 4],
        [5],
    ]


def _prepared(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.multiprocess
def test_synthetic_industrial_with_a_process_pool(tmp_path):
    main(["synthetic-industrial", "--out", str(tmp_path / "ind"), "--samples", "20000", "--users", "100",
          "--items", "2000", "--files", "3", "--history", "100", "--partitions", "3", "--workers", "2"])  # fmt: skip
    manifest = _prepared(tmp_path / "ind")
    assert (
        sum(manifest["counts"].values()) == manifest["records"]["used"] - 2000
    )  # items are records too
    assert len(manifest["splits"]["train"]) == 3 and manifest["max_history"] == 100
    lengths = [
        len(h)
        for h in pq.read_table(tmp_path / "ind" / manifest["splits"]["train"][0])
        .column("hist_items")
        .to_pylist()
    ]
    assert max(lengths) == 100


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_ranks_match_one_process(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    main(["synthetic-industrial", "--out", str(tmp_path / "raw"), "--samples", "5000", "--users", "50",
          "--items", "500", "--files", "3", "--raw-only"])  # fmt: skip
    common = ["logs", "--interactions", str(tmp_path / "raw" / "raw" / "interactions-*.parquet"),
              "--items", str(tmp_path / "raw" / "raw" / "items.parquet"), "--partitions", "4"]  # fmt: skip
    main([*common, "--out", str(tmp_path / "one")])
    subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
         "-m", "data_prep", *common, "--out", str(tmp_path / "two"), "--distributed"],
        check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    one, two = _prepared(tmp_path / "one"), _prepared(tmp_path / "two")
    for key in ("counts", "buckets", "records", "vocab_sizes", "splits"):
        assert one[key] == two[key], key
    for paths in one["splits"].values():
        for path in paths:
            assert pq.read_table(tmp_path / "one" / path).equals(
                pq.read_table(tmp_path / "two" / path)
            )
    shutil.rmtree(tmp_path / "raw")


@pytest.mark.slow
def test_bench_scale_reports(tmp_path):
    from data_prep.bench_scale import main as bench

    report = bench(["--out", str(tmp_path / "b"), "--samples", "50000", "--users", "200", "--items", "5000",
                    "--files", "2", "--partitions", "2", "--workers", "1"])  # fmt: skip
    assert (
        report["rows"] > 45_000
        and report["rows_per_cpu_s"] > 0
        and report["projected_target_s"] > 0
    )
    assert not (tmp_path / "b").exists()
