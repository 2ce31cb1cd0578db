"""Baselines and ablations of the DMF paper (Sec. V-C, V-E), as user-interest arches.

Each arch takes an `InterestInputs` (models/interest.py) and returns (B, out_dim); the CTR
model around it (embeddings, head) is the same for every model, so comparisons are like
for like. Shapes: B targets, L history slots (padded), D item embedding size, H heads,
d_h = H * dk attention hidden size, M similarity buckets.

- `SASRecInterest`: target-agnostic causal self-attention (SASRec, Kang & McAuley 2018).
- `DINInterest`: DIN's activation unit (Zhou et al. 2018).
- `BFSInterest`: TWIN's behaviour feature splitting with the similarity as cross feature.
- `SIMTIERInterest`: ID target attention + the similarity histogram fed to the head.
- `MAKEInterest`: ID target attention + a multimodal module that is pre-trained on the CTR
  task for several epochs first (`make_pretrain_model`, `transfer_pretrained`).
- `LateFusionInterest`: TA_late, separate attentions over ID and similarity keys/values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from models.dta import DecoupledTargetAttention, bucketize, masked_softmax
from models.features import HIST_ITEM, Batch
from models.histogram import similarity_histogram
from models.interest import InterestInputs, TargetAttentionInterest
from models.mlp import MLP

if TYPE_CHECKING:
    from models.features import FeatureSpec
    from models.zoo import MAKEConfig


def _ta(item_dim: int, hidden_dim: int, num_heads: int, temperature: float) -> nn.Module:
    """Plain multi-head target attention over ID embeddings (the paper's TA)."""
    return TargetAttentionInterest(
        item_dim, hidden_dim, num_heads, 0, temperature, bucket_keys=False, bucket_values=False
    )


# ---------------------------------------------------------------------------- SASRec
class CausalSelfAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)), then x + FFN(LN(x)).

    x (B, L, d_h); allowed (B, L, L) bool, True where query l may attend to key l'.
    Rows with nothing allowed (padding of an empty history) attend to nothing (zeros).
    """

    def __init__(self, hidden_dim: int, num_heads: int) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.attn_norm = nn.LayerNorm(hidden_dim)
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.out = nn.Linear(hidden_dim, hidden_dim)
        self.ffn_norm = nn.LayerNorm(hidden_dim)
        self.ffn = MLP(hidden_dim, [hidden_dim, hidden_dim])

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(2)
        )
        scores = torch.einsum("bihd,bjhd->bhij", q, k) * self.head_dim**-0.5
        weights = masked_softmax(scores, allowed[:, None])  # (B, H, L, L)
        attended = torch.einsum("bhij,bjhd->bihd", weights, v).flatten(-2)
        x = x + self.out(attended)
        return x + self.ffn(self.ffn_norm(x))


class SASRecInterest(nn.Module):
    """SASRec: unidirectional self-attention over the history, target-agnostic.

    Follows Kang & McAuley (2018): item embeddings (projected to d_h) plus learned position
    embeddings, `num_layers` causal pre-LN blocks, a final LayerNorm, and the output at the
    last (most recent) valid position as the user interest. SASRec left-pads so that the most
    recent item always has the same position; our histories are right-padded (oldest first),
    so positions count back from the most recent item (0 = most recent), which gives the same
    embedding to the same recency. Items older than `max_positions` share the last position.
    Padding is never attended (causal + key mask); an empty history gives zeros.

    >>> arch = SASRecInterest(8, hidden_dim=16, num_heads=2, num_layers=1, max_positions=10)
    >>> x = InterestInputs(torch.randn(2, 8), torch.randn(2, 3, 8),
    ...                    torch.tensor([[True, True, False], [False] * 3]), torch.zeros(2, 3),
    ...                    torch.zeros(2, 3, dtype=torch.long), torch.tensor([2, 0]))
    >>> out = arch(x)
    >>> out.shape, bool(out[1].abs().sum() == 0)
    (torch.Size([2, 16]), True)
    """

    def __init__(
        self, item_dim: int, hidden_dim: int, num_heads: int, num_layers: int, max_positions: int
    ) -> None:
        super().__init__()
        self.out_dim = hidden_dim
        self.max_positions = max_positions
        self.input = nn.Linear(item_dim, hidden_dim)
        self.positions = nn.Embedding(max_positions, hidden_dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, x: InterestInputs) -> torch.Tensor:
        length = x.mask.shape[1]
        slots = torch.arange(length, device=x.mask.device)
        recency = (x.lengths.unsqueeze(-1) - 1 - slots).clamp(0, self.max_positions - 1)  # (B, L)
        h = self.input(x.history) + self.positions(recency)
        causal = slots[:, None] >= slots[None, :]  # (L, L): query i sees keys j <= i
        allowed = causal & x.mask[:, None, :]  # (B, L, L)
        for block in self.blocks:
            h = block(h, allowed)
        last = (x.lengths - 1).clamp(min=0)
        out = self.norm(h[torch.arange(h.shape[0], device=h.device), last])  # (B, d_h)
        return out * (x.lengths > 0).unsqueeze(-1).to(out.dtype)


# ------------------------------------------------------------------------------- DIN
class DiceLite(nn.Module):
    """Dice without batch statistics: f(x) = p(x) x + (1 - p(x)) a x, p(x) = sigmoid(g (x - m)).

    DIN's Dice takes the centre m and scale g of the gate from batch statistics; here they
    are learned per channel, so one sample's output never depends on the rest of the batch
    (nor on its padding) and training and serving compute the same function.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), 0.25))
        self.centre = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.scale * (x - self.centre))
        return p * x + (1.0 - p) * self.alpha * x


class DINInterest(nn.Module):
    """DIN's local activation unit (Zhou et al. 2018, paper Eq. 5-6).

    w_l = MLP([q; s_l; q * s_l; q - s_l]) with PReLU (or Dice-lite) activations, no
    softmax (DIN keeps the intensity of interests), padding weighted 0; the interest is
    sum_l w_l s_l (B, D), projected to `hidden_dim` (no bias, so an empty history gives
    zeros) when D differs from it.

    >>> arch = DINInterest(8, hidden_dim=16, attention_dims=[8])
    >>> x = InterestInputs(torch.randn(2, 8), torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool),
    ...                    torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 3]))
    >>> arch(x).shape
    torch.Size([2, 16])
    """

    ACTIVATIONS = {"prelu": nn.PReLU, "dice": DiceLite}

    def __init__(
        self, item_dim: int, hidden_dim: int, attention_dims: list[int], activation: str = "prelu"
    ) -> None:
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self.ACTIVATIONS)}")
        self.out_dim = hidden_dim
        layers: list[nn.Module] = []
        in_dim = 4 * item_dim
        for dim in attention_dims:
            layers += [nn.Linear(in_dim, dim), self.ACTIVATIONS[activation](dim)]
            in_dim = dim
        self.activation_unit = nn.Sequential(*layers, nn.Linear(in_dim, 1))
        self.project = (
            nn.Identity() if item_dim == hidden_dim else nn.Linear(item_dim, hidden_dim, bias=False)
        )

    def forward(self, x: InterestInputs) -> torch.Tensor:
        q = x.target.unsqueeze(1).expand_as(x.history)  # (B, L, D)
        features = torch.cat([q, x.history, q * x.history, q - x.history], dim=-1)
        weights = self.activation_unit(features.flatten(0, 1)).view_as(x.mask)  # (B, L)
        weights = weights.masked_fill(~x.mask, 0.0)
        pooled = torch.einsum("bl,bld->bd", weights, x.history)
        return self.project(pooled)


# ---------------------------------------------------------------------------- BFS_MF
class BFSInterest(nn.Module):
    """BFS_MF: TWIN's behaviour feature splitting (Chang et al. 2023) with the multimodal
    similarity as the user-item cross feature.

    TWIN splits a behaviour into its inherent (ID) part, projected to keys and values that
    can be cached per user, and its user-item cross part, which only adds a cheap linear
    term to the attention logits: alpha = (K_h W_k)(q W_q)^T / sqrt(dk) + (K_c W_c) beta.
    With the scalar similarity c as the cross feature, (c W_c) beta is c * beta_h, one learned
    scalar per head, so no per-candidate key is ever projected:

        e[b, h, l] = q_h . K_id[h, l] / (sqrt(dk) tau) + c[b, l] beta_h,   V = S W_v

    Output (B, d_h).
    """

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
        att = self.attention
        scores = att.scores(x.target, x.history, None)  # (B, H, L)
        scores = scores + x.sims[:, None, :] * self.cross_beta[None, :, None]
        weights = masked_softmax(scores, x.mask[:, None, :])
        v = att.w_v(x.history).unflatten(-1, (att.num_heads, att.head_dim))  # (B, L, H, dk)
        return torch.einsum("bhl,blhd->bhd", weights, v).flatten(-2)


# --------------------------------------------------------------------------- SIMTIER
class SIMTIERInterest(nn.Module):
    """SIMTIER (Sheng et al. 2024): the similarity histogram as a dense feature of the head.

    SimTier counts the target-history similarities in N uniform tiers over [-1, 1] and feeds
    that N-vector to the downstream MLP next to the other embeddings; the ID history is
    modelled by target attention (the paper's online base model is TA + SIMTIER). Output:
    [TA interest (d_h); log(1 + counts) (N)], so out_dim = d_h + N. The log keeps the scale
    of the counts independent of history length (as in models/histogram.py).
    """

    def __init__(
        self,
        item_dim: int,
        hidden_dim: int,
        num_heads: int,
        histogram_bins: int,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.out_dim = hidden_dim + histogram_bins
        self.histogram_bins = histogram_bins
        self.ta = _ta(item_dim, hidden_dim, num_heads, temperature)

    def forward(self, x: InterestInputs) -> torch.Tensor:
        counts = similarity_histogram(x.sims, x.mask, self.histogram_bins)
        return torch.cat([self.ta(x), torch.log1p(counts)], dim=-1)


# ------------------------------------------------------------------------------ MAKE
class MultimodalModule(nn.Module):
    """MAKE's multimodal-related parameters: an MLP over similarity features (B, out_dim).

    Features of the target-history similarities c (B, L) under mask (B, L):
    log(1 + counts) per similarity bucket (the data's M equal-frequency buckets), the
    masked mean and the masked max of c (0 for an empty history) -> (B, M + 2) -> MLP.
    It reads no ID embedding, so it can be trained for many epochs without the ID tables
    overfitting (the reason MAKE pre-trains it separately).
    """

    def __init__(self, bucket_boundaries: tuple[float, ...], hidden_dims: list[int], out_dim: int):
        super().__init__()
        self.register_buffer("boundaries", torch.tensor(bucket_boundaries, dtype=torch.float32))
        self.num_buckets = len(bucket_boundaries) + 1
        self.out_dim = out_dim
        self.mlp = MLP(self.num_buckets + 2, [*hidden_dims, out_dim], final_activation=True)

    def features(self, sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = mask.to(sims.dtype)
        buckets = bucketize(sims, self.boundaries)
        counts = sims.new_zeros(sims.shape[0], self.num_buckets).scatter_add_(1, buckets, weight)
        count = weight.sum(-1, keepdim=True)
        mean = (sims * weight).sum(-1, keepdim=True) / count.clamp(min=1.0)
        peak = sims.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
        peak = torch.where(count > 0, peak, torch.zeros_like(peak))
        return torch.cat([torch.log1p(counts), mean, peak], dim=-1)

    def forward(self, sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(sims, mask))


class MAKEInterest(nn.Module):
    """MAKE (Sheng et al. 2024): ID target attention + a pre-trained multimodal module.

    MAKE trains the multimodal-related parameters on the CTR task for several epochs
    (paper: 10) in a separate stage, since they converge slower than ID embeddings, which
    overfit after one epoch, then transfers them to the CTR model, trained as usual. Here the
    multimodal module is `MultimodalModule`; stage 1 trains `make_pretrain_model(spec,
    config)`, `transfer_pretrained` copies its module into this arch. Output:
    [TA interest (d_h); multimodal (mm_dim)].
    """

    def __init__(
        self,
        item_dim: int,
        hidden_dim: int,
        num_heads: int,
        multimodal: MultimodalModule,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.out_dim = hidden_dim + multimodal.out_dim
        self.ta = _ta(item_dim, hidden_dim, num_heads, temperature)
        self.multimodal = multimodal

    def forward(self, x: InterestInputs) -> torch.Tensor:
        return torch.cat([self.ta(x), self.multimodal(x.sims, x.mask)], dim=-1)


class MAKEPretrainModel(nn.Module):
    """MAKE's stage-1 model: `MultimodalModule` + an MLP head -> logits (B,), from a `Batch`.

    Dense only (no embedding table): it reads the batch's similarities and history lengths,
    so it trains with a plain optimizer (DDP across ranks), no sharding.
    """

    def __init__(self, multimodal: MultimodalModule, mlp_dims: list[int]) -> None:
        super().__init__()
        self.multimodal = multimodal
        self.head = MLP(multimodal.out_dim, [*mlp_dims, 1])

    def forward(self, batch: Batch) -> torch.Tensor:
        history = batch.sparse_features[HIST_ITEM]
        lengths, offsets = history.lengths().long(), history.offsets().long()
        max_len = max(int(lengths.max()), 1) if lengths.numel() else 1
        sims = torch.ops.fbgemm.jagged_to_padded_dense(
            batch.hist_sims.unsqueeze(-1), [offsets], [max_len], 0.0
        ).squeeze(-1)
        mask = torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)
        return self.head(self.multimodal(sims, mask)).squeeze(-1)


def make_multimodal(spec: FeatureSpec, config: MAKEConfig) -> MultimodalModule:
    """The multimodal module of a MAKE model (the same in stage 1 and stage 2)."""
    return MultimodalModule(spec.bucket_boundaries, config.mm_hidden, config.mm_dim)


def make_pretrain_model(spec: FeatureSpec, config: MAKEConfig) -> MAKEPretrainModel:
    """Stage 1 of MAKE: the model whose `multimodal` is pre-trained `config.pretrain_epochs`
    epochs on the CTR labels. forward(batch) -> logits (B,); train with BCE-with-logits."""
    return MAKEPretrainModel(make_multimodal(spec, config), config.mlp_dims)


def transfer_pretrained(src: MAKEPretrainModel, dst: nn.Module) -> None:
    """Stage 2 of MAKE: copy the pre-trained multimodal module into a MAKE CTR model.

    dst: a `CTRModel` built with `build_model("make", ...)` (before sharding; its
    multimodal module is dense and replicated, so it is not touched by sharding), or the
    `MAKEInterest` itself. Raises if `dst` has no MAKE multimodal module.
    """
    interest = dst.over_arch.interest if hasattr(dst, "over_arch") else dst
    if not isinstance(interest, MAKEInterest):
        raise TypeError(f"transfer_pretrained needs a MAKE model, got {type(interest).__name__}")
    interest.multimodal.load_state_dict(src.multimodal.state_dict())


# --------------------------------------------------------------------------- TA_late
class LateFusionInterest(nn.Module):
    """TA_late (paper Fig. 4b, Table IV): ID and similarity attended separately, merged last.

    ID path: plain TA, K_id = S W_k, V_id = S W_v (target-agnostic, cacheable).
    Similarity path: per-position linear projections of the scalar c,
        K_sim[l] = c_l w_k,  V_sim[l] = c_l w_v + b_v   (B, L, d_h), target-aware,
    attended by its own query q W_q'. A key bias b_k would add q.b_k to every position's
    score, which the softmax cancels, so the key projection has none. The two interest
    vectors are concatenated (merged at the prediction layer): out_dim = 2 d_h.
    """

    def __init__(
        self, item_dim: int, hidden_dim: int, num_heads: int, temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.out_dim = 2 * hidden_dim
        self.ta = _ta(item_dim, hidden_dim, num_heads, temperature)
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.scale = 1.0 / (self.head_dim**0.5 * temperature)
        self.sim_query = nn.Linear(item_dim, hidden_dim, bias=False)
        self.sim_key = nn.Linear(1, hidden_dim, bias=False)
        self.sim_value = nn.Linear(1, hidden_dim)

    def forward(self, x: InterestInputs) -> torch.Tensor:
        c = x.sims.unsqueeze(-1)  # (B, L, 1)
        heads = (self.num_heads, self.head_dim)
        q = self.sim_query(x.target).unflatten(-1, heads)  # (B, H, dk)
        k = self.sim_key(c).unflatten(-1, heads)  # (B, L, H, dk)
        v = self.sim_value(c).unflatten(-1, heads)
        scores = torch.einsum("bhd,blhd->bhl", q, k) * self.scale
        weights = masked_softmax(scores, x.mask[:, None, :])
        r_sim = torch.einsum("bhl,blhd->bhd", weights, v).flatten(-2)
        return torch.cat([self.ta(x), r_sim], dim=-1)
