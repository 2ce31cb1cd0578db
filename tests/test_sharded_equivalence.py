"""A model sharded over 2 gloo ranks computes the same logits as the unsharded model.

Each rank builds the unsharded reference (real tables) and the sharded model (meta tables,
materialised by DistributedModelParallel through `pipeline.sharding.shard_model`), copies
the reference's weights into its shards, and scores its own part of a split with both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed._shard.sharded_tensor import ShardedTensor

from tests.fixtures import gloo_group, write_prepared

WORLD = 2
SMALL = {"embedding_dim": 8, "hidden_dim": 8, "num_heads": 2, "mlp_dims": [16]}
CASES = [("dmf", "table_wise"), ("dmf", "row_wise"), ("sasrec", "row_wise")]


def copy_weights(reference: dict[str, torch.Tensor], sharded: dict[str, torch.Tensor]) -> None:
    """Copy a full state dict into a DMP state dict in place (each rank: its own shards)."""
    with torch.no_grad():
        for key, value in sharded.items():
            full = reference[key]
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    index = tuple(
                        slice(offset, offset + size)
                        for offset, size in zip(
                            shard.metadata.shard_offsets, shard.metadata.shard_sizes
                        )
                    )
                    shard.tensor.copy_(full[index])
            else:
                value.copy_(full)


def _worker(rank: int, init: str, root: str, out: str) -> None:
    with gloo_group(rank, WORLD, init):
        from models.ctr import CTRTask
        from models.zoo import build_model, make_config
        from pipeline.data import PreparedData
        from pipeline.distributed import DistEnv
        from pipeline.sharding import ShardingSettings, shard_model
        from tests.test_models import spec_of

        data = PreparedData(root)
        spec = spec_of(data)
        env = DistEnv(rank, WORLD, rank, WORLD, torch.device("cpu"))
        batch = next(iter(data.reader("train", 24, rank=rank, world_size=WORLD)))
        results = {}
        for name, sharding_type in CASES:
            config = make_config(name, SMALL)
            torch.manual_seed(0)
            reference = CTRTask(build_model(name, spec, config))
            task = CTRTask(build_model(name, spec, config, embedding_device=torch.device("meta")))
            dmp, *_ = shard_model(
                task,
                env,
                ShardingSettings(embedding_optimizer="sgd", sharding_type=sharding_type),
                dense_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                dense_lr=0.1,
                batch_size=24,
            )
            copy_weights(reference.state_dict(), dmp.state_dict())
            with torch.no_grad():
                _, (_, sharded_logits, _) = dmp(batch)
                _, (_, reference_logits, _) = reference(batch)
            results[f"{name}/{sharding_type}"] = {
                "sharded": sharded_logits.tolist(),
                "reference": reference_logits.tolist(),
                "plan": str(dmp.plan),
            }
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_rank_sharded_model_equals_unsharded(tmp_path: Path) -> None:
    root = write_prepared(tmp_path / "data", categories=True, seed=4)
    ctx = mp.start_processes(
        _worker,
        args=(f"file://{tmp_path / 'rendezvous'}", str(root), str(tmp_path)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 200
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.terminate()
            pytest.fail("2-rank gloo workers did not finish in time")
    for rank in range(WORLD):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(results) == {f"{name}/{kind}" for name, kind in CASES}
        for case, result in results.items():
            kind = case.split("/")[1]
            assert kind in result["plan"], f"{case}: the plan does not use {kind}"
            sharded, reference = torch.tensor(result["sharded"]), torch.tensor(result["reference"])
            assert sharded.shape == reference.shape and sharded.numel() > 0
            torch.testing.assert_close(sharded, reference, rtol=1e-5, atol=1e-6, msg=case)
