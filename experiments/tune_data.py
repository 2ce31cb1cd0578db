"""The data a tuning search trains and validates on: the prepared folder without its test
split, and optionally a deterministic subsample of its users.

    tuning_folder(Path("data/amazon"), Path("runs/tune/data"), train_fraction=0.5, seed=0)

A user is kept when `splitmix64(user_id + seed * golden) / 2**64 < train_fraction`: a
fixed hash of the id, so the same users are kept on every machine and in every run, and
whole users are kept (their training rows and their validation rows together, so the
validation users are users the model trained on, as in the full split). Bucket
boundaries, vocabularies and the multimodal table stay the full data's. The folder holds
no test split at all (its manifest lists train and valid only), so no trial can read it.

Files are hard links of the source's when nothing is filtered (copies across file
systems), new Parquet shards (same row-group size) when users are filtered. The manifest
is written with data_prep's own writer (checksum + file table), last, into a complete
folder that is then renamed into place; an existing folder of the same source checksum,
fraction and seed is reused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from data_prep.integrity import checksum_files
from data_prep.manifest import load_manifest, read_manifest, write_manifest

SPLITS = ("train", "valid")
_GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of uint64 values (wrapping arithmetic)."""
    z = x.astype(np.uint64) + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def kept_users(users: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask: which of `users` (ids) the subsample keeps.

    >>> kept_users(np.arange(10), 1.0).all(), kept_users(np.arange(10), 0.0).any()
    (np.True_, np.False_)
    >>> mask = kept_users(np.arange(100_000), 0.3, seed=1)
    >>> 0.29 < mask.mean() < 0.31
    np.True_
    """
    if fraction >= 1.0:
        return np.ones(users.shape, dtype=bool)
    offset = np.uint64((seed * _GOLDEN) % (1 << 64))
    with np.errstate(over="ignore"):
        hashed = splitmix64(users.astype(np.uint64) + offset)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def tuning_folder(
    source: Path, root: Path, train_fraction: float = 1.0, seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """The tuning folder of `source` (built when missing); returns (path, its subset
    record: fraction, seed, users and samples kept per split)."""
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    source = Path(source)
    manifest = load_manifest(source)
    counts = manifest.get("counts", {})
    if not counts.get("valid"):
        raise ValueError(f"{source}: no valid split; tuning selects on validation only")
    source_checksum = manifest.get("checksum") or "unchecked"
    target = Path(root) / f"{source_checksum[:12]}-f{train_fraction:g}-s{seed}"
    existing = read_manifest(target)
    if existing is not None and existing.get("subset", {}).get("source_checksum") == (
        source_checksum
    ):
        return target, existing["subset"]
    stage = target.with_name(f".{target.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    splits: dict[str, list[str]] = {}
    new_counts: dict[str, int] = {}
    users_kept: dict[str, int] = {}
    for split in SPLITS:
        names = manifest.get("splits", {}).get(split)
        if names is None:
            names = sorted(
                p.relative_to(source).as_posix() for p in (source / split).glob("*.parquet")
            )
        splits[split], new_counts[split], users = [], 0, set()
        for name in names:
            src = source / name
            if train_fraction >= 1.0:
                _link_or_copy(src, stage / name)
                rows = pq.ParquetFile(src).metadata.num_rows
                users.update(
                    np.unique(pq.read_table(src, columns=["user"])["user"].to_numpy()).tolist()
                )
            else:
                table = pq.read_table(src)
                mask = kept_users(table.column("user").to_numpy(), train_fraction, seed)
                rows = int(mask.sum())
                if not rows:
                    continue
                table = table.filter(mask)
                users.update(np.unique(table.column("user").to_numpy()).tolist())
                meta = pq.ParquetFile(src).metadata
                group = meta.row_group(0).num_rows if meta.num_row_groups else rows
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, stage / name, row_group_size=max(1, group))
            splits[split].append(name)
            new_counts[split] += rows
        users_kept[split] = len(users)
    if not new_counts["valid"] or not new_counts["train"]:
        shutil.rmtree(stage, ignore_errors=True)
        raise ValueError(
            f"train_fraction {train_fraction} keeps {new_counts} samples of {source}: too few"
        )
    item_path = (manifest.get("item_embeddings") or {}).get("path", "item_mm.npy")
    _link_or_copy(source / item_path, stage / item_path)
    subset = {
        "source": str(source),
        "source_checksum": source_checksum,
        "train_fraction": train_fraction,
        "seed": seed,
        "rule": "splitmix64(user + seed * 0x9E3779B97F4A7C15) / 2**64 < train_fraction",
        "samples": new_counts,
        "source_samples": {s: int(counts.get(s, 0)) for s in SPLITS},
        "users": users_kept,
    }
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "files")}
    body.update(
        counts=new_counts,
        splits=splits,
        subset=subset,
        files=checksum_files(stage, [*[n for s in splits.values() for n in s], item_path]),
    )
    write_manifest(stage, body)
    shutil.rmtree(target, ignore_errors=True)
    stage.rename(target)
    return target, subset
