"""The serving form of the CTR model: one user, B candidates, torch only.

    scorer = scorer_from_model(model, item_mm)          # a trained, unsharded CTRModel
    state = scorer.encode_user(hist_items, user)        # (L,) long, () long -> dict
    ctr = scorer.score(state, candidates)               # (B,) long -> (B,) probabilities

The training form is models/ctr.py (TorchRec embeddings + OverArch); both build the head's
input with `item_representation` and `head_input` below, and both run the same interest
arch, whose training and serving forms sit side by side in its own file. This module
imports no torchrec, so a serving or benchmark host (a bare CUDA box, say) needs torch only.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.buckets import Bucketizer
from models.interest import InterestArch, State, request_inputs


def item_representation(item: Tensor, category: Tensor | None) -> Tensor:
    """An item's representation (..., D): its ID embedding, then its category's if any."""
    if category is None:
        return item
    return torch.cat([item, category], dim=-1)


def head_input(interest: Tensor, target: Tensor, user: Tensor | None) -> Tensor:
    """The head's input (B, d_head): [interest; target; user embedding (when used)]."""
    if user is None:
        return torch.cat([interest, target], dim=-1)
    return torch.cat([interest, target, user], dim=-1)


class CTRScorer(nn.Module):
    """The serving form of a CTRModel: `encode_user` once per request, then `score`.

        scorer = scorer_from_model(model, item_mm)          # a trained, unsharded CTRModel
        state = scorer.encode_user(hist_items, user)        # (L,) long, () long -> dict
        ctr = scorer.score(state, candidates)               # (B,) long -> (B,) probabilities

    It holds the model's own interest arch and head classes (nothing is re-implemented for
    serving) and the tables as buffers: item_table (I, E), user_table (U, E), category_table (C, E) and
    item_category (I,) when the data has categories, item_mm (I, d_m) L2-normalised.
    `encode_user` computes what depends only on the user: the history's representations
    (L, D), its multimodal vectors, the user embedding and the arch's cache
    (`InterestArch.encode`). `score` computes, per candidate, the cosine similarities
    against the frozen multimodal table (cosine = dot), their buckets (`Bucketizer`, exact
    `bucketize`), the arch's `attend` and the head, in chunks of `chunk` candidates.

    per_candidate: serve the arch by its training forward over the history repeated per
    candidate (the reference, and the only form of arches that cache nothing, such as DIN).
    The scorer is TorchScript-compatible; pipeline/export.py scripts it, and the artifact
    needs torch only.
    """

    def __init__(
        self,
        interest: InterestArch,
        head: nn.Module,
        tables: dict[str, Tensor],
        item_mm: Tensor,
        boundaries: Tensor,
        item_category: Tensor | None = None,
        use_user_embedding: bool = True,
        per_candidate: bool = False,
        chunk: int = 2048,
    ) -> None:
        super().__init__()
        self.interest = interest
        self.head = head
        self.register_buffer("item_table", tables["t_item"].detach().clone())
        self.register_buffer("user_table", tables["t_user"].detach().clone())
        self.has_categories = item_category is not None
        category = tables.get("t_category")
        empty = torch.zeros(0)
        self.register_buffer(
            "category_table", empty if category is None else category.detach().clone()
        )
        self.register_buffer(
            "item_category", empty.long() if item_category is None else item_category.long()
        )
        self.register_buffer("item_mm", item_mm.detach().float().contiguous())
        self.bucketizer = Bucketizer(boundaries)
        self.use_user_embedding = use_user_embedding
        self.per_candidate = per_candidate or not interest.caches_user
        # What the interest arch reads: similarities (B, L) and/or their buckets.
        self.needs_sims: bool = interest.needs_sims or interest.needs_buckets
        self.needs_buckets: bool = interest.needs_buckets
        self.chunk = chunk

    def items(self, ids: Tensor) -> Tensor:
        """Item representations (N,) -> (N, D), as OverArch builds them."""
        emb = self.item_table.index_select(0, ids)
        if not self.has_categories:
            return emb
        categories = self.category_table.index_select(0, self.item_category.index_select(0, ids))
        return item_representation(emb, categories)

    @torch.jit.export
    def encode_user(self, hist_items: Tensor, user: Tensor) -> State:
        """hist_items (L,) long, oldest first; user () long -> the user's state."""
        history = self.items(hist_items)
        state: State = {} if self.per_candidate else self.interest.encode(history)
        state["history"] = history
        state["hist_mm_t"] = self.item_mm.index_select(0, hist_items).t().contiguous()  # (d_m, L)
        state["user"] = self.user_table[user.reshape(())]  # (E,)
        return state

    @torch.jit.export
    def similarities(self, state: State, candidates: Tensor) -> Tensor:
        """Cosine similarities (B, L) of candidates (B,) and the user's history."""
        return torch.mm(self.item_mm.index_select(0, candidates), state["hist_mm_t"])

    def _score_chunk(self, state: State, candidates: Tensor) -> Tensor:
        target = self.items(candidates)
        sims, buckets = torch.zeros(0), torch.zeros(0, dtype=torch.long)
        if self.needs_sims:
            sims = self.similarities(state, candidates)
        if self.needs_buckets:
            buckets = self.bucketizer(sims)
        history = state["history"]
        if self.per_candidate:
            interest = self.interest(request_inputs(history, target, sims, buckets))
        else:
            interest = self.interest.attend(state, history, target, sims, buckets)
        user: Tensor | None = None
        if self.use_user_embedding:
            user = state["user"].expand(candidates.shape[0], state["user"].shape[0])
        return torch.sigmoid(self.head(head_input(interest, target, user)).squeeze(-1))

    @torch.jit.export
    def score(self, state: State, candidates: Tensor) -> Tensor:
        """candidates (B,) long -> CTR (B,) float, in chunks of `chunk` candidates."""
        if candidates.shape[0] <= self.chunk:
            return self._score_chunk(state, candidates)
        return torch.cat([self._score_chunk(state, c) for c in candidates.split(self.chunk)])

    def forward(self, hist_items: Tensor, user: Tensor, candidates: Tensor) -> Tensor:
        """One request: (L,), (), (B,) -> CTR (B,)."""
        return self.score(self.encode_user(hist_items, user), candidates)


def scorer_from_model(
    model: Any,  # models.ctr.CTRModel (not imported here: it needs torchrec)
    item_mm: Tensor | np.ndarray,
    item_category: Tensor | np.ndarray | None = None,
    per_candidate: bool = False,
    chunk: int = 2048,
) -> CTRScorer:
    """The serving scorer of a trained, unsharded CTRModel (eval mode, no gradients).

    item_mm (I, d_m): PreparedData.item_mm; item_category (I,): item_category.npy, needed
    when the model has categories. The scorer shares the model's interest arch and head.
    """
    over = model.over_arch
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
        copy.deepcopy(over.interest),
        copy.deepcopy(over.head),
        tables,
        torch.tensor(np.asarray(item_mm, dtype=np.float32)),
        over.bucket_boundaries,
        item_category=category,
        use_user_embedding=over.use_user_embedding,
        per_candidate=per_candidate,
        chunk=chunk,
    )
    return scorer.eval().requires_grad_(False)
