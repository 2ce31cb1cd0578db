"""The CTR model on TorchRec: sharded ID embeddings + a user-interest arch + an MLP head.

    batch.sparse_features --SparseArch (EmbeddingCollection, sharded by DMP)--> embeddings
    embeddings, batch.hist_sims --OverArch (dense, replicated)--> logits (B,)

One item table serves the target and the history: it is a single `EmbeddingConfig` with
two feature names (`item`, `hist_item`), so the ids of both are looked up in one sharded
table (one copy of the rows, updated by both uses) inside one EmbeddingCollection. An
EmbeddingCollection (unpooled) is used for every feature, users and targets being
sequences of length 1, because the same table cannot be split between an
EmbeddingBagCollection and an EmbeddingCollection without duplicating it, and
EmbeddingCollection shards table-wise, row-wise and column-wise on CPU (gloo) and GPU.

Table names are prefixed with `t_`: a table named like a module attribute fails to shard.
`forward` only calls the two arches: TrainPipelineSparseDist traces it with torch.fx and
treats the shard-free OverArch as a leaf, so everything data-dependent lives there.

`CTRScorer` is the serving form of the same model (one user, B candidates), built from a
trained CTRModel by `scorer_from_model`; it runs the interest arch's serving methods
(models/interest.py) and the same head.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from models.buckets import Bucketizer, bucketize
from models.features import (
    CATEGORY,
    HIST_CATEGORY,
    HIST_ITEM,
    ITEM,
    USER,
    Batch,
    FeatureSpec,
    HistoryLayout,
)
from models.interest import InterestArch, InterestInputs, State, request_inputs
from models.mlp import MLP


class SparseArch(nn.Module):
    """EmbeddingCollection over users, items (target and history) and categories.

    Returns a dict feature name -> JaggedTensor of (N, D) embeddings.

    >>> spec = FeatureSpec(num_users=10, num_items=20, num_categories=0, bucket_boundaries=(0.0,))
    >>> arch = SparseArch(spec, embedding_dim=4)
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(
    ...     keys=["user", "item", "hist_item"], values=torch.tensor([1, 2, 3, 4, 5, 6]),
    ...     lengths=torch.tensor([1, 1, 1, 1, 0, 2], dtype=torch.int32))
    >>> arch(kjt)["hist_item"].values().shape
    torch.Size([2, 4])
    """

    def __init__(
        self, spec: FeatureSpec, embedding_dim: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        tables = [
            EmbeddingConfig(
                name="t_user",
                embedding_dim=embedding_dim,
                num_embeddings=spec.num_users,
                feature_names=[USER],
            ),
            EmbeddingConfig(
                name="t_item",
                embedding_dim=embedding_dim,
                num_embeddings=spec.num_items,
                feature_names=[ITEM, HIST_ITEM],
            ),
        ]
        if spec.has_categories:
            tables.append(
                EmbeddingConfig(
                    name="t_category",
                    embedding_dim=embedding_dim,
                    num_embeddings=spec.num_categories,
                    feature_names=[CATEGORY, HIST_CATEGORY],
                )
            )
        self.embedding_collection = EmbeddingCollection(tables=tables, device=device)

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        return self.embedding_collection(features)


class OverArch(nn.Module):
    """Everything dense: pads the history, bucketizes similarities, runs the interest arch
    and the head MLP over [interest, target, user].

    embeddings: SparseArch output; hist_sims (N,) aligned with the history -> logits (B,).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        interest: InterestArch,
        embedding_dim: int,
        mlp_dims: list[int],
        use_user_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.has_categories = spec.has_categories
        self.use_user_embedding = use_user_embedding
        self.interest = interest
        self.register_buffer(
            "bucket_boundaries", torch.tensor(spec.bucket_boundaries, dtype=torch.float32)
        )
        item_dim = self.item_dim(embedding_dim, spec)
        head_in = interest.out_dim + item_dim + (embedding_dim if use_user_embedding else 0)
        self.head = MLP(head_in, [*mlp_dims, 1])

    @staticmethod
    def item_dim(embedding_dim: int, spec: FeatureSpec) -> int:
        """Size of an item's representation: its id embedding, plus its category's."""
        return embedding_dim * (2 if spec.has_categories else 1)

    def interest_inputs(
        self, embeddings: dict[str, JaggedTensor], hist_sims: torch.Tensor
    ) -> InterestInputs:
        layout = HistoryLayout.of(embeddings[HIST_ITEM])
        target = embeddings[ITEM].values()
        history = layout.pad(embeddings[HIST_ITEM].values())
        if self.has_categories:
            target = item_representation(target, embeddings[CATEGORY].values())
            history = item_representation(history, layout.pad(embeddings[HIST_CATEGORY].values()))
        sims = layout.pad(hist_sims.unsqueeze(-1)).squeeze(-1)
        return InterestInputs(
            target=target,
            history=history,
            mask=layout.mask,
            sims=sims,
            buckets=bucketize(sims, self.bucket_boundaries),
            lengths=layout.lengths,
        )

    def forward(self, embeddings: dict[str, JaggedTensor], hist_sims: torch.Tensor) -> torch.Tensor:
        x = self.interest_inputs(embeddings, hist_sims)
        user = embeddings[USER].values() if self.use_user_embedding else None
        return self.head(head_input(self.interest(x), x.target, user)).squeeze(-1)


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


class CTRModel(nn.Module):
    """SparseArch + OverArch. forward(batch) -> logits (B,)."""

    def __init__(self, sparse_arch: SparseArch, over_arch: OverArch) -> None:
        super().__init__()
        self.sparse_arch = sparse_arch
        self.over_arch = over_arch

    def forward(self, batch: Batch) -> torch.Tensor:
        embeddings = self.sparse_arch(batch.sparse_features)
        return self.over_arch(embeddings, batch.hist_sims)


class CTRTask(nn.Module):
    """Training wrapper: forward(batch) -> (loss, (loss, logits, labels)), detached outputs,
    the contract of torchrec's TrainPipeline. `autocast` runs the model in bf16 on GPU."""

    def __init__(self, model: CTRModel, autocast: bool = False) -> None:
        super().__init__()
        self.model = model
        self.autocast = autocast
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(batch).float()
        loss = self.loss_fn(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


# --------------------------------------------------------------------------- serving form
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
    model: CTRModel,
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
