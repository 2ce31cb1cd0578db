"""DistributedModelParallel for a CTR model: planner from the real topology, fused
embedding optimizer, Adam for the dense part."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec import optim as trec_optim
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from pipeline.distributed import DistEnv

# fbgemm's CPU kernels implement only these fused optimizers (Adam is GPU-only there).
EMBEDDING_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": trec_optim.Adam,
    "adagrad": trec_optim.Adagrad,
    "rowwise_adagrad": trec_optim.RowWiseAdagrad,
    "sgd": trec_optim.SGD,
}
CPU_EMBEDDING_OPTIMIZERS = ("adagrad", "rowwise_adagrad", "sgd")
SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise")


@dataclass
class ShardingSettings:
    """embedding_optimizer: "auto" = adam on GPU, adagrad on CPU (see EMBEDDING_OPTIMIZERS).
    sharding_type: force one sharding type for every table, or let the planner choose."""

    embedding_optimizer: str = "auto"
    embedding_lr: float | None = None  # None: the dense learning rate (adam) or 0.05 (others)
    sharding_type: str = "auto"


def resolve_embedding_optimizer(name: str, device: torch.device) -> str:
    if name == "auto":
        return "adam" if device.type == "cuda" else "adagrad"
    if name not in EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"unknown embedding optimizer {name!r}; choose from {sorted(EMBEDDING_OPTIMIZERS)}"
        )
    if device.type == "cpu" and name not in CPU_EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"embedding optimizer {name!r} is not supported by fbgemm on CPU; "
            f"use one of {CPU_EMBEDDING_OPTIMIZERS}"
        )
    return name


def plan_sharding(
    model: nn.Module, env: DistEnv, sharding_type: str, batch_size: int
) -> ShardingPlan:
    """Plan with EmbeddingShardingPlanner on the real topology (same plan on every rank)."""
    if sharding_type not in SHARDING_TYPES:
        raise ValueError(f"unknown sharding type {sharding_type!r}; choose from {SHARDING_TYPES}")
    constraints = None
    if sharding_type != "auto":
        names = [
            config.name
            for module in model.modules()
            if hasattr(module, "embedding_configs")
            for config in module.embedding_configs()
        ]
        value = ShardingType[sharding_type.upper()].value
        constraints = {name: ParameterConstraints(sharding_types=[value]) for name in names}
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=env.world_size, local_world_size=env.local_world_size),
        kernel_config=KernelConfig(compute_device=env.device.type),
    )
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=batch_size, constraints=constraints
    )
    return planner.collective_plan(model, [EmbeddingCollectionSharder()], dist.GroupMember.WORLD)


def shard_model(
    task: nn.Module,
    env: DistEnv,
    settings: ShardingSettings,
    dense_optimizer: Callable[[Any], torch.optim.Optimizer],
    dense_lr: float,
    batch_size: int,
) -> tuple[DistributedModelParallel, CombinedOptimizer, KeyedOptimizerWrapper, str]:
    """Shard `task` (a CTRTask whose tables may be on the meta device).

    dense_optimizer: builds the optimizer of the dense (replicated) parameters.
    Returns the DMP module, the combined optimizer (fused embedding optimizer + dense
    optimizer), the dense keyed optimizer (for learning-rate schedules and checkpoint
    loading) and the embedding optimizer's name.
    """
    opt_name = resolve_embedding_optimizer(settings.embedding_optimizer, env.device)
    embedding_lr = settings.embedding_lr or (dense_lr if opt_name == "adam" else 0.05)
    sparse = task.model.sparse_arch
    apply_optimizer_in_backward(
        EMBEDDING_OPTIMIZERS[opt_name], sparse.parameters(), {"lr": embedding_lr}
    )
    plan = plan_sharding(task, env, settings.sharding_type, batch_size)
    model = DistributedModelParallel(module=task, device=env.device, plan=plan)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(model.named_parameters())), dense_optimizer
    )
    combined = CombinedOptimizer([model.fused_optimizer, dense])
    return model, combined, dense, opt_name
