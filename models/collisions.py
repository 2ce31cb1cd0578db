"""Ids beyond the vocabulary: torchrec managed collision modules (MCH / ZCH) per table.

Without them an id unseen at prep time collapses into the out-of-vocabulary row. With
`ManagedCollisions`, `SparseArch` wraps its EmbeddingCollection in torchrec's
`ManagedCollisionEmbeddingCollection`, one `MCHManagedCollisionModule` per table: input
ids are raw ids from an open space (any int64 below 2^62: vocabulary indices, or ids
beyond them, or 62-bit hashes of raw id strings), each table has a fixed number of rows,
and the module keeps a sorted map id -> row, of the ids spread over [0, 2^62) by
`spread_ids` (models/id_map.py) so that every bucket gets its share. Every
`eviction_interval` training steps it admits the ids seen since the last time, evicting the least recently used ones when
the table is full (LRU; an evicted row is reinitialised); until an id is admitted it is
looked up in the table's last row (a shared miss row). The map is a buffer of the model,
saved with its checkpoints, so serving looks ids up the same way (`remap_ids`,
models/id_map.py, torch only): an exported scorer carries the maps (models/scorer.py).

Sharding: torchrec shards these collections row-wise only, the map split in `buckets`
ranges, one or more per rank; `buckets` must be a multiple of the world size, so table
rows are rounded up to a multiple of it (`table_rows`). Checked on CPU with gloo (1 and 2
ranks, fused kernels) in tests/test_collisions.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
from torchrec.modules.mc_modules import (
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHManagedCollisionModule,
)

# The serving-side lookup lives in models/id_map.py (torch only, for the scorer).
from models.id_map import INPUT_ID_SPACE, remap_ids, spread_ids

__all__ = ["INPUT_ID_SPACE", "ManagedCollisions", "managed_collection", "remap_ids", "spread_ids"]


@dataclass(frozen=True)
class ManagedCollisions:
    """eviction_interval: training steps between admissions of new ids. buckets: ranges
    the id map is split into (a multiple of the world size)."""

    eviction_interval: int = 100
    buckets: int = 1

    def table_rows(self, rows: int) -> int:
        """`rows` rounded up to a multiple of `buckets` (rows per bucket must be equal)."""
        return -(-rows // self.buckets) * self.buckets


def managed_collection(
    tables: Sequence[EmbeddingConfig],
    settings: ManagedCollisions,
    device: torch.device | None = None,
) -> ManagedCollisionEmbeddingCollection:
    """An EmbeddingCollection over `tables` behind one MCH module per table."""
    modules = {
        table.name: MCHManagedCollisionModule(
            zch_size=table.num_embeddings,
            device=device or torch.device("cpu"),
            eviction_policy=LRU_EvictionPolicy(),
            eviction_interval=settings.eviction_interval,
            input_hash_size=INPUT_ID_SPACE,
            # Applied before the row-wise input distribution: ids from a small space spread
            # over every rank's bucket (models/id_map.py).
            input_hash_func=spread_ids,
            buckets=settings.buckets,
            name=table.name,
        )
        for table in tables
    }
    return ManagedCollisionEmbeddingCollection(
        EmbeddingCollection(tables=list(tables), device=device),
        ManagedCollisionCollection(modules, list(tables)),
        return_remapped_features=False,
    )
