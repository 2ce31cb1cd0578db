"""Serving-side scorers: the user side once per request, then B candidates in batches.

    scorer = scorer_from_model(model, item_mm)          # a trained, unsharded CTRModel
    state = scorer.encode_user(hist_items, user)        # (L,) long, () long -> dict
    ctr = scorer.score(state, candidates)               # (B,) long -> (B,) probabilities

Shapes: B candidates, L history items (no padding at serving: one user per request),
D item representation (ID embedding, plus the category's when the data has categories),
d_h = H * dk attention hidden size, H heads, M similarity buckets, d_m multimodal size.

`encode_user` computes everything that depends only on the user: the history's
target-agnostic keys and values (K_id, V_id per head), its multimodal vectors and the user
embedding. `score` computes, per candidate, the cosine similarities against the frozen,
L2-normalised multimodal table (cosine = dot), buckets them with the training boundaries
(`torch.bucketize(right=True)` semantics), runs the interest arch and the head.

Every module here is self-contained and scriptable (`torch.jit.script`): tables and weights
are buffers, so an exported scorer runs without models/ or pipeline/ (pipeline/export.py).

Interest arches (all `encode(history) -> state`, `attend(state, query, sims, buckets)`,
and flags `needs_sims` / `needs_buckets` so the scorer computes only what they read):
- `FactorisedAttention`: TA / DTA / DTA_non_invasive, bucket terms folded into the
  attention (no (B, L, d_h) tensor).
- `NaiveDTA`: the same function with per-candidate K = K_id + E_K[bucket] materialised.
- `EarlyFusion`: TA_early as the paper defines it, per-candidate [S; c] (B, L, D+1) @ W.
- `EarlyFusionRank1`: the same function rewritten K = S W_k + c w_k^T, factorised.
- `LateFusion`: ID attention plus a separate attention over K_sim = c w_k^T (benchmark).
- `DMFInterest`: factorised DTA + similarity histogram MLP, fused by CMM.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from models.ctr import CTRModel
from models.dta import DecoupledTargetAttention
from models.fusion import ActivityGate, FixedFusion
from models.interest import DMFInterest as TrainDMFInterest
from models.interest import EarlyFusionInterest, TargetAttentionInterest

State = dict[str, Tensor]


# --------------------------------------------------------------------------- buckets
def _cell(x: Tensor, half: float, cells: int) -> Tensor:
    """Uniform cell of [-1, 1] (monotone in x): clamp(x * G/2 + G/2, 0, G-1) -> long."""
    return x.mul(half).add_(half).clamp_(0.0, cells - 1.0).long()


class Bucketizer(nn.Module):
    """Exact `torch.bucketize(sims, boundaries, right=True)` by table lookup.

    Equal-frequency boundaries make the binary search of `torch.bucketize` mispredict at
    every step (about 24 ms for 1200 x 400 similarities on 2 cores). Instead [-1, 1] is cut
    into G uniform cells; `base[g]` counts the boundaries surely below cell g and
    `thresholds[:, g]` (K, G) lists, +inf padded, the few boundaries within one cell of g,
    which are compared explicitly. The cell map x -> clamp(x * G/2 + G/2) is monotone, so
    a boundary two cells below (above) a similarity is below (above) it: the result is
    exact, not approximate. G is the smallest power of two (>= 1024, <= 65536) that leaves
    at most one boundary per window, so K is 1 for well-spread boundaries.
    """

    def __init__(self, boundaries: Tensor) -> None:
        super().__init__()
        boundaries = boundaries.detach().float().cpu()
        self.register_buffer("boundaries", boundaries.clone())
        cells, base, thresholds = 1024, torch.zeros(1024, dtype=torch.long), torch.empty(0, 1024)
        while boundaries.numel():
            base, thresholds = self._tables(boundaries, cells)
            if thresholds.shape[0] <= 1 or cells >= 65536:
                break
            cells *= 2
        self.cells = cells
        self.half = cells / 2.0
        self.register_buffer("base", base)
        self.register_buffer("thresholds", thresholds.contiguous())

    def _tables(self, boundaries: Tensor, cells: int) -> tuple[Tensor, Tensor]:
        """base (G,) long and thresholds (K, G) for G = `cells`."""
        where = _cell(boundaries.clone(), cells / 2.0, cells)  # (M-1,)
        grid = torch.arange(cells).unsqueeze(1)  # (G, 1)
        base = (where.unsqueeze(0) < grid - 1).sum(1)
        near = (where.unsqueeze(0) - grid).abs() <= 1  # (G, M-1)
        width = int(near.sum(1).max())
        values = torch.where(near, boundaries.unsqueeze(0), torch.tensor(math.inf))
        return base, values.sort(dim=1).values[:, :width].t()

    def forward(self, sims: Tensor) -> Tensor:
        """sims (..., ) float -> bucket index (...) long in [0, M-1]."""
        flat = _cell(sims.reshape(-1), self.half, self.cells)
        out = self.base.index_select(0, flat)
        values = sims.reshape(-1)
        for k in range(self.thresholds.shape[0]):
            out += values >= self.thresholds[k].index_select(0, flat)
        return out.view(sims.shape)


def similarity_histogram(sims: Tensor, num_bins: int) -> Tensor:
    """Counts of (B, L) similarities in `num_bins` uniform bins over [-1, 1] -> (B, bins).

    Same binning as models/histogram.py (no padding at serving).
    """
    bins = ((sims.clamp(-1.0, 1.0) + 1.0) * (num_bins / 2.0)).long().clamp_(max=num_bins - 1)
    counts = sims.new_zeros(sims.shape[0], num_bins)
    return counts.scatter_add_(1, bins, torch.ones_like(sims))


# ------------------------------------------------------------------ interest arches
def _head_weight(weight: Tensor, num_heads: int) -> Tensor:
    """Linear weight (H*dk, D) -> (H, D, dk), so x (B, D) @ it gives (H, B, dk)."""
    return weight.detach().reshape(num_heads, -1, weight.shape[1]).transpose(1, 2).contiguous()


def _empty() -> Tensor:
    return torch.zeros(0)


class FactorisedAttention(nn.Module):
    """TA, DTA or DTA_non_invasive at serving; bucket terms folded into the attention.

        scores[h, b, l] = q[h,b]·K_id[h,l] + (q[h,b] E_K[:,h]^T)[bucket[b,l]]
        out[h, b]       = α[h,b] V_id[h] + mass[h,b] E_V[:,h],
        mass[h, b, m]   = Σ_l α[h,b,l] [bucket[b,l] = m]   (scatter_add)

    The 1/(sqrt(dk) tau) scale is folded into W_q. State: k_t (H, dk, L), v (H, L, dk).
    """

    def __init__(self, attention: DecoupledTargetAttention) -> None:
        super().__init__()
        h = attention.num_heads
        self.num_heads = h
        self.hidden_dim = attention.hidden_dim
        self.num_buckets = attention.num_buckets
        self.register_buffer("w_q", _head_weight(attention.w_q.weight * attention.scale, h))
        self.register_buffer("w_k", _head_weight(attention.w_k.weight, h))
        self.register_buffer("w_v", _head_weight(attention.w_v.weight, h))
        self.has_key = attention.bucket_key is not None
        self.has_value = attention.bucket_value is not None
        self.needs_sims = self.needs_buckets = self.has_key or self.has_value
        key, value = attention.bucket_key, attention.bucket_value
        # E_K (M, H*dk) as (H, dk, M) and E_V as (H, M, dk), for one bmm each.
        m = self.num_buckets
        e_k = _empty() if key is None else key.weight.detach().t().reshape(h, -1, m)
        e_v = _empty() if value is None else value.weight.detach().reshape(m, h, -1).transpose(0, 1)
        self.register_buffer("e_k", e_k.contiguous())
        self.register_buffer("e_v", e_v.contiguous())

    def encode(self, history: Tensor) -> State:
        """history (L, D) -> k_t (H, dk, L), v (H, L, dk)."""
        k_t = torch.matmul(history, self.w_k).transpose(1, 2).contiguous()
        return {"k_t": k_t, "v": torch.matmul(history, self.w_v)}

    def attend(self, state: State, query: Tensor, sims: Tensor, buckets: Tensor) -> Tensor:
        """query (B, D), buckets (B, L) -> interest (B, d_h)."""
        batch = query.shape[0]
        q = torch.matmul(query, self.w_q)  # (H, B, dk)
        if state["v"].shape[1] == 0:
            return query.new_zeros(batch, self.hidden_dim)
        index = buckets  # (H, B, L) when there are bucket terms
        if self.has_key or self.has_value:
            index = buckets.unsqueeze(0).expand(self.num_heads, batch, buckets.shape[1])
        if self.has_key:
            # (H, B, M) -> (H, B, L) by bucket, then += q K_id^T inside the GEMM (beta = 1).
            bucket_scores = torch.gather(torch.bmm(q, self.e_k), 2, index)
            scores = torch.baddbmm(bucket_scores, q, state["k_t"])
        else:
            scores = torch.bmm(q, state["k_t"])  # (H, B, L)
        weights = torch.softmax(scores, dim=-1)
        out = torch.bmm(weights, state["v"])  # (H, B, dk)
        if self.has_value:
            mass = weights.new_zeros(self.num_heads, batch, self.num_buckets)
            out = torch.baddbmm(out, mass.scatter_add_(2, index, weights), self.e_v)
        return out.transpose(0, 1).reshape(batch, self.hidden_dim)


class NaiveDTA(nn.Module):
    """DTA with the per-candidate keys and values materialised (the unfactorised form).

    K_id, V_id (L, d_h) are still computed once per user, but every request builds
    K = K_id + E_K[bucket] and V = V_id + E_V[bucket] as (B, L, d_h) tensors.
    """

    def __init__(self, attention: DecoupledTargetAttention) -> None:
        super().__init__()
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.hidden_dim = attention.hidden_dim
        self.register_buffer("w_q", attention.w_q.weight.detach() * attention.scale)
        self.register_buffer("w_k", attention.w_k.weight.detach().clone())
        self.register_buffer("w_v", attention.w_v.weight.detach().clone())
        key, value = attention.bucket_key, attention.bucket_value
        self.has_key = key is not None
        self.has_value = value is not None
        self.needs_sims = self.needs_buckets = self.has_key or self.has_value
        self.register_buffer("e_k", _empty() if key is None else key.weight.detach().clone())
        self.register_buffer("e_v", _empty() if value is None else value.weight.detach().clone())

    def encode(self, history: Tensor) -> State:
        """history (L, D) -> k, v (L, d_h)."""
        return {"k": history @ self.w_k.t(), "v": history @ self.w_v.t()}

    def attend(self, state: State, query: Tensor, sims: Tensor, buckets: Tensor) -> Tensor:
        batch, length = buckets.shape
        q = (query @ self.w_q.t()).view(batch, self.num_heads, 1, self.head_dim)
        k = state["k"].expand(batch, length, self.hidden_dim)
        v = state["v"].expand(batch, length, self.hidden_dim)
        if self.has_key:
            k = k + self.e_k[buckets]
        if self.has_value:
            v = v + self.e_v[buckets]
        k = k.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, dk)
        v = v.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)), dim=-1)  # (B, H, 1, L)
        return torch.matmul(weights, v).reshape(batch, self.hidden_dim)


class EarlyFusion(nn.Module):
    """TA_early as defined: per candidate, K = [S; c] W_k and V = [S; c] W_v, (B, L, D+1)."""

    def __init__(self, attention: DecoupledTargetAttention) -> None:
        super().__init__()
        self.needs_sims, self.needs_buckets = True, False
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.hidden_dim = attention.hidden_dim
        self.register_buffer("w_q", attention.w_q.weight.detach() * attention.scale)
        self.register_buffer("w_k", attention.w_k.weight.detach().clone())  # (d_h, D+1)
        self.register_buffer("w_v", attention.w_v.weight.detach().clone())

    def encode(self, history: Tensor) -> State:
        return {"history": history}

    def attend(self, state: State, query: Tensor, sims: Tensor, buckets: Tensor) -> Tensor:
        batch, length = sims.shape
        history = state["history"]
        fused = torch.cat(
            [history.expand(batch, length, history.shape[1]), sims.unsqueeze(-1)], dim=-1
        )  # (B, L, D+1)
        k = torch.matmul(fused, self.w_k.t()).view(batch, length, self.num_heads, self.head_dim)
        v = torch.matmul(fused, self.w_v.t()).view(batch, length, self.num_heads, self.head_dim)
        q = (query @ self.w_q.t()).view(batch, self.num_heads, 1, self.head_dim)
        weights = torch.softmax(torch.matmul(q, k.permute(0, 2, 3, 1)), dim=-1)  # (B, H, 1, L)
        return torch.matmul(weights, v.transpose(1, 2)).reshape(batch, self.hidden_dim)


class EarlyFusionRank1(nn.Module):
    """TA_early rewritten: [S; c] W^T = S W_S^T + c w_c^T, a rank-1 target-aware term.

        scores[h, b, l] = q[h,b]·K_id[h,l] + c[b,l] (q[h,b]·w_kc[h])
        out[h, b]       = α[h,b] V_id[h] + (Σ_l α[h,b,l] c[b,l]) w_vc[h]

    Exactly the early-fusion function at O(L d^2) per user plus O(B L d) per request.
    """

    def __init__(self, attention: DecoupledTargetAttention) -> None:
        super().__init__()
        h = attention.num_heads
        self.needs_sims, self.needs_buckets = True, False
        self.num_heads = h
        self.hidden_dim = attention.hidden_dim
        w_k, w_v = attention.w_k.weight.detach(), attention.w_v.weight.detach()
        self.register_buffer("w_q", _head_weight(attention.w_q.weight * attention.scale, h))
        self.register_buffer("w_k", _head_weight(w_k[:, :-1], h))  # (H, D, dk)
        self.register_buffer("w_v", _head_weight(w_v[:, :-1], h))
        self.register_buffer("w_kc", w_k[:, -1].reshape(h, 1, -1, 1).clone())  # (H, 1, dk, 1)
        self.register_buffer("w_vc", w_v[:, -1].reshape(h, 1, -1).clone())  # (H, 1, dk)

    def encode(self, history: Tensor) -> State:
        k_t = torch.matmul(history, self.w_k).transpose(1, 2).contiguous()
        return {"k_t": k_t, "v": torch.matmul(history, self.w_v)}

    def attend(self, state: State, query: Tensor, sims: Tensor, buckets: Tensor) -> Tensor:
        batch = query.shape[0]
        q = torch.matmul(query, self.w_q)  # (H, B, dk)
        if state["v"].shape[1] == 0:
            return query.new_zeros(batch, self.hidden_dim)
        q_c = torch.matmul(q.unsqueeze(2), self.w_kc).view(self.num_heads, batch, 1)  # (H, B, 1)
        scores = torch.baddbmm(sims.unsqueeze(0) * q_c, q, state["k_t"])  # (H, B, L)
        weights = torch.softmax(scores, dim=-1)
        c_mass = (weights * sims.unsqueeze(0)).sum(-1, keepdim=True)  # (H, B, 1)
        out = torch.baddbmm(c_mass * self.w_vc, weights, state["v"])  # (H, B, dk)
        return out.transpose(0, 1).reshape(batch, self.hidden_dim)


class LateFusion(nn.Module):
    """Late fusion (paper Fig. 4b): ID attention plus an attention over the projected
    similarities K_sim = c w_k^T, V_sim = c w_v^T, (B, L, d_h) as the paper counts them
    (2 B L d FLOPs each); the two interest vectors are summed. Benchmark only: no model of
    the zoo trains it, so its weights are random.
    """

    def __init__(self, attention: DecoupledTargetAttention, generator: torch.Generator) -> None:
        super().__init__()
        self.ids = FactorisedAttention(attention)
        self.needs_sims, self.needs_buckets = True, self.ids.needs_buckets
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.hidden_dim = attention.hidden_dim
        self.register_buffer("w_q", attention.w_q.weight.detach() * attention.scale)
        std = 1.0 / math.sqrt(self.hidden_dim)
        self.register_buffer("w_ks", torch.randn(1, self.hidden_dim, generator=generator) * std)
        self.register_buffer("w_vs", torch.randn(1, self.hidden_dim, generator=generator) * std)

    def encode(self, history: Tensor) -> State:
        return self.ids.encode(history)

    def attend(self, state: State, query: Tensor, sims: Tensor, buckets: Tensor) -> Tensor:
        batch, length = sims.shape
        c = sims.unsqueeze(-1)  # (B, L, 1)
        k = torch.matmul(c, self.w_ks).view(batch, length, self.num_heads, self.head_dim)
        v = torch.matmul(c, self.w_vs).view(batch, length, self.num_heads, self.head_dim)
        q = (query @ self.w_q.t()).view(batch, self.num_heads, 1, self.head_dim)
        weights = torch.softmax(torch.matmul(q, k.permute(0, 2, 3, 1)), dim=-1)  # (B, H, 1, L)
        r_sim = torch.matmul(weights, v.transpose(1, 2)).reshape(batch, self.hidden_dim)
        return self.ids.attend(state, query, sims, buckets) + r_sim


class DMFInterest(nn.Module):
    """DMF at serving: factorised DTA (r_me) + histogram MLP (r_mc), fused by CMM.

    Fixed fusion: a = alpha. Activity gate: a = sigmoid(w log(1 + L) + b).
    """

    def __init__(self, interest: TrainDMFInterest) -> None:
        super().__init__()
        self.dta = FactorisedAttention(interest.dta)
        self.needs_sims, self.needs_buckets = True, True
        self.num_bins = interest.histogram.num_bins
        self.histogram_mlp = _plain_mlp(interest.histogram.mlp)
        fusion = interest.fusion
        self.gated = isinstance(fusion, ActivityGate)
        if isinstance(fusion, FixedFusion):
            self.alpha, self.gate_weight, self.gate_bias = fusion.alpha, 0.0, 0.0
        else:
            assert isinstance(fusion, ActivityGate)
            self.alpha = 0.0
            self.gate_weight, self.gate_bias = (
                float(fusion.weight.detach()),
                float(fusion.bias.detach()),
            )

    def encode(self, history: Tensor) -> State:
        return self.dta.encode(history)

    def attend(self, state: State, query: Tensor, sims: Tensor, buckets: Tensor) -> Tensor:
        r_me = self.dta.attend(state, query, sims, buckets)
        r_mc = self.histogram_mlp(torch.log1p(similarity_histogram(sims, self.num_bins)))
        if self.gated:
            length = torch.tensor(float(sims.shape[1]))
            a = torch.sigmoid(self.gate_weight * torch.log1p(length) + self.gate_bias)
            return a * r_me + (1.0 - a) * r_mc
        return self.alpha * r_me + (1.0 - self.alpha) * r_mc


def _plain_mlp(mlp: nn.Sequential) -> nn.Sequential:
    """Copy of a models/mlp.MLP as a plain nn.Sequential of Linear and ReLU (eval mode)."""
    layers: list[nn.Module] = []
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            copy = nn.Linear(layer.in_features, layer.out_features)
            copy.load_state_dict(layer.state_dict())
            layers.append(copy.requires_grad_(False))
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- scorer
class CTRScorer(nn.Module):
    """The serving form of a CTRModel: `encode_user` once, then `score` per candidates.

    Buffers: item_table (I, E), user_table (U, E), category_table (C, E) and item_category
    (I,) when the data has categories, item_mm (I, d_m) L2-normalised, bucket tables.
    `score` processes candidates in chunks of `chunk` rows to bound memory.
    """

    def __init__(
        self,
        interest: nn.Module,
        head: nn.Sequential,
        tables: dict[str, Tensor],
        item_mm: Tensor,
        boundaries: Tensor,
        item_category: Tensor | None = None,
        use_user_embedding: bool = True,
        chunk: int = 2048,
    ) -> None:
        super().__init__()
        self.interest = interest
        self.head = head
        self.register_buffer("item_table", tables["t_item"].detach().clone())
        self.register_buffer("user_table", tables["t_user"].detach().clone())
        self.has_categories = item_category is not None
        category = tables.get("t_category")
        self.register_buffer(
            "category_table", _empty() if category is None else category.detach().clone()
        )
        self.register_buffer(
            "item_category", _empty().long() if item_category is None else item_category.long()
        )
        self.register_buffer("item_mm", item_mm.detach().float().contiguous())
        self.bucketizer = Bucketizer(boundaries)
        self.use_user_embedding = use_user_embedding
        # What the interest arch reads: similarities (B, L) and/or their buckets.
        self.needs_sims: bool = interest.needs_sims
        self.needs_buckets: bool = interest.needs_buckets
        self.chunk = chunk

    def items(self, ids: Tensor) -> Tensor:
        """Item representations (N,) -> (N, D): ID embedding [+ category embedding]."""
        emb = self.item_table.index_select(0, ids)
        if self.has_categories:
            categories = self.item_category.index_select(0, ids)
            emb = torch.cat([emb, self.category_table.index_select(0, categories)], dim=-1)
        return emb

    @torch.jit.export
    def encode_user(self, hist_items: Tensor, user: Tensor) -> State:
        """hist_items (L,) long, oldest first; user () long -> the user's state."""
        state = self.interest.encode(self.items(hist_items))
        state["hist_mm_t"] = self.item_mm.index_select(0, hist_items).t().contiguous()  # (d_m, L)
        state["user"] = self.user_table[user.reshape(())]  # (E,)
        return state

    @torch.jit.export
    def similarities(self, state: State, candidates: Tensor) -> Tensor:
        """Cosine similarities (B, L) of candidates (B,) and the user's history."""
        return torch.mm(self.item_mm.index_select(0, candidates), state["hist_mm_t"])

    @torch.jit.export
    def bucketize(self, sims: Tensor) -> Tensor:
        """Similarities -> bucket indices, exactly as training (bucketize, right=True)."""
        return self.bucketizer(sims)

    def _score_chunk(self, state: State, candidates: Tensor) -> Tensor:
        target = self.items(candidates)
        sims, buckets = _empty(), _empty().long()
        if self.needs_sims:
            sims = self.similarities(state, candidates)
        if self.needs_buckets:
            buckets = self.bucketizer(sims)
        parts = [self.interest.attend(state, target, sims, buckets), target]
        if self.use_user_embedding:
            parts.append(state["user"].expand(candidates.shape[0], state["user"].shape[0]))
        return torch.sigmoid(self.head(torch.cat(parts, dim=-1)).squeeze(-1))

    @torch.jit.export
    def score(self, state: State, candidates: Tensor) -> Tensor:
        """candidates (B,) long -> CTR (B,) float, in chunks of `chunk` candidates."""
        if candidates.shape[0] <= self.chunk:
            return self._score_chunk(state, candidates)
        return torch.cat([self._score_chunk(state, c) for c in candidates.split(self.chunk)])

    def forward(self, hist_items: Tensor, user: Tensor, candidates: Tensor) -> Tensor:
        """One request: (L,), (), (B,) -> CTR (B,)."""
        return self.score(self.encode_user(hist_items, user), candidates)


# -------------------------------------------------------------------------- builders
def interest_for_serving(interest: nn.Module, form: str = "factorised") -> nn.Module:
    """A CTRModel's interest arch -> its serving arch.

    form: "factorised" (default), "naive" (DTA with materialised K/V) or, for TA_early,
    "early" (as defined) / "rank1" (the rank-1 rewrite).
    """
    if isinstance(interest, TargetAttentionInterest):
        if form == "naive":
            return NaiveDTA(interest.attention)
        return FactorisedAttention(interest.attention)
    if isinstance(interest, TrainDMFInterest):
        return DMFInterest(interest)
    if isinstance(interest, EarlyFusionInterest):
        if form == "rank1":
            return EarlyFusionRank1(interest.attention)
        return EarlyFusion(interest.attention)
    raise TypeError(f"no serving form for {type(interest).__name__}")


def scorer_from_model(
    model: CTRModel,
    item_mm: Tensor | np.ndarray,
    item_category: Tensor | np.ndarray | None = None,
    form: str = "factorised",
    interest: nn.Module | None = None,
    chunk: int = 2048,
) -> CTRScorer:
    """Serving scorer with the weights of a trained, unsharded CTRModel.

    item_mm (I, d_m): PreparedData.item_mm; item_category (I,): item_category.npy, needed
    when the model has categories. `interest` overrides the serving interest arch (e.g. a
    `LateFusion` built for the benchmark).
    """
    over = model.over_arch
    if interest is None:
        interest = interest_for_serving(over.interest, form)
    if over.has_categories and item_category is None:
        raise ValueError("the model uses categories: pass item_category (item_category.npy)")
    tables = {
        name: table.weight
        for name, table in model.sparse_arch.embedding_collection.embeddings.items()
    }
    category = None
    if over.has_categories:
        category = torch.as_tensor(np.asarray(item_category), dtype=torch.long)
    scorer = CTRScorer(
        interest,
        _plain_mlp(over.head),
        tables,
        torch.tensor(np.asarray(item_mm, dtype=np.float32)),
        over.bucket_boundaries,
        item_category=category,
        use_user_embedding=over.use_user_embedding,
        chunk=chunk,
    )
    return scorer.eval().requires_grad_(False)
