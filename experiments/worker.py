"""Runs a list of `pipeline.train` configurations in one torchrun job (used by experiments.study).

    torchrun --nproc-per-node 2 -m experiments.worker PLAN.json

PLAN.json: {"runs": [{"key": ..., "out": DIR, "argv": [...trainer flags...]}, ...],
"manifest_checksum": "..."}. Every run is a real `train(parse_args(argv))` call in the same
process group (`init_distributed` reuses it), which saves the ~10 s start-up of a torchrun
job per run. A run whose DIR/metrics.json already exists with the same trainer config and
data checksum is skipped, so an interrupted study continues where it stopped. Rank 0
writes each run's console output to DIR/train.log (other ranks: DIR/train.rankN.log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch.distributed as dist

from pipeline.distributed import init_distributed
from pipeline.metrics import to_jsonable
from pipeline.train import parse_args, train


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(value), sort_keys=True))


def expected_config(argv: list[str]) -> dict[str, Any]:
    """The trainer config `argv` gives, as metrics.json records it."""
    return _normalised(dataclasses.asdict(parse_args(argv)))


def run_status(out: Path, argv: list[str], checksum: str | None) -> str:
    """ "done" (metrics.json with this config and data), "stale" (another config or data)
    or "todo" (no metrics.json)."""
    path = Path(out) / "metrics.json"
    if not path.is_file():
        return "todo"
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "stale"
    # Settings the trainer gained after the run was made (absent from its record) do not
    # make it stale; every setting both know must match.
    recorded, expected = _normalised(metrics.get("config") or {}), expected_config(argv)
    same_config = all(recorded[k] == expected[k] for k in recorded.keys() & expected.keys())
    same_config = same_config and bool(recorded)
    same_data = checksum is None or metrics.get("data", {}).get("manifest_checksum") == checksum
    return "done" if same_config and same_data else "stale"


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
    env = init_distributed("cpu" if plan.get("device") == "cpu" else "auto")
    checksum = plan.get("manifest_checksum")
    failures = 0
    for i, run in enumerate(plan["runs"]):
        out = Path(run["out"])
        dist.barrier()
        status = run_status(out, run["argv"], checksum)
        dist.barrier()
        if status == "done":
            if env.is_main:
                print(f"[study] skip {run['key']} (done)", flush=True)
            continue
        if status == "stale" and env.is_main:
            print(f"[study] {run['key']}: metrics.json of another config; set aside", flush=True)
            _set_aside(out)
        dist.barrier()
        if env.is_main:
            print(f"[study] run {i + 1}/{len(plan['runs'])} {run['key']}", flush=True)
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        log = out / ("train.log" if env.is_main else f"train.rank{env.rank}.log")
        try:
            with _console_to(log):
                train(parse_args(run["argv"]))
        except Exception:  # noqa: BLE001  (one failed run must not stop the study)
            failures += 1
            text = traceback.format_exc()
            (out / f"error.rank{env.rank}.txt").write_text(text)
            print(f"[study] FAILED {run['key']} on rank {env.rank}:\n{text}", flush=True)
        gc.collect()
        wall = time.perf_counter() - start
        if env.is_main:
            record = {
                "key": run["key"],
                "wall_s": wall,
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
                "world_size": env.world_size,
            }
            (out / "study_run.json").write_text(json.dumps(record, indent=2))
            print(f"[study] done {run['key']} in {wall:.0f} s", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
