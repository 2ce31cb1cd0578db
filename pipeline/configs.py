"""Named training presets (`--preset NAME`); command-line flags override them."""

from __future__ import annotations

from typing import Any

# Trainer settings and model settings (model_args) of each preset.
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded synthetic dataset: sized to train in about two minutes on 2 CPU workers.
    "default": {
        "batch_size": 256,
        "lr": 2e-3,
        "epochs": 2,
        "model_args": {"embedding_dim": 16, "hidden_dim": 32, "num_heads": 4, "mlp_dims": [80, 40]},
    },
    # The paper's Amazon Electronics settings (Sec. V-D): ID embeddings 32-d, 4 heads,
    # hidden 32, MLP 80x40x1, batch 128, Adam.
    "amazon": {
        "batch_size": 128,
        "lr": 1e-3,
        "epochs": 2,
        "model_args": {"embedding_dim": 32, "hidden_dim": 32, "num_heads": 4, "mlp_dims": [80, 40]},
    },
    # The paper's industrial settings: hidden 128, MLP 128x64x1, batch 1024; M = 35 buckets
    # and history 100 are data-prep settings (`--num-buckets 35 --max-history 100`).
    "industrial": {
        "batch_size": 1024,
        "lr": 1e-3,
        "epochs": 1,
        "model_args": {
            "embedding_dim": 32,
            "hidden_dim": 128,
            "num_heads": 4,
            "mlp_dims": [128, 64],
        },
    },
}
