"""The Ray engine of the partitioned pipeline (`--engine ray`): its tasks run as Ray tasks.

Local mode (a laptop, CI): the job starts Ray inside itself (`ray.init`, no cluster to
start), with `--workers` CPUs and a small object store. On a cluster (`ray job submit`,
or TorchX's Ray scheduler through launch/prep.py) `RAY_ADDRESS` or `--ray-address` names
it and the job joins it. Each task (scatter, clean, build: the project's per-partition
kernels, unchanged) is one Ray task of one CPU; its result (reject counts, a similarity
histogram, file checksums: kilobytes) goes through the object store to the driver only,
not to every rank. Tasks read and write the job's staging folder, so on a cluster that
folder must be on a file system every node sees (NFS, a mounted bucket).

What Ray replaces here is the scheduling of `coordination.py` (the process pool and the
torch.distributed ranks): placement, retries of a lost node's task, results. The
partitioned on-disk layout (`scatter.py`) is kept: it is what makes the samples
byte-identical to the local engine's (each partition's rows in file order, rejects in
file order), which a Ray Data shuffle does not promise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from data_prep.coordination import Coordinator

T = TypeVar("T")
R = TypeVar("R")

LOCAL_OBJECT_STORE_BYTES = 256 << 20  # local mode: results are small; Ray's minimum is 75 MiB


class RayCoordinator(Coordinator):
    """One driver (the leader); tasks as Ray tasks of one CPU each, results in task order."""

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        super().__init__(workers)
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address)
            else:
                ray.init(
                    num_cpus=self.workers,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    include_dashboard=False,
                    # The workers import data_prep from where the driver does.
                    runtime_env={"env_vars": {"PYTHONPATH": _driver_path()}},
                )
            self._started = True

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=1)(fn)
        refs = [remote.remote(task) for task in tasks]
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as error:
            for ref in refs:
                ray.cancel(ref)
            cause = error.cause
            # A bad input raised in a task (InputError naming file and line) reaches the
            # command line as itself, not as Ray's wrapper with the worker's traceback.
            raise (cause if isinstance(cause, BaseException) else error) from None

    def close(self) -> None:
        super().close()
        if self._started:
            self._ray.shutdown()
            self._started = False


def _driver_path() -> str:
    import data_prep

    root = os.path.dirname(os.path.dirname(os.path.abspath(data_prep.__file__)))
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
