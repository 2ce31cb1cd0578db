"""The offline sharding plan (`python -m pipeline.plan`) and the planner inputs it shares
with the trainer (pipeline/planner_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist

from pipeline.config import TrainConfig
from pipeline.plan import build_task, main, plan_offline
from pipeline.planner_inputs import (
    GB,
    PlannerInputs,
    device_memory,
    history_pooling_factor,
    pooling_factors,
    pooling_factors_for,
)
from tests.fixtures import one_rank_process_group, write_prepared

INDUSTRIAL = ["--preset", "industrial", "--users", "8700000", "--items", "20900000"]


def _exact_mean_history(files: list[Path]) -> float:
    lengths = np.concatenate(
        [
            np.diff(pq.read_table(f, columns=["hist_items"]).column(0).combine_chunks().offsets)
            for f in files
        ]
    )
    return float(lengths.mean())


def test_pooling_factors_come_from_the_shard_footers(tmp_path: Path) -> None:
    from pipeline.data import PreparedData

    data = PreparedData(write_prepared(tmp_path / "d", max_history=8, categories=True))
    files = data.split_files("train")
    assert history_pooling_factor(files) == pytest.approx(_exact_mean_history(files))
    factors = pooling_factors(data)
    assert factors["user"] == factors["item"] == factors["category"] == 1.0
    assert (
        factors["hist_item"]
        == factors["hist_category"]
        == pytest.approx(_exact_mean_history(files))
    )


def test_industrial_plan_for_64_gpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "plan.json"
    argv = ["--world-size", "64", "--device", "cuda", "--hbm-gb", "80", *INDUSTRIAL]
    assert main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "memory per rank (HBM)" in text and "estimated embedding step" in text
    record = json.loads(out.read_text())
    tables = {t["name"]: t for t in record["tables"]}
    assert tables["t_user"]["rows"] == 8_700_000 and tables["t_item"]["rows"] == 20_900_000
    assert tables["t_item"]["pooling_factors"] == [1.0, 100.0]  # target, history
    assert record["batch_size_per_rank"] == 1024 // 64
    assert record["cap_bytes_per_rank"] == 80 * GB
    assert len(record["memory_bytes_per_rank"]) == 64
    # Tables + Adam state (3 copies of 29.6M x 32 fp32 rows) spread over 64 ranks.
    table_bytes = (8_700_000 + 20_900_000) * 32 * 4 * 3
    assert 0.9 * table_bytes / 64 < record["max_memory_bytes"] < 2 * table_bytes / 64
    assert record["step_ms_max"] > 0 and record["embedding_optimizer"] == "adam"


def _task(users: int = 8_700_000, items: int = 20_900_000, device: str = "cuda"):
    config = TrainConfig.from_dict(
        {"model": "dmf", "model_args": {"embedding_dim": 32, "hidden_dim": 16, "num_heads": 2}}
    )
    return build_task(config, users, items, 0, (0.0, 0.5), torch.device(device))[0]


def test_history_pooling_factor_prices_the_step() -> None:
    def step_ms(mean_history: float) -> float:
        inputs = PlannerInputs(
            world_size=8,
            local_world_size=8,
            compute_device="cuda",
            batch_size=1024,
            hbm_cap=80 * GB,
            pooling_factors=pooling_factors_for(mean_history),
        )
        return max(plan_offline(_task(), inputs)[1].step_ms)

    # torchrec's default (one id per table) prices a 100-id history as one lookup.
    assert step_ms(100.0) > 20 * step_ms(1.0)


def test_device_memory_cap_is_honoured() -> None:
    """20.9M items x 32 fp32 x 3 (Adam) is about 8 GB: in HBM on 8 x 24 GB; on 1 x 4 GB the
    planner falls back to UVM caching (rows in host memory, a cache in HBM) within the cap."""

    def planned(world: int, gb: float):
        inputs = PlannerInputs(world, world, "cuda", 64, hbm_cap=int(gb * GB))
        return plan_offline(_task(), inputs)[1]

    roomy = planned(8, 24)
    assert {t.compute_kernel for t in roomy.tables} == {"fused"}
    assert not any(roomy.host_bytes)
    tight = planned(1, 4)
    assert {t.compute_kernel for t in tight.tables} == {"fused_uvm_caching"}
    assert max(tight.memory_bytes) <= 4 * GB and max(tight.host_bytes) > 4 * GB


def test_trainer_plans_what_the_offline_plan_plans(tmp_path: Path) -> None:
    """The trainer's collective_plan on a live world of one and the offline plan() with
    the same inputs (this machine's memory, the data's pooling factors) agree."""
    from pipeline.data import PreparedData
    from pipeline.distributed import DistEnv
    from pipeline.sharding import plan_sharding

    data = PreparedData(write_prepared(tmp_path / "d"))
    factors = pooling_factors(data)
    _, ddr = device_memory(torch.device("cpu"), 1)
    offline_inputs = PlannerInputs(1, 1, "cpu", 32, ddr_cap=ddr, pooling_factors=factors)
    offline, _ = plan_offline(_task(1000, 3000, "cpu"), offline_inputs)
    assert not dist.is_initialized()
    with one_rank_process_group(tmp_path):
        env = DistEnv(0, 1, 0, 1, torch.device("cpu"))
        live = plan_sharding(_task(1000, 3000, "cpu"), env, "auto", 32, factors)
    assert str(live) == str(offline)
