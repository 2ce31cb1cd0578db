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

Schema features (models/schema.py, docs/feature-schema.md): extra *sequence* features
(item attributes of target and history) are tables of the same EmbeddingCollection, joined
to the item representation like the category; *sparse* (pooled) features are on an
EmbeddingBagCollection (`models.pooled.PooledArch`, `CTRModel.pooled_arch`) and *dense*
ones go through a dense arch; both are concatenated into the head after
[interest, target, user] (`OverArch.side_input`).

Table names are prefixed with `t_`: a table named like a module attribute fails to shard.
`forward` only calls the two arches: TrainPipelineSparseDist traces it with torch.fx and
treats the shard-free OverArch as a leaf, so everything data-dependent lives there.

Its serving form (one user, B candidates) is `models.scorer.CTRScorer`, built from a
trained CTRModel by `scorer_from_model`; it runs the interest arch's serving methods
(models/interest.py) and the same head, and lives in its own torchrec-free module so that
serving hosts need torch only.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from models.batch import Batch, HistoryLayout
from models.buckets import bucketize
from models.collisions import ManagedCollisions, managed_collection
from models.features import CATEGORY, HIST_CATEGORY, HIST_ITEM, ITEM, USER, FeatureSpec
from models.interest import InterestArch, InterestInputs
from models.mlp import MLP, DenseArch
from models.pooled import PooledArch, pooled_dims
from models.scorer import head_input, item_representation


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
        self,
        spec: FeatureSpec,
        embedding_dim: int,
        device: torch.device | None = None,
        managed_collisions: ManagedCollisions | None = None,
    ) -> None:
        """managed_collisions: ids from an open space through torchrec's managed collision
        modules (models/collisions.py) instead of vocabulary indices."""
        super().__init__()
        mc = managed_collisions
        rows = (lambda n: n) if mc is None else mc.table_rows
        tables = [
            EmbeddingConfig(
                name="t_user",
                embedding_dim=embedding_dim,
                num_embeddings=rows(spec.num_users),
                feature_names=[USER],
            ),
            EmbeddingConfig(
                name="t_item",
                embedding_dim=embedding_dim,
                num_embeddings=rows(spec.num_items),
                feature_names=[ITEM, HIST_ITEM],
            ),
        ]
        if spec.has_categories:
            tables.append(
                EmbeddingConfig(
                    name="t_category",
                    embedding_dim=embedding_dim,
                    num_embeddings=rows(spec.num_categories),
                    feature_names=[CATEGORY, HIST_CATEGORY],
                )
            )
        for feature in spec.schema.extra_sequence:  # item attributes of target and history
            tables.append(
                EmbeddingConfig(
                    name=feature.table,
                    embedding_dim=embedding_dim,
                    num_embeddings=rows(feature.rows),
                    feature_names=[feature.name, feature.history_key],
                )
            )
        self.managed = mc is not None
        self.embedding_collection = (
            EmbeddingCollection(tables=tables, device=device)
            if mc is None
            else managed_collection(tables, mc, device)
        )

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        out = self.embedding_collection(features)
        return out[0] if self.managed else out  # a managed collection also returns the ids


class OverArch(nn.Module):
    """Everything dense: pads the history, bucketizes similarities, runs the interest arch
    and the head MLP over [interest, target, user, pooled features, dense arch output].

    embeddings: SparseArch output; hist_sims (N,) aligned with the history -> logits (B,);
    hist_times (N,) and hist_modality_sims (N, K), aligned likewise, when the data has them
    (models/batch.py), padded into InterestInputs.times and .modality_sims; pooled: the
    PooledArch output (KeyedTensor, values (B, P)) and dense (B, F), when the schema has
    sparse or dense features. The item representation (target and history) is the item
    embedding, then the category's and each extra sequence feature's (schema order).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        interest: InterestArch,
        embedding_dim: int,
        mlp_dims: list[int],
        use_user_embedding: bool = True,
        dropout: float = 0.0,
        dense_dims: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.has_categories = spec.has_categories
        self.use_user_embedding = use_user_embedding
        self.interest = interest
        self.sequence_features = [f.name for f in spec.schema.extra_sequence]
        self.schema = spec.schema  # what serving rebuilds the side input from
        self.embedding_dim = embedding_dim
        self.register_buffer(
            "bucket_boundaries", torch.tensor(spec.bucket_boundaries, dtype=torch.float32)
        )
        item_dim = self.item_dim(embedding_dim, spec)
        head_in = interest.out_dim + item_dim + (embedding_dim if use_user_embedding else 0)
        self.pooled_dim = sum(pooled_dims(spec.schema, embedding_dim))
        self.dense_arch: DenseArch | None = None
        if spec.schema.num_dense:
            self.dense_arch = DenseArch(spec.schema.num_dense, list(dense_dims or [16]))
            head_in += self.dense_arch.out_dim
        head_in += self.pooled_dim
        self.head = MLP(head_in, [*mlp_dims, 1], dropout=dropout)

    @staticmethod
    def item_dim(embedding_dim: int, spec: FeatureSpec) -> int:
        """Size of an item's representation: its id embedding, plus its category's and each
        extra sequence feature's."""
        return embedding_dim * (1 + int(spec.has_categories) + len(spec.schema.extra_sequence))

    def side_input(
        self, pooled: KeyedTensor | None, dense: torch.Tensor | None
    ) -> torch.Tensor | None:
        """(B, P + dense_dims[-1]): the pooled embeddings and the dense arch's output, what
        the head reads after [interest, target, user]; None without either."""
        parts = []
        if self.pooled_dim:
            if pooled is None:
                raise ValueError("the model has pooled features: the batch has none")
            parts.append(pooled.values())
        if self.dense_arch is not None:
            if dense is None:
                raise ValueError("the model has dense features: the batch has none")
            parts.append(self.dense_arch(dense))
        return torch.cat(parts, dim=-1) if parts else None

    def interest_inputs(
        self,
        embeddings: dict[str, JaggedTensor],
        hist_sims: torch.Tensor,
        hist_times: torch.Tensor | None = None,
        hist_modality_sims: torch.Tensor | None = None,
    ) -> InterestInputs:
        layout = HistoryLayout.of(embeddings[HIST_ITEM])
        target = embeddings[ITEM].values()
        history = layout.pad(embeddings[HIST_ITEM].values())
        if self.has_categories:
            target = item_representation(target, embeddings[CATEGORY].values())
            history = item_representation(history, layout.pad(embeddings[HIST_CATEGORY].values()))
        if self.sequence_features:
            target = torch.cat(
                [target] + [embeddings[f].values() for f in self.sequence_features], dim=-1
            )
            history = torch.cat(
                [history]
                + [layout.pad(embeddings[f"hist_{f}"].values()) for f in self.sequence_features],
                dim=-1,
            )
        sims = layout.pad(hist_sims.unsqueeze(-1)).squeeze(-1)
        times = None if hist_times is None else layout.pad(hist_times.unsqueeze(-1)).squeeze(-1)
        modality_sims = None if hist_modality_sims is None else layout.pad(hist_modality_sims)
        return InterestInputs(
            target=target,
            history=history,
            mask=layout.mask,
            sims=sims,
            buckets=bucketize(sims, self.bucket_boundaries),
            lengths=layout.lengths,
            times=times,
            modality_sims=modality_sims,
        )

    def forward(
        self,
        embeddings: dict[str, JaggedTensor],
        hist_sims: torch.Tensor,
        hist_times: torch.Tensor | None = None,
        hist_modality_sims: torch.Tensor | None = None,
        pooled: KeyedTensor | None = None,
        dense: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.interest_inputs(embeddings, hist_sims, hist_times, hist_modality_sims)
        user = embeddings[USER].values() if self.use_user_embedding else None
        head_in = head_input(self.interest(x), x.target, user)
        side = self.side_input(pooled, dense)
        if side is not None:
            head_in = torch.cat([head_in, side.to(head_in.dtype)], dim=-1)
        return self.head(head_in).squeeze(-1)


class CTRModel(nn.Module):
    """SparseArch (+ PooledArch when the schema has sparse features) + OverArch.
    forward(batch) -> logits (B,)."""

    def __init__(
        self, sparse_arch: SparseArch, over_arch: OverArch, pooled_arch: PooledArch | None = None
    ) -> None:
        super().__init__()
        self.sparse_arch = sparse_arch
        self.over_arch = over_arch
        self.pooled_arch = pooled_arch

    def pooled(self, batch: Batch) -> KeyedTensor | None:
        """The pooled embeddings of the batch's sparse features (None without a PooledArch)."""
        if self.pooled_arch is None:
            return None
        return self.pooled_arch(batch.pooled_features)

    def forward(self, batch: Batch) -> torch.Tensor:
        embeddings = self.sparse_arch(batch.sparse_features)
        return self.over_arch(
            embeddings,
            batch.hist_sims,
            batch.hist_times,
            batch.hist_modality_sims,
            self.pooled(batch),
            batch.dense_features,
        )


class EmbeddingPenalty(nn.Module):
    """Mini-batch L2 of the embedding rows in use: the batch mean of each sample's sum of
    squared norms of the rows it looks up (its user, target and history items, and their
    categories), so only rows the batch touches are penalised and get its gradient (the
    way CTR libraries regularise embeddings; a row looked up twice counts twice).

    features: the features whose rows count. A leaf of TrainPipelineSparseDist's fx trace
    (it holds no sharded module), like OverArch.

    >>> rows = {"item": JaggedTensor(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), lengths=torch.tensor([1, 1])),
    ...         "hist_item": JaggedTensor(torch.ones(2, 2), lengths=torch.tensor([0, 2]))}
    >>> EmbeddingPenalty(["item", "hist_item"])(rows, torch.zeros(2))  # (1 + 4 + 2 + 2) / 2
    tensor(4.5000)
    """

    def __init__(self, features: list[str]) -> None:
        super().__init__()
        self.features = list(features)

    def forward(self, embeddings: dict[str, JaggedTensor], labels: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), device=labels.device)
        for name in self.features:
            total = total + embeddings[name].values().float().pow(2).sum()
        return total / max(labels.shape[0], 1)


def penalised_features(over_arch: OverArch) -> list[str]:
    """The features whose embedding rows the model uses (the user's only when the head
    reads it)."""
    features = [USER] if over_arch.use_user_embedding else []
    features += [ITEM, HIST_ITEM]
    if over_arch.has_categories:
        features += [CATEGORY, HIST_CATEGORY]
    for name in over_arch.sequence_features:
        features += [name, f"hist_{name}"]
    return features


class CTRTask(nn.Module):
    """Training wrapper: forward(batch) -> (loss, (loss, logits, labels)), detached outputs,
    the contract of torchrec's TrainPipeline. `autocast` runs the model in bf16 on GPU.

    embedding_l2: lambda of the embedding penalty (`EmbeddingPenalty`): the loss is
    BCE + lambda * penalty; the last batch's lambda * penalty (detached) is kept in
    `last_penalty` for logging. An interest arch's auxiliary loss (models/interest.py,
    `pop_auxiliary_loss`: DMAE's decoder term, already weighted) is added too, the last one
    (detached) in `last_auxiliary`. No parameters of its own: the state dict is the model's.
    """

    def __init__(self, model: CTRModel, autocast: bool = False, embedding_l2: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.autocast = autocast
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.embedding_l2 = float(embedding_l2)
        self.penalty = (
            EmbeddingPenalty(penalised_features(model.over_arch)) if self.embedding_l2 else None
        )
        self.last_penalty: torch.Tensor | None = None
        self.last_auxiliary: torch.Tensor | None = None

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            # CTRModel.forward's two calls, made here so the penalty sees the embeddings.
            embeddings = self.model.sparse_arch(batch.sparse_features)
            logits = self.model.over_arch(
                embeddings,
                batch.hist_sims,
                batch.hist_times,
                batch.hist_modality_sims,
                self.model.pooled(batch),
                batch.dense_features,
            ).float()
        loss = self.loss_fn(logits, batch.labels)
        auxiliary = self.model.over_arch.interest.pop_auxiliary_loss()
        if auxiliary is not None:
            loss = loss + auxiliary.float()
            self.last_auxiliary = auxiliary.detach()
        if self.penalty is not None:
            penalty = self.embedding_l2 * self.penalty(embeddings, batch.labels)
            loss = loss + penalty
            self.last_penalty = penalty.detach()
        return loss, (loss.detach(), logits.detach(), batch.labels)
