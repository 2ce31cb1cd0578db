"""Add Decoupled Target Attention to an existing TorchRec model: torchrec's DLRM.

DLRM pools its sparse features (EmbeddingBagCollection) and has no sequence arch. To give
it a target-aware user interest, wrap it: look up the target item and its history in an
EmbeddingCollection (unpooled), run `DecoupledTargetAttention` with the similarity buckets,
and hand the interest vector (B, d_h) to DLRM as extra dense features:

    interest = dta(target (B, D), history (B, L, D), mask (B, L), buckets (B, L))
    logits   = dlrm(cat([dense_features, interest]), sparse_features)

Both embedding modules are plain TorchRec modules, so DistributedModelParallel shards the
wrapper as it would shard DLRM. Run it from the repository root (a few training steps on
random data): `python -m examples.dlrm_with_dta`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.buckets import bucketize
from models.dta import DecoupledTargetAttention

NUM_DENSE, NUM_ITEMS, NUM_USERS, DIM = 4, 50, 20, 8
BOUNDARIES = (-0.2, 0.0, 0.2, 0.4)  # M - 1 similarity cut points, from the training data


class DLRMWithDTA(nn.Module):
    """DLRM whose dense input is [dense features; DTA interest over the item history].

    forward(dense (B, F), sparse KJT for DLRM, history KJT with keys `item` (one per sample)
    and `hist_item` (jagged), hist_sims (N,) aligned with `hist_item`) -> logits (B,).
    """

    def __init__(self, dlrm: DLRM, history_embeddings: EmbeddingCollection, dta: nn.Module):
        super().__init__()
        self.dlrm = dlrm
        self.history_embeddings = history_embeddings
        self.dta = dta
        self.register_buffer("boundaries", torch.tensor(BOUNDARIES))

    def forward(
        self,
        dense_features: torch.Tensor,
        sparse_features: KeyedJaggedTensor,
        history_features: KeyedJaggedTensor,
        hist_sims: torch.Tensor,
    ) -> torch.Tensor:
        embeddings = self.history_embeddings(history_features)
        history = embeddings["hist_item"]
        offsets, lengths = history.offsets().long(), history.lengths().long()
        max_len = max(int(lengths.max()), 1)
        pad = torch.ops.fbgemm.jagged_to_padded_dense
        padded = pad(history.values(), [offsets], [max_len], 0.0)  # (B, L, D)
        sims = pad(hist_sims.unsqueeze(-1), [offsets], [max_len], 0.0).squeeze(-1)  # (B, L)
        mask = torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)
        buckets = bucketize(sims, self.boundaries)
        interest = self.dta(embeddings["item"].values(), padded, mask, buckets)
        dense = torch.cat([dense_features, interest], dim=-1)
        return self.dlrm(dense, sparse_features).squeeze(-1)


def make_example_model(hidden_dim: int = 16, num_heads: int = 2) -> DLRMWithDTA:
    """A small DLRM (user and item bags) with a DTA over the item history."""
    bags = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name="t_user_bag",
                embedding_dim=DIM,
                num_embeddings=NUM_USERS,
                feature_names=["user"],
            ),
            EmbeddingBagConfig(
                name="t_item_bag",
                embedding_dim=DIM,
                num_embeddings=NUM_ITEMS,
                feature_names=["item"],
            ),
        ]
    )
    dlrm = DLRM(
        embedding_bag_collection=bags,
        dense_in_features=NUM_DENSE + hidden_dim,
        dense_arch_layer_sizes=[16, DIM],
        over_arch_layer_sizes=[16, 1],
    )
    items = EmbeddingCollection(
        tables=[
            EmbeddingConfig(
                name="t_item",
                embedding_dim=DIM,
                num_embeddings=NUM_ITEMS,
                feature_names=["item", "hist_item"],
            )
        ]
    )
    dta = DecoupledTargetAttention(DIM, DIM, hidden_dim, num_heads, num_buckets=len(BOUNDARIES) + 1)
    return DLRMWithDTA(dlrm, items, dta)


def example_batch(
    batch_size: int = 8, max_history: int = 6, seed: int = 0
) -> tuple[tuple[torch.Tensor, KeyedJaggedTensor, KeyedJaggedTensor, torch.Tensor], torch.Tensor]:
    """Random inputs (dense, sparse, history, hist_sims) and labels; one history is empty."""
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(batch_size, dtype=torch.int32)
    users = torch.randint(NUM_USERS, (batch_size,), generator=g)
    items = torch.randint(NUM_ITEMS, (batch_size,), generator=g)
    lengths = torch.randint(max_history + 1, (batch_size,), generator=g, dtype=torch.int32)
    lengths[0] = 0
    history = torch.randint(NUM_ITEMS, (int(lengths.sum()),), generator=g)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.cat([users, items]), lengths=torch.cat([ones, ones])
    )
    history_features = KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "hist_item"],
        values=torch.cat([items, history]),
        lengths=torch.cat([ones, lengths]),
    )
    hist_sims = torch.rand(history.shape[0], generator=g) * 2 - 1
    dense = torch.randn(batch_size, NUM_DENSE, generator=g)
    labels = torch.randint(2, (batch_size,), generator=g).float()
    return (dense, sparse, history_features, hist_sims), labels


def main(steps: int = 5) -> None:
    torch.manual_seed(0)
    model = make_example_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, labels = example_batch()
    for step in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(model(*inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
