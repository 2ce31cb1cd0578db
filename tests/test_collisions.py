"""Ids beyond the vocabulary with torchrec's managed collision modules (models/collisions.py):
new ids get their own rows, in the model and through the trainer on a stream whose later
part has new users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from models.collisions import ManagedCollisions, remap_ids, spread_ids
from models.ctr import SparseArch
from models.features import FeatureSpec
from models.id_map import SPREAD_MULTIPLIER
from tests.fixtures import write_prepared

ROOT = Path(__file__).resolve().parents[1]
NEW = 1000  # the later part's users are old ids + NEW: beyond the 40-user vocabulary


def _batch(users: list[int], items: list[int]) -> KeyedJaggedTensor:
    n = len(users)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item", "hist_item"],
        values=torch.tensor(users + items + items, dtype=torch.int64),
        lengths=torch.ones(3 * n, dtype=torch.int32),
    )


def _user_map(arch: SparseArch) -> tuple[torch.Tensor, torch.Tensor]:
    module = arch.embedding_collection._managed_collision_collection._managed_collision_modules
    return module["t_user"]._mch_sorted_raw_ids, module["t_user"]._mch_remapped_ids_mapping


def test_new_ids_get_their_own_rows() -> None:
    spec = FeatureSpec(num_users=16, num_items=16, num_categories=0, bucket_boundaries=(0.0,))
    arch = SparseArch(spec, 4, managed_collisions=ManagedCollisions(eviction_interval=1))
    arch.train()
    old, new = [2, 3, 4, 5], [5000, 5001, 5002, 5003]
    for _ in range(3):
        arch(_batch(old, [2, 3, 4, 5]))
    for _ in range(2):  # the later part of the stream: users never seen before
        arch(_batch(new, [2, 3, 4, 5]))
    sorted_ids, rows = _user_map(arch)
    miss = spec.num_users - 1
    got = remap_ids(spread_ids(torch.tensor(old + new)), sorted_ids, rows, miss)
    assert miss not in got.tolist()  # none collapsed into the shared miss row
    assert len(set(got.tolist())) == len(old + new)  # a row each
    arch.eval()  # serving: admitted ids are looked up, not admitted again
    emb = arch(_batch(new, [2, 3, 4, 5]))["user"].values()
    assert len({tuple(r) for r in emb.tolist()}) == len(new)
    never = remap_ids(spread_ids(torch.tensor([9999])), sorted_ids, rows, miss)
    assert never.tolist() == [miss]


def _new_id_stream(root: Path) -> Path:
    """40 users in the vocabulary; the second train shard and the test split hold users
    id + 1000: ids unseen at prep time."""
    write_prepared(root, num_users=40, num_items=60, samples_per_split={"train": 400, "test": 80})
    manifest = json.loads((root / "manifest.json").read_text())
    for split in ("train", "test"):
        for name in manifest["splits"][split]:
            table = pq.read_table(root / name)
            users = table.column("user").to_numpy().copy()
            if split == "test" or name.endswith("00001.parquet"):
                users += NEW
            table = table.set_column(0, "user", pa.array(users))
            pq.write_table(table, root / name, row_group_size=16)
    return root


def _train(args: list[str], world: int, tmp: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world)]
        if world > 1
        else [sys.executable]
    )
    return subprocess.run(
        [*launcher, "-m", "pipeline.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_trainer_trains_a_new_id_stream_with_managed_collisions(tmp_path: Path) -> None:
    data = _new_id_stream(tmp_path / "data")
    common = ["--data", str(data), "--batch-size", "16", "--model-arg", "embedding_dim=8"]
    # Without managed collisions the reader refuses ids outside the vocabulary.
    plain = _train(
        [*common, "--output-dir", str(tmp_path / "plain"), "--max-steps", "2"], 1, tmp_path
    )
    assert plain.returncode != 0 and "outside the user table" in plain.stderr
    out = tmp_path / "mc"
    run = _train(
        [
            *common,
            "--output-dir",
            str(out),
            "--max-steps",
            "20",
            "--checkpoint-every",
            "20",
            "--model-arg",
            "managed_collisions=true",
            "--model-arg",
            "mc_eviction_interval=2",
        ],
        2,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["samples"] == 80 and np.isfinite(test["logloss"])
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(out / "checkpoints" / "step-00000020"), str(tmp_path / "full.pt"))
    model = torch.load(tmp_path / "full.pt", weights_only=False)["model"]
    prefix = next(k for k in model if k.endswith("t_user._mch_sorted_raw_ids"))[
        : -len("_mch_sorted_raw_ids")
    ]
    ids, rows = model[prefix + "_mch_sorted_raw_ids"], model[prefix + "_mch_remapped_ids_mapping"]
    admitted = ids < 2**62
    new_users = spread_ids(torch.arange(NEW, NEW + 40))  # the map holds spread ids
    assert int(torch.isin(ids[admitted], new_users).sum()) > 0  # new users got rows in training
    assert rows[admitted].unique().numel() == int(admitted.sum())  # one row each
    # Both ranks' buckets (each its half of the map) hold users: the ids, all below 41 + NEW,
    # are spread over the 62-bit space (without it they all fall in bucket 0).
    half = ids.numel() // 2
    assert int(admitted[:half].sum()) > 0 and int(admitted[half:].sum()) > 0, admitted


def test_spread_ids_is_a_bijection_that_fills_every_bucket() -> None:
    ids = torch.cat([torch.arange(100_000), torch.tensor([2**62 - 1, 2**40 + 7])])
    spread = spread_ids(ids)
    assert spread_ids(torch.tensor([1, 2**62 - 1])).tolist() == [
        SPREAD_MULTIPLIER,
        (-SPREAD_MULTIPLIER) % 2**62,
    ]  # the function's literals are the constants
    assert torch.jit.script(spread_ids)(ids).tolist() == spread.tolist()  # served as trained
    assert spread.unique().numel() == ids.numel()  # no two ids meet
    assert int(spread.min()) >= 0 and int(spread.max()) < 2**62
    for buckets in (2, 8, 64):  # torchrec's row-wise buckets: id // ceil(2^62 / buckets)
        counts = torch.bincount(spread[:100_000] // -(-(2**62) // buckets), minlength=buckets)
        assert counts.numel() == buckets
        assert counts.min() > 0.9 * 100_000 / buckets, counts  # vocabulary ids: every bucket
    spec = FeatureSpec(num_users=16, num_items=16, num_categories=0, bucket_boundaries=(0.0,))
    arch = SparseArch(spec, 4, managed_collisions=ManagedCollisions(eviction_interval=1))
    modules = arch.embedding_collection._managed_collision_collection._managed_collision_modules
    jt = JaggedTensor(values=ids[:5], lengths=torch.ones(5, dtype=torch.int32))
    seen = modules["t_user"].preprocess({"user": jt})["user"].values()
    assert seen.tolist() == spread[:5].tolist()  # what the MCH module is given
