"""The registry of models selectable by name (`--model NAME`); each lives in its own file.

    build_model("dmf", spec, make_config("dmf", {"alpha": 0.3})) -> CTRModel

Every model shares the TorchRec embeddings and the head (models/ctr.py) and differs only
in its user-interest arch, so comparisons between them are like for like. A model's file
holds its config dataclass (extending models/config.py's `ModelConfig`), its interest arch
(training and serving forms) and a `build_*(config, item_dim, spec)` function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from models import bfs_mf, din, dmae, dmf, dnn, make, sasrec, simtier, ta, ta_early, ta_late
from models.collisions import ManagedCollisions
from models.config import ModelConfig
from models.ctr import CTRModel, OverArch, SparseArch
from models.features import FeatureSpec
from models.interest import InterestArch
from models.pooled import PooledArch

InterestBuilder = Callable[[Any, int, FeatureSpec], InterestArch]

MODELS: dict[str, tuple[type[ModelConfig], InterestBuilder]] = {
    "ta": (ta.TAConfig, ta.build_ta),
    "dta": (ta.DTAConfig, ta.build_dta),
    "dta_non_invasive": (ta.DTANonInvasiveConfig, ta.build_dta_non_invasive),
    "ta_early": (ta_early.TAEarlyConfig, ta_early.build_ta_early),
    "ta_late": (ta_late.TALateConfig, ta_late.build_ta_late),
    "dmf": (dmf.DMFConfig, dmf.build_dmf),
    "sasrec": (sasrec.SASRecConfig, sasrec.build_sasrec),
    "din": (din.DINConfig, din.build_din),
    "bfs_mf": (bfs_mf.BFSMFConfig, bfs_mf.build_bfs_mf),
    "simtier": (simtier.SIMTIERConfig, simtier.build_simtier),
    "make": (make.MAKEConfig, make.build_make),
    "dnn": (dnn.DNNConfig, dnn.build_dnn),
    "dmae": (dmae.DMAEConfig, dmae.build_dmae),
}


def make_config(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The named model's config with `overrides` applied; unknown keys are an error.

    >>> make_config("dmf", {"alpha": 0.5}).alpha
    0.5
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    config_cls = MODELS[name][0]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(
            f"model {name!r} has no settings {sorted(unknown)}; it has {sorted(known)}"
        )
    return config_cls(**(overrides or {}))


def build_model(
    name: str,
    spec: FeatureSpec,
    config: ModelConfig | None = None,
    embedding_device: torch.device | None = None,
    world_size: int = 1,
) -> CTRModel:
    """The named model. `embedding_device="meta"` defers table allocation to sharding.
    world_size: the ranks it is sharded over (managed collisions split their id map in
    that many buckets)."""
    config = config or make_config(name)
    item_dim = OverArch.item_dim(config.embedding_dim, spec)
    interest = MODELS[name][1](config, item_dim, spec)
    pooled = None
    if spec.schema.pooled:
        if config.managed_collisions:
            raise ValueError(
                "managed collisions cover the EmbeddingCollection's ids; the schema's pooled "
                "features are vocabulary or hashed indices: train them without managed collisions"
            )
        pooled = PooledArch(spec.schema, config.embedding_dim, device=embedding_device)
    return CTRModel(
        SparseArch(
            spec,
            config.embedding_dim,
            device=embedding_device,
            managed_collisions=(
                ManagedCollisions(config.mc_eviction_interval, buckets=world_size)
                if config.managed_collisions
                else None
            ),
        ),
        OverArch(
            spec,
            interest,
            config.embedding_dim,
            config.mlp_dims,
            config.use_user_embedding,
            config.dropout,
            config.dense_dims,
        ),
        pooled,
    )
