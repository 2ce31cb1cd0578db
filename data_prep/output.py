"""Writes a prepared folder: similarities, buckets, shards, vocabularies, manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data_prep import SCHEMA_VERSION
from data_prep.items import ItemTable, save_item_arrays
from data_prep.manifest import file_sha256, write_manifest
from data_prep.rejects import RejectLog
from data_prep.samples import Samples
from data_prep.similarity import SimilarityHistogram, history_similarities
from data_prep.vocab import Vocab
from data_prep.writer import DEFAULT_ROW_GROUP_SIZE, ShardWriter

SPLITS = ("train", "valid", "test")


def fill_item_features(samples: Samples, items: ItemTable) -> None:
    """Fill hist_sims, and the categories when items have them, in place."""
    samples.hist_sims = history_similarities(
        items.mm, samples.item, samples.hist_offsets, samples.hist_items
    )
    if items.category is not None:
        samples.category = items.category[samples.item]
        samples.hist_categories = items.category[samples.hist_items]


def write_prepared(
    out_dir: Path,
    job: str,
    splits: dict[str, Samples],
    user_vocab: Vocab,
    items: ItemTable,
    rejects: RejectLog,
    *,
    created_by: str,
    max_history: int,
    num_buckets: int,
    inputs: dict[str, dict[str, Any]],
    protocol: dict[str, Any],
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
) -> dict[str, Any]:
    """Fill features, compute train-only bucket boundaries, write everything; returns the manifest."""
    rejects.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    histogram = SimilarityHistogram()
    for name, samples in splits.items():
        fill_item_features(samples, items)
        if name == "train":
            histogram.add(samples.hist_sims)
    boundaries = histogram.equal_frequency_boundaries(num_buckets)

    paths: dict[str, list[str]] = {}
    for name in SPLITS:
        if name in splits:
            writer = ShardWriter(out_dir, name, row_group_size=row_group_size)
            writer.write(splits[name])
            paths[name] = writer.close()
    user_vocab.save(out_dir / "vocab" / "user.parquet")
    save_item_arrays(out_dir, items)

    vocab_sizes = {"user": len(user_vocab), "item": len(items.vocab)}
    if items.category_vocab is not None:
        vocab_sizes["category"] = len(items.category_vocab)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "job": job,
        "created_by": created_by,
        "counts": {name: len(splits[name]) for name in SPLITS if name in splits},
        "users_per_split": {
            name: int(len(np.unique(splits[name].user))) for name in SPLITS if name in splits
        },
        "vocab_sizes": vocab_sizes,
        "max_history": max_history,
        "buckets": {"num_buckets": num_buckets, "boundaries": [float(b) for b in boundaries]},
        "item_embeddings": {
            "path": "item_mm.npy",
            "dim": int(items.mm.shape[1]),
            "source": items.mm_source,
            "sha256": file_sha256(out_dir / "item_mm.npy"),
        },
        "inputs": inputs,
        "protocol": protocol,
        "records": rejects.as_manifest(),
        "splits": paths,
    }
    return write_manifest(out_dir, manifest)
