"""DMAE's cost against DMF, measured in one run: training step time and serving latency.

    python -m pipeline.bench_dmae --data data/default-mm [--train-steps 150] [--workers 2]
        [--threads-per-worker 1] [--requests 200] [--candidates 200] [--formats eager,pt2]
        [--rounds 5] [--json FILE]

Training: each model is a real training run (`pipeline.bench_train.run_one`: `pipeline.train`
under torchrun, the code TorchX launches) of `--train-steps` steps on the same data, batch
and world size; the figure is the trainer's measured training samples/s, turned into the
time of one global step (ms), and DMAE's ratio to the DMF run of the same invocation.

Serving: both models at the trainer's default sizes (random weights, N(0, 0.3)), served by
the common scorer (models/scorer.py) with the data's tables: DMF from its per-user cache,
DMAE per candidate (its user side is target-dependent; docs/models.md says what it
caches). One request = `encode_user` (a test-split history, with its behaviour times for
DMAE) + `score` of `--candidates` random items. The two models (and each `--formats` form:
`eager` scorers, `pt2` artifacts exported and loaded with `load_artifact`) are timed on
the same requests in interleaved rounds, so load from other processes hits them alike;
the figure is the median per-request latency and DMAE's ratio to DMF in the same form.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.bench_train import run_one
from pipeline.metrics import format_table

MODELS = ("dmf", "dmae")


def train_cost(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            m = run_one(
                model, args.workers, args.threads_per_worker, args.data, args.train_steps,
                args.per_worker_batch_size, Path(tmp) / model,
            )  # fmt: skip
            batch = args.per_worker_batch_size * args.workers
            rows.append(
                {"model": model, "samples_per_s": m["train_samples_per_s"],
                 "step_ms": 1000.0 * batch / m["train_samples_per_s"]}
            )  # fmt: skip
            print(f"  train {model}: {m['train_samples_per_s']:,.0f} samples/s", flush=True)
    base = rows[0]["step_ms"]
    for r in rows:
        r["x_dmf"] = r["step_ms"] / base
    return rows


def random_model(name: str, spec, seed: int):
    from models.zoo import build_model, make_config

    torch.manual_seed(seed)
    model = build_model(name, spec, make_config(name, {})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model


def serving_cost(args: argparse.Namespace) -> list[dict]:
    from models.scorer import scorer_from_model
    from pipeline import export
    from pipeline.artifact import load_artifact
    from pipeline.data import PreparedData

    data = PreparedData(args.data)
    spec = data.feature_spec()
    cats = export.item_categories(data)
    table = pq.ParquetDataset(data.split_files("test")).read(
        columns=["user", "hist_items", "hist_ts_delta"]
    )
    rng = np.random.default_rng(0)
    rows = rng.choice(table.num_rows, size=args.requests, replace=False)
    users = table.column("user").to_numpy()[rows]
    hists = table.column("hist_items").take(rows).to_pylist()
    deltas = table.column("hist_ts_delta").take(rows).to_pylist()
    num_items = data.vocab_sizes["item"]
    requests = [
        (torch.tensor(h, dtype=torch.long), torch.tensor(int(u)),
         torch.tensor(t, dtype=torch.float32),
         torch.from_numpy(rng.integers(2, num_items, size=args.candidates)))
        for h, u, t in zip(hists, users, deltas)
    ]  # fmt: skip
    scorers: dict[tuple[str, str], object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = random_model(name, spec, seed=1)
            eager = scorer_from_model(model, data.item_mm, cats, modality_mm=data.modality_mm)
            for kind in args.formats.split(","):
                if kind == "eager":
                    scorers[(name, kind)] = eager
                else:
                    path = Path(tmp) / f"{name}{export.SUFFIX[kind]}"
                    started = time.perf_counter()
                    export.export_scorer(eager, path, {"model": name}, kind)
                    print(f"  exported {name} {kind} in {time.perf_counter() - started:.0f} s")
                    scorers[(name, kind)] = load_artifact(path)[0]
        times: dict[tuple[str, str], list[float]] = {key: [] for key in scorers}
        with torch.inference_mode():
            for _ in range(args.rounds):
                for hist, user, delta, cands in requests:
                    for (name, kind), scorer in scorers.items():
                        started = time.perf_counter()
                        extra = (delta,) if name == "dmae" else ()
                        scorer.score(scorer.encode_user(hist, user, *extra), cands)
                        times[(name, kind)].append(time.perf_counter() - started)
    out = []
    for (name, kind), values in times.items():
        median = statistics.median(values) * 1e3
        base = statistics.median(times[("dmf", kind)]) * 1e3
        p90 = float(np.percentile(values, 90)) * 1e3
        out.append({"model": name, "format": kind, "p50_ms": median, "p90_ms": p90,
                    "x_dmf": median / base})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/default-mm", help="prepared data with times")
    p.add_argument("--train-steps", type=int, default=150, help="0: skip the training runs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--per-worker-batch-size", type=int, default=256)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--formats", default="eager,pt2", help="eager, pt2, torchscript, aoti")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="serving intra-op threads")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    result: dict = {"args": vars(args), "cpu_count": os.cpu_count()}
    if args.train_steps:
        result["train"] = train_cost(args)
        print(format_table(result["train"], [("model", "model"), ("samples_per_s", "samples/s"),
                                             ("step_ms", "step ms"), ("x_dmf", "x DMF")]))  # fmt: skip
    torch.set_num_threads(args.threads)
    result["serving"] = serving_cost(args)
    print(format_table(result["serving"], [("model", "model"), ("format", "format"),
                                           ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"),
                                           ("x_dmf", "x DMF")]))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
