"""The schema's pooled sparse features on a torchrec EmbeddingBagCollection, and its
dense features' arch.

    batch.pooled_features --PooledArch (EmbeddingBagCollection, sharded by DMP)--> KeyedTensor
    batch.dense_features (B, F) --DenseArch (MLP, as torchrec DLRM's)--> (B, dense_dims[-1])

One `EmbeddingBagConfig` per table of the schema (`FeatureSchema.pooled_tables`): features
naming the same table share its rows; each table has its own dimension and pooling. The
sequences (user, item shared by target and history, sequence side-features) stay on the
EmbeddingCollection of models/ctr.py's SparseArch; both collections are sharded by the
same planner (pipeline/planner_inputs.py `sharders_for`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from models.mlp import DenseArch as DenseArch  # re-exported: the dense side's arch
from models.schema import FeatureSchema

POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def pooled_dims(schema: FeatureSchema, embedding_dim: int) -> list[int]:
    """The dimension of each sparse feature (schema order): its table's, else embedding_dim."""
    return [f.dim or embedding_dim for f in schema.pooled]


class PooledArch(nn.Module):
    """EmbeddingBagCollection over the schema's sparse features.

    forward(KJT with a key per sparse feature) -> KeyedTensor (B, sum of their dims),
    keys in schema order (`values()` is what the head reads).

    >>> from models.schema import schema_from_dict
    >>> schema = schema_from_dict({"features": [
    ...     {"name": "device", "kind": "sparse", "hash_buckets": 8, "dim": 3},
    ...     {"name": "tags", "kind": "sparse", "source": "user", "hash_buckets": 8,
    ...      "dim": 3, "table": "t_device", "multi_valued": True}]})
    >>> arch = PooledArch(schema, embedding_dim=4)
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(keys=["device", "tags"],
    ...     values=torch.tensor([2, 3, 4, 5, 6]), lengths=torch.tensor([1, 1, 3, 0]))
    >>> arch(kjt).values().shape, list(arch.ebc.embedding_bags)
    (torch.Size([2, 6]), ['t_device'])
    """

    def __init__(
        self, schema: FeatureSchema, embedding_dim: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        tables = []
        for name, features in schema.pooled_tables().items():
            first = features[0]
            tables.append(
                EmbeddingBagConfig(
                    name=name,
                    embedding_dim=first.dim or embedding_dim,
                    num_embeddings=first.rows,
                    feature_names=[f.name for f in features],
                    pooling=POOLING[first.pooling],
                )
            )
        self.keys = [f.name for f in schema.pooled]
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.ebc(features)
