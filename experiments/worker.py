"""Runs a list of trainer configs in one torchrun job (used by experiments.study).

    torchrun --nproc-per-node 2 -m experiments.worker PLAN.json

PLAN.json: {"runs": [{"key": ..., "config": {...TrainConfig.to_dict()...}}, ...],
"manifest_checksum": "...", "device": "cpu"}. Every run is a real
`pipeline.train.train(config)` call in the same process group (`init_distributed` reuses
it), which saves the ~10 s start-up of a torchrun job per run. Before training, rank 0
writes the run's config to OUTPUT_DIR/config.json (`python -m pipeline.train --config`
repeats the run).

Several jobs may share one plan (`study --parallel N`): before a run, rank 0 takes an
exclusive lock on OUTPUT_DIR/../.NAME.lock (`claimed`) and a job that cannot skips the run,
so each run is trained by one job; the kernel drops the lock of a job that dies.

A run is done when OUTPUT_DIR/metrics.json records exactly the config asked for (its
resolved `config`), the same data checksum and the job's world size; it is then skipped, so an interrupted study
continues where it stopped. A metrics.json of another config or data is set aside (renamed,
never deleted) and the run is redone. Rank 0 writes each run's console output to
OUTPUT_DIR/train.log (other ranks: train.rankN.log) and its wall time, load and threads to
OUTPUT_DIR/study_run.json. With the plan's "records_dir", rank 0 then copies the finished
run's JSON files to RECORDS_DIR/KEY (experiments/records.py), where git keeps them.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from experiments.records import record_run
from pipeline.config import FIELDS, TrainConfig, save_config
from pipeline.distributed import init_distributed
from pipeline.metrics import to_jsonable


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(value), sort_keys=True))


def recorded_config(metrics: dict[str, Any]) -> TrainConfig | None:
    """The config a metrics.json records, as a TrainConfig; None when it has none or it is
    not a valid config. Settings the trainer gained after the run was made (absent from the
    record) take their defaults, the behaviour the run had; settings it no longer has are
    dropped."""
    values = metrics.get("config")
    if not isinstance(values, dict) or not values:
        return None
    try:
        return TrainConfig.from_dict({k: v for k, v in values.items() if k in FIELDS})
    except ValueError:
        return None


def run_status(
    out: Path, config: TrainConfig, checksum: str | None, world_size: int | None = None
) -> str:
    """ "done" (metrics.json of exactly this config, on this data, by `world_size` ranks
    when given), "stale" (another config, data or world size, or an unreadable record) or
    "todo" (no metrics.json)."""
    path = Path(out) / "metrics.json"
    if not path.is_file():
        return "todo"
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "stale"
    recorded = recorded_config(metrics)
    same_config = recorded is not None and _normalised(recorded.to_dict()) == _normalised(
        config.to_dict()
    )
    same_data = checksum is None or metrics.get("data", {}).get("manifest_checksum") == checksum
    same_world = world_size is None or metrics.get("world_size") == world_size
    return "done" if same_config and same_data and same_world else "stale"


@contextlib.contextmanager
def claimed(out: Path, env: Any):
    """Yields True on every rank when this job holds `out`'s run (rank 0's exclusive lock
    on OUT/../.NAME.lock, held until the block ends, released by the kernel if the job
    dies), False when another job holds it: jobs sharing a plan train each run once."""
    handle = None
    if env.is_main:
        lock = out.parent / f".{out.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            handle = None
    box = [handle is not None]
    dist.broadcast_object_list(box, src=0)
    try:
        yield box[0]
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _set_aside(out: Path) -> None:
    """Keep a stale run's folder under another name instead of deleting it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out.rename(out.with_name(f"{out.name}.stale-{stamp}"))


@contextlib.contextmanager
def _console_to(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = f
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = json.loads(Path(argv[0]).read_text())
    env = init_distributed(plan.get("device") or "auto")
    checksum = plan.get("manifest_checksum")
    records = plan.get("records_dir")
    failures = 0
    for i, run in enumerate(plan["runs"]):
        config = TrainConfig.from_dict(run["config"], f"{argv[0]}: {run['key']}")
        out = Path(config.output_dir)
        with claimed(out, env) as mine:
            if not mine:
                if env.is_main:
                    print(f"[study] skip {run['key']} (another job trains it)", flush=True)
                continue
            position = f"{i + 1}/{len(plan['runs'])}"
            ok = _train_run(run["key"], position, config, checksum, env)
            failures += not ok
            if ok and records and env.is_main:
                record_run(out, Path(records) / run["key"])
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


def _train_run(
    key: str, position: str, config: TrainConfig, checksum: str | None, env: Any
) -> bool:
    """Train one claimed run unless it is done (a stale record is set aside first); False
    when it failed (its traceback in OUTPUT_DIR/error.rankN.txt)."""
    from pipeline.train import train

    out = Path(config.output_dir)
    dist.barrier()
    status = run_status(out, config, checksum, env.world_size)
    dist.barrier()
    if status == "done":
        if env.is_main:
            print(f"[study] skip {key} (done)", flush=True)
        return True
    if status == "stale" and env.is_main:
        print(
            f"[study] {key}: metrics.json of another config, data or world size; set aside",
            flush=True,
        )
        _set_aside(out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.json")
        print(f"[study] run {position} {key}", flush=True)
    dist.barrier()
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    log = out / ("train.log" if env.is_main else f"train.rank{env.rank}.log")
    ok = True
    try:
        with _console_to(log):
            train(config)
    except Exception:  # noqa: BLE001  (one failed run must not stop the study)
        ok = False
        text = traceback.format_exc()
        (out / f"error.rank{env.rank}.txt").write_text(text)
        print(f"[study] FAILED {key} on rank {env.rank}:\n{text}", flush=True)
    gc.collect()
    wall = time.perf_counter() - start
    if env.is_main:
        record = {
            "key": key,
            "wall_s": wall,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "world_size": env.world_size,
            "threads": torch.get_num_threads(),
            "backend": dist.get_backend(),
        }
        (out / "study_run.json").write_text(json.dumps(record, indent=2))
        print(f"[study] done {key} in {wall:.0f} s", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
