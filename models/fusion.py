"""Complementary Modality Modeling (CMM): r_u = a * r_me + (1 - a) * r_mc."""

from __future__ import annotations

import math

import torch
from torch import nn


class FixedFusion(nn.Module):
    """The paper's fusion with a fixed `a` in [0, 1] (Eq. 24).

    >>> FixedFusion(0.25)(torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([3]))
    tensor([[0.2500, 0.2500]])
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def forward(
        self, r_me: torch.Tensor, r_mc: torch.Tensor, history_lengths: torch.Tensor
    ) -> torch.Tensor:
        return self.alpha * r_me + (1.0 - self.alpha) * r_mc


class ActivityGate(nn.Module):
    """Activity-aware fusion, the option the paper proposes (Sec. V-E4) but does not build.

    a(n) = sigmoid(w * log(1 + n) + b), with n the user's history length: a learned,
    monotone-capable gate so low-activity users can lean on the modality-centric r_mc.
    Starts at a(median_length) = alpha_init with a positive slope.

    >>> gate = ActivityGate(alpha_init=0.3)
    >>> bool(gate.alpha(torch.tensor([1])) < gate.alpha(torch.tensor([100])))
    True
    """

    def __init__(self, alpha_init: float = 0.5, median_length: float = 8.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.0))
        logit = math.log(alpha_init / (1.0 - alpha_init))
        self.bias = nn.Parameter(torch.tensor(logit - math.log1p(median_length)))

    def alpha(self, history_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1) fusion weight of r_me."""
        x = torch.log1p(history_lengths.to(self.weight.dtype))
        return torch.sigmoid(self.weight * x + self.bias).unsqueeze(-1)

    def forward(
        self, r_me: torch.Tensor, r_mc: torch.Tensor, history_lengths: torch.Tensor
    ) -> torch.Tensor:
        a = self.alpha(history_lengths)
        return a * r_me + (1.0 - a) * r_mc
