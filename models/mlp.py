"""A plain MLP: Linear + activation, stacked; and the dense features' arch built of one."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear layers of the given sizes with ReLU between them.

    `final_activation` also puts a ReLU after the last layer (for hidden representations;
    leave it off for logits).

    >>> import torch
    >>> MLP(4, [8, 1])(torch.randn(2, 4)).shape
    torch.Size([2, 1])
    """

    def __init__(
        self, in_dim: int, dims: list[int], final_activation: bool = False, dropout: float = 0.0
    ) -> None:
        layers: list[nn.Module] = []
        for i, out_dim in enumerate(dims):
            layers.append(nn.Linear(in_dim, out_dim))
            if i < len(dims) - 1 or final_activation:
                layers.append(nn.ReLU())
                if dropout:
                    layers.append(nn.Dropout(dropout))
            in_dim = out_dim
        super().__init__(*layers)


class DenseArch(nn.Module):
    """The dense features (B, F) -> (B, dims[-1]): an MLP with a ReLU after every layer,
    the structure of torchrec DLRM's DenseArch (torch-only, so the serving scorer holds it
    without torchrec)."""

    def __init__(self, num_dense: int, dims: list[int]) -> None:
        super().__init__()
        self.out_dim = dims[-1]
        self.mlp = MLP(num_dense, dims, final_activation=True)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(dense)
