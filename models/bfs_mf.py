"""BFS_MF: TWIN's behaviour feature splitting with the multimodal similarity as cross feature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.config import ModelConfig
from models.dta import DecoupledTargetAttention
from models.interest import InterestArch, InterestInputs, State

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.features import FeatureSpec


@dataclass
class BFSMFConfig(ModelConfig):
    """BFS_MF: TWIN's behaviour feature splitting, similarity as a per-head logit term."""


class BFSInterest(InterestArch):
    """BFS_MF: TWIN's behaviour feature splitting (Chang et al. 2023) with the multimodal
    similarity as the user-item cross feature.

    TWIN splits a behaviour into its inherent (ID) part, projected to keys and values that
    can be cached per user, and its user-item cross part, which only adds a cheap linear
    term to the attention logits: alpha = (K_h W_k)(q W_q)^T / sqrt(dk) + (K_c W_c) beta.
    With the scalar similarity c as the cross feature, (c W_c) beta is c * beta_h, one learned
    scalar per head, so no per-candidate key is ever projected:

        e[b, h, l] = q_h . K_id[h, l] / (sqrt(dk) tau) + c[b, l] beta_h,   V = S W_v

    Output (B, d_h). Served from a per-user cache: K_id, V_id once per request, the cross
    term c beta_h per candidate as a bias of the scores.
    """

    caches_user = True
    needs_sims = True

    def __init__(
        self, item_dim: int, hidden_dim: int, num_heads: int, temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.out_dim = hidden_dim
        self.attention = DecoupledTargetAttention(
            item_dim, item_dim, hidden_dim, num_heads, 0, temperature, False, False
        )
        self.cross_beta = nn.Parameter(torch.ones(num_heads))

    def forward(self, x: InterestInputs) -> torch.Tensor:
        bias = x.sims[:, None, :] * self.cross_beta[None, :, None]  # (B, H, L)
        return self.attention(x.target, x.history, x.mask, None, score_bias=bias)

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        return self.attention.encode(history)

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        bias = sims.unsqueeze(0) * self.cross_beta[:, None, None]  # (H, B, L)
        return self.attention.attend(state, query, buckets, score_bias=bias)


def build_bfs_mf(config: BFSMFConfig, item_dim: int, spec: FeatureSpec) -> BFSInterest:
    return BFSInterest(item_dim, config.hidden_dim, config.num_heads, config.temperature)
