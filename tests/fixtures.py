"""Test helpers: a small prepared-data folder, and the shared real data beside the checkout.

`write_prepared` writes a folder in the format of docs/data-format.md directly (not by
data_prep) so model, reader and trainer tests do not depend on the data-prep jobs; tests of
data_prep check that the jobs write this same format.

`require_shared` finds the shared real data in `../shared` relative to the repository root
(the checkout's parent folder holds `shared/` beside it, on developer machines and in CI).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def in_ci() -> bool:
    """True when the CI environment variable says so (`CI=true`, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_shared(*parts: str) -> Path:
    """`../shared/<parts>` beside the checkout; when it is missing the calling test fails in CI
    (the real-data tests must run there) and is skipped, with the reason, elsewhere."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        relative = "/".join(("..", "shared", *parts))
        message = f"shared data {relative} not found relative to the checkout (looked at {path})"
        if in_ci():
            pytest.fail(f"{message}; CI=true, so the real-data tests must run", pytrace=False)
        pytest.skip(f"{message}; not in CI (CI=true makes this a failure)")
    return path


@contextlib.contextmanager
def gloo_group(rank: int, world: int, init: str, timeout_s: float = 60) -> Iterator[None]:
    """Rank `rank` of a `world`-rank gloo group (init method `init`) for the duration of the
    block, in a spawned test process, left as the trainer leaves it
    (`pipeline.distributed.leaving_distributed`). `faulthandler` prints every thread's
    Python stack if the process dies by a signal: a spawned child's crash otherwise reaches
    the test only as "terminated with signal"."""
    import faulthandler
    from datetime import timedelta

    import torch.distributed as dist

    from pipeline.distributed import leaving_distributed

    faulthandler.enable()
    dist.init_process_group(
        "gloo",
        init_method=init,
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    with leaving_distributed():
        yield


@contextlib.contextmanager
def one_rank_process_group(store_dir: Path) -> Iterator[None]:
    """A gloo process group of one rank (its file store in `store_dir`) for the duration of
    the block: what torchrec's sharding needs in a single-process test."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{Path(store_dir) / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def write_prepared(
    root: Path,
    *,
    num_users: int = 40,
    num_items: int = 30,
    samples_per_split: dict[str, int] | None = None,
    max_history: int = 8,
    num_buckets: int = 5,
    categories: bool = False,
    row_group_size: int = 16,
    seed: int = 0,
    modalities: tuple[str, ...] = (),
    times: bool = False,
) -> Path:
    """Random samples, users contiguous, histories of 0..max_history items.

    modalities: names of separate modalities (two or more), each with its own random table
    `item_mm_<name>.npy` and `hist_sims_<name>` column (manifest `modalities`); times: a
    `hist_ts_delta` column of random seconds (manifest `history_times`)."""
    rng = np.random.default_rng(seed)
    samples_per_split = samples_per_split or {"train": 200, "valid": 40, "test": 60}
    root.mkdir(parents=True, exist_ok=True)
    mm = rng.normal(size=(num_items, 6)).astype(np.float32)
    mm[:2] = 0.0
    mm[2:] /= np.linalg.norm(mm[2:], axis=1, keepdims=True)
    np.save(root / "item_mm.npy", mm)
    tables = {}
    for k, name in enumerate(modalities):
        table = rng.normal(size=(num_items, 4 + k)).astype(np.float32)
        table[:2] = 0.0
        table[2:] /= np.linalg.norm(table[2:], axis=1, keepdims=True)
        np.save(root / f"item_mm_{name}.npy", table)
        tables[name] = table
    item_category = rng.integers(2, 6, size=num_items)
    splits = {}
    for split, n in samples_per_split.items():
        users = np.sort(rng.integers(2, num_users, size=n))
        items = rng.integers(2, num_items, size=n)
        hist = [rng.integers(2, num_items, size=rng.integers(0, max_history + 1)) for _ in range(n)]
        sims = [(mm[h] @ mm[t]).astype(np.float32) for h, t in zip(hist, items)]
        columns = {
            "user": pa.array(users, pa.int64()),
            "item": pa.array(items, pa.int64()),
            "label": pa.array(rng.integers(0, 2, size=n).astype(np.float32)),
            "ts": pa.array(np.arange(n, dtype=np.int64)),
            "hist_items": pa.array([h.tolist() for h in hist], pa.list_(pa.int64())),
            "hist_sims": pa.array([s.tolist() for s in sims], pa.list_(pa.float32())),
        }
        for name, table in tables.items():
            columns[f"hist_sims_{name}"] = pa.array(
                [(table[h] @ table[t]).tolist() for h, t in zip(hist, items)],
                pa.list_(pa.float32()),
            )
        if times:
            columns["hist_ts_delta"] = pa.array(
                [np.sort(rng.integers(1, 40 * 86_400, size=len(h)))[::-1].tolist() for h in hist],
                pa.list_(pa.int64()),
            )
        if categories:
            columns["category"] = pa.array(item_category[items], pa.int64())
            columns["hist_categories"] = pa.array(
                [item_category[h].tolist() for h in hist], pa.list_(pa.int64())
            )
        (root / split).mkdir(exist_ok=True)
        half = n // 2
        table = pa.table(columns)
        names = []
        for part, piece in enumerate([table.slice(0, half), table.slice(half)]):
            name = f"{split}/part-{part:05d}.parquet"
            pq.write_table(piece, root / name, row_group_size=row_group_size)
            names.append(name)
        splits[split] = names
    all_sims = np.concatenate([np.asarray(s) for s in sims]) if sims else np.zeros(1)
    boundaries = np.quantile(all_sims, np.linspace(0, 1, num_buckets + 1)[1:-1]).tolist()
    manifest = {
        "schema_version": 1,
        "job": "test-fixture",
        "counts": samples_per_split,
        "vocab_sizes": {
            "user": num_users,
            "item": num_items,
            "category": 6 if categories else 0,
        },
        "max_history": max_history,
        "buckets": {"num_buckets": num_buckets, "boundaries": boundaries},
        "item_embeddings": {"path": "item_mm.npy", "dim": 6, "source": "random"},
        "splits": splits,
    }
    if modalities:
        manifest["modalities"] = [
            {"name": n, "path": f"item_mm_{n}.npy", "dim": t.shape[1], "source": "random"}
            for n, t in tables.items()
        ]
    if times:
        manifest["history_times"] = {"column": "hist_ts_delta", "unit": "seconds"}
    manifest["checksum"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def write_serving_data(root: Path) -> Path:
    """The serving tests' prepared folder: 40 items with categories, each item's category
    drawn in 2..5 (seed 3)."""
    root = write_prepared(root, num_items=40, categories=True)
    rng = np.random.default_rng(3)
    np.save(root / "item_category.npy", rng.integers(2, 6, size=40).astype(np.int64))
    return root


def outputs_and_gradients(
    module: Any, call: Callable[[dict[str, Any]], Any], inputs: dict[str, Any], seed: int
) -> tuple[Any, dict[str, Any]]:
    """`call(leaves)` on fresh leaf copies of `inputs` (tensors that require grad), then the
    backward of a fixed random projection of its output (every output unit gets a
    gradient): (output, {input name or parameter name: gradient})."""
    import torch

    module.zero_grad()
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = call(leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * weight).sum().backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads.update({k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None})
    return out.detach(), grads


def assert_same_outputs_and_gradients(
    got: tuple[Any, dict[str, Any]], want: tuple[Any, dict[str, Any]], rtol: float = 1e-9
) -> None:
    """Two `outputs_and_gradients` results agree: the outputs to rtol, every gradient (the
    same set) to 10 rtol (float64 forms of one function)."""
    import torch

    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=rtol / 10)
    assert got[1].keys() == want[1].keys()
    for key, value in want[1].items():
        torch.testing.assert_close(got[1][key], value, rtol=10 * rtol, atol=rtol / 10, msg=key)
