"""What torchrec's sharding planner is told, built in one place for the trainer and the
offline plan (`python -m pipeline.plan`), so that a plan sized before a cluster exists is
the plan the trainer makes on it.

The planner's inputs besides the model:

- the topology: world size, ranks per host, compute device and the memory of one device
  (`device_memory`: the GPU's total memory, or this host's memory shared by its ranks on
  CPU; torchrec's own default is a flat 32 GB of HBM and 128 GB of DDR whatever the
  hardware);
- the per-rank batch size;
- per-table constraints: the pooling factor of every feature of the table (mean ids per
  sample: 1 for the user and the target, the mean history length for the history
  features), read from the data (`pooling_factors`); torchrec's default is 1.0 for one
  feature, which prices the 100-id history of an industrial sample as one lookup;
- optionally one sharding type forced on every table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.mc_embedding import ManagedCollisionEmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    Topology,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import BaseEmbeddingConfig
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection

from models.features import CATEGORY, HIST_CATEGORY, HIST_ITEM, ITEM, USER

SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise")
GB = 1024**3
# Features that hold one id per sample; the history features hold a sequence.
SINGLE_ID_FEATURES = (USER, ITEM, CATEGORY)
HISTORY_FEATURES = (HIST_ITEM, HIST_CATEGORY)


@dataclass(frozen=True)
class PlannerInputs:
    """Everything the planner is given besides the model.

    hbm_cap / ddr_cap: bytes of one device (GPU memory) / of one rank's host memory;
    None: torchrec's defaults (32 GB, 128 GB). pooling_factors: feature name -> mean ids
    per sample (features not named: 1.0). batch_size: samples per rank and step.
    """

    world_size: int
    local_world_size: int
    compute_device: str  # "cpu" or "cuda"
    batch_size: int
    hbm_cap: int | None = None
    ddr_cap: int | None = None
    pooling_factors: Mapping[str, float] = field(default_factory=dict)
    sharding_type: str = "auto"

    def __post_init__(self) -> None:
        if self.compute_device not in ("cpu", "cuda"):
            raise ValueError(f"compute_device must be cpu or cuda, got {self.compute_device!r}")
        if self.sharding_type not in SHARDING_TYPES:
            raise ValueError(
                f"unknown sharding type {self.sharding_type!r}; choose from {SHARDING_TYPES}"
            )
        if self.world_size < 1 or not 1 <= self.local_world_size <= self.world_size:
            raise ValueError(
                f"world_size {self.world_size}, local_world_size {self.local_world_size}: "
                "need 1 <= local_world_size <= world_size"
            )
        if self.world_size % self.local_world_size:
            raise ValueError(
                f"local_world_size {self.local_world_size} does not divide "
                f"world_size {self.world_size}"
            )


def host_memory_bytes() -> int:
    """Physical memory of this host."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory(device: torch.device, local_world_size: int) -> tuple[int | None, int]:
    """(hbm_cap, ddr_cap) of one rank on this machine: the GPU's total memory (None on
    CPU) and this host's memory divided among its ranks."""
    ddr = host_memory_bytes() // max(1, local_world_size)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, ddr
    return None, ddr


def history_pooling_factor(files: Iterable[str | Path]) -> float:
    """Mean history length over the rows of `files` (sample shards), from the Parquet
    footers only: the `hist_items` leaf column's value count (its statistics count the
    ids exactly, empty histories none; without statistics each empty history counts 1)."""
    rows = values = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        column = next(
            (
                i
                for i in range(meta.num_columns)
                if meta.schema.column(i).path.startswith("hist_items.")
            ),
            None,
        )
        if column is None:
            raise ValueError(f"{path}: no hist_items column")
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            chunk = group.column(column)
            stats = chunk.statistics
            rows += group.num_rows
            values += stats.num_values if stats is not None else chunk.num_values
    return values / rows if rows else 1.0


def pooling_factors_for(mean_history: float) -> dict[str, float]:
    """Feature -> mean ids per sample for samples whose history has `mean_history` ids.

    >>> pooling_factors_for(69.6)["hist_item"], pooling_factors_for(69.6)["user"]
    (69.6, 1.0)
    """
    factors = dict.fromkeys(SINGLE_ID_FEATURES, 1.0)
    factors.update(dict.fromkeys(HISTORY_FEATURES, max(float(mean_history), 1.0)))
    return factors


def pooling_factors(data, split: str = "train") -> dict[str, float]:
    """Pooling factors of a prepared-data folder (`pipeline.data.PreparedData`): the mean
    history length of its `split` shards (Parquet footers, no rows read)."""
    return pooling_factors_for(history_pooling_factor(data.split_files(split)))


def table_configs(model: torch.nn.Module) -> list[BaseEmbeddingConfig]:
    """Every embedding table config of the modules of `model` (once per table name)."""
    found: dict[str, BaseEmbeddingConfig] = {}
    for module in model.modules():
        if hasattr(module, "embedding_configs"):
            for config in module.embedding_configs():
                found.setdefault(config.name, config)
    return list(found.values())


def managed_tables(model: torch.nn.Module) -> set[str]:
    """Tables behind torchrec managed collision modules (models/collisions.py)."""
    return {
        config.name
        for module in model.modules()
        if isinstance(module, ManagedCollisionEmbeddingCollection)
        for config in module._managed_collision_collection.embedding_configs()
    }


def sharders_for(model: torch.nn.Module) -> list:
    """The module sharders of `model`'s embedding collections: torchrec's managed-collision
    sharder for a model with managed collisions, its EmbeddingCollection sharder else, and
    its EmbeddingBagCollection sharder (the schema's pooled features, models/pooled.py):
    one planner shards both collections."""
    if managed_tables(model):
        return [ManagedCollisionEmbeddingCollectionSharder()]
    return [EmbeddingCollectionSharder(), EmbeddingBagCollectionSharder()]


def constraints(
    tables: Iterable[BaseEmbeddingConfig], inputs: PlannerInputs, managed: set[str] = frozenset()
) -> dict[str, ParameterConstraints]:
    """Per-table constraints: one pooling factor per feature (in the table's feature
    order) and, when one is forced, the sharding type. Tables in `managed` (behind managed
    collision modules) are row-wise with the fused kernel: torchrec shards them row-wise
    only, and its perf model has no estimate for their UVM kernels on CPU."""
    sharding = (
        None
        if inputs.sharding_type == "auto"
        else [ShardingType[inputs.sharding_type.upper()].value]
    )
    out = {}
    for table in tables:
        managed_table = table.name in managed
        out[table.name] = ParameterConstraints(
            sharding_types=[ShardingType.ROW_WISE.value] if managed_table else sharding,
            compute_kernels=[EmbeddingComputeKernel.FUSED.value] if managed_table else None,
            pooling_factors=[
                float(inputs.pooling_factors.get(f, 1.0)) for f in table.feature_names
            ],
        )
    return out


def topology(inputs: PlannerInputs) -> Topology:
    return TopologyFactory.create_topology(
        TrainerConfig(
            world_size=inputs.world_size,
            local_world_size=inputs.local_world_size,
            hbm_cap_bytes=inputs.hbm_cap if inputs.compute_device == "cuda" else None,
            ddr_cap_bytes=inputs.ddr_cap,
        ),
        kernel_config=KernelConfig(compute_device=inputs.compute_device),
    )


def make_planner(
    model: torch.nn.Module, inputs: PlannerInputs, stats: list | None = None
) -> EmbeddingShardingPlanner:
    """The planner the trainer (collective_plan) and `pipeline.plan` (plan) both run.

    stats: torchrec planner Stats reporters; None = torchrec's EmbeddingStats table.
    """
    return EmbeddingShardingPlanner(
        topology=topology(inputs),
        batch_size=inputs.batch_size,
        constraints=constraints(table_configs(model), inputs, managed_tables(model)),
        stats=stats,
    )
