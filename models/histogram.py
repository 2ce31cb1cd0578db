"""Similarity histogram, the modality-centric arch (SIMTIER-style), and its bins.

Bins (`SimilarityBins`, chosen by the models' `histogram_edges` setting):
- "uniform": `num_bins` equal bins over [-1, 1] (the paper's and SIMTIER's tiers);
- "range": `num_bins` equal bins over the training similarities' central range, from the
  first to the last equal-frequency bucket boundary (the 1/M and (M-1)/M quantiles), the
  tails falling into the end bins. Text encoders put most similarities in a narrow band
  (MiniLM on Amazon titles: 5-95% in about -0.03 .. 0.5, i.e. 7 of 20 uniform bins);
- "quantile": the M equal-frequency buckets of the training similarities themselves
  (the data's bucket boundaries), so every bin holds about as many training pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from models import cpu_ops
from models.buckets import bucketize
from models.mlp import MLP

HISTOGRAM_EDGES = ("uniform", "range", "quantile")


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


class SimilarityBins(nn.Module):
    """Counts of the (B, L) similarities per bin -> (B, num_bins), padding excluded.

    edges: "uniform", "range" or "quantile" (module docstring); boundaries: the data's
    M-1 equal-frequency bucket boundaries (FeatureSpec.bucket_boundaries), read by "range"
    and "quantile".

    >>> bins = SimilarityBins("range", 4, boundaries=(0.0, 0.1, 0.4))
    >>> bins.num_bins, bins.edges.tolist()
    (4, [0.10000000149011612, 0.20000000298023224, 0.30000001192092896])
    >>> bins(torch.tensor([[-0.5, 0.15, 0.25, 0.9]]), torch.ones(1, 4, dtype=torch.bool))
    tensor([[1., 1., 1., 1.]])
    """

    def __init__(self, edges: str, num_bins: int, boundaries: tuple[float, ...] = ()) -> None:
        super().__init__()
        if edges not in HISTOGRAM_EDGES:
            raise ValueError(f"histogram_edges must be one of {HISTOGRAM_EDGES}, got {edges!r}")
        if edges != "uniform" and len(boundaries) < 2:
            raise ValueError(f"histogram_edges={edges!r} needs at least 2 bucket boundaries")
        self.uniform = edges == "uniform"
        if edges == "quantile":
            cuts = torch.tensor(boundaries, dtype=torch.float32)
        elif edges == "range":
            lo, hi = float(min(boundaries)), float(max(boundaries))
            cuts = torch.linspace(lo, hi, num_bins + 1)[1:-1]
        else:
            cuts = torch.zeros(0)
        self.num_bins = num_bins if self.uniform else cuts.numel() + 1
        # Derived from the config and the data, so not part of checkpoints.
        self.register_buffer("edges", cuts, persistent=False)

    def forward(self, sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.uniform:
            return similarity_histogram(sims, mask, self.num_bins)
        counts = sims.new_zeros(sims.shape[0], self.num_bins)
        return counts.scatter_add_(1, bucketize(sims, self.edges), mask.to(sims.dtype))


class SimilarityHistogram(nn.Module):
    """Histogram of target-history similarities -> MLP -> (B, out_dim).

    The counts enter the MLP as log(1 + count): raw counts grow with history length
    (up to hundreds), which makes the first layer's scale depend on user activity.

    >>> arch = SimilarityHistogram(num_bins=10, hidden_dims=[16], out_dim=8)
    >>> arch(torch.rand(3, 5) * 2 - 1, torch.ones(3, 5, dtype=torch.bool)).shape
    torch.Size([3, 8])
    """

    def __init__(
        self,
        num_bins: int,
        hidden_dims: list[int],
        out_dim: int,
        edges: str = "uniform",
        boundaries: tuple[float, ...] = (),
    ) -> None:
        super().__init__()
        self.bins = SimilarityBins(edges, num_bins, boundaries)
        self.num_bins = self.bins.num_bins
        self.mlp = MLP(self.num_bins, [*hidden_dims, out_dim], final_activation=True)
        self.cpu_kernels = False  # models/cpu_ops.py uniform_histogram in `serve`

    def forward(self, sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.log1p(self.bins(sims, mask)))

    _fused = torch.jit.unused(cpu_ops.histogram_fused_method)

    def serve(self, sims: torch.Tensor) -> torch.Tensor:
        """`forward` with every position real (serving: one user, no padding), sims (B, L)."""
        if (
            not torch.jit.is_scripting()
            and self.cpu_kernels
            and self.bins.uniform
            and sims.device.type == "cpu"
            and sims.dtype == torch.float32
        ):
            return self.mlp(torch.log1p(self._fused(sims)))
        return self(sims, torch.ones_like(sims, dtype=torch.bool))
