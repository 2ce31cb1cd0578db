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
    """DNN: [mean of the history's item representations; target; user] -> MLP head."""


class MeanPoolInterest(InterestArch):
    """The masked mean of the history (B, D); an empty history gives zeros.

    >>> arch = MeanPoolInterest(2)
    >>> x = InterestInputs(torch.zeros(2, 2), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]] * 2),
    ...                    torch.tensor([[True, True], [True, False]]), torch.zeros(2, 2),
    ...                    torch.zeros(2, 2, dtype=torch.long), torch.tensor([2, 1]))
    >>> arch(x)
    tensor([[2., 3.],
            [1., 2.]])
    """

    caches_user = True

    def __init__(self, item_dim: int) -> None:
        super().__init__()
        self.out_dim = item_dim

    def forward(self, x: InterestInputs) -> Tensor:
        weight = x.mask.to(x.history.dtype).unsqueeze(-1)  # (B, L, 1)
        total = (x.history * weight).sum(1)
        return total / weight.sum(1).clamp(min=1.0)

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        """history (L, D) -> its mean (1, D), zeros when L = 0."""
        mean = history.sum(0, keepdim=True) / max(history.shape[0], 1)
        return {"interest": mean}

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        return state["interest"].expand(query.shape[0], self.out_dim)


def build_dnn(config: DNNConfig, item_dim: int, spec: FeatureSpec) -> MeanPoolInterest:
    return MeanPoolInterest(item_dim)
