"""TA_early (paper Fig. 4a): the similarity is concatenated to each history embedding.

    K = [S; c] Wk,  V = [S; c] Wv      (B, L, d_h): target-aware, per candidate

`forward` is that definition (and the per-candidate serving form). The cached serving
form rewrites it exactly: [S; c] W^T = S W_S^T + c w_c^T, a rank-1 target-aware term,

    scores[h, b, l] = q[h,b]·K_id[h,l] + c[b,l] (q[h,b]·w_kc[h])
    out[h, b]       = α[h,b] V_id[h] + (Σ_l α[h,b,l] c[b,l]) w_vc[h]

at O(L d^2) per user plus O(B L d) per request.
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
class TAEarlyConfig(ModelConfig):
    """TA_early: the similarity concatenated to each history embedding before K and V."""


class EarlyFusionInterest(InterestArch):
    """TA_early's interest (B, d_h).

    >>> arch = EarlyFusionInterest(8, 16, 4)
    >>> history, query, sims = torch.randn(5, 8), torch.randn(3, 8), torch.rand(3, 5)
    >>> cached = arch.attend(arch.encode(history), history, query, sims, torch.empty(0))
    >>> per_candidate = InterestArch.attend(arch, {}, history, query, sims, torch.empty(0))
    >>> torch.allclose(cached, per_candidate, atol=1e-6)
    True
    """

    caches_user = True
    needs_sims = True

    def __init__(self, item_dim: int, hidden_dim: int, num_heads: int, temperature: float = 1.0):
        super().__init__()
        self.out_dim = hidden_dim
        self.attention = DecoupledTargetAttention(
            item_dim, item_dim + 1, hidden_dim, num_heads, 0, temperature, False, False
        )

    def forward(self, x: InterestInputs) -> Tensor:
        history = torch.cat([x.history, x.sims.unsqueeze(-1)], dim=-1)
        return self.attention(x.target, history, x.mask)

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        """K_id, V_id from the ID columns of W_k, W_v: k_t (H, dk, L), v (H, L, dk)."""
        att = self.attention
        k = history @ att.w_k.weight[:, :-1].t()  # (L, d_h)
        v = history @ att.w_v.weight[:, :-1].t()
        return {
            "k_t": att._heads(k).permute(1, 2, 0).contiguous(),
            "v": att._heads(v).transpose(0, 1).contiguous(),
        }

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        att = self.attention
        batch = query.shape[0]
        q = att._heads(att.w_q(query) * att.scale).transpose(0, 1)  # (H, B, dk)
        w_kc = att._heads(att.w_k.weight[:, -1]).unsqueeze(-1)  # (H, dk, 1)
        w_vc = att._heads(att.w_v.weight[:, -1]).unsqueeze(1)  # (H, 1, dk)
        q_c = torch.bmm(q, w_kc)  # (H, B, 1)
        scores = torch.baddbmm(sims.unsqueeze(0) * q_c, q, state["k_t"])  # (H, B, L)
        weights = torch.softmax(scores, dim=-1)
        c_mass = (weights * sims.unsqueeze(0)).sum(-1, keepdim=True)  # (H, B, 1)
        out = torch.baddbmm(c_mass * w_vc, weights, state["v"])  # (H, B, dk)
        return out.transpose(0, 1).reshape(batch, self.out_dim)


def build_ta_early(config: TAEarlyConfig, item_dim: int, spec: FeatureSpec) -> EarlyFusionInterest:
    return EarlyFusionInterest(item_dim, config.hidden_dim, config.num_heads, config.temperature)
