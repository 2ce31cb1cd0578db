"""A checkpoint written by W ranks resumes on W' ranks (2 -> 1 and 1 -> 2, gloo, CPU).

Phase 1 (W ranks): shard the model with the trainer's `shard_model`, train a few steps,
save with the trainer's Checkpointer. Phase 2 (W' ranks, another sharding plan): load it,
then save again at once. Both checkpoints, converted to full tensors by DCP's
`dcp_to_torch_save`, must hold the same model weights and optimizer state (the fused
embedding optimizer's and the dense Adam's): what was loaded is what was saved.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.fixtures import gloo_group, write_prepared

SMALL = {"embedding_dim": 8, "hidden_dim": 8, "num_heads": 2, "mlp_dims": [16]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _phase(rank: int, world: int, port: int, data_root: str, jobs: list[tuple]) -> None:
    """Each job: (checkpoint folder, embedding optimizer, sharding type, "train" | "resume")."""
    with gloo_group(rank, world, f"tcp://127.0.0.1:{port}", timeout_s=120):
        for job in jobs:
            _job(rank, world, data_root, *job)


def _job(
    rank: int,
    world: int,
    data_root: str,
    ckpt_root: str,
    optimizer_name: str,
    sharding: str,
    mode: str,
) -> None:
    from models.ctr import CTRTask
    from models.zoo import build_model, make_config
    from pipeline.checkpoint import Checkpointer
    from pipeline.data import PreparedData
    from pipeline.distributed import DistEnv
    from pipeline.sharding import ShardingSettings, shard_model

    torch.manual_seed(0)
    data = PreparedData(data_root)
    env = DistEnv(rank, world, rank, world, torch.device("cpu"))
    model = build_model("dmf", data.feature_spec(), make_config("dmf", SMALL), torch.device("meta"))
    dmp, optimizer, dense, _ = shard_model(
        CTRTask(model),
        env,
        ShardingSettings(optimizer_name, None, sharding),
        dense_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        dense_lr=1e-2,
        batch_size=16,
    )
    checkpointer = Checkpointer(Path(ckpt_root))
    if mode == "train":
        reader = data.reader("train", 16, shuffle=True, rank=rank, world_size=world)
        for step, batch in enumerate(reader.iter_batches(0)):
            loss, _ = dmp(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step == 3:
                break
        checkpointer.save(4, dmp, optimizer, {"step": 4})
    else:
        latest = checkpointer.latest()
        progress = checkpointer.load(latest, dmp, optimizer, lazy_optimizers=(dense,))
        assert progress["step"] == 4
        Checkpointer(Path(ckpt_root + "-resaved")).save(4, dmp, optimizer, progress)


def _run(world: int, *args) -> None:
    ctx = mp.start_processes(
        _phase,
        args=(world, _free_port(), *args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.terminate()
            pytest.fail(f"{world}-rank phase did not finish in time")


def _full_state(checkpoint: Path, out: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(checkpoint), str(out))
    state = torch.load(out, weights_only=False)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("", {k: v for k, v in state.items() if not k.startswith("rng_rank")})
    return flat


def _assert_same_state(root: Path, tmp: Path) -> None:
    saved = _full_state(root / "step-00000004", tmp / f"{root.name}-a.pt")
    resaved = _full_state(Path(f"{root}-resaved") / "step-00000004", tmp / f"{root.name}-b.pt")
    assert saved.keys() == resaved.keys()
    embedding_state = [k for k in saved if "momentum" in k]
    assert embedding_state and any("exp_avg" in k for k in saved)  # both optimizers checked
    for key in saved:
        assert torch.equal(saved[key], resaved[key]), key
    # Not a fresh optimizer state: training moved it.
    assert all(saved[k].abs().sum() > 0 for k in embedding_state)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoints_resume_2_to_1_and_1_to_2(tmp_path: Path) -> None:
    """2 -> 1: row-wise Adagrad, row-wise tables; 1 -> 2: Adagrad, then the planner's own
    plan on 2 ranks. Three launches: 2 ranks train; 1 rank resumes the first and trains
    the second; 2 ranks resume the second."""
    data = str(
        write_prepared(
            tmp_path / "data",
            num_users=60,
            num_items=90,
            samples_per_split={"train": 160, "test": 20},
        )
    )
    two_to_one, one_to_two = str(tmp_path / "two-to-one"), str(tmp_path / "one-to-two")
    _run(2, data, [(two_to_one, "rowwise_adagrad", "row_wise", "train")])
    _run(
        1,
        data,
        [
            (two_to_one, "rowwise_adagrad", "auto", "resume"),
            (one_to_two, "adagrad", "auto", "train"),
        ],
    )
    _run(2, data, [(one_to_two, "adagrad", "auto", "resume")])
    _assert_same_state(Path(two_to_one), tmp_path)
    _assert_same_state(Path(one_to_two), tmp_path)


def test_optimizer_state_that_does_not_fit_is_reported(tmp_path: Path) -> None:
    """What `Checkpointer.load` checks before loading the optimizer state: entries missing
    from the checkpoint or saved with another global shape are named (the optimizer then
    starts fresh, with a warning, and the model weights are still loaded)."""
    import torch.distributed.checkpoint as dcp

    from pipeline.checkpoint import saved_world_size, unloadable

    saved = {"state": {"t": {"momentum1": torch.ones(4, 2)}, "d": {"exp_avg": torch.ones(3)}}}
    dcp.save(
        {"optimizer": saved, "rng_rank0": {"torch": torch.get_rng_state()}},
        checkpoint_id=str(tmp_path),
    )
    assert unloadable(tmp_path, saved) == []
    here = {"state": {"t": {"momentum1": torch.ones(6)}, "e": {"exp_avg": torch.ones(3)}}}
    problems = unloadable(tmp_path, here)
    assert problems == [
        "optimizer.state.t.momentum1: saved (4, 2), here (6,)",
        "optimizer.state.e.exp_avg: not in the checkpoint",
    ]
    assert saved_world_size(tmp_path) == 1
