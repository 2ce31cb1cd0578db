"""Train and evaluate one model: `python -m pipeline.train --model dmf --data DIR ...`.

Runs as one process, or as one rank under torchrun / TorchX (`launch/train.py:train`). The
same code runs on CPU (gloo) and GPUs (NCCL). Writes OUTPUT_DIR/metrics.json, TensorBoard
scalars in OUTPUT_DIR/tb and checkpoints in OUTPUT_DIR/checkpoints. Settings, their
presets and `--config FILE`: pipeline/config.py.

Reading order: `main` resolves the config; `train` starts the process (`start`), builds the
run once (`build_run`: data readers, model, sharding, optimizers, schedule, checkpoint
state), then alternates `train_segment` and `end_segment` (validation, early stopping,
checkpoint) until done, and `finish` evaluates the test split and writes the result.

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
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from models.batch import Batch
from models.ctr import CTRTask
from models.zoo import build_model, make_config
from pipeline.checkpoint import Checkpointer
from pipeline.config import TrainConfig, resolve
from pipeline.data import PreparedData, ShardReader
from pipeline.distributed import DistEnv, init_distributed
from pipeline.metrics import EvalAccumulator, to_jsonable
from pipeline.progress import Progress
from pipeline.results import write_result
from pipeline.sharding import ShardingSettings, shard_model

log = logging.getLogger("pipeline.train")
DEFAULT_DATA = Path("data/default")
LOG_EVERY = 20  # steps between loss/samples-per-second readings (TensorBoard, progress)


# ---------------------------------------------------------------------------- the run
def train(config: TrainConfig) -> dict[str, Any]:
    """Train `config.model` and evaluate it on the test split; returns metrics.json's dict."""
    env = start(config)
    data = PreparedData(config.data or ensure_default_data(env))
    output_dir = Path(config.output_dir)
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if config.model == "popularity":
        from pipeline.popularity import run_popularity

        return run_popularity(config, data, env, output_dir)

    run = build_run(config, env, data, output_dir)
    progress = Progress(run.total_steps, run.state.step, enabled=env.is_main)
    while run.state.step < run.total_steps and not run.stopped_early:
        epoch = train_segment(run, progress)
        end_segment(run, epoch)
    progress.close()
    return finish(run)


@dataclass
class TrainState:
    """What a checkpoint restores besides weights and optimizer state."""

    step: int = 0
    best: float = -math.inf  # best validation AUC so far
    bad_evals: int = 0  # evaluations since the best one
    history: list[dict[str, Any]] = field(default_factory=list)  # validation records


@dataclass
class Run:
    """Everything a training run is built from, made once by `build_run`."""

    config: TrainConfig
    env: DistEnv
    data: PreparedData
    output_dir: Path
    model_config: Any
    dmp: DistributedModelParallel
    optimizer: CombinedOptimizer
    dense_optimizer: KeyedOptimizerWrapper
    embedding_optimizer: str
    scheduler: torch.optim.lr_scheduler.LambdaLR
    pipeline: TrainPipelineSparseDist
    checkpointer: Checkpointer
    train_reader: ShardReader
    eval_readers: dict[str, ShardReader]  # one per evaluated split, built once
    total_steps: int
    segment_len: int
    writer: SummaryWriter | None
    state: TrainState
    train_samples: int = 0
    train_time: float = 0.0
    stopped_early: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_reader)


# --------------------------------------------------------------------------- start-up
def start(config: TrainConfig) -> DistEnv:
    """Join the process group, quiet the libraries, seed every RNG."""
    env = init_distributed(config.device)
    configure_logging(env)
    seed_everything(config.seed, env.rank)
    return env


def configure_logging(env: DistEnv) -> None:
    """Our own INFO lines on rank 0; libraries at WARNING, minus known harmless notices."""
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,  # torchrec configures the root logger at import
    )
    for name in ("pipeline", "models", "data_prep"):
        logging.getLogger(name).setLevel(logging.INFO if env.is_main else logging.WARNING)
    # torchrec 1.8's planner builds a HeuristicalStorageReservation by default and warns
    # that it may over-estimate dense sizes in dry runs; we plan real (meta-device) models
    # on the real topology and the plan fits, so the notice is noise on every run.
    warnings.filterwarnings(
        "ignore",
        message="HeuristicalStorageReservation is known to cause issues",
        category=FutureWarning,
        module="torchrec.distributed.planner.planners",
    )
    # DMP passes `broadcast_buffers` to DDP, deprecated in torch 2.13; the behaviour we
    # get (buffers broadcast) is the one we want, and the call is inside torchrec.
    warnings.filterwarnings(
        "ignore",
        message="`broadcast_buffers` is deprecated",
        category=FutureWarning,
        module="torchrec.distributed.model_parallel",
    )
    # The same storage-reservation notice, also logged at WARNING by torchrec.
    _drop_log_message(
        "torchrec.distributed.planner.storage_reservations",
        "known issue with TorchRec's dense tensor size calculation in dry run",
    )
    # torchrec's pipeline calls torch.fx's is_fx_tracing(), which logs an API-migration
    # note for torchrec's maintainers once per process.
    _drop_log_message("torch.fx._symbolic_trace", "is_fx_tracing will return true")


def _drop_log_message(logger: str, text: str) -> None:
    """Drop records of `logger` whose message contains `text` (and nothing else)."""

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    target = logging.getLogger(logger)
    if not any(getattr(f, "_drops", None) == text for f in target.filters):
        keep._drops = text  # type: ignore[attr-defined]  (added once per process)
        target.addFilter(keep)


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


# ------------------------------------------------------------------------ building it
def build_run(config: TrainConfig, env: DistEnv, data: PreparedData, output_dir: Path) -> Run:
    """Model (tables on the meta device), sharding and optimizers, the data readers (each
    split's built once), the learning-rate schedule, and the state of a resumed run."""
    batch_size = config.per_rank_batch_size(env.world_size)  # config.batch_size is global
    eval_batch_size = config.per_rank_eval_batch_size(env.world_size)
    spec = data.feature_spec()
    model_config = make_config(config.model, config.model_args)
    # Tables are allocated on the meta device and materialised shard by shard by DMP, so
    # no rank ever holds a whole 20M-row table.
    model = build_model(config.model, spec, model_config, embedding_device=torch.device("meta"))
    checkpointer = Checkpointer(output_dir / "checkpoints")
    resuming = config.resume and checkpointer.latest() is not None
    if config.model == "make" and model_config.pretrain_epochs > 0 and not resuming:
        from models.make import transfer_pretrained
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
    ranks = {"rank": env.rank, "world_size": env.world_size}
    train_reader = data.reader("train", batch_size, shuffle=True, seed=config.seed, **ranks)
    eval_splits = ["test"] + (["valid"] if config.eval_every and data.has_split("valid") else [])
    eval_readers = {split: data.reader(split, eval_batch_size, **ranks) for split in eval_splits}
    total_steps = len(train_reader) * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(dense_optimizer, lr_lambda(config, total_steps))
    segment_len = config.eval_every or total_steps
    if config.checkpoint_every:
        segment_len = min(segment_len, config.checkpoint_every)
    run = Run(
        config=config,
        env=env,
        data=data,
        output_dir=output_dir,
        model_config=model_config,
        dmp=dmp,
        optimizer=optimizer,
        dense_optimizer=dense_optimizer,
        embedding_optimizer=embedding_optimizer,
        scheduler=scheduler,
        pipeline=TrainPipelineSparseDist(dmp, optimizer, env.device, execute_all_batches=True),
        checkpointer=checkpointer,
        train_reader=train_reader,
        eval_readers=eval_readers,
        total_steps=total_steps,
        segment_len=segment_len,
        writer=SummaryWriter(str(output_dir / "tb")) if env.is_main else None,
        state=TrainState(),
    )
    if config.resume:
        restore(run)
    log.info(
        "model=%s params(dense)=%d steps/epoch=%d total_steps=%d world=%d batch=%d (%d/rank) "
        "device=%s emb_opt=%s",
        config.model,
        sum(p.numel() for p in model.over_arch.parameters()),
        run.steps_per_epoch,
        total_steps,
        env.world_size,
        config.batch_size,
        batch_size,
        env.device,
        embedding_optimizer,
    )
    return run


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


def restore(run: Run) -> None:
    """Continue from the latest checkpoint, if there is one (`--resume`)."""
    latest = run.checkpointer.latest()
    if latest is None:
        return
    saved = run.checkpointer.load(
        latest, run.dmp, run.optimizer, lazy_optimizers=(run.dense_optimizer,)
    )
    run.state = TrainState(saved["step"], saved["best"], saved["bad_evals"], saved["history"])
    run.scheduler.load_state_dict(saved["scheduler"])
    # load_state_dict restores the schedule's position, not the groups' current lr.
    for group, lr in zip(run.dense_optimizer.param_groups, run.scheduler.get_last_lr()):
        group["lr"] = lr
    log.info("resumed from %s at step %d", latest, run.state.step)


def save_checkpoint(run: Run) -> None:
    state = run.state
    saved = {
        "step": state.step,
        "best": state.best,
        "bad_evals": state.bad_evals,
        "history": state.history,
        "scheduler": run.scheduler.state_dict(),
    }
    run.checkpointer.save(state.step, run.dmp, run.optimizer, saved)


# --------------------------------------------------------------------------- training
def train_segment(run: Run, progress: Progress) -> int:
    """Train from the current step to the next segment end (evaluation or checkpoint
    step, end of epoch, end of run); returns the epoch it trained in."""
    state, env = run.state, run.env
    epoch, in_epoch = divmod(state.step, run.steps_per_epoch)
    stop = min(
        in_epoch + run.segment_len, run.steps_per_epoch, in_epoch + run.total_steps - state.step
    )
    run.pipeline.reset()
    start = time.perf_counter()
    batches = _segment(run.train_reader, epoch, in_epoch, stop)
    for loss, labels in _progress(run.pipeline, batches):
        state.step += 1
        run.scheduler.step()
        run.train_samples += labels.shape[0] * env.world_size
        maybe_fail(run.config, state.step, env)
        if env.is_main and state.step % LOG_EVERY == 0:
            rate = run.train_samples / max(run.train_time + time.perf_counter() - start, 1e-9)
            progress.set_postfix(loss=float(loss), samples_per_s=rate)
            run.writer.add_scalar("train/loss", float(loss), state.step)
            run.writer.add_scalar("train/lr", run.scheduler.get_last_lr()[0], state.step)
            run.writer.add_scalar("train/samples_per_s", rate, state.step)
        progress.update(1)
    run.train_time += time.perf_counter() - start
    return epoch


def _segment(reader: ShardReader, epoch: int, start: int, stop: int) -> Iterator[Batch]:
    for i, batch in enumerate(reader.iter_batches(epoch, start_batch=start), start=start):
        if i >= stop:
            return
        yield batch


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


def end_segment(run: Run, epoch: int) -> None:
    """Validate (and maybe stop early) and checkpoint, on their steps and at the end."""
    config, step = run.config, run.state.step
    at_end = step >= run.total_steps
    if "valid" in run.eval_readers and (step % config.eval_every == 0 or at_end):
        validate(run, epoch)
    if config.checkpoint_every and (step % config.checkpoint_every == 0 or at_end):
        save_checkpoint(run)


def validate(run: Run, epoch: int) -> None:
    """Evaluate the valid split, record it, and decide on early stopping."""
    state, config = run.state, run.config
    metrics = evaluate(run.pipeline, run.dmp, run.eval_readers["valid"], config, run.env)
    record = {"step": state.step, "epoch": epoch, **{k: metrics[k] for k in METRIC_KEYS}}
    state.history.append(record)
    if run.writer is not None:
        log.info("eval %s", json.dumps({"split": "valid", **to_jsonable(record)}))
        for key in METRIC_KEYS:
            run.writer.add_scalar(f"valid/{key}", metrics[key], state.step)
    if metrics["auc"] > state.best:
        state.best, state.bad_evals = metrics["auc"], 0
    else:
        state.bad_evals += 1
        patience = config.early_stopping_patience
        if patience and state.bad_evals >= patience:
            run.stopped_early = True
            log.info("early stopping at step %d (best valid AUC %.4f)", state.step, state.best)


# ------------------------------------------------------------------------- evaluation
METRIC_KEYS = ("auc", "gauc", "logloss")


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
    reader: ShardReader,
    config: TrainConfig,
    env: DistEnv,
) -> dict[str, Any]:
    """AUC, GAUC, logloss (overall and by activity) over a whole split, all ranks.

    model: the DMP module `pipeline` runs (switched to eval mode and back).
    reader: this rank's reader of the split.
    """
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


def finish(run: Run) -> dict[str, Any]:
    """Evaluate the test split; write metrics.json (with the full resolved config)."""
    test = evaluate(run.pipeline, run.dmp, run.eval_readers["test"], run.config, run.env)
    result = {
        "model": run.config.model,
        "test": test,
        "valid_history": run.state.history,
        "train_samples_per_s": run.train_samples / max(run.train_time, 1e-9),
        "eval_samples_per_s": test["samples_per_s"],
        "steps": run.state.step,
        "stopped_early": run.stopped_early,
        "world_size": run.env.world_size,
        "device": str(run.env.device),
        "embedding_optimizer": run.embedding_optimizer,
        "data": {"path": str(run.data.root), "manifest_checksum": run.data.checksum},
        "config": run.config.to_dict(),
        "model_config": dataclasses.asdict(run.model_config),
    }
    write_result(result, run.output_dir, run.env, run.writer)
    return result


# -------------------------------------------------------------------------------- CLI
# The study and older scripts call `parse_args`; the CLI lives in pipeline.config.
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
