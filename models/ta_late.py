"""TA_late (paper Fig. 4b, Table IV): ID and similarity attended separately, merged last."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.config import ModelConfig
from models.dta import masked_softmax
from models.interest import InterestInputs, State
from models.ta import IDAttentionPlus

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.features import FeatureSpec


@dataclass
class TALateConfig(ModelConfig):
    """TA_late: separate attention over K_sim/V_sim (linear in c) and K_id/V_id, concatenated."""


class LateFusionInterest(IDAttentionPlus):
    """TA_late (paper Fig. 4b, Table IV): ID and similarity attended separately, merged last.

    ID path: plain TA, K_id = S W_k, V_id = S W_v (target-agnostic, cacheable).
    Similarity path: per-position linear projections of the scalar c,
        K_sim[l] = c_l w_k,  V_sim[l] = c_l w_v + b_v   (B, L, d_h), target-aware,
    attended by its own query q W_q'. A key bias b_k would add q.b_k to every position's
    score, which the softmax cancels, so the key projection has none. The two interest
    vectors are concatenated (merged at the prediction layer): out_dim = 2 d_h.

    Served with the ID path from a per-user cache (K_id, V_id) and the similarity path per
    candidate, materialised as the paper counts it (B, L, d_h).
    """

    def __init__(
        self, item_dim: int, hidden_dim: int, num_heads: int, temperature: float = 1.0
    ) -> None:
        super().__init__(item_dim, hidden_dim, num_heads, temperature)
        self.out_dim = 2 * hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.scale = 1.0 / (self.head_dim**0.5 * temperature)
        self.sim_query = nn.Linear(item_dim, hidden_dim, bias=False)
        self.sim_key = nn.Linear(1, hidden_dim, bias=False)
        self.sim_value = nn.Linear(1, hidden_dim)

    def similarity_attention(self, target: Tensor, sims: Tensor, mask: Tensor) -> Tensor:
        """The similarity path: target (B, D), sims and mask (B, L) -> r_sim (B, d_h)."""
        c = sims.unsqueeze(-1)  # (B, L, 1)
        heads = (self.num_heads, self.head_dim)
        q = self.sim_query(target).unflatten(-1, heads)  # (B, H, dk)
        k = self.sim_key(c).unflatten(-1, heads)  # (B, L, H, dk)
        v = self.sim_value(c).unflatten(-1, heads)
        scores = torch.einsum("bhd,blhd->bhl", q, k) * self.scale
        weights = masked_softmax(scores, mask[:, None, :])
        return torch.einsum("bhl,blhd->bhd", weights, v).flatten(-2)

    def forward(self, x: InterestInputs) -> Tensor:
        return torch.cat([self.ta(x), self.similarity_attention(x.target, x.sims, x.mask)], -1)

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        r_id = self.ta.attend(state, history, query, sims, buckets)
        mask = torch.ones_like(sims, dtype=torch.bool)
        return torch.cat([r_id, self.similarity_attention(query, sims, mask)], dim=-1)


def build_ta_late(config: TALateConfig, item_dim: int, spec: FeatureSpec) -> LateFusionInterest:
    return LateFusionInterest(item_dim, config.hidden_dim, config.num_heads, config.temperature)
