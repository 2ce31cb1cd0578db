"""A run's result: OUTPUT_DIR/metrics.json, the test scalars in TensorBoard and the table
printed at the end. Shared by the trainer and the popularity baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from pipeline.distributed import DistEnv
from pipeline.metrics import format_table, to_jsonable


def write_result(
    result: dict[str, Any], output_dir: Path, env: DistEnv, writer: SummaryWriter | None
) -> None:
    """On rank 0: metrics.json (the whole `result`), test scalars, and the result table."""
    if not env.is_main:
        return
    test = result["test"]
    if writer is not None:
        for key in ("auc", "gauc", "logloss"):
            writer.add_scalar(f"test/{key}", test[key], result["steps"])
        writer.close()
    (output_dir / "metrics.json").write_text(json.dumps(to_jsonable(result), indent=2))
    row = {
        "model": result["model"],
        "auc": test["auc"],
        "gauc": test["gauc"],
        "logloss": test["logloss"],
        "samples_per_s": result["train_samples_per_s"],
    }
    print(format_table([row]), flush=True)
    print(f"metrics: {output_dir / 'metrics.json'}", flush=True)
