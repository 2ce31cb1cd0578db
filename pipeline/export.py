"""Export a trained model's serving scorer as a self-contained TorchScript artifact.

    python -m pipeline.export --run RUN_DIR --out scorer.pt    # a pipeline.train run
    export_model(model, PreparedData(DIR), "scorer.pt")       # from a trained CTRModel
    scorer, info = load_artifact("scorer.pt")                 # verified; torch only
    state = scorer.encode_user(hist_items, user)               # (L,) long, () long
    ctr = scorer.score(state, candidates)                      # (B,) long -> (B,) float

The artifact is `torch.jit.script` of models.scorer.CTRScorer: code and every table
(ID embeddings, multimodal table, bucket boundaries and lookup tables, weights) are in the
file, so loading it imports neither models/ nor pipeline/. `serving.json` inside the
archive (`torch.jit.load(path, _extra_files={"serving.json": ""})`) describes it and
records the sha256 of every other member of the archive (`payload_sha256`);
`load_artifact(path)` (what `pipeline.score_requests` uses) checks them before loading and
refuses a damaged or modified artifact. The artifact is written under a temporary name and
renamed when complete. A TorchScript archive is code: load artifacts from trusted places.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from data_prep.integrity import atomic_file
from models.ctr import CTRModel, CTRTask
from models.scorer import CTRScorer, scorer_from_model
from models.zoo import build_model, make_config
from pipeline.checkpoint import Checkpointer, CheckpointError
from pipeline.data import DataError, PreparedData
from pipeline.score_requests import (
    METADATA,
    ArtifactError,
    load_artifact,
    payload_checksums,
    read_metadata,
    verify_artifact,
)

__all__ = [
    "ArtifactError",
    "ExportError",
    "export_model",
    "export_scorer",
    "load_artifact",
    "load_trained_model",
    "read_metadata",
    "verify_artifact",
]


class ExportError(ValueError):
    """A training run that cannot be exported; the message names the file."""


def export_scorer(scorer: CTRScorer, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Script `scorer` and save it with `metadata` and its checksums as serving.json;
    returns the path, once the written file has been verified."""
    path = Path(path)
    scripted = torch.jit.script(scorer.eval())
    info = {
        "interface": {
            "encode_user": "(hist_items: int64 (L,), user: int64 ()) -> Dict[str, Tensor]",
            "score": "(state, candidates: int64 (B,)) -> float32 (B,) CTR",
        },
        "torch": torch.__version__,
        "interest": type(scorer.interest).__name__,
        "serving_form": "per_candidate" if scorer.per_candidate else "cached_user",
        "num_buckets": int(scorer.bucketizer.boundaries.numel()) + 1,
        **metadata,
    }
    # Members other than serving.json are the same in every save of one module, so their
    # checksums, taken from a first save, describe the archive saved next.
    first = io.BytesIO()
    torch.jit.save(scripted, first, _extra_files={METADATA: "{}"})
    info["payload_sha256"] = payload_checksums(first.getvalue())
    archive = io.BytesIO()
    torch.jit.save(scripted, archive, _extra_files={METADATA: json.dumps(info, indent=2)})
    try:
        verify_artifact(path, archive.getvalue())
    except ArtifactError as error:
        raise ArtifactError(f"{path}: the export does not verify: {error}") from None
    with atomic_file(path) as tmp:  # renamed into place when complete
        tmp.write_bytes(archive.getvalue())
    return path


def item_categories(data: PreparedData) -> np.ndarray | None:
    """item_category.npy (num_items,) when the data has categories, else None."""
    if not data.has_categories:
        return None
    path = data.root / "item_category.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the data has categories but no item -> category table")
    return np.load(path)


def export_model(
    model: CTRModel,
    data: PreparedData,
    path: str | Path,
    per_candidate: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export a trained, unsharded CTRModel with the prepared data's tables.

    per_candidate: serve the interest arch by its training forward per candidate instead
    of its per-user cache (arches without a cache, such as DIN, are always served so).
    """
    scorer = scorer_from_model(
        model, data.item_mm, item_categories(data), per_candidate=per_candidate
    )
    info = {"data_checksum": data.checksum, "max_history": data.max_history, **(metadata or {})}
    return export_scorer(scorer, path, info)


def load_trained_model(
    run_dir: str | Path, data_dir: str | Path | None = None, verify: str = "sizes"
) -> tuple[CTRModel, PreparedData, dict[str, Any]]:
    """The unsharded CTRModel of a pipeline.train run, from its latest DCP checkpoint.

    Reads RUN_DIR/metrics.json (model name, model_config, data path; `data_dir` overrides
    the path) and the latest verified checkpoint of RUN_DIR/checkpoints (see
    pipeline.checkpoint). DCP reassembles the sharded embedding tables into whole tensors
    in this single process. `verify`: how the data folder is checked ("sizes", "full").
    Returns (model in eval mode, data, metrics).
    """

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    try:
        result = json.loads(metrics_path.read_bytes())
        name, model_config = result["model"], result["model_config"]
        data_path = data_dir or result["data"]["path"]
    except FileNotFoundError:
        raise ExportError(f"{metrics_path}: missing; is {run_dir} a pipeline.train run?") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as error:
        raise ExportError(f"{metrics_path}: not a training result ({error!r})") from None
    data = PreparedData(data_path, verify=verify)
    recorded = (result.get("data") or {}).get("manifest_checksum")
    if recorded is not None and recorded != data.checksum:
        raise ExportError(
            f"{data.root}: its manifest checksum {data.checksum[:12]} is not the one the run "
            f"trained on ({str(recorded)[:12]}, {metrics_path}); pass the run's data folder"
        )
    model = build_model(name, data.feature_spec(), make_config(name, model_config))
    checkpoints = Checkpointer(run_dir / "checkpoints")
    latest = checkpoints.latest()  # verified against its checksums before anything is unpickled
    if latest is None:
        raise ExportError(
            f"{run_dir / 'checkpoints'}: no checkpoint (train with --checkpoint-every N)"
        )
    task = CTRTask(model)
    state = {"model": task.state_dict()}  # the trainer's layout: {"model": CTRTask state}
    dcp.load(state, checkpoint_id=str(latest))
    task.load_state_dict(state["model"])
    return model.eval(), data, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a training run's serving scorer.")
    parser.add_argument("--run", type=Path, required=True, help="pipeline.train output dir")
    parser.add_argument("--out", type=Path, required=True, help="artifact path (.pt)")
    parser.add_argument("--data", type=Path, default=None, help="prepared data (default: run's)")
    parser.add_argument(
        "--per-candidate",
        action="store_true",
        help="serve the interest arch per candidate (its training form) instead of from a "
        "per-user cache",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the sha256 of every file of the data folder (default: sizes)",
    )
    args = parser.parse_args(argv)
    try:
        verify = "full" if args.verify else "sizes"
        model, data, result = load_trained_model(args.run, args.data, verify)
        meta = {
            "model": result["model"],
            "model_config": result["model_config"],
            "run": str(args.run),
        }
        path = export_model(model, data, args.out, per_candidate=args.per_candidate, metadata=meta)
    except (ExportError, ArtifactError, CheckpointError, DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {result['model']} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
