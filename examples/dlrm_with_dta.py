"""Add Decoupled Target Attention to an existing TorchRec model: torchrec's DLRM.

torchrec's `DLRM` is used whole: its EmbeddingBagCollection pools the data's sparse
features (the feature schema's pooled KJT, `Batch.pooled_features`), its DenseArch reads
the dense features, its InteractionArch and OverArch make the logit. DTA adds a
target-aware interest over the item history (the sequence KJT, `Batch.sparse_features`,
on an EmbeddingCollection), handed to DLRM as extra dense features:

    interest = dta(target (B, D), history (B, L, D), mask (B, L), buckets (B, L))
    logits   = dlrm(cat([batch.dense_features, interest]), batch.pooled_features)

The batches come from the project's reader (`pipeline.data.PreparedData.reader`) over data
prepared with a feature schema (docs/feature-schema.md). Both embedding modules are plain
TorchRec modules, so DistributedModelParallel shards the wrapper as it shards DLRM. Run it
from the repository root: `python -m examples.dlrm_with_dta DIR` (a prepared folder with
sparse and dense schema features, e.g. the acceptance data of docs/feature-schema.md).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from models.batch import Batch, HistoryLayout
from models.buckets import bucketize
from models.dta import DecoupledTargetAttention


class DLRMWithDTA(nn.Module):
    """DLRM whose dense input is [dense features; DTA interest over the item history].
    forward(batch: models.batch.Batch) -> logits (B,)."""

    def __init__(self, dlrm: DLRM, items: EmbeddingCollection, dta: nn.Module, boundaries):
        super().__init__()
        self.dlrm, self.items, self.dta = dlrm, items, dta
        self.register_buffer("boundaries", torch.as_tensor(boundaries, dtype=torch.float32))

    def forward(self, batch: Batch) -> torch.Tensor:
        embeddings = self.items(batch.sparse_features)  # item and hist_item share t_item
        layout = HistoryLayout.of(embeddings["hist_item"])
        sims = layout.pad(batch.hist_sims.unsqueeze(-1)).squeeze(-1)  # (B, L)
        interest = self.dta(
            embeddings["item"].values(),
            layout.pad(embeddings["hist_item"].values()),
            layout.mask,
            bucketize(sims, self.boundaries),
        )
        dense = torch.cat([batch.dense_features, interest], dim=-1)
        return self.dlrm(dense, batch.pooled_features).squeeze(-1)


def make_model(data, dim: int = 8, hidden_dim: int = 16, num_heads: int = 2) -> DLRMWithDTA:
    """DLRM over the data's pooled and dense schema features (one dimension for every bag,
    as DLRM's interaction needs) plus DTA over its item history."""
    schema = data.schema
    bags = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=name, embedding_dim=dim, num_embeddings=features[0].rows,
                feature_names=[f.name for f in features],
            )
            for name, features in schema.pooled_tables().items()
        ]
    )  # fmt: skip
    dlrm = DLRM(
        embedding_bag_collection=bags,
        dense_in_features=schema.num_dense + hidden_dim,
        dense_arch_layer_sizes=[16, dim],
        over_arch_layer_sizes=[16, 1],
    )
    items = EmbeddingCollection(
        tables=[
            EmbeddingConfig(
                name="t_item", embedding_dim=dim, num_embeddings=data.vocab_sizes["item"],
                feature_names=["item", "hist_item"],
            )
        ]
    )  # fmt: skip
    boundaries = data.manifest["buckets"]["boundaries"]
    dta = DecoupledTargetAttention(dim, dim, hidden_dim, num_heads, len(boundaries) + 1)
    return DLRMWithDTA(dlrm, items, dta, boundaries)


def main(root: str, steps: int = 20) -> None:
    from pipeline.data import PreparedData

    torch.manual_seed(0)
    data = PreparedData(root)
    model = make_model(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step, batch in enumerate(data.reader("train", 256, shuffle=True)):
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0:
            print(f"step {step}: loss {loss.item():.4f}")
        if step + 1 == steps:
            break


if __name__ == "__main__":
    main(sys.argv[1])
