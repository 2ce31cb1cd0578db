"""Item popularity, the non-learned baseline: score = log(1 + positives of the item in train).

Every rank counts its part of the training split; counts are summed across ranks, then
the test split is scored and evaluated with the same metrics as the learned models.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.data import PreparedData
from pipeline.distributed import DistEnv
from pipeline.metrics import EvalAccumulator
from pipeline.results import write_result


def item_positive_counts(data: PreparedData, env: DistEnv, batch_size: int) -> torch.Tensor:
    """(num_items,) number of positive training samples per item, summed over ranks.
    batch_size: rows per batch on this rank."""
    counts = torch.zeros(data.vocab_sizes["item"], dtype=torch.float64)
    reader = data.reader("train", batch_size, rank=env.rank, world_size=env.world_size)
    for batch in reader.iter_batches():
        items = batch.sparse_features["item"].values()
        counts.index_add_(0, items, batch.labels.to(torch.float64))
    dist.all_reduce(counts)
    return counts


def run_popularity(config: Any, data: PreparedData, env: DistEnv, output_dir: Path) -> dict:
    batch_size = config.per_rank_eval_batch_size(env.world_size)  # the setting is global
    start = time.perf_counter()
    scores = torch.log1p(item_positive_counts(data, env, batch_size))
    fit_time = time.perf_counter() - start
    accumulator = EvalAccumulator(short_history_max=config.short_history_max, from_logits=True)
    reader = data.reader("test", batch_size, rank=env.rank, world_size=env.world_size)
    start, samples = time.perf_counter(), 0
    for batch in reader.iter_batches():
        items = batch.sparse_features["item"].values()
        accumulator.update(scores[items], batch.labels, batch.users(), batch.history_lengths())
        samples += batch.batch_size
    test = accumulator.compute()
    # Scores are not probabilities: log loss (and NE) of a popularity ranking is not meaningful.
    for group in (test, *test["by_activity"].values()):
        group["logloss"] = group["ne"] = float("nan")
    test["samples_per_s"] = samples * env.world_size / max(time.perf_counter() - start, 1e-9)
    train_rows = data.manifest["counts"]["train"]
    result = {
        "model": "popularity",
        "test": test,
        "valid_history": [],
        "train_samples_per_s": train_rows / max(fit_time, 1e-9),
        "eval_samples_per_s": test["samples_per_s"],
        "steps": 0,
        "world_size": env.world_size,
        "device": "cpu",
        "data": {"path": str(data.root), "manifest_checksum": data.checksum},
        "config": config.to_dict(),  # what it ran with (a study resumes by it)
    }
    write_result(result, output_dir, env, writer=None)
    return result
