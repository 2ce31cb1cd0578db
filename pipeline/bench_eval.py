"""Memory of one evaluation per rank: routed metrics against gathering every row.

    python -m pipeline.bench_eval --rows-per-rank 1000000 --world-size 2 [--json FILE]

Starts `--world-size` gloo ranks on this machine, twice: once with
`EvalAccumulator.compute` (rows routed to the rank owning their user for GAUC and
range-partitioned by score for the exact AUC, pipeline/metrics.py), once with the former
method (every row all-gathered to every rank, then AUC, GAUC and log loss computed on all
of them on every rank). Each rank holds `--rows-per-rank` evaluation rows (random scores,
labels, users drawn from `--users`, history lengths). The figure is the growth of the
rank's peak resident memory (ru_maxrss) during the metric computation, per rank and per
evaluation row of the whole split; and the wall time of the computation.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.distributed import leaving_distributed


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rows(rank: int, n: int, users: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([7, rank])
    return {
        "scores": rng.normal(size=n).astype(np.float32).astype(np.float64),
        "labels": (rng.random(n) < 0.3).astype(np.float64),
        "users": rng.integers(2, users, n),
        "history": rng.integers(0, 101, n),
    }


def _gather_all(local: np.ndarray) -> np.ndarray:
    """The former EvalAccumulator's gather: pad to the largest rank, all_gather, concat."""
    world = dist.get_world_size()
    size = torch.tensor([local.shape[0]], dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(c) for c in sizes]
    padded_rows = np.zeros((max(counts), *local.shape[1:]), dtype=local.dtype)
    padded_rows[: local.shape[0]] = local
    padded = torch.from_numpy(padded_rows)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return np.concatenate([p[:c].numpy() for p, c in zip(parts, counts)])


def _gathered_metrics(acc) -> dict:
    """What every rank computed before: all rows here, then the single-process metrics."""
    from pipeline.metrics import _sigmoid, auc, gauc, logloss

    floats, ints = acc._local_rows()
    floats, ints = _gather_all(floats), _gather_all(ints)
    scores, labels, users, history = floats[:, 0], floats[:, 1], ints[:, 0], ints[:, 1]
    probs = _sigmoid(scores)
    short = history <= acc.short_history_max
    out = {}
    for name, rows in (("all", slice(None)), ("short", short), ("long", ~short)):
        out[name] = {
            "auc": auc(scores[rows], labels[rows]),
            "gauc": gauc(scores[rows], labels[rows], users[rows])[0],
            "logloss": logloss(probs[rows], labels[rows]),
        }
    return out


def _worker(rank: int, world: int, port: int, method: str, n: int, users: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=600),
    )
    with leaving_distributed():
        from pipeline.metrics import EvalAccumulator

        acc = EvalAccumulator()
        rows = _rows(rank, n, users)
        for start in range(0, n, 65536):
            part = slice(start, start + 65536)
            acc.update(*(torch.from_numpy(rows[k][part]) for k in rows))
        del rows
        dist.barrier()
        before = _peak_bytes()
        start = time.perf_counter()
        result = acc.compute() if method == "routed" else _gathered_metrics(acc)
        elapsed = time.perf_counter() - start
        growth = _peak_bytes() - before
        record = {"rank": rank, "peak_growth_bytes": growth, "seconds": elapsed}
        record["auc"] = result["auc"] if method == "routed" else result["all"]["auc"]
        record["gauc"] = result["gauc"] if method == "routed" else result["all"]["gauc"]
        Path(out, f"{method}-{rank}.json").write_text(json.dumps(record))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, n: int, users: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"world_size": world, "rows_per_rank": n, "rows": n * world, "users": users}
    for method in ("routed", "gathered"):
        mp.start_processes(
            _worker,
            args=(world, _free_port(), method, n, users, str(out)),
            nprocs=world,
            start_method="spawn",
        )
        ranks = [json.loads((out / f"{method}-{r}.json").read_text()) for r in range(world)]
        peak = max(r["peak_growth_bytes"] for r in ranks)
        report[method] = {
            "peak_growth_bytes_per_rank": [r["peak_growth_bytes"] for r in ranks],
            "bytes_per_eval_row_per_rank": peak / (n * world),
            "seconds": max(r["seconds"] for r in ranks),
            "auc": ranks[0]["auc"],
            "gauc": ranks[0]["gauc"],
        }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench_eval", description=__doc__)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--rows-per-rank", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--work-dir", default="runs/bench_eval")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    report = run(args.world_size, args.rows_per_rank, args.users, Path(args.work_dir))
    for method in ("routed", "gathered"):
        r = report[method]
        print(
            f"{method:>8}: peak growth per rank {max(r['peak_growth_bytes_per_rank']) / 1e6:,.1f} MB"
            f" = {r['bytes_per_eval_row_per_rank']:.1f} B per evaluation row, "
            f"{r['seconds']:.2f} s, AUC {r['auc']:.6f}, GAUC {r['gauc']:.6f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
