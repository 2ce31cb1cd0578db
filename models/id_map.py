"""Raw ids -> table rows with a trained managed collision module's map, torch only.

    maps = id_maps_of(model)                              # {"user": IdMap, "item": ..., ...}
    rows = remap_ids(raw_ids, *maps["user"])              # (N,) int64 -> (N,) int64

The home of the serving-side lookup of models/collisions.py (torchrec's
`MCHManagedCollisionModule`): the scorer (models/scorer.py) and its exported artifacts use
it, and import no torchrec, so an artifact still loads with torch only. `remap_ids` is the
same lookup as torchrec's `_mch_remap`: an id the module admitted gets its row, any other
id the table's last row (the miss row).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

INPUT_ID_SPACE = 2**62  # raw ids must be below this (torchrec reserves int64 max)


class IdMap(NamedTuple):
    """One table's map: sorted_raw_ids (R,) int64 ascending (unused slots int64 max),
    rows (R,) int64 (the row of each), miss_row: the row of every other id."""

    sorted_raw_ids: Tensor
    rows: Tensor
    miss_row: int


def admitted(sorted_raw_ids: Tensor) -> int:
    """How many raw ids of a map (R,) have a row of their own (the rest: unused slots)."""
    return int((sorted_raw_ids < INPUT_ID_SPACE).sum())


def remap_ids(ids: Tensor, sorted_raw_ids: Tensor, rows: Tensor, miss_row: int) -> Tensor:
    """Raw ids (N,) -> table rows (N,) with a trained MCH module's map (its
    `_mch_sorted_raw_ids` and `_mch_remapped_ids_mapping` buffers, in the state dict): the
    serving-side lookup. Ids the module never admitted go to `miss_row` (the table's last
    row), as in training.

    >>> remap_ids(torch.tensor([7, 3, 9]), torch.tensor([3, 7, 2**63 - 1]), torch.tensor([5, 0, 1]), 9)
    tensor([0, 5, 9])
    """
    position = torch.searchsorted(sorted_raw_ids, ids).clamp(max=sorted_raw_ids.numel() - 1)
    hit = sorted_raw_ids[position] == ids
    return torch.where(hit, rows[position], torch.full_like(ids, miss_row))


def id_map_of(module: Any, name: str) -> IdMap:
    """The map of one unsharded `MCHManagedCollisionModule` named `name` (a table).

    ValueError when the map is split in buckets (trained on several ranks: each bucket
    sorted apart, with a miss row of its own), which one sorted map does not describe."""
    buckets = int(module.buckets())
    if buckets != 1:
        raise ValueError(
            f"table {name}: its id map is split in {buckets} buckets (managed collisions "
            "trained on that many ranks); serving reads a map of one bucket: train on one rank"
        )
    sorted_raw_ids = module._mch_sorted_raw_ids.detach().clone()
    if sorted_raw_ids.numel() > 1 and bool((sorted_raw_ids[1:] < sorted_raw_ids[:-1]).any()):
        raise ValueError(f"table {name}: its id map (_mch_sorted_raw_ids) is not sorted")
    miss_row = int(module._output_global_offset) + int(module._zch_size) - 1
    return IdMap(sorted_raw_ids, module._mch_remapped_ids_mapping.detach().clone(), miss_row)


def id_maps_of(model: Any) -> dict[str, IdMap] | None:
    """{table name without its `t_` prefix: IdMap} of a CTRModel (models/ctr.py) with
    managed collisions, None without them."""
    collection = model.sparse_arch.embedding_collection
    if not getattr(model.sparse_arch, "managed", False):
        return None
    modules = collection._managed_collision_collection._managed_collision_modules
    return {name.removeprefix("t_"): id_map_of(module, name) for name, module in modules.items()}
