"""Similarity histogram, the modality-centric arch (SIMTIER-style)."""

from __future__ import annotations

import torch
from torch import nn

from models.mlp import MLP


def similarity_histogram(sims: torch.Tensor, mask: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Counts of similarities in `num_bins` uniform bins over [-1, 1], padding excluded.

    sims (B, L), mask (B, L) bool -> (B, num_bins) float counts.

    >>> similarity_histogram(torch.tensor([[-1.0, 0.1, 1.0, 0.3]]),
    ...                      torch.tensor([[True, True, True, False]]), 4)
    tensor([[1., 0., 1., 1.]])
    """
    bins = ((sims.clamp(-1.0, 1.0) + 1.0) * (num_bins / 2.0)).long().clamp_(max=num_bins - 1)
    counts = sims.new_zeros(sims.shape[0], num_bins)
    return counts.scatter_add_(1, bins, mask.to(sims.dtype))


class SimilarityHistogram(nn.Module):
    """Histogram of target-history similarities -> MLP -> (B, out_dim).

    The counts enter the MLP as log(1 + count): raw counts grow with history length
    (up to hundreds), which makes the first layer's scale depend on user activity.

    >>> arch = SimilarityHistogram(num_bins=10, hidden_dims=[16], out_dim=8)
    >>> arch(torch.rand(3, 5) * 2 - 1, torch.ones(3, 5, dtype=torch.bool)).shape
    torch.Size([3, 8])
    """

    def __init__(self, num_bins: int, hidden_dims: list[int], out_dim: int) -> None:
        super().__init__()
        self.num_bins = num_bins
        self.mlp = MLP(num_bins, [*hidden_dims, out_dim], final_activation=True)

    def forward(self, sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.log1p(similarity_histogram(sims, mask, self.num_bins)))
