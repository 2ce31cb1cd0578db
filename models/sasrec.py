"""SASRec (Kang & McAuley 2018): target-agnostic causal self-attention over the history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.config import ModelConfig
from models.dta import masked_softmax
from models.interest import InterestArch, InterestInputs, State, request_inputs
from models.mlp import MLP

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.features import FeatureSpec


@dataclass
class SASRecConfig(ModelConfig):
    """SASRec: target-agnostic causal self-attention, interest = last valid position.

    num_layers: pre-LN transformer blocks (SASRec uses 2).
    max_positions: learned position embeddings, counted back from the most recent item.
    """

    num_layers: int = 2
    max_positions: int = 200


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
        """The attention by torch's fused `scaled_dot_product_attention` (one pass over the
        (L, L) scores instead of einsum, scale, three masks and a softmax: a SASRec
        training step 1.77x faster on the `amazon` preset, one CPU thread, `python -m
        scripts.bench_attention_forms --model sasrec`). It has no "attend to nothing": a
        row with nothing allowed attends to key 0 and is zeroed."""
        qkv = self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.transpose(1, 3).unbind(2)  # (B, H, L, d_k) each
        some = allowed.any(-1, keepdim=True)  # (B, L, 1)
        mask = allowed.clone()
        mask[:, :, :1] |= ~some  # (a no-op slice when L = 0)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
        attended = attended.transpose(1, 2).flatten(-2) * some.to(x.dtype)  # (B, L, d_h)
        x = x + self.out(attended)
        return x + self.ffn(self.ffn_norm(x))

    def forward_at(
        self, x: torch.Tensor, allowed: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        """`forward(x, allowed)[b, position[b]]` (B, d_h), computed at that one query
        position per sample only: its query, attention row, output projection and FFN
        (keys and values still from every position). SASRec's interest is the last valid
        position of the last block, so that block needs no other row: its (L, L) attention
        becomes (1, L), its FFN one row. position (B,) int64 in [0, L), L >= 1."""
        d = self.num_heads * self.head_dim
        rows = torch.arange(x.shape[0], device=x.device)
        normed = self.attn_norm(x)  # (B, L, d_h)
        weight, bias = self.qkv.weight, self.qkv.bias
        kv = F.linear(normed, weight[d:], bias[d:]).unflatten(
            -1, (2, self.num_heads, self.head_dim)
        )
        k, v = kv.transpose(1, 3).unbind(2)  # (B, H, L, d_k) each
        q = F.linear(normed[rows, position], weight[:d], bias[:d])  # (B, d_h)
        q = q.unflatten(-1, (self.num_heads, 1, self.head_dim))  # (B, H, 1, d_k)
        row = allowed[rows, position]  # (B, L)
        some = row.any(-1, keepdim=True)  # (B, 1)
        mask = row.clone()
        mask[:, :1] |= ~some
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        attended = attended.flatten(1) * some.to(x.dtype)  # (B, d_h), heads in order
        y = x[rows, position] + self.out(attended)
        return y + self.ffn(self.ffn_norm(y))

    @torch.jit.unused
    def forward_reference(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """`forward` computed plainly: the (B, H, L, L) scores and a masked softmax."""
        qkv = self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = torch.einsum("bihd,bjhd->bhij", q, k) * self.head_dim**-0.5
        weights = masked_softmax(scores, allowed[:, None])  # (B, H, L, L)
        attended = torch.einsum("bhij,bjhd->bihd", weights, v).flatten(-2)
        x = x + self.out(attended)
        return x + self.ffn(self.ffn_norm(x))


class SASRecInterest(InterestArch):
    """SASRec: unidirectional self-attention over the history, target-agnostic.

    Follows Kang & McAuley (2018): item embeddings (projected to d_h) plus learned position
    embeddings, `num_layers` causal pre-LN blocks, a final LayerNorm, and the output at the
    last (most recent) valid position as the user interest. SASRec left-pads so that the most
    recent item always has the same position; our histories are right-padded (oldest first),
    so positions count back from the most recent item (0 = most recent), which gives the same
    embedding to the same recency. Items older than `max_positions` share the last position.
    Padding is never attended (causal + key mask); an empty history gives zeros.

    Target-agnostic, so serving caches the whole interest vector per user: `encode` runs
    `forward` once on the user's history, `attend` repeats it for the B candidates.

    >>> arch = SASRecInterest(8, hidden_dim=16, num_heads=2, num_layers=1, max_positions=10)
    >>> x = InterestInputs(torch.randn(2, 8), torch.randn(2, 3, 8),
    ...                    torch.tensor([[True, True, False], [False] * 3]), torch.zeros(2, 3),
    ...                    torch.zeros(2, 3, dtype=torch.long), torch.tensor([2, 0]))
    >>> out = arch(x)
    >>> out.shape, bool(out[1].abs().sum() == 0)
    (torch.Size([2, 16]), True)
    """

    caches_user = True

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
        """The interest (B, d_h). The last block runs at the last valid position only
        (`CausalSelfAttentionBlock.forward_at`: nothing else of it reaches the output), the
        others at every position; `forward_reference` runs every block everywhere."""
        if x.mask.shape[1] == 0:
            return x.history.new_zeros(x.history.shape[0], self.out_dim)
        h, allowed = self._embedded(x)
        last = (x.lengths - 1).clamp(min=0)
        final = len(self.blocks) - 1
        out = h[torch.arange(h.shape[0], device=h.device), last]  # (B, d_h) without blocks
        for i, block in enumerate(self.blocks):
            if i < final:
                h = block(h, allowed)
            else:
                out = block.forward_at(h, allowed, last)
        out = self.norm(out)
        return out * (x.lengths > 0).unsqueeze(-1).to(out.dtype)

    def _embedded(self, x: InterestInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(h (B, L, d_h): items + recency positions, allowed (B, L, L): causal and real)."""
        length = x.mask.shape[1]
        slots = torch.arange(length, device=x.mask.device)
        recency = (x.lengths.unsqueeze(-1) - 1 - slots).clamp(0, self.max_positions - 1)  # (B, L)
        h = self.input(x.history) + self.positions(recency)
        causal = slots[:, None] >= slots[None, :]  # (L, L): query i sees keys j <= i
        return h, causal & x.mask[:, None, :]

    @torch.jit.unused
    def forward_reference(self, x: InterestInputs) -> torch.Tensor:
        """`forward` computed plainly: every block at every position (the plain attention
        form), then the last valid position."""
        h, allowed = self._embedded(x)
        for block in self.blocks:
            h = block.forward_reference(h, allowed)
        last = (x.lengths - 1).clamp(min=0)
        out = self.norm(h[torch.arange(h.shape[0], device=h.device), last])  # (B, d_h)
        return out * (x.lengths > 0).unsqueeze(-1).to(out.dtype)

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        """history (L, D) -> interest (1, d_h), the same for every candidate."""
        empty = history.new_zeros(1, 0)
        x = request_inputs(history, history.new_zeros(1, history.shape[1]), empty, empty.long())
        return {"interest": self.forward(x)}

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        return state["interest"].expand(query.shape[0], self.out_dim)


def build_sasrec(config: SASRecConfig, item_dim: int, spec: FeatureSpec) -> SASRecInterest:
    return SASRecInterest(
        item_dim, config.hidden_dim, config.num_heads, config.num_layers, config.max_positions
    )
