"""Reader throughput: samples/s for 0 (synchronous), 1, 2 and 4 DataLoader workers.

    python -m pipeline.bench_reader --data DIR --batch-size B [--json FILE]

Reads the training split as training does (shuffled windows of row groups, rank 0 of
`--world-size`, epoch 0) with `ShardReader(num_workers=N)` for each N of `--workers`, in
the same run, and prints samples/s (from the first batch asked for to the last received:
worker start-up and the first window's latency are included; the median of `--repeat`
interleaved runs) and the ratio to the synchronous reader. The synchronous run also splits its time into reading windows
(Parquet decode, checks, shuffle: what the workers take over) and cutting them into
batches (what stays in the consuming process), which bounds the speed-up:
1 / (cut share) with enough free cores. It also measures the machine's own ceiling: how
much more work N CPU-bound processes do than one (`machine_scaling`; on a 2-vCPU VM this
is below 2, and no reader with N workers can beat it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

from pipeline.data import PreparedData


def _cpu_seconds() -> tuple[float, float]:
    """(this process's, its reaped children's) user + system CPU seconds."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def _spin(seconds: float) -> int:
    """A CPU-bound numpy loop (sort + arithmetic on a cache-sized array) for `seconds`;
    returns how many rounds it did."""
    import numpy as np

    values = np.random.default_rng(0).random(200_000)
    rounds, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        np.sort(values)
        np.multiply(values, 2.0).sum()
        rounds += 1
    return rounds


def machine_scaling(processes: int, seconds: float = 2.0) -> float:
    """How many times one process's work `processes` CPU-bound processes do in the same
    time on this machine: the ceiling of `processes` reader workers (shared cores, SMT,
    memory bandwidth and frequency included), measured in the same run."""
    from multiprocessing import get_context

    with get_context("spawn").Pool(processes) as pool:
        pool.map(_spin, [0.05] * processes)  # start-up and imports, not timed
        alone = pool.apply(_spin, (seconds,))
        together = sum(pool.map(_spin, [seconds] * processes))
    return together / max(alone, 1)


def measure(data: PreparedData, batch_size: int, workers: int, args) -> dict:
    reader = data.reader(
        args.split,
        batch_size,
        shuffle=True,
        seed=args.seed,
        rank=0,
        world_size=args.world_size,
        num_workers=workers,
        shuffle_buffer_row_groups=args.shuffle_buffer_row_groups,
        extras=data.history_extras_for(SimpleNamespace(needs_times=args.times)),
    )
    read_seconds = [0.0]
    if workers == 0:  # time the window reads inside the synchronous run
        inner = reader._read_window

        def timed(*args):
            start = time.perf_counter()
            try:
                return inner(*args)
            finally:
                read_seconds[0] += time.perf_counter() - start

        reader._read_window = timed
    samples = batches = 0
    main_before, workers_before = _cpu_seconds()
    start = time.perf_counter()
    stream = reader.iter_batches(0)
    for batch in stream:
        samples += batch.batch_size
        batches += 1
        if args.max_batches and batches >= args.max_batches:
            break
    elapsed = time.perf_counter() - start
    stream.close()  # the workers exit and are reaped: their CPU time is counted
    main_after, workers_after = _cpu_seconds()
    record = {"samples": samples, "batches": batches, "seconds": elapsed}
    record["main_cpu_s"] = main_after - main_before
    record["worker_cpu_s"] = workers_after - workers_before
    del reader
    record["samples_per_s"] = samples / elapsed
    if workers == 0:
        record["read_share"] = read_seconds[0] / elapsed
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench_reader", description=__doc__)
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=int, default=1024, help="per-rank batch")
    p.add_argument("--workers", default="0,1,2,4", help="comma-separated worker counts")
    p.add_argument("--split", default="train")
    p.add_argument("--world-size", type=int, default=1, help="read rank 0's part of N")
    p.add_argument("--max-batches", type=int, default=0, help="0: the whole epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shuffle-buffer-row-groups",
        type=int,
        default=4,
        help="row groups per window (trainer: 4)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per count (median reported)")
    p.add_argument(
        "--ceiling-seconds", type=float, default=2.0, help="per measurement of machine_scaling"
    )
    p.add_argument(
        "--times",
        action="store_true",
        help="also read the behaviour times, as the trainer does for a model that reads them "
        "(DMAE); without it the columns of every other model (PreparedData.history_extras_for)",
    )
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    # torch warns when the workers outnumber the cores; measuring that is the point here.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    data = PreparedData(args.data)
    counts = [int(w) for w in args.workers.split(",")]
    load_before = os.getloadavg()[0]
    runs: dict[int, list[dict]] = {w: [] for w in counts}
    for _ in range(args.repeat):  # interleaved, so a busy spell hits every count alike
        for w in counts:
            runs[w].append(measure(data, args.batch_size, w, args))
    results = {
        w: sorted(runs[w], key=lambda r: r["samples_per_s"])[len(runs[w]) // 2] for w in counts
    }
    ceilings = {w: machine_scaling(w, args.ceiling_seconds) for w in counts if w > 1}
    load_after = os.getloadavg()[0]
    base = results[counts[0]]["samples_per_s"] if 0 not in results else results[0]["samples_per_s"]
    print(
        f"data {args.data}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} before, {load_after:.1f} after"
    )
    print(
        f"{'workers':>7}  {'samples/s':>10}  {'x sync':>6}  {'batches':>7}  {'seconds':>7}"
        f"  {'main CPU us/sample':>18}  {'worker CPU us/sample':>20}"
    )
    for w in counts:
        r = results[w]
        print(
            f"{w:>7}  {r['samples_per_s']:>10,.0f}  {r['samples_per_s'] / base:>6.2f}  "
            f"{r['batches']:>7}  {r['seconds']:>7.1f}  {1e6 * r['main_cpu_s'] / r['samples']:>18.2f}"
            f"  {1e6 * r['worker_cpu_s'] / r['samples']:>20.2f}"
        )
    if 0 in results:
        share = results[0]["read_share"]
        print(
            f"synchronous: {100 * share:.1f}% of the time reading windows (the workers' part), "
            f"{100 * (1 - share):.1f}% cutting batches: at most {1 / max(1 - share, 1e-9):.1f}x "
            "with enough free cores"
        )
    for w, ceiling in ceilings.items():
        print(
            f"this machine: {w} CPU-bound processes do {ceiling:.2f}x the work of one "
            f"(the ceiling of {w} workers); {w} workers reach "
            f"{results[w]['samples_per_s'] / base:.2f}x"
        )
    parallel = [w for w in counts if w > 0]
    if parallel:
        r = results[max(parallel)]
        main_us = 1e6 * r["main_cpu_s"] / r["samples"]
        worker_us = 1e6 * r["worker_cpu_s"] / r["samples"]
        print(
            f"with {max(parallel)} workers a sample costs {worker_us:.2f} us of worker CPU and "
            f"{main_us:.2f} us in the consuming process: about {1e6 / worker_us:,.0f} samples/s "
            f"per free core given to workers, up to {1e6 / max(main_us, 1e-9):,.0f} samples/s "
            "where the consuming process's part saturates its core"
        )
    if args.json:
        record = {
            "samples_per_s": {str(w): results[w]["samples_per_s"] for w in counts},
            "median_run": {str(w): results[w] for w in counts},
            "all_samples_per_s": {str(w): [r["samples_per_s"] for r in runs[w]] for w in counts},
            "batch_size": args.batch_size,
            "data": args.data,
            "cpus": os.cpu_count(),
            "machine_scaling": {str(w): c for w, c in ceilings.items()},
            "load_average": [load_before, load_after],
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
