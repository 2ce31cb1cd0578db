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

One module, three computations of the same function (tests/test_dta.py compares them,
forward and gradients, over random lengths, masks and buckets):
- `forward_reference`: the plain form, one (padded) history per sample, K and V
  materialised as (B, L, d_h) and split into heads.
- `forward`: the training form. One query per sample, so the projections fold into it
  and never touch the (B, L) positions (the linearity of Wk and Wv):
      score[b, h, l] = (q[b,h] Wk_h) · S[b,l] + (q[b,h] E_K[:,h]^T)[bucket[b,l]]
      out[b, h]      = (α[b,h] S[b]) Wv_h^T + mass[b,h] E_V[:,h]
  O(B H L d) for the attention instead of O(B L d d_h) for K and V, and every product a
  batched GEMM with L in a large dimension (the reference's einsums become B H products
  of one row, slow in both passes): a training step of TA 1.37x and of DMF 1.65x faster
  on the `amazon` preset, one CPU thread (`python -m scripts.bench_attention_forms`,
  docs/benchmarks.md).
- `encode` + `attend`: the serving form for one user and B candidates. K_id and V_id are
  computed once per user; the bucket terms are folded into the attention without ever
  building a (B, L, d_h) tensor:
      score[h, b, l] = q[h,b]·K_id[h,l] + (q[h,b] E_K[:,h]^T)[bucket[b,l]]
      out[h, b]      = α[h,b] V_id[h] + mass[h,b] E_V[:,h],
      mass[h, b, m]  = Σ_l α[h,b,l] [bucket[b,l] = m]      (scatter_add)
  It costs O(L d^2) once plus O(B L d + B M d) per request instead of O(B L d^2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models import cpu_ops

State = dict[str, Tensor]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where `mask` is True; rows with no True give all zeros.

    Padding never gets weight, and an empty history gives a zero interest vector instead
    of NaN (softmax over all -inf).

    >>> masked_softmax(torch.tensor([[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]]),
    ...                torch.tensor([[True, True, False], [False, False, False]]))
    tensor([[0.5000, 0.5000, 0.0000],
            [0.0000, 0.0000, 0.0000]])
    """
    scores = scores.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1)
    return weights.masked_fill(~mask, 0.0)


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
        >>> buckets = torch.randint(0, 5, (3, 6))
        >>> out = dta(q, s, mask, buckets)
        >>> out.shape, bool(out[2].abs().sum() == 0)
        (torch.Size([3, 16]), True)
        >>> state = dta.encode(s[0])                     # once per user
        >>> serving = dta.attend(state, q, buckets)      # 3 candidates of that user
        >>> torch.allclose(serving[0], out[0], atol=1e-6)
        True
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
        self.scale = 1.0 / (math.sqrt(self.head_dim) * temperature)
        self.w_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_k = nn.Linear(history_dim, hidden_dim, bias=False)
        self.w_v = nn.Linear(history_dim, hidden_dim, bias=False)
        # Bucket tables are tiny (M x d_h) and read by every sample, so they stay dense,
        # replicated parameters rather than sharded TorchRec tables.
        self.bucket_key = nn.Embedding(num_buckets, hidden_dim) if bucket_keys else None
        self.bucket_value = nn.Embedding(num_buckets, hidden_dim) if bucket_values else None
        self.has_buckets = bucket_keys or bucket_values
        # Serving on a CPU: the fused gather + softmax + scatter of `attend`
        # (models/cpu_ops.py), switched on by models.scorer.use_cpu_kernels.
        self.cpu_kernels = False
        for table in (self.bucket_key, self.bucket_value):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    def _heads(self, x: Tensor) -> Tensor:
        """(..., H*dk) -> (..., H, dk)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    # ------------------------------------------------------------------ training form
    def _head_weight(self, weight: Tensor) -> Tensor:
        """A projection's weight (H*dk, d) as (H, dk, d)."""
        return weight.unflatten(0, (self.num_heads, self.head_dim))

    def _at_buckets(self, buckets: Tensor) -> Tensor:
        """buckets (B, L) -> (B, H, L), the index of a gather or scatter over M."""
        return buckets.unsqueeze(1).expand(-1, self.num_heads, -1)

    def scores(self, query: Tensor, history: Tensor, buckets: Tensor | None) -> Tensor:
        """Unnormalised attention scores e (B, H, L), already scaled; Wk folded into the
        query, so K is never built.

        query (B, d_q), history (B, L, d), buckets (B, L) long in [0, M) (or None without
        bucket terms).
        """
        q = self._heads(self.w_q(query)) * self.scale  # (B, H, dk)
        q_k = torch.einsum("bhk,hkd->bhd", q, self._head_weight(self.w_k.weight))  # (B, H, d)
        scores = torch.bmm(q_k, history.transpose(1, 2))  # (B, H, L)
        if self.bucket_key is not None:
            assert buckets is not None, "DTA with bucket keys needs buckets"
            e_k = self._heads(self.bucket_key.weight)  # (M, H, dk)
            bucket_scores = torch.einsum("bhk,mhk->bhm", q, e_k)  # (B, H, M)
            scores = scores + bucket_scores.gather(2, self._at_buckets(buckets))
        return scores

    def pool(self, weights: Tensor, history: Tensor, buckets: Tensor | None) -> Tensor:
        """The interest vector (B, d_h) of attention weights (B, H, L) over the history
        (B, L, d): the history pooled first, then Wv, so V is never built."""
        pooled = torch.bmm(weights, history)  # (B, H, d)
        out = torch.einsum("bhd,hkd->bhk", pooled, self._head_weight(self.w_v.weight))  # (B, H, dk)
        if self.bucket_value is not None:
            assert buckets is not None, "DTA with bucket values needs buckets"
            mass = torch.zeros(
                weights.shape[0], self.num_heads, self.num_buckets,
                dtype=weights.dtype, device=weights.device,
            ).scatter_add(2, self._at_buckets(buckets), weights)  # (B, H, M)  # fmt: skip
            out = out + torch.einsum("bhm,mhk->bhk", mass, self._heads(self.bucket_value.weight))
        return out.flatten(-2)

    def forward(
        self,
        query: Tensor,
        history: Tensor,
        mask: Tensor,
        buckets: Tensor | None = None,
        score_bias: Tensor | None = None,
    ) -> Tensor:
        """Interest vector per target (B, d_h).

        query (B, d_q); history (B, L, d) padded; mask (B, L) bool, True on real items;
        buckets (B, L) long, ignored where mask is False (needed when bucket terms are on);
        score_bias (B, H or 1, L), added to the scaled scores (BFS_MF's cross-feature term).
        """
        scores = self.scores(query, history, buckets)
        if score_bias is not None:
            scores = scores + score_bias
        weights = masked_softmax(scores, mask[:, None, :])
        return self.pool(weights, history, buckets)

    @torch.jit.unused
    def forward_reference(
        self,
        query: Tensor,
        history: Tensor,
        mask: Tensor,
        buckets: Tensor | None = None,
        score_bias: Tensor | None = None,
    ) -> Tensor:
        """`forward` computed plainly: K and V (B, L, d_h) materialised, per-head einsums."""
        q = self._heads(self.w_q(query))  # (B, H, dk)
        k = self.w_k(history)  # (B, L, d_h)
        v = self.w_v(history)
        if self.bucket_key is not None:
            k = k + self.bucket_key(buckets)
        if self.bucket_value is not None:
            v = v + self.bucket_value(buckets)
        scores = torch.einsum("bhd,blhd->bhl", q, self._heads(k)) * self.scale
        if score_bias is not None:
            scores = scores + score_bias
        weights = masked_softmax(scores, mask[:, None, :])
        return torch.einsum("bhl,blhd->bhd", weights, self._heads(v)).flatten(-2)

    # ------------------------------------------------------------------- serving form
    _fused = torch.jit.unused(cpu_ops.dta_fused_method)

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        """One user's history (L, d), no padding -> k_t (H, dk, L), v (H, L, dk)."""
        k_t = self._heads(self.w_k(history)).permute(1, 2, 0).contiguous()
        v = self._heads(self.w_v(history)).transpose(0, 1).contiguous()
        return {"k_t": k_t, "v": v}

    @torch.jit.export
    def attend(
        self, state: State, query: Tensor, buckets: Tensor, score_bias: Tensor | None = None
    ) -> Tensor:
        """Interest vectors (B, d_h) of B candidates of the user `state` was encoded from.

        query (B, d_q); buckets (B, L) long (unused without bucket terms); score_bias
        (H or 1, B, L), added to the scaled scores (BFS_MF's cross-feature term). Equal to
        `forward` with the user's history repeated B times.
        """
        batch = query.shape[0]
        v = state["v"]  # an empty history (L = 0) gives zeros: nothing to attend
        q = self._heads(self.w_q(query) * self.scale).transpose(0, 1)  # (H, B, dk)
        fused = (
            not torch.jit.is_scripting()
            and self.cpu_kernels
            and self.has_buckets
            and score_bias is None
            and query.device.type == "cpu"
            and query.dtype == torch.float32
        )
        bucket_scores: Tensor | None = None
        if self.bucket_key is not None:
            e_k = self._heads(self.bucket_key.weight).permute(1, 2, 0)  # (H, dk, M)
            bucket_scores = torch.bmm(q, e_k)  # (H, B, M)
        if fused:
            # One C++ pass per (h, b) row: + bucket-key scores, softmax, bucket mass.
            weights, mass = self._fused(torch.bmm(q, state["k_t"]), bucket_scores, buckets)
        else:
            weights, mass = cpu_ops.bucket_softmax_reference(
                q,
                state["k_t"],
                bucket_scores,
                buckets,
                self.num_buckets,
                self.bucket_value is not None,
                score_bias,
            )
        out = torch.bmm(weights, v)  # (H, B, dk)
        if self.bucket_value is not None:
            e_v = self._heads(self.bucket_value.weight).transpose(0, 1)  # (H, M, dk)
            out.baddbmm_(mass, e_v)
        return out.transpose(0, 1).reshape(batch, self.hidden_dim)
