"""Raw ids -> table rows with a trained managed collision module's map, torch only.

    maps = id_maps_of(model)                                        # {"user": IdMap, ...}
    rows = rows_of(raw_ids, *maps["user"])   # (N,) int64 -> (N,)

The home of the serving-side lookup of models/collisions.py (torchrec's
`MCHManagedCollisionModule`): the scorer (models/scorer.py) and its exported artifacts use
it, and import no torchrec, so an artifact still loads with torch only. `remap_ids` is the
same lookup as torchrec's `_mch_remap`: an id the module admitted gets its row, any other
id the table's last row (the miss row).

Trained on several ranks, a table's map is split in `buckets` (one per rank): bucket b
takes the (spread, below) ids of [b * width, (b + 1) * width), width = ceil(2^62 / buckets) (torchrec's
row-wise input distribution), gives them rows of its own range and sends the
others to its own last row. `id_map_of` turns that into one sorted map and a miss row
per bucket (`remap_bucketed_ids`), which is what training did.

The modules see raw ids through `spread_ids` (their `input_hash_func`), a bijection of
[0, 2^62) that scatters ids from a small space over all the buckets: without it, ids such
as vocabulary indices all fall in bucket 0, and on N ranks a table uses 1/N of its rows.
The maps therefore hold spread ids; the lookup of raw ids is `rows_of`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

INPUT_ID_SPACE = 2**62  # raw ids must be below this (torchrec reserves int64 max)
# Odd, so that x -> x * SPREAD_MULTIPLIER mod 2^62 is a bijection of [0, 2^62): the
# golden-ratio (Fibonacci hashing) constant 0x9E3779B97F4A7C15 cut to 61 bits.
SPREAD_MULTIPLIER = 0x9E3779B97F4A7C15 & (2**61 - 1)
ID_SPREAD = "fibonacci62"  # serving.json's name for `spread_ids`


def spread_ids(ids: Tensor, input_id_space: int = INPUT_ID_SPACE) -> Tensor:
    """Raw ids (N,) in [0, 2^62) -> spread ids (N,) in [0, 2^62): ids * SPREAD_MULTIPLIER
    mod 2^62 (int64 products wrap; the mask keeps the low 62 bits). A bijection (the
    multiplier is odd), so no two raw ids meet; consecutive ids land far apart in the high
    bits that choose a bucket (Fibonacci hashing). The signature of torchrec's
    `input_hash_func` (ids, input_hash_size); only the 2^62 space is supported.

    >>> spread_ids(torch.tensor([0, 1, 2])).tolist()
    [0, 2177342782468422677, 4354685564936845354]
    """
    # INPUT_ID_SPACE and SPREAD_MULTIPLIER as literals: TorchScript reads no global int
    # (tests/test_collisions.py checks them against the constants).
    assert input_id_space == 4611686018427387904, "spread_ids maps [0, 2^62) only"
    return (ids * 2177342782468422677) & 4611686018427387903


class IdMap(NamedTuple):
    """One table's map: sorted_raw_ids (A + 1,) int64 ascending, the A admitted ids and
    int64 max; rows (A + 1,) int64, the row of each; miss_rows (buckets,) int64, the row of
    every other id of each bucket; bucket_width: the raw ids per bucket."""

    sorted_raw_ids: Tensor
    rows: Tensor
    miss_rows: Tensor
    bucket_width: int


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
    return remap_bucketed_ids(
        ids, sorted_raw_ids, rows, torch.full((1,), miss_row, dtype=ids.dtype), INPUT_ID_SPACE
    )


def remap_bucketed_ids(
    ids: Tensor, sorted_raw_ids: Tensor, rows: Tensor, miss_rows: Tensor, bucket_width: int
) -> Tensor:
    """`remap_ids` of a map split in buckets: raw ids (N,) -> rows (N,), a never-admitted id
    to its bucket's miss row, miss_rows (buckets,) (bucket = id // bucket_width).

    >>> remap_bucketed_ids(torch.tensor([7, 3, 12, 25]), torch.tensor([3, 7, 2**63 - 1]),
    ...                    torch.tensor([5, 0, 9]), torch.tensor([4, 9]), 20)
    tensor([0, 5, 4, 9])
    """
    position = torch.searchsorted(sorted_raw_ids, ids).clamp(max=sorted_raw_ids.numel() - 1)
    hit = sorted_raw_ids[position] == ids
    bucket = torch.div(ids, bucket_width, rounding_mode="floor").clamp(0, miss_rows.numel() - 1)
    return torch.where(hit, rows[position], miss_rows.to(ids.dtype)[bucket])


def rows_of(
    raw_ids: Tensor, sorted_raw_ids: Tensor, rows: Tensor, miss_rows: Tensor, bucket_width: int
) -> Tensor:
    """Raw ids (N,) -> table rows (N,) with one table's `IdMap`: the lookup training did
    (`spread_ids`, then `remap_bucketed_ids`). The one place serving maps raw ids.

    >>> spread = spread_ids(torch.tensor([5]))
    >>> rows_of(torch.tensor([5, 6]), torch.cat([spread, torch.tensor([2**63 - 1])]),
    ...         torch.tensor([2, 3]), torch.tensor([3]), 2**62)
    tensor([2, 3])
    """
    return remap_bucketed_ids(spread_ids(raw_ids), sorted_raw_ids, rows, miss_rows, bucket_width)


def id_map_of(module: Any, name: str) -> IdMap:
    """The map of one unsharded `MCHManagedCollisionModule` named `name` (a table), its
    buckets' admitted ids merged into one sorted map (module docstring).

    Trained on N ranks, bucket b's ids were given rows of bucket b's range [b R/N,
    (b + 1) R/N). Where they sit in the buffer does not matter: a module filled by a
    sharded run keeps them in their bucket's rows, and torchrec re-sorts the whole buffer,
    ids and rows together, when a state dict is loaded (`validate_state`). The pairs
    (id, row) are what the map is made of.

    ValueError when an admitted id has a row outside its bucket's range."""
    buckets = int(module.buckets())
    size, offset = int(module.output_size()), int(module._output_global_offset)
    if size % buckets:
        raise ValueError(f"table {name}: {size} rows are not {buckets} equal buckets")
    per_bucket = size // buckets
    width = -(-int(module.input_size()) // buckets)
    raw = module._mch_sorted_raw_ids.detach()
    rows = module._mch_remapped_ids_mapping.detach()
    admitted_ = raw < INPUT_ID_SPACE
    ids, order = raw[admitted_].sort()
    id_rows = rows[admitted_][order]
    bucket_of_row = torch.div(id_rows - offset, per_bucket, rounding_mode="floor")
    if bool((torch.div(ids, width, rounding_mode="floor") != bucket_of_row).any()):
        raise ValueError(f"table {name}: an admitted id lies outside its bucket's range")
    end = torch.tensor([torch.iinfo(torch.int64).max])
    miss_rows = offset + torch.arange(1, buckets + 1) * per_bucket - 1
    return IdMap(torch.cat([ids, end]), torch.cat([id_rows, miss_rows[-1:]]), miss_rows, width)


def id_maps_of(model: Any) -> dict[str, IdMap] | None:
    """{table name without its `t_` prefix: IdMap} of a CTRModel (models/ctr.py) with
    managed collisions, None without them."""
    collection = model.sparse_arch.embedding_collection
    if not getattr(model.sparse_arch, "managed", False):
        return None
    modules = collection._managed_collision_collection._managed_collision_modules
    return {name.removeprefix("t_"): id_map_of(module, name) for name, module in modules.items()}
