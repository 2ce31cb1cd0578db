"""Export a trained model's serving scorer as a self-contained TorchScript artifact.

    export_model(model, PreparedData(DIR), "scorer.pt")       # from a trained CTRModel
    scorer = torch.jit.load("scorer.pt")                       # anywhere: torch only
    state = scorer.encode_user(hist_items, user)               # (L,) long, () long
    ctr = scorer.score(state, candidates)                      # (B,) long -> (B,) float

The artifact is `torch.jit.script` of pipeline.serving.CTRScorer: code and every table
(ID embeddings, multimodal table, bucket boundaries and lookup tables, weights) are in the
file, so loading it imports neither models/ nor pipeline/. `serving.json` inside the
archive (`torch.jit.load(path, _extra_files={"serving.json": ""})`) describes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.ctr import CTRModel
from pipeline.data import PreparedData
from pipeline.serving import CTRScorer, scorer_from_model

METADATA = "serving.json"


def export_scorer(scorer: CTRScorer, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Script `scorer` and save it with `metadata` as serving.json; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(scorer.eval())
    info = {
        "interface": {
            "encode_user": "(hist_items: int64 (L,), user: int64 ()) -> Dict[str, Tensor]",
            "score": "(state, candidates: int64 (B,)) -> float32 (B,) CTR",
        },
        "torch": torch.__version__,
        "interest": type(scorer.interest).__name__,
        "num_buckets": int(scorer.bucketizer.boundaries.numel()) + 1,
        **metadata,
    }
    torch.jit.save(scripted, str(path), _extra_files={METADATA: json.dumps(info, indent=2)})
    return path


def item_categories(data: PreparedData) -> np.ndarray | None:
    """item_category.npy (num_items,) when the data has categories, else None."""
    if not data.has_categories:
        return None
    return np.load(data.root / "item_category.npy")


def export_model(
    model: CTRModel,
    data: PreparedData,
    path: str | Path,
    form: str = "factorised",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export a trained, unsharded CTRModel with the prepared data's tables."""
    scorer = scorer_from_model(model, data.item_mm, item_categories(data), form=form)
    info = {"form": form, "data_checksum": data.checksum, **(metadata or {})}
    return export_scorer(scorer, path, info)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """serving.json of an exported artifact."""
    files = {METADATA: ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[METADATA])
