"""The training batch: the features of models/features.py as a KeyedJaggedTensor.

Kept apart from models/features.py because it needs torchrec (a `Pipelineable`, what
TrainPipelineSparseDist moves between devices and streams), which serving hosts lack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from models.features import HIST_ITEM, USER


@dataclass
class Batch(Pipelineable):
    """One batch of B samples.

    sparse_features: the sequence KJT (EmbeddingCollection) with keys `user`, `item`
        (one id per sample), `hist_item` (jagged history, oldest first) and, when the data
        has categories, `category` and `hist_category` (aligned with `hist_item`), then
        each extra sequence feature of the schema (models/schema.py) as `NAME` (one per
        sample) and `hist_NAME` (aligned with `hist_item`).
    hist_sims: (N,) float32, cosine similarity of each history item to its sample's
        target, aligned with `sparse_features["hist_item"].values()`.
    labels: (B,) float32.
    hist_times: (N,) float32, the target's time minus each behaviour's in seconds, aligned
        like hist_sims; None when the data has no times (docs/data-format.md).
    hist_modality_sims: (N, K) float32, the similarities of each of the K separate
        modalities (FeatureSpec.modalities order), aligned like hist_sims; None when the
        items have one vector.
    pooled_features: the pooled KJT (EmbeddingBagCollection), a key per sparse feature of
        the schema (schema order), one or more ids per sample; None without any.
    dense_features: (B, F) float32, the schema's dense features in order; None without.

    Implements what TrainPipelineSparseDist needs: `to`, `pin_memory`, `record_stream`.
    """

    sparse_features: KeyedJaggedTensor
    hist_sims: torch.Tensor
    labels: torch.Tensor
    hist_times: torch.Tensor | None = None
    hist_modality_sims: torch.Tensor | None = None
    pooled_features: KeyedJaggedTensor | None = None
    dense_features: torch.Tensor | None = None

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, non_blocking=non_blocking)

        return Batch(
            sparse_features=self.sparse_features.to(device=device, non_blocking=non_blocking),
            hist_sims=self.hist_sims.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            hist_times=move(self.hist_times),
            hist_modality_sims=move(self.hist_modality_sims),
            pooled_features=(
                None
                if self.pooled_features is None
                else self.pooled_features.to(device=device, non_blocking=non_blocking)
            ),
            dense_features=move(self.dense_features),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.sparse_features.record_stream(stream)
        self.hist_sims.record_stream(stream)
        self.labels.record_stream(stream)
        for t in (self.hist_times, self.hist_modality_sims, self.dense_features):
            if t is not None:
                t.record_stream(stream)
        if self.pooled_features is not None:
            self.pooled_features.record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(
            sparse_features=self.sparse_features.pin_memory(),
            hist_sims=self.hist_sims.pin_memory(),
            labels=self.labels.pin_memory(),
            hist_times=None if self.hist_times is None else self.hist_times.pin_memory(),
            hist_modality_sims=(
                None if self.hist_modality_sims is None else self.hist_modality_sims.pin_memory()
            ),
            pooled_features=(
                None if self.pooled_features is None else self.pooled_features.pin_memory()
            ),
            dense_features=(
                None if self.dense_features is None else self.dense_features.pin_memory()
            ),
        )

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    def users(self) -> torch.Tensor:
        """(B,) user index of each sample."""
        return self.sparse_features[USER].values()

    def history_lengths(self) -> torch.Tensor:
        """(B,) number of history items of each sample."""
        return self.sparse_features[HIST_ITEM].lengths()


@dataclass
class HistoryLayout:
    """Where each sample's history sits in a jagged feature, and its padded layout.

    offsets (B+1,) long; lengths (B,) long; max_len L = max(lengths, 1); mask (B, L) bool,
    True on real history slots.
    """

    offsets: torch.Tensor
    lengths: torch.Tensor
    max_len: int
    mask: torch.Tensor

    @staticmethod
    def of(history: JaggedTensor) -> HistoryLayout:
        lengths = history.lengths().long()
        max_len = max(int(lengths.max()), 1) if lengths.numel() else 1
        mask = torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)
        return HistoryLayout(history.offsets().long(), lengths, max_len, mask)

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """Jagged (N, D) values aligned with the history -> (B, L, D), zeros on padding."""
        return torch.ops.fbgemm.jagged_to_padded_dense(values, [self.offsets], [self.max_len], 0.0)
