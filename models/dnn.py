"""DNN: the target's embedding and the mean of the history embeddings into the MLP head.

The floor every CTR benchmark reports (FuxiCTR's DNN, the YouTube-DNN-style pooled
history): no attention, no multimodal signal. The mean is target-agnostic, so serving
caches it per user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.config import ModelConfig
from models.interest import InterestArch, InterestInputs, State

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.features import FeatureSpec


@dataclass
class DNNConfig(ModelConfig):
    """DNN: [pooled history item representations; target; user] -> MLP head.

    pooling: "mean" (the masked mean, YouTube-DNN) or "sum" (the masked sum, FuxiCTR's
        default for a sequence feature, `MaskedSumPooling`): the sum keeps how many
        behaviours the user has, which the mean divides away.
    """

    pooling: str = "mean"


class MeanPoolInterest(InterestArch):
    """The masked mean (or sum, `pooling="sum"`) of the history (B, D); an empty history
    gives zeros.

    >>> arch = MeanPoolInterest(2)
    >>> x = InterestInputs(torch.zeros(2, 2), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]] * 2),
    ...                    torch.tensor([[True, True], [True, False]]), torch.zeros(2, 2),
    ...                    torch.zeros(2, 2, dtype=torch.long), torch.tensor([2, 1]))
    >>> arch(x)
    tensor([[2., 3.],
            [1., 2.]])
    """

    caches_user = True

    def __init__(self, item_dim: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ValueError(f"dnn pooling must be 'mean' or 'sum', got {pooling!r}")
        self.out_dim = item_dim
        self.mean = pooling == "mean"

    def forward(self, x: InterestInputs) -> Tensor:
        weight = x.mask.to(x.history.dtype).unsqueeze(-1)  # (B, L, 1)
        total = (x.history * weight).sum(1)
        return total / weight.sum(1).clamp(min=1.0) if self.mean else total

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        """history (L, D) -> its mean or sum (1, D), zeros when L = 0."""
        total = history.sum(0, keepdim=True)
        return {"interest": total / max(history.shape[0], 1) if self.mean else total}

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        return state["interest"].expand(query.shape[0], self.out_dim)


def build_dnn(config: DNNConfig, item_dim: int, spec: FeatureSpec) -> MeanPoolInterest:
    return MeanPoolInterest(item_dim, config.pooling)
