"""Parameters and FLOPs per sample of every registered model, as a markdown table.

    python -m scripts.model_table        # from the repository root; the table in docs/models.md

Embedding parameters are counted on the meta device (the industrial tables are never
allocated); dense parameters are the OverArch's (interest arch + head). FLOPs are counted
with torch.utils.flop_counter.FlopCounterMode over one OverArch forward of a batch whose
every history has L items (training form: no reuse of K/V across candidates), divided by
the batch size. FlopCounterMode counts matrix products (mm, bmm, einsum); elementwise ops,
softmax and lookups are not counted.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchrec.sparse.jagged_tensor import JaggedTensor

from models.features import CATEGORY, HIST_CATEGORY, HIST_ITEM, ITEM, USER, FeatureSpec
from models.zoo import MODELS, build_model, make_config
from pipeline.config import PRESETS


@dataclass(frozen=True)
class Setting:
    """Vocabulary sizes (paper Table III), history length L, buckets M and model preset."""

    name: str
    num_users: int
    num_items: int
    num_categories: int
    history: int
    num_buckets: int
    preset: str

    def spec(self) -> FeatureSpec:
        cuts = torch.linspace(-1.0, 1.0, self.num_buckets + 1)[1:-1]
        return FeatureSpec(
            self.num_users, self.num_items, self.num_categories, tuple(cuts.tolist())
        )


SETTINGS = {
    # Amazon Electronics: 192k users, 63k items, 801 categories (DIN's preprocessing), the
    # paper's model sizes (Sec. V-D).
    "amazon": Setting(
        "amazon", 192_403, 63_001, 801, history=50, num_buckets=35, preset="amazon-paper"
    ),
    # Industrial (Lazada): 8.7M users, 20.9M items, 100 behaviours, M = 35, no categories.
    "industrial": Setting(
        "industrial", 8_700_000, 20_900_000, 0, history=100, num_buckets=35, preset="industrial"
    ),
}


def synthetic_embeddings(
    setting: Setting, embedding_dim: int, batch: int
) -> tuple[dict[str, JaggedTensor], torch.Tensor]:
    """SparseArch-shaped output for `batch` samples with full histories, and their sims."""
    lengths = torch.full((batch,), setting.history)
    ones = torch.ones(batch, dtype=torch.long)
    features = {USER: ones, ITEM: ones, HIST_ITEM: lengths}
    if setting.num_categories:
        features |= {CATEGORY: ones, HIST_CATEGORY: lengths}
    embeddings = {
        name: JaggedTensor(values=torch.randn(int(n.sum()), embedding_dim), lengths=n)
        for name, n in features.items()
    }
    sims = torch.rand(batch * setting.history) * 2 - 1
    return embeddings, sims


def measure(name: str, setting: Setting, batch: int = 8) -> dict[str, float]:
    config = make_config(name, PRESETS[setting.preset]["model_args"])
    model = build_model(name, setting.spec(), config, embedding_device=torch.device("meta"))
    embeddings, sims = synthetic_embeddings(setting, config.embedding_dim, batch)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.over_arch(embeddings, sims)
    return {
        "embedding": sum(p.numel() for p in model.sparse_arch.parameters()),
        "dense": sum(p.numel() for p in model.over_arch.parameters()),
        "flops": counter.get_total_flops() / batch,
    }


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def table(setting: Setting) -> str:
    preset = PRESETS[setting.preset]["model_args"]
    lines = [
        f"**{setting.name}**: L = {setting.history}, M = {setting.num_buckets}, "
        f"d = {preset['embedding_dim']}, d_h = {preset['hidden_dim']}, "
        f"H = {preset['num_heads']}, MLP {preset['mlp_dims']}",
        "",
        "| model | embedding params | dense params | FLOPs / sample |",
        "|---|---:|---:|---:|",
    ]
    for name in MODELS:
        row = measure(name, setting)
        lines.append(
            f"| `{name}` | {_human(row['embedding'])} | {_human(row['dense'])} "
            f"| {_human(row['flops'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args(argv)
    print("\n\n".join(table(SETTINGS[name]) for name in args.settings))


if __name__ == "__main__":
    main()
