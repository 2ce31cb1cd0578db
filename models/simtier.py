"""SIMTIER (Sheng et al. 2024): the similarity histogram as a dense feature of the head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.config import ModelConfig
from models.histogram import SimilarityBins
from models.interest import InterestInputs, State
from models.ta import IDAttentionPlus

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.features import FeatureSpec


@dataclass
class SIMTIERConfig(ModelConfig):
    """SIMTIER: TA over IDs + log(1 + similarity histogram) concatenated into the head.

    histogram_bins: tiers (uniform over [-1, 1] in the paper).
    histogram_edges: "uniform", "range" or "quantile" (models/histogram.py).
    """

    histogram_bins: int = 20
    histogram_edges: str = "uniform"


class SIMTIERInterest(IDAttentionPlus):
    """SIMTIER (Sheng et al. 2024): the similarity histogram as a dense feature of the head.

    SimTier counts the target-history similarities in N uniform tiers over [-1, 1] and feeds
    that N-vector to the downstream MLP next to the other embeddings; the ID history is
    modelled by target attention (the paper's online base model is TA + SIMTIER). Output:
    [TA interest (d_h); log(1 + counts) (N)], so out_dim = d_h + N. The log keeps the scale
    of the counts independent of history length (as in models/histogram.py). Served from
    a per-user cache (TA's K_id, V_id); the histogram per candidate.
    """

    def __init__(
        self,
        item_dim: int,
        hidden_dim: int,
        num_heads: int,
        histogram_bins: int,
        temperature: float = 1.0,
        histogram_edges: str = "uniform",
        bucket_boundaries: tuple[float, ...] = (),
    ) -> None:
        super().__init__(item_dim, hidden_dim, num_heads, temperature)
        self.bins = SimilarityBins(histogram_edges, histogram_bins, bucket_boundaries)
        self.out_dim = hidden_dim + self.bins.num_bins

    def forward(self, x: InterestInputs) -> torch.Tensor:
        counts = self.bins(x.sims, x.mask)
        return torch.cat([self.ta(x), torch.log1p(counts)], dim=-1)

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        counts = self.bins(sims, torch.ones_like(sims, dtype=torch.bool))
        return torch.cat(
            [self.ta.attend(state, history, query, sims, buckets), torch.log1p(counts)], -1
        )


def build_simtier(config: SIMTIERConfig, item_dim: int, spec: FeatureSpec) -> SIMTIERInterest:
    return SIMTIERInterest(
        item_dim,
        config.hidden_dim,
        config.num_heads,
        config.histogram_bins,
        config.temperature,
        config.histogram_edges,
        spec.bucket_boundaries,
    )
