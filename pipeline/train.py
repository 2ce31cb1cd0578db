"""Train and evaluate one model: `python -m pipeline.train --model dmf --data DIR ...`.

Runs as one process, or as one rank under torchrun / TorchX (`launch/train.py:train`). The
same code runs on CPU (gloo) and GPUs (NCCL). Writes OUTPUT_DIR/metrics.json, TensorBoard
scalars in OUTPUT_DIR/tb and checkpoints in OUTPUT_DIR/checkpoints. Settings, their
presets and `--config FILE`: pipeline/config.py.

Reading order: `main` resolves the config; `train` starts the process (`start`), builds the
run once (`build_run`: data readers, model, sharding, optimizers, schedule, checkpoint
state), then alternates `train_segment` and `end_segment` (validation, early stopping,
the `on_eval` hook, checkpoint) until done, and `finish` restores the best validation
step's weights (`--restore-best`), evaluates the test split and writes the result.

The recipe settings (docs/tuning.md): `--embedding-l2` (penalty on the embedding rows a
batch looks up, computed in models.ctr.CTRTask), `--weight-decay` (decoupled, dense
weight matrices), model dropout (`--model-arg dropout=...`), `--restore-best` (the test
metrics are those of the step chosen on validation, whether training ran to the end or
stopped early), `--embedding-optimizer adam_dense` (Adam on CPU, pipeline/sharding.py).

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
import shutil
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from models.batch import Batch
from models.ctr import CTRTask
from models.zoo import build_model, make_config
from pipeline.checkpoint import Checkpointer
from pipeline.config import TrainConfig, resolve
from pipeline.data import PreparedData, ShardReader
from pipeline.distributed import DistEnv, init_distributed, leaving_distributed
from pipeline.metrics import EvalAccumulator, to_jsonable
from pipeline.planner_inputs import pooling_factors
from pipeline.progress import Progress
from pipeline.results import write_result
from pipeline.sharding import (
    ShardingSettings,
    is_dense_embedding_optimizer,
    resolve_embedding_optimizer,
    shard_model,
)

log = logging.getLogger("pipeline.train")
DEFAULT_DATA = Path("data/default")
LOG_EVERY = 20  # steps between loss/samples-per-second readings (TensorBoard, progress)
# on_eval(step, metrics) -> stop: called after every validation with the validation
# metrics (auc, gauc, logloss, step, epoch, epochs_done); rank 0's answer counts.
EvalHook = Callable[[int, dict[str, Any]], bool]


# ---------------------------------------------------------------------------- the run
def train(config: TrainConfig, on_eval: EvalHook | None = None) -> dict[str, Any]:
    """Train `config.model` and evaluate it on the test split; returns metrics.json's dict.

    on_eval: called on every rank after each validation as on_eval(step, metrics); when
    rank 0's call returns True, every rank stops training there (as early stopping does;
    metrics.json records stopped_by "on_eval"). The tuner's pruning runs through it.
    """
    env = start(config)
    data = PreparedData(config.data or ensure_default_data(env))
    output_dir = Path(config.output_dir)
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if config.model == "popularity":
        from pipeline.popularity import run_popularity

        return run_popularity(config, data, env, output_dir)

    run = build_run(config, env, data, output_dir)
    run.on_eval = on_eval
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
    best_step: int | None = None  # the step of `best`
    best_checkpoint: str | None = None  # its weights (restore_best), a folder of best/
    lr_scale: float = 1.0  # product of the plateau reductions so far (lr_plateau_factor)


@dataclass
class Run:
    """Everything a training run is built from, made once by `build_run`."""

    config: TrainConfig
    env: DistEnv
    data: PreparedData
    output_dir: Path
    model_config: Any
    dmp: DistributedModelParallel
    task: CTRTask
    optimizer: CombinedOptimizer
    dense_optimizer: KeyedOptimizerWrapper
    embedding_optimizer: str
    scheduler: torch.optim.lr_scheduler.LambdaLR
    pipeline: TrainPipelineSparseDist | TrainPipelineBase
    checkpointer: Checkpointer
    best_checkpointer: Checkpointer | None  # restore_best with validation on, else None
    train_reader: ShardReader
    eval_readers: dict[str, ShardReader]  # one per evaluated split, built once
    total_steps: int
    writer: SummaryWriter | None
    state: TrainState
    train_samples: int = 0
    train_time: float = 0.0
    stopped_early: bool = False
    stopped_by: str | None = None  # "early_stopping" or "on_eval"
    on_eval: EvalHook | None = None
    checkpointed_best: str | None = None  # best_checkpoint of the latest regular checkpoint

    @property
    def lazy_optimizers(self) -> tuple[KeyedOptimizerWrapper, ...]:
        """The keyed optimizers whose state appears on their first step (Adam: the dense
        one, and the embedding one with a dense embedding optimizer)."""
        return tuple(
            opt for _, opt in self.optimizer.optimizers if isinstance(opt, KeyedOptimizerWrapper)
        )

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
    if config.drop_features:
        data.drop_features(*config.drop_features.split(","))
    spec = data.feature_spec()
    model_config = make_config(config.model, config.model_args)
    # Tables are allocated on the meta device and materialised shard by shard by DMP, so
    # no rank ever holds a whole 20M-row table; a dense embedding optimizer replicates
    # them (no sharding), so they are built whole on the device.
    replicated = is_dense_embedding_optimizer(
        resolve_embedding_optimizer(config.embedding_optimizer, env.device)
    )
    embedding_device = env.device if replicated else torch.device("meta")
    model = build_model(
        config.model,
        spec,
        model_config,
        embedding_device=embedding_device,
        world_size=env.world_size,  # managed collisions split their id map per rank
    )
    checkpointer = Checkpointer(output_dir / "checkpoints")
    resuming = config.resume and checkpointer.latest() is not None
    if config.model == "make" and model_config.pretrain_epochs > 0 and not resuming:
        from models.make import transfer_pretrained
        from pipeline.pretrain import pretrain_make

        stage1 = pretrain_make(spec, model_config, data, env, batch_size, config.lr, config.seed)
        transfer_pretrained(stage1, model)
    task = CTRTask(
        model, autocast=config.amp and env.device.type == "cuda", embedding_l2=config.embedding_l2
    )
    dmp, optimizer, dense_optimizer, embedding_optimizer = shard_model(
        task,
        env,
        ShardingSettings(
            config.embedding_optimizer,
            config.embedding_lr,
            config.sharding_type,
            config.embedding_weight_decay,
        ),
        dense_optimizer=lambda params: ClippedAdam(
            params, config.lr, config.grad_clip, config.weight_decay
        ),
        dense_lr=config.lr,
        batch_size=batch_size,
        pooling_factors=pooling_factors(data),  # the offline plan's inputs (pipeline.plan)
    )
    ranks = {
        "rank": env.rank,
        "world_size": env.world_size,
        "num_workers": config.reader_workers,  # batches read ahead (pipeline/loader.py)
        "pin_memory": env.device.type == "cuda",
        "extras": data.history_extras_for(model.over_arch.interest),  # what the model reads
    }
    if getattr(model_config, "managed_collisions", False):
        ranks["vocab_sizes"] = None  # ids from an open space: no table bounds to check
    train_reader = data.reader("train", batch_size, shuffle=True, seed=config.seed, **ranks)
    config = config.with_eval_every(len(train_reader))
    validating = bool(config.eval_every) and data.has_split("valid")
    # With evaluate_test off no reader of the test split is ever built.
    eval_splits = (["test"] if config.evaluate_test else []) + (["valid"] if validating else [])
    eval_readers = {split: data.reader(split, eval_batch_size, **ranks) for split in eval_splits}
    total_steps = len(train_reader) * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    state = TrainState()
    schedule = lr_lambda(config, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        dense_optimizer, lambda step: schedule(step) * state.lr_scale
    )
    run = Run(
        config=config,
        env=env,
        data=data,
        output_dir=output_dir,
        model_config=model_config,
        dmp=dmp,
        task=task,
        optimizer=optimizer,
        dense_optimizer=dense_optimizer,
        embedding_optimizer=embedding_optimizer,
        scheduler=scheduler,
        pipeline=make_pipeline(dmp, optimizer, env.device, replicated),
        checkpointer=checkpointer,
        best_checkpointer=(
            Checkpointer(output_dir / "checkpoints" / "best", keep=BEST_KEEP)
            if config.restore_best and validating
            else None
        ),
        train_reader=train_reader,
        eval_readers=eval_readers,
        total_steps=total_steps,
        writer=SummaryWriter(str(output_dir / "tb")) if env.is_main else None,
        state=state,
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


def make_pipeline(
    dmp: DistributedModelParallel,
    optimizer: CombinedOptimizer,
    device: torch.device,
    replicated: bool,
) -> TrainPipelineSparseDist | TrainPipelineBase:
    """TrainPipelineSparseDist (input distribution of the sharded tables overlapped with
    the previous step); with replicated tables (a dense embedding optimizer) nothing is
    sharded, its fx rewrite finds no sharded module to pipeline (and traces into the
    OverArch), so TrainPipelineBase runs the same steps."""
    if replicated:
        return TrainPipelineBase(dmp, optimizer, device)
    return TrainPipelineSparseDist(dmp, optimizer, device, execute_all_batches=True)


class ClippedAdam(torch.optim.Adam):
    """Adam that clips the gradient norm of its own parameters (the dense ones) first.
    Under DMP the dense gradients are already all-reduced here, so every rank clips alike.

    weight_decay > 0: decoupled weight decay (AdamW) of the weight matrices (parameters of
    2 or more dimensions); biases, PReLU/LayerNorm parameters and other vectors are not
    decayed (a second parameter group). 0: plain Adam, one group."""

    def __init__(
        self, params: Any, lr: float, max_norm: float | None, weight_decay: float = 0.0
    ) -> None:
        params = list(params)
        if weight_decay:
            groups = [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
            super().__init__([g for g in groups if g["params"]], lr=lr, decoupled_weight_decay=True)
        else:
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
        latest, run.dmp, run.optimizer, lazy_optimizers=run.lazy_optimizers
    )
    restored = TrainState(
        saved["step"],
        saved["best"],
        saved["bad_evals"],
        saved["history"],
        saved.get("best_step"),  # absent from checkpoints written before restore_best
        saved.get("best_checkpoint"),
        saved.get("lr_scale", 1.0),  # absent from checkpoints written before the plateau
    )
    for f in dataclasses.fields(TrainState):  # in place: the scheduler's lambda reads it
        setattr(run.state, f.name, getattr(restored, f.name))
    run.checkpointed_best = run.state.best_checkpoint
    run.scheduler.load_state_dict(saved["scheduler"])
    # load_state_dict restores the schedule's position, not the groups' current lr.
    for group, lr in zip(run.dense_optimizer.param_groups, run.scheduler.get_last_lr()):
        group["lr"] = lr
    scale_embedding_lrs(run)
    log.info("resumed from %s at step %d", latest, run.state.step)


def save_checkpoint(run: Run) -> None:
    state = run.state
    saved = {
        "step": state.step,
        "best": state.best,
        "bad_evals": state.bad_evals,
        "history": state.history,
        "best_step": state.best_step,
        "best_checkpoint": state.best_checkpoint,
        "lr_scale": state.lr_scale,
        "scheduler": run.scheduler.state_dict(),
    }
    run.checkpointer.save(state.step, run.dmp, run.optimizer, saved)
    run.checkpointed_best = state.best_checkpoint
    prune_best(run)


# ------------------------------------------------------------ the best validation step
BEST_KEEP = 1 << 30  # best/ is pruned by `prune_best`, not by the Checkpointer


class _NoOptimizer:
    """Stands in for the optimizer in the best checkpoint, which holds weights only."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def save_best(run: Run) -> None:
    """Keep the weights of the step that just became the best on validation (DCP, through
    the Checkpointer, in OUTPUT_DIR/checkpoints/best)."""
    state = run.state
    path = run.best_checkpointer.save(
        state.step, run.dmp, _NoOptimizer(), {"step": state.step, "valid_auc": state.best}
    )
    state.best_checkpoint = path.name
    prune_best(run)


def prune_best(run: Run) -> None:
    """Rank 0 deletes the best checkpoints no longer needed: kept are the current best and
    the best each regular checkpoint on disk refers to (what a resume from it restores,
    the Checkpointer's fallback to an older good checkpoint included), so the best-so-far
    survives a crash and a resume."""
    if run.best_checkpointer is None or not run.env.is_main:
        return
    keep = {run.state.best_checkpoint, run.checkpointed_best}
    regular = run.checkpointer.root
    for path in regular.iterdir() if regular.is_dir() else ():
        progress = path / "progress.json"
        if path.is_dir() and progress.is_file():
            try:
                keep.add(json.loads(progress.read_text()).get("best_checkpoint"))
            except (OSError, ValueError):
                continue
    root = run.best_checkpointer.root
    for path in root.iterdir() if root.is_dir() else ():
        if path.is_dir() and path.name not in keep and (path / "progress.json").is_file():
            shutil.rmtree(path, ignore_errors=True)


def restore_best_weights(run: Run) -> int:
    """Load the best validation step's weights before the test evaluation; returns the step
    the weights are from (the current one when it is the best, or nothing was kept)."""
    state = run.state
    if run.best_checkpointer is None or state.best_step is None:
        return state.step
    if state.best_step == state.step:
        return state.step  # the current weights are the best ones
    if state.best_checkpoint is None:
        raise RuntimeError(f"best validation step {state.best_step} has no saved weights")
    path = run.best_checkpointer.root / state.best_checkpoint
    if not (path / "progress.json").is_file():
        raise RuntimeError(f"{path}: the best validation step's weights are missing")
    run.best_checkpointer.load(path, run.dmp, _NoOptimizer())
    log.info("restored the weights of step %d (best valid AUC %.4f)", state.best_step, state.best)
    return state.best_step


# --------------------------------------------------------------------------- training
def train_segment(run: Run, progress: Progress) -> int:
    """Train from the current step to the next segment end (evaluation or checkpoint
    step, end of epoch, end of run); returns the epoch it trained in."""
    state, env = run.state, run.env
    epoch, in_epoch = divmod(state.step, run.steps_per_epoch)
    stop = segment_end(run) - epoch * run.steps_per_epoch
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
            if run.task.last_penalty is not None:
                run.writer.add_scalar(
                    "train/embedding_l2", float(run.task.last_penalty), state.step
                )
        progress.update(1)
    run.train_time += time.perf_counter() - start
    return epoch


def segment_end(run: Run) -> int:
    """The step the current segment ends at: the next multiple of eval_every or of
    checkpoint_every (counted from step 0 over all epochs, so evaluations and checkpoints
    fall on their steps whatever the epoch length), the end of the epoch or of the run."""
    step, spe = run.state.step, run.steps_per_epoch
    ends = [run.total_steps, (step // spe + 1) * spe]
    for every in (run.config.eval_every, run.config.checkpoint_every):
        if every:
            ends.append((step // every + 1) * every)
    return min(ends)


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
        state.best, state.bad_evals, state.best_step = metrics["auc"], 0, state.step
        # Saved at the last step too: checkpoints/best is then always the weights the test
        # metrics are of, which export and the study load (`best_or_latest_checkpoint`).
        if run.best_checkpointer is not None:
            save_best(run)
    else:
        state.bad_evals += 1
        if config.lr_plateau_factor:
            reduce_on_plateau(run)
        patience = config.early_stopping_patience
        if patience and state.bad_evals >= patience:
            run.stopped_early, run.stopped_by = True, "early_stopping"
            log.info("early stopping at step %d (best valid AUC %.4f)", state.step, state.best)
    if config.lr_plateau_factor:
        record["lr_scale"] = state.lr_scale  # the scale from this evaluation on
    if run.on_eval is not None:
        metrics = {**record, "epochs_done": state.step / run.steps_per_epoch}
        decision = [bool(run.on_eval(state.step, metrics))]
        dist.broadcast_object_list(decision, src=0)  # every rank stops, or none
        if decision[0] and not run.stopped_early:
            run.stopped_early, run.stopped_by = True, "on_eval"
            log.info("stopped by on_eval at step %d", state.step)


MIN_PLATEAU_LR = 1e-6


def reduce_on_plateau(run: Run) -> None:
    """A validation without a better AUC: every learning rate times lr_plateau_factor
    (the dense one through the scheduler's lambda from the next step on, the embedding
    ones now), none below MIN_PLATEAU_LR."""
    base = min(run.config.lr, run.config.embedding_lr or run.config.lr)  # the smallest rate
    run.state.lr_scale = max(
        run.state.lr_scale * run.config.lr_plateau_factor, MIN_PLATEAU_LR / base
    )
    scale_embedding_lrs(run)
    log.info("validation plateau at step %d: learning rates x%.3g of their base",
             run.state.step, run.state.lr_scale)  # fmt: skip


def scale_embedding_lrs(run: Run) -> None:
    """The embedding optimizers' groups (fused ones read param_groups' lr on every step)
    at their first lr times state.lr_scale; the dense groups follow the scheduler."""
    dense = {id(group) for group in run.dense_optimizer.param_groups}
    for group in run.optimizer.param_groups:
        if id(group) not in dense:
            base = group.setdefault("plateau_base_lr", group["lr"])
            group["lr"] = base * run.state.lr_scale


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
    """Restore the best validation step's weights (restore_best), evaluate the test split
    with them (unless evaluate_test is off); write metrics.json (with the full resolved
    config, best_step, and test_step: the step whose weights the test metrics are of)."""
    state = run.state
    result: dict[str, Any] = {"model": run.config.model}
    if "test" in run.eval_readers:  # no test (tuning): nothing to restore the weights for
        weights_step = restore_best_weights(run)
        test = evaluate(run.pipeline, run.dmp, run.eval_readers["test"], run.config, run.env)
        restored = run.best_checkpointer is not None and state.best_step is not None
        result.update(
            test=test,
            test_step=weights_step,
            test_from="best_valid_step" if restored else "last_step",
        )
    result.update(
        {
            "best_step": state.best_step,
            "best_valid_auc": state.best if state.best_step is not None else None,
            "valid_history": state.history,
            "train_samples_per_s": run.train_samples / max(run.train_time, 1e-9),
            "eval_samples_per_s": result["test"]["samples_per_s"] if "test" in result else None,
            "steps": state.step,
            "stopped_early": run.stopped_early,
            "stopped_by": run.stopped_by,
            "world_size": run.env.world_size,
            "device": str(run.env.device),
            "embedding_optimizer": run.embedding_optimizer,
            "sharding_plan": plan_record(run.dmp),
            "data": {"path": str(run.data.root), "manifest_checksum": run.data.checksum},
            "config": run.config.to_dict(),
            "model_config": dataclasses.asdict(run.model_config),
        }
    )
    if "test" in result:
        write_result(result, run.output_dir, run.env, run.writer)
    else:
        write_valid_only_result(result, run)
    return result


def plan_record(dmp: DistributedModelParallel) -> dict[str, dict[str, str]]:
    """The sharding plan the run trained with: sharded module (the EmbeddingCollection,
    the schema's EmbeddingBagCollection) -> table -> "sharding type / compute kernel";
    empty when nothing is sharded (a dense embedding optimizer)."""
    plan = getattr(dmp, "plan", None)
    return {
        module: {
            table: f"{p.sharding_type} / {p.compute_kernel}"
            for table, p in getattr(params, "items", lambda: [])()
        }
        for module, params in (plan.plan.items() if plan is not None else [])
    }


def write_valid_only_result(result: dict[str, Any], run: Run) -> None:
    """metrics.json without test figures (evaluate_test off: the tuner's trials)."""
    if not run.env.is_main:
        return
    if run.writer is not None:
        run.writer.close()
    (run.output_dir / "metrics.json").write_text(json.dumps(to_jsonable(result), indent=2))
    best = result["best_valid_auc"]
    print(
        f"{result['model']}: best valid AUC {best:.4f} at step {result['best_step']} "
        f"(test split not evaluated); metrics: {run.output_dir / 'metrics.json'}"
        if best is not None
        else f"{result['model']}: no validation ran (test split not evaluated)",
        flush=True,
    )


# -------------------------------------------------------------------------------- CLI
# The study and older scripts call `parse_args`; the CLI lives in pipeline.config.
parse_args = resolve


def main(argv: list[str] | None = None) -> int:
    config = resolve(argv)
    with leaving_distributed():
        train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
