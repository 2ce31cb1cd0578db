"""Who runs which task: one process with a local process pool, or torch.distributed ranks.

A job runs the same driver code on every rank. `map` runs the tasks whose position
i % world_size == rank (in a local process pool when `workers` > 1) and returns every
rank's results in task order; `barrier` and `broadcast` synchronise the ranks.

This is the `--engine local` scheduler. `--engine ray` (data_prep/ray_engine.py) runs the
same tasks on Ray; this one is kept as the default because it needs nothing started and
no extra process (the tests, `make data`, a laptop), and for the torchrun/Slurm replicas
that existing launch scripts use.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coordinator:
    """Single process (rank 0 of 1); `workers` > 1 runs tasks in a spawned process pool."""

    rank = 0
    world_size = 1

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        mine = list(range(self.rank, len(tasks), self.world_size))
        if self.workers == 1 or len(mine) <= 1:
            results = [fn(tasks[i]) for i in mine]
        else:
            if self._pool is None:  # one pool for every stage: workers start (imports) once
                context = multiprocessing.get_context(
                    "spawn"
                )  # pyarrow threads and fork do not mix
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            results = list(self._pool.map(fn, [tasks[i] for i in mine]))
        return self._merge(mine, results, len(tasks))

    def _merge(self, mine: list[int], results: list[Any], n: int) -> list[Any]:
        out: list[Any] = [None] * n
        for i, result in zip(mine, results):
            out[i] = result
        return out

    def barrier(self) -> None:
        """Wait for every rank."""

    def broadcast(self, value: Any) -> Any:
        """The leader's `value` on every rank."""
        return value

    def close(self) -> None:
        """Release what the coordinator started (the process pool, the Ray engine's Ray)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class TorchCoordinator(Coordinator):
    """Ranks of a torch.distributed gloo group (env:// from torchrun or TorchX)."""

    def __init__(self, workers: int = 1) -> None:
        super().__init__(workers)
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def _merge(self, mine: list[int], results: list[Any], n: int) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(gathered, list(zip(mine, results)))
        out: list[Any] = [None] * n
        for pairs in gathered:
            for i, result in pairs:
                out[i] = result
        return out

    def barrier(self) -> None:
        self._dist.barrier()

    def broadcast(self, value: Any) -> Any:
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]
