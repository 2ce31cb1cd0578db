"""The interface every user-interest arch implements, in training and in serving.

An interest arch maps a target and the user's history to an interest vector (B, out_dim).
The CTR model (models/ctr.py) composes one with the TorchRec embeddings and the head.

Training (and the plain reference): `forward(x: InterestInputs)` over a padded batch, one
history per sample.

Serving, one user and B candidates (no padding: L is the user's history length):
- `encode(history (L, D)) -> state`: what depends only on the user, computed once per
  request (K_id and V_id for the attention arches, the whole interest for SASRec);
- `attend(state, history, query (B, D), sims (B, L), buckets (B, L)) -> (B, out_dim)`.
The defaults here serve an arch per candidate: `encode` keeps nothing and `attend` runs
`forward` on the history repeated B times, so an arch whose user side cannot be cached
(DIN's activation unit reads target and history together) is served by its training code.
Arches with a cacheable user side override both and set `caches_user`; tests check each
against `forward`. `needs_sims` / `needs_buckets` say what the scorer must compute.

Everything here is TorchScript-compatible: the exported scorer scripts these methods.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


class InterestInputs(NamedTuple):
    """Shapes: B targets, L history slots (padded), D item representation size.

    target (B, D); history (B, L, D); mask (B, L) bool; sims (B, L) cosine similarity of
    target and history item (0 on padding); buckets (B, L) long; lengths (B,) long.
    """

    target: Tensor
    history: Tensor
    mask: Tensor
    sims: Tensor
    buckets: Tensor
    lengths: Tensor


def request_inputs(history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor) -> InterestInputs:
    """One user's request as B training rows: history (L, D) repeated for each of the B
    candidates `query` (B, D); sims and buckets (B, L), or empty when the arch reads neither.
    An empty history becomes one masked padding slot, as in a training batch.

    >>> x = request_inputs(torch.randn(3, 4), torch.randn(2, 4), torch.empty(0), torch.empty(0))
    >>> x.history.shape, x.sims.shape, x.lengths.tolist()
    (torch.Size([2, 3, 4]), torch.Size([2, 3]), [3, 3])
    """
    batch, length = query.shape[0], history.shape[0]
    lengths = torch.full((batch,), length, dtype=torch.long, device=query.device)
    if length == 0:  # one padding slot, as a training batch pads an empty history
        history = history.new_zeros(1, history.shape[1])
    slots = history.shape[0]
    if sims.numel() == 0:
        sims = query.new_zeros(batch, slots)
    if buckets.numel() == 0:
        buckets = torch.zeros(batch, slots, dtype=torch.long, device=query.device)
    return InterestInputs(
        target=query,
        history=history.unsqueeze(0).expand(batch, slots, history.shape[1]),
        mask=torch.full((batch, slots), length > 0, dtype=torch.bool, device=query.device),
        sims=sims,
        buckets=buckets,
        lengths=lengths,
    )


class InterestArch(nn.Module):
    """Base of every interest arch: the interface above, served per candidate by default.

    Subclasses set `out_dim` (int) and implement `forward`. The flags are plain class
    attributes (no annotations: TorchScript would read postponed ones as unknown types).
    """

    caches_user = False
    needs_sims = False
    needs_buckets = False

    @torch.jit.export
    def encode(self, history: Tensor) -> State:
        """Per-candidate serving caches nothing: `attend` reads the history itself."""
        return {}

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        """Per-candidate serving: the training forward over the history repeated B times."""
        return self.forward(request_inputs(history, query, sims, buckets))
