"""Decoupled Target Attention (DTA), the modality-enriched arch of DMF.

Multi-head target attention where the keys and values of the history are the sum of a
target-agnostic ID part and a target-aware similarity-bucket part (paper, Eq. 16-23):

    Q = q Wq                          (B, H, dk)
    K = S Wk + E_K[bucket(c)]         (B, L, H, dk)
    V = S Wv + E_V[bucket(c)]         (B, L, H, dk)
    u = softmax(Q K^T / (sqrt(dk) tau)) V   concatenated over heads: (B, H*dk)

`c` is the cosine similarity between the frozen multimodal vectors of the target and of
each history item, so K and V depend on the target only through the bucket tables. The
same class, with the bucket terms switched off, is plain multi-head target attention (TA),
and with the value term off it is the paper's DTA_non_invasive.

Two computations of the same function:
- `forward`: the training form, one history per sample, K and V materialised. It is the
  plain reference.
- `encode_user` + `attend_candidates`: the serving form. K_id and V_id are computed once
  per user; for B candidates the bucket terms are folded into the attention without ever
  building a (B, L, d) tensor:
      score[b, h, l] = q[b,h]·K_id[h,l] + (q[b,h]·E_K[:,h]^T)[bucket[b,l]]
      out[b, h]      = α[b,h] V_id[h] + (Σ_l α[b,h,l] onehot(bucket[b,l])) E_V[:,h]
  It costs O(L d^2) once plus O(B L d + B M d) per request instead of O(B L d^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def bucketize(similarities: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Similarity -> bucket index in [0, M-1] given M-1 increasing cut points.

    Matches `numpy.searchsorted(boundaries, c, side="right")` used by data prep.

    >>> bucketize(torch.tensor([-0.5, 0.0, 0.7]), torch.tensor([0.0, 0.5]))
    tensor([0, 1, 2])
    """
    return torch.bucketize(similarities, boundaries.to(similarities.dtype), right=True)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where `mask` is True; rows with no True give all zeros.

    Padding never gets weight, and an empty history gives a zero interest vector instead
    of NaN (softmax over all -inf).
    """
    scores = scores.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1)
    return weights.masked_fill(~mask, 0.0)


@dataclass
class UserState:
    """What DTA needs of one user, computed once per request (serving form).

    k_id, v_id: (H, L, dk) target-agnostic keys and values of the user's history.
    mask: (L,) True where the history has an item.
    """

    k_id: torch.Tensor
    v_id: torch.Tensor
    mask: torch.Tensor


class DecoupledTargetAttention(nn.Module):
    """Multi-head target attention with decoupled similarity-bucket keys and values.

    Args:
        query_dim: d_q, size of the target embedding.
        history_dim: d, size of each history item embedding.
        hidden_dim: d_h = H * dk, size of the output interest vector.
        num_heads: H.
        num_buckets: M, rows of the key and value bucket tables (0 for plain TA).
        temperature: tau in softmax(e / tau); scores are also scaled by 1/sqrt(dk).
        bucket_keys: add E_K[bucket] to the keys.
        bucket_values: add E_V[bucket] to the values (False gives DTA_non_invasive).

    Example::

        >>> dta = DecoupledTargetAttention(8, 8, hidden_dim=16, num_heads=4, num_buckets=5)
        >>> q, s = torch.randn(3, 8), torch.randn(3, 6, 8)
        >>> mask = torch.arange(6).expand(3, 6) < torch.tensor([[6], [2], [0]])
        >>> out = dta(q, s, mask, torch.randint(0, 5, (3, 6)))
        >>> out.shape, bool(out[2].abs().sum() == 0)
        (torch.Size([3, 16]), True)
    """

    def __init__(
        self,
        query_dim: int,
        history_dim: int,
        hidden_dim: int,
        num_heads: int,
        num_buckets: int,
        temperature: float = 1.0,
        bucket_keys: bool = True,
        bucket_values: bool = True,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        if (bucket_keys or bucket_values) and num_buckets < 1:
            raise ValueError("bucket terms need num_buckets >= 1")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.num_buckets = num_buckets
        self.temperature = temperature
        self.w_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_k = nn.Linear(history_dim, hidden_dim, bias=False)
        self.w_v = nn.Linear(history_dim, hidden_dim, bias=False)
        # Bucket tables are tiny (M x d_h) and read by every sample, so they stay dense,
        # replicated parameters rather than sharded TorchRec tables.
        self.bucket_key = nn.Embedding(num_buckets, hidden_dim) if bucket_keys else None
        self.bucket_value = nn.Embedding(num_buckets, hidden_dim) if bucket_values else None
        for table in (self.bucket_key, self.bucket_value):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    @property
    def scale(self) -> float:
        return 1.0 / (math.sqrt(self.head_dim) * self.temperature)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H*dk) -> (..., H, dk)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    # ------------------------------------------------------------------ training form
    def scores(
        self,
        query: torch.Tensor,
        history: torch.Tensor,
        buckets: torch.Tensor | None,
    ) -> torch.Tensor:
        """Unnormalised attention scores e (B, H, L), already scaled.

        query (B, d_q), history (B, L, d), buckets (B, L) long in [0, M).
        """
        q = self._heads(self.w_q(query))  # (B, H, dk)
        k = self.w_k(history)  # (B, L, d_h)
        if self.bucket_key is not None:
            k = k + self.bucket_key(buckets)
        return torch.einsum("bhd,blhd->bhl", q, self._heads(k)) * self.scale

    def forward(
        self,
        query: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
        buckets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Interest vector per target (B, d_h).

        query (B, d_q); history (B, L, d) padded; mask (B, L) bool, True on real items;
        buckets (B, L) long, ignored where mask is False (needed when bucket terms are on).
        """
        weights = masked_softmax(self.scores(query, history, buckets), mask[:, None, :])
        v = self.w_v(history)  # (B, L, d_h)
        if self.bucket_value is not None:
            v = v + self.bucket_value(buckets)
        out = torch.einsum("bhl,blhd->bhd", weights, self._heads(v))
        return out.flatten(-2)

    # ------------------------------------------------------------------- serving form
    def encode_user(self, history: torch.Tensor, mask: torch.Tensor | None = None) -> UserState:
        """Target-agnostic part of one user's history: history (L, d) -> UserState."""
        if mask is None:
            mask = torch.ones(history.shape[0], dtype=torch.bool, device=history.device)
        k_id = self._heads(self.w_k(history)).transpose(0, 1).contiguous()  # (H, L, dk)
        v_id = self._heads(self.w_v(history)).transpose(0, 1).contiguous()
        return UserState(k_id=k_id, v_id=v_id, mask=mask)

    def attend_candidates(
        self,
        user: UserState,
        query: torch.Tensor,
        buckets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Interest vectors of B candidates of one user, bucket terms factorised.

        query (B, d_q); buckets (B, L) long. Returns (B, d_h), equal to `forward` with the
        user's history repeated B times.
        """
        batch = query.shape[0]
        q = self._heads(self.w_q(query)).transpose(0, 1)  # (H, B, dk)
        scores = torch.bmm(q, user.k_id.transpose(1, 2))  # (H, B, L)
        if self.bucket_key is not None or self.bucket_value is not None:
            index = buckets.unsqueeze(0).expand(self.num_heads, batch, -1)  # (H, B, L)
        if self.bucket_key is not None:
            e_k = self._heads(self.bucket_key.weight).transpose(0, 1)  # (H, M, dk)
            q_e = torch.bmm(q, e_k.transpose(1, 2))  # (H, B, M)
            scores = scores + torch.gather(q_e, 2, index)
        weights = masked_softmax(scores * self.scale, user.mask)  # (H, B, L)
        out = torch.bmm(weights, user.v_id)  # (H, B, dk)
        if self.bucket_value is not None:
            # Attention mass per bucket, then one small (M x dk) product per head.
            mass = weights.new_zeros(self.num_heads, batch, self.num_buckets)
            mass.scatter_add_(2, index, weights)
            e_v = self._heads(self.bucket_value.weight).transpose(0, 1)  # (H, M, dk)
            out = out + torch.bmm(mass, e_v)
        return out.transpose(0, 1).flatten(-2)
