"""Which engine runs a job's tasks: `--engine local` (data_prep/coordination.py: this
process, a process pool or torch.distributed ranks) or `--engine ray`
(data_prep/ray_engine.py)."""

from __future__ import annotations

import os
from typing import Any

from data_prep.coordination import Coordinator, TorchCoordinator

ENGINES = ("local", "ray")


def add_engine_argument(parser: Any) -> None:
    """--engine of the partitioned jobs (argparse parser)."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="who runs the tasks: local (this process, or a process pool with --workers, or "
        "torch.distributed ranks with --distributed) or ray (Ray tasks: Ray started inside "
        "the job with --workers CPUs, or the cluster named by RAY_ADDRESS; docs/data-prep.md)",
    )


def make_coordinator(
    workers: int, distributed: bool | None = None, engine: str = "local"
) -> Coordinator:
    """The Ray engine when `engine` is "ray" (data_prep/ray_engine.py); else
    TorchCoordinator when asked or when launched with WORLD_SIZE > 1, else local."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        if distributed:
            raise ValueError("--engine ray schedules the tasks itself: drop --distributed")
        from data_prep.ray_engine import RayCoordinator  # imports ray only when asked

        return RayCoordinator(workers)
    if distributed is None:
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TorchCoordinator(workers) if distributed else Coordinator(workers)
