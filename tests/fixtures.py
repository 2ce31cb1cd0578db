"""A small prepared-data folder in the format of docs/data-format.md, for fast tests.

It is written directly (not by data_prep) so model, reader and trainer tests do not depend
on the data-prep jobs; tests of data_prep check that the jobs write this same format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


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
) -> Path:
    """Random samples, users contiguous, histories of 0..max_history items."""
    rng = np.random.default_rng(seed)
    samples_per_split = samples_per_split or {"train": 200, "valid": 40, "test": 60}
    root.mkdir(parents=True, exist_ok=True)
    mm = rng.normal(size=(num_items, 6)).astype(np.float32)
    mm[:2] = 0.0
    mm[2:] /= np.linalg.norm(mm[2:], axis=1, keepdims=True)
    np.save(root / "item_mm.npy", mm)
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
    manifest["checksum"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root
