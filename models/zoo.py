"""Models selectable by name (`--model NAME`), one config dataclass each.

    build_model("dmf", spec, {"alpha": 0.3}) -> CTRModel

Every model shares the TorchRec embeddings and the head (models/ctr.py) and differs only
in its user-interest arch, so comparisons between them are like for like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.baselines import (
    BFSInterest,
    DINInterest,
    LateFusionInterest,
    MAKEInterest,
    SASRecInterest,
    SIMTIERInterest,
    make_multimodal,
)
from models.ctr import CTRModel, OverArch, SparseArch
from models.features import FeatureSpec
from models.interest import DMFInterest, EarlyFusionInterest, TargetAttentionInterest


@dataclass
class ModelConfig:
    """Settings shared by every model (defaults: the paper's Amazon settings)."""

    embedding_dim: int = 32
    hidden_dim: int = 32
    num_heads: int = 4
    mlp_dims: list[int] = field(default_factory=lambda: [80, 40])
    temperature: float = 1.0
    use_user_embedding: bool = True


@dataclass
class TAConfig(ModelConfig):
    """TA: multi-head target attention over ID embeddings only."""


@dataclass
class DTAConfig(ModelConfig):
    """DTA alone (a = 1): bucket embeddings added to keys and values."""


@dataclass
class DTANonInvasiveConfig(ModelConfig):
    """DTA_non_invasive: bucket embeddings added to the keys only."""


@dataclass
class TAEarlyConfig(ModelConfig):
    """TA_early: the similarity concatenated to each history embedding before K and V."""


@dataclass
class DMFConfig(ModelConfig):
    """DMF: DTA + similarity histogram fused by r_u = a r_me + (1 - a) r_mc.

    activity_gate: learn a from the user's history length instead of a fixed alpha.
    """

    alpha: float = 0.3
    histogram_bins: int = 20
    histogram_hidden: list[int] = field(default_factory=lambda: [32])
    activity_gate: bool = False


@dataclass
class SASRecConfig(ModelConfig):
    """SASRec: target-agnostic causal self-attention, interest = last valid position.

    num_layers: pre-LN transformer blocks (SASRec uses 2).
    max_positions: learned position embeddings, counted back from the most recent item.
    """

    num_layers: int = 2
    max_positions: int = 200


@dataclass
class DINConfig(ModelConfig):
    """DIN: activation unit MLP([q, s, q*s, q-s]) -> unnormalised weights, weighted sum.

    activation: "prelu" (as in the paper's Eq. 6) or "dice" (Dice-lite, models/baselines.py).
    """

    attention_dims: list[int] = field(default_factory=lambda: [80, 40])
    activation: str = "prelu"


@dataclass
class BFSMFConfig(ModelConfig):
    """BFS_MF: TWIN's behaviour feature splitting, similarity as a per-head logit term."""


@dataclass
class SIMTIERConfig(ModelConfig):
    """SIMTIER: TA over IDs + log(1 + similarity histogram) concatenated into the head."""

    histogram_bins: int = 20


@dataclass
class MAKEConfig(ModelConfig):
    """MAKE: TA over IDs + a multimodal module pre-trained on the CTR task first.

    pretrain_epochs: epochs of stage 1 (`models.baselines.make_pretrain_model`; paper: 10),
        run by the trainer before the CTR training; 0 skips pre-training.
    mm_hidden, mm_dim: the multimodal module's MLP.
    """

    pretrain_epochs: int = 10
    mm_hidden: list[int] = field(default_factory=lambda: [32])
    mm_dim: int = 32


@dataclass
class TALateConfig(ModelConfig):
    """TA_late: separate attention over K_sim/V_sim (linear in c) and K_id/V_id, concatenated."""


def _item_dim(config: ModelConfig, spec: FeatureSpec) -> int:
    return OverArch.item_dim(config.embedding_dim, spec)


def _ta(config: ModelConfig, spec: FeatureSpec, keys: bool, values: bool) -> nn.Module:
    return TargetAttentionInterest(
        _item_dim(config, spec),
        config.hidden_dim,
        config.num_heads,
        spec.num_buckets,
        config.temperature,
        bucket_keys=keys,
        bucket_values=values,
    )


def _dmf(config: DMFConfig, spec: FeatureSpec) -> nn.Module:
    return DMFInterest(
        _item_dim(config, spec),
        config.hidden_dim,
        config.num_heads,
        spec.num_buckets,
        config.histogram_bins,
        config.histogram_hidden,
        config.alpha,
        activity_gate=config.activity_gate,
        temperature=config.temperature,
    )


InterestFactory = Callable[[Any, FeatureSpec], nn.Module]

MODELS: dict[str, tuple[type[ModelConfig], InterestFactory]] = {
    "ta": (TAConfig, lambda c, s: _ta(c, s, keys=False, values=False)),
    "dta": (DTAConfig, lambda c, s: _ta(c, s, keys=True, values=True)),
    "dta_non_invasive": (DTANonInvasiveConfig, lambda c, s: _ta(c, s, keys=True, values=False)),
    "ta_early": (
        TAEarlyConfig,
        lambda c, s: EarlyFusionInterest(_item_dim(c, s), c.hidden_dim, c.num_heads, c.temperature),
    ),
    "dmf": (DMFConfig, _dmf),
    "sasrec": (
        SASRecConfig,
        lambda c, s: SASRecInterest(
            _item_dim(c, s), c.hidden_dim, c.num_heads, c.num_layers, c.max_positions
        ),
    ),
    "din": (
        DINConfig,
        lambda c, s: DINInterest(_item_dim(c, s), c.hidden_dim, c.attention_dims, c.activation),
    ),
    "bfs_mf": (
        BFSMFConfig,
        lambda c, s: BFSInterest(_item_dim(c, s), c.hidden_dim, c.num_heads, c.temperature),
    ),
    "simtier": (
        SIMTIERConfig,
        lambda c, s: SIMTIERInterest(
            _item_dim(c, s), c.hidden_dim, c.num_heads, c.histogram_bins, c.temperature
        ),
    ),
    "make": (
        MAKEConfig,
        lambda c, s: MAKEInterest(
            _item_dim(c, s), c.hidden_dim, c.num_heads, make_multimodal(s, c), c.temperature
        ),
    ),
    "ta_late": (
        TALateConfig,
        lambda c, s: LateFusionInterest(_item_dim(c, s), c.hidden_dim, c.num_heads, c.temperature),
    ),
}


def make_config(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The named model's config with `overrides` applied; unknown keys are an error."""
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
) -> CTRModel:
    """The named model. `embedding_device="meta"` defers table allocation to sharding."""
    config = config or make_config(name)
    interest = MODELS[name][1](config, spec)
    return CTRModel(
        SparseArch(spec, config.embedding_dim, device=embedding_device),
        OverArch(spec, interest, config.embedding_dim, config.mlp_dims, config.use_user_embedding),
    )
