"""TA, DTA and DTA_non_invasive: target attention over the history, bucket terms chosen.

    ta               K = S Wk,              V = S Wv            (the paper's TA baseline)
    dta              K = S Wk + E_K[b(c)],  V = S Wv + E_V[b(c)] (DMF's r_me alone, a = 1)
    dta_non_invasive K = S Wk + E_K[b(c)],  V = S Wv

All three cache K_id and V_id per user at serving (models/dta.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.config import ModelConfig
from models.dta import DecoupledTargetAttention
from models.interest import InterestArch, InterestInputs, State

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.features import FeatureSpec


@dataclass
class TAConfig(ModelConfig):
    """TA: multi-head target attention over ID embeddings only."""


@dataclass
class DTAConfig(ModelConfig):
    """DTA alone (a = 1): bucket embeddings added to keys and values."""


@dataclass
class DTANonInvasiveConfig(ModelConfig):
    """DTA_non_invasive: bucket embeddings added to the keys only."""


class TargetAttentionInterest(InterestArch):
    """`DecoupledTargetAttention` as an interest arch, served from a per-user cache.

    >>> import torch
    >>> arch = TargetAttentionInterest(8, 16, 4, num_buckets=5)
    >>> x = InterestInputs(torch.randn(2, 8), torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool),
    ...                    torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 3]))
    >>> arch(x).shape
    torch.Size([2, 16])
    """

    caches_user = True

    def __init__(
        self,
        item_dim: int,
        hidden_dim: int,
        num_heads: int,
        num_buckets: int,
        temperature: float = 1.0,
        bucket_keys: bool = True,
        bucket_values: bool = True,
    ) -> None:
        super().__init__()
        self.out_dim = hidden_dim
        self.attention = DecoupledTargetAttention(
            item_dim,
            item_dim,
            hidden_dim,
            num_heads,
            num_buckets,
            temperature=temperature,
            bucket_keys=bucket_keys,
            bucket_values=bucket_values,
        )
        self.needs_sims = self.needs_buckets = self.attention.has_buckets

    def forward(self, x: InterestInputs) -> Tensor:
        return self.attention(x.target, x.history, x.mask, x.buckets)

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        return self.attention.encode(history)

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        return self.attention.attend(state, query, buckets)


class IDAttentionPlus(InterestArch):
    """Base of the arches that add a similarity path to plain ID target attention (SIMTIER,
    MAKE, TA_late): `self.ta` is that attention, and its K_id / V_id are the per-user cache.
    Subclasses implement `forward` and `attend` (which calls `self.ta.attend`)."""

    caches_user = True
    needs_sims = True

    def __init__(self, item_dim: int, hidden_dim: int, num_heads: int, temperature: float) -> None:
        super().__init__()
        self.ta = TargetAttentionInterest(
            item_dim, hidden_dim, num_heads, 0, temperature, bucket_keys=False, bucket_values=False
        )

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        return self.ta.encode(history)


def build_ta(config: TAConfig, item_dim: int, spec: FeatureSpec) -> TargetAttentionInterest:
    return TargetAttentionInterest(
        item_dim, config.hidden_dim, config.num_heads, 0, config.temperature, False, False
    )


def build_dta(config: DTAConfig, item_dim: int, spec: FeatureSpec) -> TargetAttentionInterest:
    return TargetAttentionInterest(
        item_dim, config.hidden_dim, config.num_heads, spec.num_buckets, config.temperature
    )


def build_dta_non_invasive(
    config: DTANonInvasiveConfig, item_dim: int, spec: FeatureSpec
) -> TargetAttentionInterest:
    return TargetAttentionInterest(
        item_dim,
        config.hidden_dim,
        config.num_heads,
        spec.num_buckets,
        config.temperature,
        bucket_values=False,
    )
