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
against `forward`. `needs_sims` / `needs_buckets` say what the scorer must compute;
`needs_times` / `needs_modality_sims` that it must also pass the history's times and the
per-modality similarities (served per candidate, through `request_inputs`).

Auxiliary losses: an arch whose training objective has a term of its own (DMAE's decoder)
computes it in `forward` when training and records it with `record_auxiliary_loss`;
the training wrapper (`models.ctr.CTRTask`) takes it with `pop_auxiliary_loss` and adds it
to the CTR loss, so the trainer, checkpoints and metrics need no special case. The loss
is kept outside the module (a weak map), so copying or scripting an arch never sees it.

Everything here is TorchScript-compatible: the exported scorer scripts these methods.
"""

import weakref
from typing import NamedTuple

import torch
from torch import Tensor, nn

State = dict[str, Tensor]
_AUXILIARY_LOSSES: "weakref.WeakKeyDictionary[nn.Module, Tensor]" = weakref.WeakKeyDictionary()


class InterestInputs(NamedTuple):
    """Shapes: B targets, L history slots (padded), D item representation size.

    target (B, D); history (B, L, D); mask (B, L) bool; sims (B, L) cosine similarity of
    target and history item (0 on padding); buckets (B, L) long; lengths (B,) long.
    times (B, L) float: the target's time minus each behaviour's, in seconds (0 on
    padding), None when the data has no times; modality_sims (B, L, K): the cosine of each
    of the K separate modalities (0 on padding), None when the items have one vector
    (whose similarities are `sims`). Only the arches that read them look at these two.
    """

    target: Tensor
    history: Tensor
    mask: Tensor
    sims: Tensor
    buckets: Tensor
    lengths: Tensor
    times: Tensor | None = None
    modality_sims: Tensor | None = None


def request_inputs(
    history: Tensor,
    query: Tensor,
    sims: Tensor,
    buckets: Tensor,
    times: Tensor | None = None,
    modality_sims: Tensor | None = None,
) -> InterestInputs:
    """One user's request as B training rows: history (L, D) repeated for each of the B
    candidates `query` (B, D); sims and buckets (B, L), or empty when the arch reads neither;
    times (L,) (the same for every candidate) and modality_sims (B, L, K), when given.
    An empty history becomes one masked padding slot, as in a training batch.

    >>> x = request_inputs(torch.randn(3, 4), torch.randn(2, 4), torch.empty(0), torch.empty(0))
    >>> x.history.shape, x.sims.shape, x.lengths.tolist(), x.times is None
    (torch.Size([2, 3, 4]), torch.Size([2, 3]), [3, 3], True)
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
    batch_times: Tensor | None = None
    if times is not None:
        if length == 0:
            times = times.new_zeros(1)
        batch_times = times.unsqueeze(0).expand(batch, slots)
    if modality_sims is not None and length == 0:
        modality_sims = modality_sims.new_zeros(batch, 1, modality_sims.shape[-1])
    return InterestInputs(
        target=query,
        history=history.unsqueeze(0).expand(batch, slots, history.shape[1]),
        mask=torch.full((batch, slots), length > 0, dtype=torch.bool, device=query.device),
        sims=sims,
        buckets=buckets,
        lengths=lengths,
        times=batch_times,
        modality_sims=modality_sims,
    )


class InterestArch(nn.Module):
    """Base of every interest arch: the interface above, served per candidate by default.

    Subclasses set `out_dim` (int) and implement `forward`. The flags are plain class
    attributes (no annotations: TorchScript would read postponed ones as unknown types).
    """

    caches_user = False
    needs_sims = False
    needs_buckets = False
    needs_times = False
    needs_modality_sims = False
    has_auxiliary_loss = False

    @torch.jit.unused
    def record_auxiliary_loss(self, loss: Tensor) -> None:
        """Called by `forward` when training: the arch's own loss term for this batch."""
        _AUXILIARY_LOSSES[self] = loss

    @torch.jit.unused
    def pop_auxiliary_loss(self) -> Tensor | None:
        """The auxiliary loss of the last training forward (None if it recorded none),
        forgotten once taken."""
        return _AUXILIARY_LOSSES.pop(self, None)

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
