"""Train and evaluate one model: `python -m pipeline.train --model dmf --data DIR ...`.

Runs as one process, or as one rank under torchrun / TorchX (`launch/train.py:train`). The
same code runs on CPU (gloo) and GPUs (NCCL). Writes OUTPUT_DIR/metrics.json, TensorBoard
scalars in OUTPUT_DIR/tb and checkpoints in OUTPUT_DIR/checkpoints.

Training runs in segments of `--eval-every` steps; the sparse pipeline is drained at the end
of each segment, so evaluation and checkpoints see no batch in flight and the data position
is exactly the number of steps done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from models.ctr import CTRTask
from models.features import Batch
from models.zoo import build_model, make_config
from pipeline.checkpoint import Checkpointer
from pipeline.config import TrainConfig, resolve
from pipeline.data import PreparedData
from pipeline.distributed import DistEnv, init_distributed
from pipeline.metrics import EvalAccumulator, to_jsonable
from pipeline.results import write_result
from pipeline.sharding import ShardingSettings, shard_model

log = logging.getLogger("pipeline.train")
DEFAULT_DATA = Path("data/default")


# ------------------------------------------------------------------------------ setup
def seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)  # noqa: NPY002  (third-party code may use the global RNG)
    # Same torch seed on every rank: replicated dense weights start equal everywhere.
    torch.manual_seed(seed)


def ensure_default_data(env: DistEnv) -> Path:
    """The embedded default dataset, built by rank 0 when missing."""
    if env.is_main and not (DEFAULT_DATA / "manifest.json").is_file():
        from data_prep.default_job import build_default

        build_default(DEFAULT_DATA)
    dist.barrier()
    return DEFAULT_DATA


class ClippedAdam(torch.optim.Adam):
    """Adam that clips the gradient norm of its own parameters (the dense ones) first.
    Under DMP the dense gradients are already all-reduced here, so every rank clips alike."""

    def __init__(self, params: Any, lr: float, max_norm: float | None) -> None:
        super().__init__(params, lr=lr)
        self.max_norm = max_norm

    def step(self, closure: Any = None) -> Any:
        if self.max_norm:
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        return super().step(closure)


def lr_lambda(config: TrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        progress = min(progress, 1.0)
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.lr_schedule == "linear":
            return 1.0 - progress
        raise ValueError(f"unknown lr schedule {config.lr_schedule!r}")

    return factor


# ------------------------------------------------------------------------- evaluation
class _Tap:
    """Passes batches through to the pipeline and keeps what metrics need of each, in
    order (the pipeline returns outputs in the order it pulled the batches)."""

    def __init__(self, batches: Iterator[Batch]) -> None:
        self.batches = batches
        self.pending: deque[tuple[torch.Tensor, torch.Tensor]] = deque()

    def __iter__(self) -> _Tap:
        return self

    def __next__(self) -> Batch:
        batch = next(self.batches)
        self.pending.append((batch.users(), batch.history_lengths()))
        return batch


def evaluate(
    pipeline: TrainPipelineSparseDist,
    model: torch.nn.Module,
    data: PreparedData,
    split: str,
    config: TrainConfig,
    env: DistEnv,
) -> dict[str, Any]:
    """AUC, GAUC, logloss (overall and by activity) over a whole split, all ranks.

    model: the DMP module `pipeline` runs (switched to eval mode and back).
    """
    reader = data.reader(
        split,
        config.per_rank_eval_batch_size(env.world_size),
        rank=env.rank,
        world_size=env.world_size,
    )
    accumulator = EvalAccumulator(short_history_max=config.short_history_max)
    model.eval()
    pipeline.reset()
    tap = _Tap(reader.iter_batches())
    start, samples = time.perf_counter(), 0
    with torch.no_grad():
        while True:
            try:
                _, logits, labels = pipeline.progress(tap)
            except StopIteration:
                break
            users, lengths = tap.pending.popleft()
            accumulator.update(logits, labels, users, lengths)
            samples += labels.shape[0]
    pipeline.reset()
    model.train()
    elapsed = time.perf_counter() - start
    metrics = accumulator.compute()
    total = torch.tensor([samples], dtype=torch.float64)
    dist.all_reduce(total)
    metrics["samples_per_s"] = float(total) / max(elapsed, 1e-9)
    return metrics


# --------------------------------------------------------------------------- training
def _segment(reader: Any, epoch: int, start: int, stop: int) -> Iterator[Batch]:
    for i, batch in enumerate(reader.iter_batches(epoch, start_batch=start), start=start):
        if i >= stop:
            return
        yield batch


def train(config: TrainConfig) -> dict[str, Any]:
    env = init_distributed(config.device)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s",
        force=True,  # torchrec configures the root logger at import
    )
    # Our own progress on rank 0; torchrec's planner and pipeline chatter stays at WARNING.
    for name in ("pipeline", "models", "data_prep"):
        logging.getLogger(name).setLevel(logging.INFO if env.is_main else logging.WARNING)
    seed_everything(config.seed, env.rank)
    data = PreparedData(config.data or ensure_default_data(env))
    output_dir = Path(config.output_dir)
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)

    if config.model == "popularity":
        from pipeline.popularity import run_popularity

        return run_popularity(config, data, env, output_dir)

    batch_size = config.per_rank_batch_size(env.world_size)  # config.batch_size is global
    spec = data.feature_spec()
    model_config = make_config(config.model, config.model_args)
    # Tables are allocated on the meta device and materialised shard by shard by DMP, so
    # no rank ever holds a whole 20M-row table.
    model = build_model(config.model, spec, model_config, embedding_device=torch.device("meta"))
    resuming = config.resume and Checkpointer(output_dir / "checkpoints").latest() is not None
    if config.model == "make" and model_config.pretrain_epochs > 0 and not resuming:
        from models.baselines import transfer_pretrained
        from pipeline.pretrain import pretrain_make

        stage1 = pretrain_make(spec, model_config, data, env, batch_size, config.lr, config.seed)
        transfer_pretrained(stage1, model)
    task = CTRTask(model, autocast=config.amp and env.device.type == "cuda")
    dmp, optimizer, dense_optimizer, embedding_optimizer = shard_model(
        task,
        env,
        ShardingSettings(config.embedding_optimizer, config.embedding_lr, config.sharding_type),
        dense_optimizer=lambda params: ClippedAdam(params, config.lr, config.grad_clip),
        dense_lr=config.lr,
        batch_size=batch_size,
    )
    train_reader = data.reader(
        "train",
        batch_size,
        rank=env.rank,
        world_size=env.world_size,
        shuffle=True,
        seed=config.seed,
    )
    steps_per_epoch = len(train_reader)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(dense_optimizer, lr_lambda(config, total_steps))
    pipeline = TrainPipelineSparseDist(dmp, optimizer, env.device, execute_all_batches=True)
    checkpointer = Checkpointer(output_dir / "checkpoints")
    valid_split = "valid" if data.has_split("valid") else None

    step, best, bad_evals, history = 0, -math.inf, 0, []
    if config.resume and (latest := checkpointer.latest()) is not None:
        progress = checkpointer.load(latest, dmp, optimizer, lazy_optimizers=(dense_optimizer,))
        step, best, bad_evals = progress["step"], progress["best"], progress["bad_evals"]
        history = progress["history"]
        scheduler.load_state_dict(progress["scheduler"])
        # load_state_dict restores the schedule's position, not the groups' current lr.
        for group, lr in zip(dense_optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
        log.info("resumed from %s at step %d", latest, step)

    writer = SummaryWriter(str(output_dir / "tb")) if env.is_main else None
    if env.is_main:
        log.info(
            "model=%s params(dense)=%d steps/epoch=%d total_steps=%d world=%d device=%s emb_opt=%s",
            config.model,
            sum(p.numel() for p in model.over_arch.parameters()),
            steps_per_epoch,
            total_steps,
            env.world_size,
            env.device,
            embedding_optimizer,
        )
    segment_len = config.eval_every or total_steps
    if config.checkpoint_every:
        segment_len = min(segment_len, config.checkpoint_every)
    bar = tqdm(
        total=total_steps, initial=step, disable=not env.is_main, unit="step", dynamic_ncols=True
    )
    train_samples, train_time, stopped_early = 0, 0.0, False
    while step < total_steps and not stopped_early:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        stop = min(in_epoch + segment_len, steps_per_epoch, in_epoch + total_steps - step)
        pipeline.reset()
        start = time.perf_counter()
        for batch_losses in _progress(pipeline, _segment(train_reader, epoch, in_epoch, stop)):
            loss, labels = batch_losses
            step += 1
            scheduler.step()
            train_samples += labels.shape[0] * env.world_size
            bar.update(1)
            maybe_fail(config, step, env)
            if writer is not None and step % 20 == 0:
                rate = train_samples / max(train_time + time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{float(loss):.4f}", samples_s=f"{rate:,.0f}")
                writer.add_scalar("train/loss", float(loss), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar("train/samples_per_s", rate, step)
        train_time += time.perf_counter() - start
        at_end = step >= total_steps
        if config.eval_every and valid_split and (step % config.eval_every == 0 or at_end):
            metrics = evaluate(pipeline, dmp, data, valid_split, config, env)
            record = {
                "step": step,
                "epoch": epoch,
                **{k: metrics[k] for k in ("auc", "gauc", "logloss")},
            }
            history.append(record)
            if env.is_main:
                log.info("eval %s", json.dumps({"split": valid_split, **to_jsonable(record)}))
                for key in ("auc", "gauc", "logloss"):
                    writer.add_scalar(f"{valid_split}/{key}", metrics[key], step)
            if metrics["auc"] > best:
                best, bad_evals = metrics["auc"], 0
            else:
                bad_evals += 1
                if config.early_stopping_patience and bad_evals >= config.early_stopping_patience:
                    stopped_early = True
                    log.info("early stopping at step %d (best valid AUC %.4f)", step, best)
        if config.checkpoint_every and (step % config.checkpoint_every == 0 or at_end):
            progress = {
                "step": step,
                "best": best,
                "bad_evals": bad_evals,
                "history": history,
                "scheduler": scheduler.state_dict(),
            }
            checkpointer.save(step, dmp, optimizer, progress)
    bar.close()

    test = evaluate(pipeline, dmp, data, "test", config, env)
    result = {
        "model": config.model,
        "test": test,
        "valid_history": history,
        "train_samples_per_s": train_samples / max(train_time, 1e-9),
        "eval_samples_per_s": test["samples_per_s"],
        "steps": step,
        "stopped_early": stopped_early,
        "world_size": env.world_size,
        "device": str(env.device),
        "embedding_optimizer": embedding_optimizer,
        "data": {"path": str(data.root), "manifest_checksum": data.checksum},
        "config": config.to_dict(),  # the full resolved config
        "model_config": dataclasses.asdict(model_config),
    }
    write_result(result, output_dir, env, writer)
    return result


def maybe_fail(config: TrainConfig, step: int, env: DistEnv) -> None:
    """Fault injection (`--fail-at-step N`): the last rank dies at step N of the first
    attempt, to exercise restarts (torchrun --max-restarts) and `--resume`."""
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    marker = Path(config.output_dir) / f".failed-at-{config.fail_at_step}"
    if (
        config.fail_at_step == step
        and env.rank == env.world_size - 1
        and first_attempt
        and not marker.exists()
    ):
        marker.touch()
        log.warning("fault injection: rank %d exits at step %d", env.rank, step)
        os._exit(17)


def _progress(
    pipeline: TrainPipelineSparseDist, batches: Iterator[Batch]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Run the pipeline over `batches`; yields (loss, labels) per step."""
    while True:
        try:
            loss, _, labels = pipeline.progress(batches)
        except StopIteration:
            return
        yield loss, labels


# -------------------------------------------------------------------------------- CLI
# The study and older scripts call `parse_args`; the CLI now lives in pipeline.config.
parse_args = resolve


def main(argv: list[str] | None = None) -> int:
    config = resolve(argv)
    try:
        train(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
