"""DistributedModelParallel for a CTR model: planner from the real topology, fused
embedding optimizer, Adam for the dense part.

Embedding optimizers come in two kinds (`--embedding-optimizer`):

- fused (`EMBEDDING_OPTIMIZERS`): the tables are sharded by the planner and fbgemm updates
  the rows a batch touched inside the backward pass. fbgemm's CPU kernels implement only
  exact SGD, Adagrad and row-wise Adagrad; ADAM, PARTIAL_ROWWISE_ADAM, LAMB and LARS_SGD
  are refused on CPU ("not supported in CPU mode").
- dense (`DENSE_EMBEDDING_OPTIMIZERS`, `adam_dense`): Adam on CPU. torchrec 1.8's only
  non-fused compute kernel, EmbeddingComputeKernel.DENSE, is accepted by its planner for
  DATA_PARALLEL sharding only ("DENSE kernel requires DATA_PARALLEL sharding"), and
  fbgemm-gpu-cpu 1.8.0's dense unpooled lookup (DenseTableBatchedEmbeddingBagsCodegen
  with PoolingMode.NONE, what a data-parallel EmbeddingCollection runs) returns pooled
  rows on CPU, so the sharded EmbeddingCollection fails ("split_with_sizes expects
  split_sizes to sum exactly to ..."). The dense kind therefore leaves the
  EmbeddingCollection unsharded: its nn.Embedding tables are replicated on every rank,
  DMP's DistributedDataParallel all-reduces their (dense) gradients with the dense ones,
  and a regular `torch.optim.Adam` (in a torchrec KeyedOptimizerWrapper, checkpointed like
  the dense optimizer) updates every row every step, as `nn.Embedding` + Adam does in
  PyTorch CTR libraries (FuxiCTR). `adam_sparse` is the same layout with sparse
  gradients (`nn.Embedding(sparse=True)`, which DDP all-reduces as sparse tensors over
  gloo) and `torch.optim.SparseAdam`: only the rows a batch touched are exchanged and
  updated (lazy Adam, what fbgemm's fused Adam does on GPU). Both suit tables that fit on
  one rank (Amazon: 44k rows); costs measured in docs/tuning.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec import optim as trec_optim
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from models.ctr import penalised_features
from pipeline.distributed import DistEnv
from pipeline.planner_inputs import SHARDING_TYPES as SHARDING_TYPES  # re-exported
from pipeline.planner_inputs import (
    PlannerInputs,
    device_memory,
    make_planner,
    managed_tables,
    sharders_for,
)

# fbgemm's CPU kernels implement only these fused optimizers (Adam is GPU-only there).
EMBEDDING_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": trec_optim.Adam,
    "adagrad": trec_optim.Adagrad,
    "rowwise_adagrad": trec_optim.RowWiseAdagrad,
    "sgd": trec_optim.SGD,
}
CPU_EMBEDDING_OPTIMIZERS = ("adagrad", "rowwise_adagrad", "sgd")
# Non-fused: unsharded, replicated tables, dense gradients, a regular torch optimizer.
DENSE_EMBEDDING_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam_dense": torch.optim.Adam,
    "adam_sparse": torch.optim.SparseAdam,
}
# Of these, the ones whose tables give sparse gradients (nn.Embedding(sparse=True)): only
# the rows a batch touched are all-reduced and updated (lazy Adam, like fbgemm's fused one).
SPARSE_GRADIENT_OPTIMIZERS = ("adam_sparse",)
EMBEDDING_OPTIMIZER_NAMES = tuple(sorted({*EMBEDDING_OPTIMIZERS, *DENSE_EMBEDDING_OPTIMIZERS}))


def is_dense_embedding_optimizer(name: str) -> bool:
    """True for the non-fused embedding optimizers (tables replicated, not sharded)."""
    return name in DENSE_EMBEDDING_OPTIMIZERS


@dataclass
class ShardingSettings:
    """embedding_optimizer: "auto" = adam on GPU, adagrad on CPU (see EMBEDDING_OPTIMIZERS).
    sharding_type: force one sharding type for every table, or let the planner choose."""

    embedding_optimizer: str = "auto"
    embedding_lr: float | None = None  # None: the dense learning rate (adam) or 0.05 (others)
    sharding_type: str = "auto"
    # Coupled L2 on every row of the tables at every step (adam_dense only, see
    # `resolve_embedding_weight_decay`).
    embedding_weight_decay: float = 0.0


def resolve_embedding_optimizer(name: str, device: torch.device) -> str:
    if name == "auto":
        return "adam" if device.type == "cuda" else "adagrad"
    if is_dense_embedding_optimizer(name):
        return name
    if name not in EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"unknown embedding optimizer {name!r}; choose from {list(EMBEDDING_OPTIMIZER_NAMES)}"
        )
    if device.type == "cpu" and name not in CPU_EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"embedding optimizer {name!r} is not supported by fbgemm on CPU; "
            f"use one of {CPU_EMBEDDING_OPTIMIZERS}"
        )
    return name


def resolve_embedding_weight_decay(weight_decay: float, opt_name: str) -> float:
    """The embedding weight decay, checked against the optimizer.

    It is torch Adam's coupled `weight_decay`: weight_decay x row is added to every row's
    gradient at every step, the gradient of (weight_decay / 2) x the whole table's squared
    norm, FuxiCTR's `embedding_regularizer` (nn.Embedding + torch Adam, every row updated
    every step). Only `adam_dense` updates every row; the sparse and fused optimizers
    update the rows a batch touched, where `embedding_l2` (models/ctr.py) is the penalty."""
    if weight_decay < 0:
        raise ValueError(f"embedding_weight_decay must be >= 0, got {weight_decay}")
    if weight_decay and opt_name != "adam_dense":
        raise ValueError(
            f"embedding_weight_decay (every row every step) needs embedding optimizer "
            f"'adam_dense', not {opt_name!r}: set embedding_weight_decay to 0 (the amazon "
            "preset sets it) and use embedding_l2 to penalise the rows a batch touches"
        )
    return float(weight_decay)


def plan_sharding(
    model: nn.Module,
    env: DistEnv,
    sharding_type: str,
    batch_size: int,
    pooling_factors: Mapping[str, float] | None = None,
) -> ShardingPlan:
    """Plan with EmbeddingShardingPlanner on the real topology (same plan on every rank).

    The planner's inputs are those of the offline plan (`python -m pipeline.plan`, built
    by pipeline/planner_inputs.py): this device's memory, the per-rank batch and the
    features' pooling factors (mean ids per sample; None: 1.0 each)."""
    hbm_cap, ddr_cap = device_memory(env.device, env.local_world_size)
    inputs = PlannerInputs(
        world_size=env.world_size,
        local_world_size=env.local_world_size,
        compute_device=env.device.type,
        batch_size=batch_size,
        hbm_cap=hbm_cap,
        ddr_cap=ddr_cap,
        pooling_factors=dict(pooling_factors or {}),
        sharding_type=sharding_type,
    )
    planner = make_planner(model, inputs)
    return planner.collective_plan(model, sharders_for(model), dist.GroupMember.WORLD)


def shard_model(
    task: nn.Module,
    env: DistEnv,
    settings: ShardingSettings,
    dense_optimizer: Callable[[Any], torch.optim.Optimizer],
    dense_lr: float,
    batch_size: int,
    pooling_factors: Mapping[str, float] | None = None,
) -> tuple[DistributedModelParallel, CombinedOptimizer, KeyedOptimizerWrapper, str]:
    """Shard `task` (a CTRTask whose tables may be on the meta device; with a dense
    embedding optimizer they must be real: they are not sharded).

    dense_optimizer: builds the optimizer of the dense (replicated) parameters.
    Returns the DMP module, the combined optimizer (fused embedding optimizer + dense
    optimizer, plus the embedding KeyedOptimizerWrapper with a dense embedding optimizer),
    the dense keyed optimizer (for learning-rate schedules and checkpoint loading) and the
    embedding optimizer's name.
    """
    opt_name = resolve_embedding_optimizer(settings.embedding_optimizer, env.device)
    adam_like = opt_name in ("adam", *DENSE_EMBEDDING_OPTIMIZERS)
    embedding_lr = settings.embedding_lr or (dense_lr if adam_like else 0.05)
    weight_decay = resolve_embedding_weight_decay(settings.embedding_weight_decay, opt_name)
    sparse = task.model.sparse_arch
    if is_dense_embedding_optimizer(opt_name):
        if managed_tables(task):
            raise ValueError(
                f"embedding optimizer {opt_name!r} replicates the tables unsharded; managed "
                "collisions need sharded tables: use a fused embedding optimizer"
            )
        return _replicate_model(task, env, opt_name, embedding_lr, dense_optimizer, weight_decay)
    tables = list(sparse.parameters())
    pooled = getattr(task.model, "pooled_arch", None)
    if pooled is not None:  # the EmbeddingBagCollection's tables: the same fused optimizer
        tables += list(pooled.parameters())
    apply_optimizer_in_backward(EMBEDDING_OPTIMIZERS[opt_name], tables, {"lr": embedding_lr})
    plan = plan_sharding(task, env, settings.sharding_type, batch_size, pooling_factors)
    model = DistributedModelParallel(
        module=task, device=env.device, plan=plan, sharders=sharders_for(task)
    )
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(model.named_parameters())), dense_optimizer
    )
    combined = CombinedOptimizer([model.fused_optimizer, dense])
    return model, combined, dense, opt_name


def _replicate_model(
    task: nn.Module,
    env: DistEnv,
    opt_name: str,
    embedding_lr: float,
    dense_optimizer: Callable[[Any], torch.optim.Optimizer],
    weight_decay: float = 0.0,
) -> tuple[DistributedModelParallel, CombinedOptimizer, KeyedOptimizerWrapper, str]:
    """The dense embedding optimizers: DMP with an empty plan (nothing sharded; its DDP
    wraps the whole task, tables included: DDP's static graph tolerates a table the head
    does not use, as the user table with use_user_embedding=false), a regular optimizer
    for the tables (with `weight_decay`, adam_dense's coupled L2) and the dense optimizer
    for the rest."""
    sparse = task.model.sparse_arch
    if getattr(task.model, "pooled_arch", None) is not None:
        raise ValueError(
            f"embedding optimizer {opt_name!r} replicates the EmbeddingCollection's tables; "
            "the schema's pooled features (EmbeddingBagCollection) need a fused (sharded) one"
        )
    if getattr(sparse, "managed", False):
        raise ValueError(
            f"embedding optimizer {opt_name!r} replicates plain EmbeddingCollection tables; "
            "managed collisions need a fused (sharded) one"
        )
    if any(p.is_meta for p in sparse.parameters()):
        raise ValueError(
            f"embedding optimizer {opt_name!r} replicates the tables: build them on the "
            "device, not on the meta device"
        )
    table_ids = {id(p) for p in sparse.parameters()}
    # A table none of whose features the model reads (the user table with
    # use_user_embedding=false) never gets a gradient: frozen, DDP and the optimizer skip
    # it (DDP cannot wait for a sparse gradient that never comes).
    used = set(penalised_features(task.model.over_arch))
    collection = sparse.embedding_collection
    for config in collection.embedding_configs():
        if not used & set(config.feature_names):
            collection.embeddings[config.name].weight.requires_grad_(False)
    if opt_name in SPARSE_GRADIENT_OPTIMIZERS:  # before DDP, which reads `sparse`
        for module in sparse.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = True
    model = DistributedModelParallel(module=task, device=env.device, plan=ShardingPlan(plan={}))
    named = dict(in_backward_optimizer_filter(model.named_parameters()))
    tables = {k: p for k, p in named.items() if id(p) in table_ids and p.requires_grad}
    dense = KeyedOptimizerWrapper(
        {k: p for k, p in named.items() if id(p) not in table_ids}, dense_optimizer
    )
    optimizer_cls = DENSE_EMBEDDING_OPTIMIZERS[opt_name]
    wrapper = (
        _SparseKeyedOptimizerWrapper
        if opt_name in SPARSE_GRADIENT_OPTIMIZERS
        else KeyedOptimizerWrapper
    )
    extra = {"weight_decay": weight_decay} if weight_decay else {}
    embeddings = wrapper(tables, lambda params: optimizer_cls(params, lr=embedding_lr, **extra))
    combined = CombinedOptimizer([embeddings, dense])
    return model, combined, dense, opt_name


class _SparseKeyedOptimizerWrapper(KeyedOptimizerWrapper):
    """KeyedOptimizerWrapper of parameters with sparse gradients: its dummy first step
    (state initialisation before a checkpoint is loaded in place) uses sparse zeros."""

    def init_state(self, sparse_grad_parameter_names: set[str] | None = None) -> None:
        names = (
            set(self.params) if sparse_grad_parameter_names is None else sparse_grad_parameter_names
        )
        super().init_state(names)
