"""User-interest arches: history + target -> interest vector, one per target.

Every arch takes an `InterestInputs` (padded history with mask, the target-aware
similarities and their buckets) and returns (B, out_dim). The CTR model composes one of
them with the TorchRec embeddings and the prediction head (models/ctr.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.dta import DecoupledTargetAttention
from models.fusion import ActivityGate, FixedFusion
from models.histogram import SimilarityHistogram


@dataclass
class InterestInputs:
    """Shapes: B targets, L history slots (padded), D item embedding size.

    target (B, D); history (B, L, D); mask (B, L) bool; sims (B, L) cosine similarity of
    target and history item (0 on padding); buckets (B, L) long; lengths (B,) long.
    """

    target: torch.Tensor
    history: torch.Tensor
    mask: torch.Tensor
    sims: torch.Tensor
    buckets: torch.Tensor
    lengths: torch.Tensor


class TargetAttentionInterest(nn.Module):
    """TA, DTA or DTA_non_invasive: `DecoupledTargetAttention` with the bucket terms chosen.

    >>> arch = TargetAttentionInterest(8, 16, 4, num_buckets=5)
    >>> x = InterestInputs(torch.randn(2, 8), torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool),
    ...                    torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 3]))
    >>> arch(x).shape
    torch.Size([2, 16])
    """

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

    def forward(self, x: InterestInputs) -> torch.Tensor:
        return self.attention(x.target, x.history, x.mask, x.buckets)


class DMFInterest(nn.Module):
    """DMF's user interest: DTA (r_me) and the similarity histogram (r_mc), fused by CMM.

    `alpha` fixes a (Eq. 24); `activity_gate=True` learns a from the history length.
    """

    def __init__(
        self,
        item_dim: int,
        hidden_dim: int,
        num_heads: int,
        num_buckets: int,
        histogram_bins: int,
        histogram_hidden: list[int],
        alpha: float,
        activity_gate: bool = False,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.out_dim = hidden_dim
        self.dta = DecoupledTargetAttention(
            item_dim, item_dim, hidden_dim, num_heads, num_buckets, temperature=temperature
        )
        self.histogram = SimilarityHistogram(histogram_bins, histogram_hidden, hidden_dim)
        self.fusion: nn.Module = ActivityGate(alpha) if activity_gate else FixedFusion(alpha)

    def forward(self, x: InterestInputs) -> torch.Tensor:
        r_me = self.dta(x.target, x.history, x.mask, x.buckets)
        r_mc = self.histogram(x.sims, x.mask)
        return self.fusion(r_me, r_mc, x.lengths)


class EarlyFusionInterest(nn.Module):
    """TA_early: the similarity is concatenated to each history embedding before K and V.

    K = [S; c] Wk, V = [S; c] Wv, so K and V depend on the target (no reuse at serving).
    """

    def __init__(self, item_dim: int, hidden_dim: int, num_heads: int, temperature: float = 1.0):
        super().__init__()
        self.out_dim = hidden_dim
        self.attention = DecoupledTargetAttention(
            item_dim, item_dim + 1, hidden_dim, num_heads, 0, temperature, False, False
        )

    def forward(self, x: InterestInputs) -> torch.Tensor:
        history = torch.cat([x.history, x.sims.unsqueeze(-1)], dim=-1)
        return self.attention(x.target, history, x.mask)
