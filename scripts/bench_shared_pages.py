"""What a reader worker's fresh shared-memory window costs against private and reused memory.

A DataLoader worker packs each window into new shared-memory storage
(`pipeline.loader.SharedArrays`); the synchronous reader packs into `np.empty` memory that
the allocator can back with huge pages or reuse. This writes a `--mib` buffer `--rounds`
times each way and prints the CPU time and minor page faults per buffer, with the ratios
to the private allocation measured in the same run:

    python -m scripts.bench_shared_pages [--mib 64] [--rounds 10]
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import numpy as np
import torch


def _fresh_shared(nbytes: int) -> object:
    storage = torch.UntypedStorage._new_shared(nbytes)  # what SharedArrays allocates
    tensor = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,), (1,))
    tensor.numpy()[:] = 1
    return tensor


def _fresh_private(nbytes: int) -> object:
    array = np.empty(nbytes, np.uint8)
    array[:] = 1
    return array


def _measure(fill: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(CPU ms, minor faults) per call, after one warm-up call."""
    fill()
    before, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    for _ in range(rounds):
        fill()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return 1e3 * (time.process_time() - cpu) / rounds, (after.ru_minflt - before.ru_minflt) / rounds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    nbytes = args.mib << 20
    pool = np.empty(nbytes, np.uint8)

    def reused() -> object:
        pool[:] = 1
        return pool

    forms = {
        "fresh shared memory (a worker's window)": lambda: _fresh_shared(nbytes),
        "fresh np.empty (the synchronous reader)": lambda: _fresh_private(nbytes),
        "one buffer reused": reused,
    }
    results = {name: _measure(fill, args.rounds) for name, fill in forms.items()}
    base = results["fresh np.empty (the synchronous reader)"][0]
    print(f"{args.mib} MiB a buffer, {args.rounds} rounds, CPU time per buffer:")
    for name, (ms, faults) in results.items():
        print(f"  {name:42s} {ms:8.2f} ms  {faults:8.0f} minor faults  {ms / base:5.2f}x")


if __name__ == "__main__":
    main()
