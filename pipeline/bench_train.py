"""Training throughput benchmark: DMF against TA, and 1 worker against 2, in one run.

    python -m pipeline.bench_train [--data DIR] [--steps 300] [--per-worker-batch-size 256]
        [--embedding-optimizers adagrad,adam_dense] [--preset amazon] [--json FILE]

Each configuration is a real training run (`pipeline.train` under torchrun, the same code
TorchX launches) stopped after `--steps` steps; the figure is the trainer's own measured
training samples/s (pipeline time only, start-up and evaluation excluded). Ratios are
against the TA run of the same world size, measured in the same invocation, because these
machines are shared and noisy. Every worker trains on `--per-worker-batch-size` samples a
step (the trainer's `--batch-size` is the global batch: this many times the workers), so
the runs of one model do the same work per worker and step whatever their world size.
With several `--embedding-optimizers`, every model and world size runs with each, and
"x first opt" is the ratio to the first optimizer's run of the same model and world size
(e.g. the replicated `adam_dense` against fused `adagrad`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.metrics import format_table


def run_one(
    model: str,
    workers: int,
    threads: int,
    data: str,
    steps: int,
    per_worker_batch: int,
    out: Path,
    embedding_optimizer: str = "auto",
    preset: str = "default",
) -> dict:
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun), "--nproc-per-node", str(workers), "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "localhost:0", "-m", "pipeline.train", "--model", model,
        "--data", data, "--output-dir", str(out), "--max-steps", str(steps),
        "--batch-size", str(per_worker_batch * workers), "--eval-batch-size", "4096",
        "--embedding-optimizer", embedding_optimizer, "--preset", preset,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/default")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--per-worker-batch-size",
        type=int,
        default=256,
        help="samples per worker and step (the trainer's global --batch-size is this x workers)",
    )
    p.add_argument("--models", default="ta,dmf")
    p.add_argument("--workers", default="1,2")
    p.add_argument(
        "--threads-per-worker",
        type=int,
        help="intra-op threads of each worker (default: cores / workers, so every run uses "
        "the whole machine; on a busy machine 1 is fairer, OpenMP threads spin)",
    )
    p.add_argument(
        "--embedding-optimizers",
        default="auto",
        help="comma-separated trainer --embedding-optimizer values, each run for every model "
        "and world size (ratio: 'x first opt')",
    )
    p.add_argument("--preset", default="default", help="trainer preset of every run (model sizes)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    rows = []
    optimizers = args.embedding_optimizers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in [int(w) for w in args.workers.split(",")]:
            for model in args.models.split(","):
                for opt in optimizers:
                    out = Path(tmp) / f"{model}-{workers}-{opt}"
                    threads = args.threads_per_worker or max(1, (os.cpu_count() or 2) // workers)
                    m = run_one(
                        model, workers, threads, args.data, args.steps,
                        args.per_worker_batch_size, out, opt, args.preset,
                    )  # fmt: skip
                    rows.append(
                        {"model": model, "workers": workers, "emb_opt": m["embedding_optimizer"],
                         "opt": opt, "samples_per_s": m["train_samples_per_s"],
                         "auc": m["test"]["auc"]}
                    )  # fmt: skip
                    print(
                        f"  {model} x{workers} {m['embedding_optimizer']}: "
                        f"{m['train_samples_per_s']:,.0f} samples/s",
                        flush=True,
                    )
    first = optimizers[0]
    base = {(r["workers"], r["opt"]): r["samples_per_s"] for r in rows if r["model"] == "ta"}
    one = {(r["model"], r["opt"]): r["samples_per_s"] for r in rows if r["workers"] == 1}
    by_opt = {(r["model"], r["workers"], r["opt"]): r["samples_per_s"] for r in rows}
    nan = float("nan")
    for r in rows:
        r["vs_ta"] = r["samples_per_s"] / base.get((r["workers"], r["opt"]), nan)
        r["vs_1_worker"] = r["samples_per_s"] / one.get((r["model"], r["opt"]), nan)
        r["vs_first_opt"] = r["samples_per_s"] / by_opt[(r["model"], r["workers"], first)]
    columns = [("model", "model"), ("workers", "workers"), ("emb_opt", "emb. optimizer"),
               ("samples_per_s", "samples/s"), ("vs_ta", "x TA"), ("vs_1_worker", "x 1 worker"),
               ("vs_first_opt", "x first opt"), ("auc", f"AUC@{args.steps} steps")]  # fmt: skip
    print(format_table(rows, columns))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
