"""MAKE (Sheng et al. 2024): ID target attention + a pre-trained multimodal module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.buckets import bucketize
from models.config import ModelConfig
from models.interest import InterestInputs, State
from models.mlp import MLP
from models.ta import IDAttentionPlus

if TYPE_CHECKING:  # torchrec-free at import: serving hosts load this file without it
    from models.batch import Batch
    from models.features import FeatureSpec


@dataclass
class MAKEConfig(ModelConfig):
    """MAKE: TA over IDs + a multimodal module pre-trained on the CTR task first.

    pretrain_epochs: epochs of stage 1 (`make_pretrain_model`; paper: 10), run by the
        trainer before the CTR training; 0 skips pre-training.
    mm_hidden, mm_dim: the multimodal module's MLP.
    """

    pretrain_epochs: int = 10
    mm_hidden: list[int] = field(default_factory=lambda: [32])
    mm_dim: int = 32


class MultimodalModule(nn.Module):
    """MAKE's multimodal-related parameters: an MLP over similarity features (B, out_dim).

    Features of the target-history similarities c (B, L) under mask (B, L):
    log(1 + counts) per similarity bucket (the data's M equal-frequency buckets), the
    masked mean and the masked max of c (0 for an empty history) -> (B, M + 2) -> MLP.
    It reads no ID embedding, so it can be trained for many epochs without the ID tables
    overfitting (the reason MAKE pre-trains it separately).
    """

    def __init__(self, bucket_boundaries: tuple[float, ...], hidden_dims: list[int], out_dim: int):
        super().__init__()
        self.register_buffer("boundaries", torch.tensor(bucket_boundaries, dtype=torch.float32))
        self.num_buckets = len(bucket_boundaries) + 1
        self.out_dim = out_dim
        self.mlp = MLP(self.num_buckets + 2, [*hidden_dims, out_dim], final_activation=True)

    def features(self, sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = mask.to(sims.dtype)
        buckets = bucketize(sims, self.boundaries)
        counts = sims.new_zeros(sims.shape[0], self.num_buckets).scatter_add_(1, buckets, weight)
        count = weight.sum(-1, keepdim=True)
        mean = (sims * weight).sum(-1, keepdim=True) / count.clamp(min=1.0)
        if sims.shape[-1] == 0:  # an empty history at serving (training pads to L >= 1)
            peak = torch.zeros_like(count)
        else:
            peak = sims.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
            peak = torch.where(count > 0, peak, torch.zeros_like(peak))
        return torch.cat([torch.log1p(counts), mean, peak], dim=-1)

    def forward(self, sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(sims, mask))


class MAKEInterest(IDAttentionPlus):
    """MAKE (Sheng et al. 2024): ID target attention + a pre-trained multimodal module.

    MAKE trains the multimodal-related parameters on the CTR task for several epochs
    (paper: 10) in a separate stage, since they converge slower than ID embeddings, which
    overfit after one epoch, then transfers them to the CTR model, trained as usual. Here the
    multimodal module is `MultimodalModule`; stage 1 trains `make_pretrain_model(spec,
    config)`, `transfer_pretrained` copies its module into this arch. Output:
    [TA interest (d_h); multimodal (mm_dim)]. Served from a per-user cache (TA's K_id,
    V_id); the multimodal module per candidate from the similarities.
    """

    def __init__(
        self,
        item_dim: int,
        hidden_dim: int,
        num_heads: int,
        multimodal: MultimodalModule,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(item_dim, hidden_dim, num_heads, temperature)
        self.out_dim = hidden_dim + multimodal.out_dim
        self.multimodal = multimodal

    def forward(self, x: InterestInputs) -> torch.Tensor:
        return torch.cat([self.ta(x), self.multimodal(x.sims, x.mask)], dim=-1)

    @torch.jit.export
    def attend(
        self, state: State, history: Tensor, query: Tensor, sims: Tensor, buckets: Tensor
    ) -> Tensor:
        r_id = self.ta.attend(state, history, query, sims, buckets)
        mask = torch.ones_like(sims, dtype=torch.bool)
        return torch.cat([r_id, self.multimodal(sims, mask)], dim=-1)


class MAKEPretrainModel(nn.Module):
    """MAKE's stage-1 model: `MultimodalModule` + an MLP head -> logits (B,), from a `Batch`.

    Dense only (no embedding table): it reads the batch's similarities and history lengths,
    so it trains with a plain optimizer (DDP across ranks), no sharding.
    """

    def __init__(self, multimodal: MultimodalModule, mlp_dims: list[int]) -> None:
        super().__init__()
        self.multimodal = multimodal
        self.head = MLP(multimodal.out_dim, [*mlp_dims, 1])

    def forward(self, batch: Batch) -> torch.Tensor:
        from models.batch import HistoryLayout  # training only: needs torchrec
        from models.features import HIST_ITEM

        layout = HistoryLayout.of(batch.sparse_features[HIST_ITEM])
        sims = layout.pad(batch.hist_sims.unsqueeze(-1)).squeeze(-1)
        return self.head(self.multimodal(sims, layout.mask)).squeeze(-1)


def make_multimodal(spec: FeatureSpec, config: MAKEConfig) -> MultimodalModule:
    """The multimodal module of a MAKE model (the same in stage 1 and stage 2)."""
    return MultimodalModule(spec.bucket_boundaries, config.mm_hidden, config.mm_dim)


def make_pretrain_model(spec: FeatureSpec, config: MAKEConfig) -> MAKEPretrainModel:
    """Stage 1 of MAKE: the model whose `multimodal` is pre-trained `config.pretrain_epochs`
    epochs on the CTR labels. forward(batch) -> logits (B,); train with BCE-with-logits."""
    return MAKEPretrainModel(make_multimodal(spec, config), config.mlp_dims)


def transfer_pretrained(src: MAKEPretrainModel, dst: nn.Module) -> None:
    """Stage 2 of MAKE: copy the pre-trained multimodal module into a MAKE CTR model.

    dst: a `CTRModel` built with `build_model("make", ...)` (before sharding; its
    multimodal module is dense and replicated, so it is not touched by sharding), or the
    `MAKEInterest` itself. Raises if `dst` has no MAKE multimodal module.
    """
    interest = dst.over_arch.interest if hasattr(dst, "over_arch") else dst
    if not isinstance(interest, MAKEInterest):
        raise TypeError(f"transfer_pretrained needs a MAKE model, got {type(interest).__name__}")
    interest.multimodal.load_state_dict(src.multimodal.state_dict())


def build_make(config: MAKEConfig, item_dim: int, spec: FeatureSpec) -> MAKEInterest:
    return MAKEInterest(
        item_dim,
        config.hidden_dim,
        config.num_heads,
        make_multimodal(spec, config),
        config.temperature,
    )
