"""DMF (the paper's model): DTA (r_me) and the similarity histogram (r_mc), fused by CMM.

    r_u = a r_me + (1 - a) r_mc     (Eq. 24; `activity_gate` learns a from the activity)

Served from a per-user cache: DTA's K_id / V_id once per request; the histogram and the
bucket terms per candidate from the similarities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.config import ModelConfig
from models.dta import DecoupledTargetAttention
from models.fusion import ActivityGate, FixedFusion
from models.histogram import SimilarityHistogram
from models.interest import InterestArch, InterestInputs, State

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.features import FeatureSpec


@dataclass
class DMFConfig(ModelConfig):
    """DMF: DTA + similarity histogram fused by r_u = a r_me + (1 - a) r_mc.

    alpha: a (Eq. 24), or the gate's starting value with `activity_gate`.
    histogram_bins, histogram_hidden: the modality-centric histogram MLP.
    histogram_edges: "uniform" over [-1, 1] (the paper), "range" (uniform over the
        training similarities' central range) or "quantile" (the data's equal-frequency
        buckets); see models/histogram.py.
    activity_gate: learn a from the user's history length instead of a fixed alpha.
    """

    alpha: float = 0.3
    histogram_bins: int = 20
    histogram_hidden: list[int] = field(default_factory=lambda: [32])
    histogram_edges: str = "uniform"
    activity_gate: bool = False


class DMFInterest(InterestArch):
    """DMF's user interest (B, d_h).

    >>> arch = DMFInterest(8, 16, 4, num_buckets=5, histogram_bins=10, histogram_hidden=[8],
    ...                    alpha=0.3)
    >>> history, query = torch.randn(6, 8), torch.randn(3, 8)
    >>> sims = torch.rand(3, 6) * 2 - 1
    >>> buckets = torch.randint(0, 5, (3, 6))
    >>> arch.attend(arch.encode(history), history, query, sims, buckets).shape
    torch.Size([3, 16])
    """

    caches_user = True
    needs_sims = True
    needs_buckets = True

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
        histogram_edges: str = "uniform",
        bucket_boundaries: tuple[float, ...] = (),
    ) -> None:
        super().__init__()
        self.out_dim = hidden_dim
        self.dta = DecoupledTargetAttention(
            item_dim, item_dim, hidden_dim, num_heads, num_buckets, temperature=temperature
        )
        self.histogram = SimilarityHistogram(
            histogram_bins, histogram_hidden, hidden_dim, histogram_edges, bucket_boundaries
        )
        self.fusion: nn.Module = ActivityGate(alpha) if activity_gate else FixedFusion(alpha)

    def forward(self, x: InterestInputs) -> Tensor:
        r_me = self.dta(x.target, x.history, x.mask, x.buckets)
        r_mc = self.histogram(x.sims, x.mask)
        return self.fusion(r_me, r_mc, x.lengths)

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        return self.dta.encode(history)

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        batch, length = sims.shape
        r_me = self.dta.attend(state, query, buckets)
        r_mc = self.histogram.serve(sims)
        lengths = torch.full((batch,), length, dtype=torch.long, device=sims.device)
        return self.fusion(r_me, r_mc, lengths)


def build_dmf(config: DMFConfig, item_dim: int, spec: FeatureSpec) -> DMFInterest:
    return DMFInterest(
        item_dim,
        config.hidden_dim,
        config.num_heads,
        spec.num_buckets,
        config.histogram_bins,
        config.histogram_hidden,
        config.alpha,
        activity_gate=config.activity_gate,
        temperature=config.temperature,
        histogram_edges=config.histogram_edges,
        bucket_boundaries=spec.bucket_boundaries,
    )
