"""Batches produced ahead of the training step by DataLoader worker processes.

`pipeline.data.ShardReader` cuts one rank's rows of an epoch into *windows* (one row group
when evaluating; `shuffle_buffer_row_groups` of them, rows shuffled together, when
training) and the same rows into batches of precomputed sizes (`bounds`). A window is
read, checked, shuffled by a generator keyed by (seed, epoch, rank, window) and *packed*
on its own (`pack_window`): its rows are gathered straight into the layout of the batches
they belong to (each batch's KJT values key after key, lengths, similarities, labels in
four arrays). So windows can be read in any process, in any order, and the batches come
out the same:

- `num_workers=0`: windows are read and packed in this process, one after the other;
- `num_workers=N`: a torch `DataLoader` over the window indices, N worker processes each
  reading and packing whole windows (disjoint row groups: no row is read twice by a rank)
  ahead of the training step, into shared memory; the DataLoader returns them in index
  order (pinned by its pinning thread when `pin_memory`, for the asynchronous host-to-GPU
  copy of TrainPipelineSparseDist), and this process only wraps views of them as
  `Batch`es. A batch cut by window edges travels as fragments and is put together here.

Resuming at batch `start` reads nothing before the window holding its first row, and that
window packs only batches from `start` on. Memory: each worker holds the window it packs
(about 3x its packed size while reading) and up to `prefetch_factor` packed windows wait
per worker; a worker keeps the shared buffers of its pool (`ArenaPool`, at most
prefetch_factor + SPARE_SLOTS, those it has used) until the epoch's stream ends.

Columns (`Columns`, a window's rows before packing): `user`, `item`, `label` (B,),
`hist_offsets` (B+1,) from 0, `hist_items`, `hist_sims` (N,) aligned with them;
`category` (B,) and `hist_categories` (N,) with categories. `HistoryExtras` names the
optional float columns aligned with the history that a model may read (every key
`hist_*` is history-aligned): the times
(`hist_ts_delta` -> `hist_times`, `Batch.hist_times`) and the per-modality similarities
(`hist_sims_<name>` -> `Batch.hist_modality_sims` (N, K), interleaved per entry).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.batch import Batch
from models.features import CATEGORY, HIST_CATEGORY, HIST_ITEM, ITEM, USER

Columns = dict[str, np.ndarray]
ROW_COLUMNS = ("user", "item", "label", "category")
HISTORY_COLUMNS = ("hist_items", "hist_sims", "hist_categories")
DTYPES = {
    "user": np.int64,
    "item": np.int64,
    "label": np.float32,
    "category": np.int64,
    "hist_items": np.int64,
    "hist_sims": np.float32,
    "hist_categories": np.int64,
}


class MisalignedHistory(ValueError):
    """A history column whose lists do not line up with hist_items."""


@dataclass(frozen=True)
class HistoryExtras:
    """Optional columns read into the batch (docs/data-format.md, docs/feature-schema.md).

    times: read `hist_ts_delta` (int64 seconds) into Batch.hist_times (float32).
    modalities: read `hist_sims_<name>` of each into Batch.hist_modality_sims (N, K), in
        this order (the manifest's `modalities`, FeatureSpec.modalities).
    pooled: the schema's sparse features (models/schema.py), in schema order, read into
        Batch.pooled_features (one KJT, key per feature); `multi`: those of them whose
        shard column is a list.
    dense: the schema's dense features, read into Batch.dense_features (B, F) in order.
    sequence: the schema's extra sequence features (item attributes beyond `category`):
        columns NAME (B,) and hist_NAME (N,) become keys NAME and hist_NAME of
        Batch.sparse_features, after the built-in keys.
    """

    times: bool = False
    modalities: tuple[str, ...] = ()
    pooled: tuple[str, ...] = ()
    multi: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    sequence: tuple[str, ...] = ()

    def source_columns(self) -> list[str]:
        """The history-aligned shard columns these need."""
        times = ["hist_ts_delta"] if self.times else []
        seq = [f"hist_{name}" for name in self.sequence]
        return times + [f"hist_sims_{name}" for name in self.modalities] + seq

    def row_columns(self) -> list[str]:
        """The per-sample shard columns of the schema's features."""
        return [*self.pooled, *self.dense, *self.sequence]

    @property
    def has_features(self) -> bool:
        return bool(self.pooled or self.dense or self.sequence)

    def __bool__(self) -> bool:
        return self.times or bool(self.modalities) or self.has_features


NO_EXTRAS = HistoryExtras()


def _history_keys(cols: Columns) -> list[str]:
    """The columns aligned with the history entries (everything `hist_*` but the offsets)."""
    return [k for k in cols if k.startswith("hist_") and k != "hist_offsets"]


def table_columns(
    table: pa.Table, has_categories: bool, extras: HistoryExtras = NO_EXTRAS
) -> Columns:
    """Sample rows (docs/data-format.md) -> Columns (offsets from 0; views of the Arrow
    buffers where the types match); `extras` adds `hist_times` and `hist_sims_<name>`."""
    hist = table.column("hist_items").combine_chunks()
    offsets = hist.offsets.to_numpy().astype(np.int64)
    cols: Columns = {
        "user": _numpy(table.column("user"), np.int64),
        "item": _numpy(table.column("item"), np.int64),
        "label": _numpy(table.column("label"), np.float32),
        "hist_offsets": offsets - offsets[0],
        "hist_items": _numpy(hist.flatten(), np.int64),
    }
    jagged = ["hist_sims"] + (["hist_categories"] if has_categories else [])
    jagged += extras.source_columns()
    if has_categories:
        cols["category"] = _numpy(table.column("category"), np.int64)
    lengths = np.diff(offsets)
    for name in jagged:
        column = table.column(name).combine_chunks()
        if not np.array_equal(np.diff(column.offsets.to_numpy()), lengths):
            raise MisalignedHistory(f"{name} is not aligned with hist_items")
        key = "hist_times" if name == "hist_ts_delta" else name
        dtype = np.int64 if name[len("hist_") :] in extras.sequence else np.float32
        cols[key] = _numpy(column.flatten(), DTYPES.get(name, dtype))
    for name in extras.pooled:
        column = table.column(name)
        if name in extras.multi:
            column = column.combine_chunks()
            cols[f"fl:{name}"] = np.diff(column.offsets.to_numpy()).astype(np.int32)
            cols[f"fv:{name}"] = _numpy(column.flatten(), np.int64)
        else:
            cols[f"fl:{name}"] = np.ones(table.num_rows, np.int32)
            cols[f"fv:{name}"] = _numpy(column, np.int64)
    for name in extras.dense:
        cols[f"d:{name}"] = _numpy(table.column(name), np.float32)
    for name in extras.sequence:
        cols[f"s:{name}"] = _numpy(table.column(name), np.int64)
    return cols


def _numpy(array: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    """An Arrow column as numpy, without a copy when it has one chunk, no nulls and `dtype`."""
    return np.asarray(array.to_numpy(zero_copy_only=False)).astype(dtype, copy=False)


def num_rows(cols: Columns) -> int:
    return int(cols["user"].shape[0])


Empty = Callable[[int, type], np.ndarray]


def _empty(n: int, dtype: type) -> np.ndarray:
    return np.empty(n, dtype)


def concat_columns(parts: Sequence[Columns], empty: Empty = _empty) -> Columns:
    """Rows of `parts` one after the other (one copy, into arrays from `empty`)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for k in parts[0]:
        if k != "hist_offsets":
            out[k] = empty(sum(p[k].shape[0] for p in parts), parts[0][k].dtype)
            np.concatenate([p[k] for p in parts], out=out[k])
    lengths = np.concatenate([np.diff(p["hist_offsets"]) for p in parts])
    out["hist_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return out


# Per-sample columns of the schema's features (HistoryExtras): `fl:NAME` (B,) int32 the
# number of values of pooled feature NAME, `fv:NAME` its values (flat, sample after
# sample), `d:NAME` (B,) float32 dense, `s:NAME` (B,) int64 the target's sequence feature
# (its history values are the history key hist_NAME).
ROW_PREFIXES = ("fl:", "d:", "s:")


def _row_keys(cols: Columns) -> list[str]:
    return [k for k in cols if k in ROW_COLUMNS or k.startswith(ROW_PREFIXES)]


def _ragged_index(lengths: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The flat positions of the values of `rows`, in row order, of a ragged column whose
    rows have `lengths` (B,)."""
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    taken = lengths[rows].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(taken)[:-1]]).astype(np.int64)
    return np.repeat(offsets[rows] - starts, taken) + np.arange(taken.sum(), dtype=np.int64)


def slice_rows(cols: Columns, lo: int, hi: int) -> Columns:
    """Rows lo..hi-1 as views (offsets rebased to 0)."""
    offsets = cols["hist_offsets"]
    a, b = int(offsets[lo]), int(offsets[hi])
    out = {k: cols[k][lo:hi] for k in _row_keys(cols)}
    out.update({k: cols[k][a:b] for k in _history_keys(cols)})
    for key in [k for k in cols if k.startswith("fl:")]:
        lengths = cols[key]
        first, last = int(lengths[:lo].sum()), int(lengths[:hi].sum())
        out["fv:" + key[3:]] = cols["fv:" + key[3:]][first:last]
    out["hist_offsets"] = offsets[lo : hi + 1] - a
    return out


def _extras_of(cols: Columns, extras: HistoryExtras) -> dict[str, torch.Tensor | None]:
    """Batch.hist_times and .hist_modality_sims of Columns (None where not asked for)."""
    times = sims = None
    if extras.times:
        times = torch.from_numpy(np.ascontiguousarray(cols["hist_times"]))
    if extras.modalities:
        columns = [cols[f"hist_sims_{name}"] for name in extras.modalities]
        sims = torch.from_numpy(np.stack(columns, axis=1).astype(np.float32, copy=False))
    return {"hist_times": times, "hist_modality_sims": sims}


def feature_tensors(
    cols: Columns, hist_lengths: np.ndarray, extras: HistoryExtras
) -> dict[str, np.ndarray]:
    """The schema features of Columns `cols` (rows of one batch, history entries of those
    rows only) as the arrays of a batch: `pv`/`pl` the pooled KJT's values and lengths
    (key after key), `dense` (n, F) float32, `sv`/`sl` the sequence features' values and
    lengths (NAME then hist_NAME, feature after feature) appended to the sequence KJT."""
    n = num_rows(cols)
    out: dict[str, np.ndarray] = {}
    if extras.pooled:
        out["pv"] = np.concatenate([cols[f"fv:{f}"] for f in extras.pooled]).astype(np.int64)
        out["pl"] = np.concatenate([cols[f"fl:{f}"] for f in extras.pooled]).astype(np.int32)
    if extras.dense:
        out["dense"] = np.stack([cols[f"d:{f}"] for f in extras.dense], axis=1).astype(
            np.float32, copy=False
        )
    if extras.sequence:
        values, lengths = [], []
        for f in extras.sequence:
            values += [cols[f"s:{f}"], cols[f"hist_{f}"]]
            lengths += [np.ones(n, np.int32), hist_lengths.astype(np.int32)]
        out["sv"] = np.concatenate(values).astype(np.int64)
        out["sl"] = np.concatenate(lengths)
    return out


def _schema_batch_fields(
    arrays: dict[str, np.ndarray], extras: HistoryExtras
) -> dict[str, torch.Tensor | KeyedJaggedTensor | None]:
    """Batch.pooled_features and .dense_features from `feature_tensors` arrays."""
    pooled = dense = None
    if extras.pooled:
        pooled = KeyedJaggedTensor.from_lengths_sync(
            keys=list(extras.pooled),
            values=torch.from_numpy(arrays["pv"]),
            lengths=torch.from_numpy(arrays["pl"]),
        )
    if extras.dense:
        dense = torch.from_numpy(np.ascontiguousarray(arrays["dense"]))
    return {"pooled_features": pooled, "dense_features": dense}


def sequence_keys(has_categories: bool, extras: HistoryExtras) -> list[str]:
    """The keys of Batch.sparse_features, in order."""
    keys = [USER, ITEM, HIST_ITEM] + ([CATEGORY, HIST_CATEGORY] if has_categories else [])
    for name in extras.sequence:
        keys += [name, f"hist_{name}"]
    return keys


def columns_to_batch(
    cols: Columns, has_categories: bool, extras: HistoryExtras = NO_EXTRAS
) -> Batch:
    """Columns -> Batch (the KJT's values are one new tensor; the rest are views)."""
    n = num_rows(cols)
    lengths = np.diff(cols["hist_offsets"]).astype(np.int32)
    ones = np.ones(n, np.int32)
    values = [cols["user"], cols["item"], cols["hist_items"]]
    key_lengths = [ones, ones, lengths]
    if has_categories:
        values += [cols["category"], cols["hist_categories"]]
        key_lengths += [ones, lengths]
    arrays = feature_tensors(cols, lengths, extras) if extras.has_features else {}
    if extras.sequence:
        values.append(arrays["sv"])
        key_lengths.append(arrays["sl"])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=sequence_keys(has_categories, extras),
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(key_lengths)),
    )
    return Batch(
        sparse_features=kjt,
        hist_sims=torch.from_numpy(np.ascontiguousarray(cols["hist_sims"])),
        labels=torch.from_numpy(np.ascontiguousarray(cols["label"])),
        **_extras_of(cols, extras),
        **_schema_batch_fields(arrays, extras),
    )


def _gather(cols: Columns, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-row columns of `rows`, and the index of their history entries (in row order)."""
    offsets = cols["hist_offsets"]
    lengths = offsets[rows + 1] - offsets[rows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    index = np.repeat(offsets[rows] - starts, lengths) + np.arange(lengths.sum())
    per = {k: cols[k][rows] for k in _row_keys(cols)}
    for key in [k for k in cols if k.startswith("fl:")]:
        per["fv:" + key[3:]] = cols["fv:" + key[3:]][_ragged_index(cols[key], rows)]
    return per, index


def window_batches(
    offset: int, rows: int, bounds: np.ndarray, start_batch: int
) -> list[tuple[int, int, int, bool]]:
    """The batches a window holds rows of: [(batch, lo, hi, whole)], rows lo..hi-1 of the
    window; whole when the batch lies entirely in the window. Batches before start_batch
    are left out."""
    end = offset + rows
    b = max(start_batch, int(np.searchsorted(bounds, offset, side="right")) - 1)
    out = []
    while b < bounds.size - 1 and bounds[b] < end:
        lo, hi = max(int(bounds[b]), offset), min(int(bounds[b + 1]), end)
        if lo < hi:
            out.append((b, lo - offset, hi - offset, bounds[b] >= offset and bounds[b + 1] <= end))
        b += 1
    return out


def pack_window(
    cols: Columns,
    offset: int,
    bounds: np.ndarray,
    start_batch: int,
    has_categories: bool,
    order: np.ndarray | None = None,
    empty: Empty = _empty,
    extras: HistoryExtras = NO_EXTRAS,
) -> dict[str, np.ndarray]:
    """A window's rows (taken in `order`, a permutation, when shuffling) laid out as the
    batches they belong to, ready to be wrapped without a copy (`unpack_window`).

    Whole batches share four arrays (`values`: each batch's KJT values, key after key;
    `lengths`; `sims`; `labels`) indexed by `batches` (k, 7): batch, rows, history entries,
    and the offsets of the batch in the four arrays. A batch cut by the window's edge is a
    fragment (`fragments`: its batch; `frag{j}.{column}`: its rows as Columns), put
    together with its other fragments by `assemble`. With `extras`, `times` (aligned like
    `sims`) and `msims` (K per history entry, at K times the `sims` offset) hold them.
    """
    n_rows = num_rows(cols)
    order = np.arange(n_rows) if order is None else order
    plan = window_batches(offset, n_rows, bounds, start_batch)
    keys = 5 if has_categories else 3
    hist_lengths = np.diff(cols["hist_offsets"])
    whole = [(b, order[lo:hi]) for b, lo, hi, full in plan if full]
    sizes = [(r.size, int(hist_lengths[r].sum())) for _, r in whole]
    n_all, m_all = sum(n for n, _ in sizes), sum(m for _, m in sizes)
    per_row = keys - (2 if has_categories else 1)  # single-id keys per row
    hist_keys = keys - per_row
    out = {
        "values": empty(per_row * n_all + hist_keys * m_all, np.int64),
        "lengths": empty(keys * n_all, np.int32),
        "sims": empty(m_all, np.float32),
        "labels": empty(n_all, np.float32),
    }
    num_modalities = len(extras.modalities)
    if extras.times:
        out["times"] = empty(m_all, np.float32)
    if num_modalities:
        out["msims"] = empty(m_all * num_modalities, np.float32)
    index = np.zeros((len(whole), 7), np.int64)
    v = ln = sm = lb = 0
    for k, ((b, rows), (n, m)) in enumerate(zip(whole, sizes)):
        index[k] = (b, n, m, v, ln, sm, lb)
        per, hist = _gather(cols, rows)
        lengths = hist_lengths[rows].astype(np.int32)
        parts = [per["user"], per["item"], ("hist_items", m)]
        if has_categories:
            parts += [per["category"], ("hist_categories", m)]
        for part in parts:
            if isinstance(part, tuple):
                np.take(cols[part[0]], hist, out=out["values"][v : v + m])
                v += m
            else:
                out["values"][v : v + n] = part
                v += n
        for key in range(keys):
            is_hist = key == 2 or key == 4
            out["lengths"][ln : ln + n] = lengths if is_hist else 1
            ln += n
        np.take(cols["hist_sims"], hist, out=out["sims"][sm : sm + m])
        if extras.times:
            np.take(cols["hist_times"], hist, out=out["times"][sm : sm + m])
        if num_modalities:
            block = out["msims"][sm * num_modalities : (sm + m) * num_modalities]
            block = block.reshape(m, num_modalities)
            for j, name in enumerate(extras.modalities):
                block[:, j] = cols[f"hist_sims_{name}"][hist]
        sm += m
        out["labels"][lb : lb + n] = per["label"]
        lb += n
        if extras.has_features:
            for key in extras.sequence:
                per[f"hist_{key}"] = cols[f"hist_{key}"][hist]
            for name, array in feature_tensors(per, lengths, extras).items():
                out[f"feat{k}.{name}"] = _copy_into(empty, array)
    out["batches"] = index
    fragments = [(b, order[lo:hi]) for b, lo, hi, full in plan if not full]
    out["fragments"] = np.array([b for b, _ in fragments], np.int64)
    for j, (_, rows) in enumerate(fragments):
        per, hist = _gather(cols, rows)
        per["hist_offsets"] = np.concatenate([[0], np.cumsum(hist_lengths[rows])]).astype(np.int64)
        for k in _history_keys(cols):
            per[k] = cols[k][hist]
        out.update({f"frag{j}.{k}": a for k, a in per.items()})
    return out


def _copy_into(empty: Empty, array: np.ndarray) -> np.ndarray:
    """`array` copied into an array from `empty` (shared memory in a worker), same shape."""
    out = empty(array.size, array.dtype)
    out[:] = array.reshape(-1)
    return out.reshape(array.shape)


def _batch_of(
    packed: dict[str, np.ndarray],
    row: np.ndarray,
    has_categories: bool,
    extras: HistoryExtras = NO_EXTRAS,
    k: int = 0,
) -> Batch:
    """Whole batch `row` (the k-th) of `packed["batches"]` as views of the window's
    arrays (the sequence KJT's values are one copy when the schema has sequence
    features: the built-in keys' values, then theirs)."""
    _, n, m, v, ln, sm, lb = (int(x) for x in row)
    base = [USER, ITEM, HIST_ITEM] + ([CATEGORY, HIST_CATEGORY] if has_categories else [])
    per_row = 3 if has_categories else 2
    size = per_row * n + (len(base) - per_row) * m
    values = packed["values"][v : v + size]
    lengths = packed["lengths"][ln : ln + len(base) * n]
    arrays = {}
    if extras.has_features:
        prefix = f"feat{k}."
        arrays = {key[len(prefix) :]: a for key, a in packed.items() if key.startswith(prefix)}
        if "dense" in arrays:
            arrays["dense"] = arrays["dense"].reshape(n, len(extras.dense))
    if extras.sequence:
        values = np.concatenate([values, arrays["sv"]])
        lengths = np.concatenate([lengths, arrays["sl"]])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=sequence_keys(has_categories, extras),
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(lengths),
    )
    times = sims = None
    if extras.times:
        times = torch.from_numpy(packed["times"][sm : sm + m])
    if extras.modalities:
        k = len(extras.modalities)
        sims = torch.from_numpy(packed["msims"][sm * k : (sm + m) * k].reshape(m, k))
    return Batch(
        sparse_features=kjt,
        hist_sims=torch.from_numpy(packed["sims"][sm : sm + m]),
        labels=torch.from_numpy(packed["labels"][lb : lb + n]),
        hist_times=times,
        hist_modality_sims=sims,
        **_schema_batch_fields(arrays, extras),
    )


def _fragment(packed: dict[str, np.ndarray], j: int) -> Columns:
    prefix = f"frag{j}."
    return {k[len(prefix) :]: a for k, a in packed.items() if k.startswith(prefix)}


def assemble(
    windows: Iterable[dict[str, np.ndarray]],
    bounds: np.ndarray,
    start_batch: int,
    has_categories: bool,
    pin_memory: bool = False,
    extras: HistoryExtras = NO_EXTRAS,
) -> Iterator[Batch]:
    """Batches start_batch.. from packed windows (`pack_window`), in order: whole batches
    wrap the window's arrays (pinned already when pin_memory), a batch cut by window edges
    is put together from its fragments (and pinned here)."""
    expected = start_batch
    pending: list[Columns] = []
    for packed in windows:
        items = [(int(r[0]), "whole", (k, r)) for k, r in enumerate(packed["batches"])]
        items += [(int(b), "fragment", j) for j, b in enumerate(packed["fragments"])]
        for b, kind, item in sorted(items, key=lambda x: x[0]):
            if kind == "whole":
                batch = _batch_of(packed, item[1], has_categories, extras, item[0])
            else:
                pending.append(_fragment(packed, item))
                if sum(num_rows(p) for p in pending) < bounds[b + 1] - bounds[b]:
                    continue
                batch = columns_to_batch(concat_columns(pending), has_categories, extras)
                pending = []
                batch = batch.pin_memory() if pin_memory else batch
            if b != expected:
                raise RuntimeError(f"reader out of order: batch {b}, expected {expected}")
            expected += 1
            yield batch


class SharedArrays:
    """An `Empty` whose arrays live in fresh shared-memory segments, one per array: views
    of torch tensors that a DataLoader worker hands to the main process without a copy."""

    def __init__(self) -> None:
        self.tensors: dict[int, torch.Tensor] = {}

    def __call__(self, n: int, dtype: type) -> np.ndarray:
        kind = torch.from_numpy(np.empty(0, dtype)).dtype
        tensor = _new_shared(n * np.dtype(dtype).itemsize).view(kind)
        array = tensor.numpy()
        self.tensors[array.__array_interface__["data"][0]] = tensor
        return array

    def tensor(self, array: np.ndarray) -> torch.Tensor | None:
        """The shared tensor behind `array` if it is one of ours (whole), else None."""
        shared = self.tensors.get(array.__array_interface__["data"][0])
        return shared if shared is not None and shared.numel() == array.size else None


def _new_shared(nbytes: int) -> torch.Tensor:
    """A (nbytes,) uint8 tensor allocated in shared memory."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:  # allocated, then moved to shared memory (one more copy)
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(nbytes), 0, (nbytes,), (1,))


_ALIGN = 64  # bytes: every array of an arena starts on a cache line


class SharedArena:
    """An `Empty` that carves a window's arrays out of one shared-memory buffer (bump
    allocation, `_ALIGN`-aligned). The buffer is reused window after window by the worker
    that owns it (`ArenaPool`), so its pages are already mapped and written: packing into
    it costs no page faults and no zeroing, where a fresh shared segment costs both (4 KiB
    pages: `python -m scripts.bench_shared_pages`). What does not fit goes to fresh
    segments (`SharedArrays`); `needed` is the size the buffer should have had."""

    def __init__(self, buffer: torch.Tensor | None = None) -> None:
        self.buffer = buffer
        self.bytes = buffer.numpy() if buffer is not None else np.empty(0, np.uint8)
        self.start = self.bytes.__array_interface__["data"][0]
        self.used = self.needed = 0
        self.overflow = SharedArrays()

    def __call__(self, n: int, dtype: type) -> np.ndarray:
        offset = -(-self.needed // _ALIGN) * _ALIGN
        self.needed = offset + n * np.dtype(dtype).itemsize
        if self.needed > self.bytes.size:
            return self.overflow(n, dtype)
        self.used = self.needed
        return self.bytes[offset : self.needed].view(dtype)

    def offset(self, array: np.ndarray) -> int | None:
        """Where `array` starts in the buffer, or None if it is not (contiguously) in it."""
        at = array.__array_interface__["data"][0] - self.start
        inside = 0 <= at and at + array.nbytes <= self.used and array.flags.c_contiguous
        return at if inside else None

    def message(self, packed: dict[str, np.ndarray], slot: tuple[int, int] | None) -> dict:
        """`packed` as the worker sends it: {"arena": the used part of the buffer,
        "layout": {key: (offset, dtype, shape)}, "arrays": {key: tensor} for what lies
        outside it, "slot": (worker, slot) of the buffer in its pool, or None}. Arrays
        not allocated here (small: the batch index, fragments) are copied in first."""
        layout, arrays = {}, {}
        for key, array in packed.items():
            if array.size == 0:  # no memory to share
                arrays[key] = torch.from_numpy(np.empty(array.shape, array.dtype))
                continue
            at, shared = self.offset(array), self.overflow.tensor(array)
            if at is None and shared is None:
                array = _copy_into(self, np.ascontiguousarray(array))
                at, shared = self.offset(array), self.overflow.tensor(array)
            if at is not None:
                layout[key] = (at, array.dtype.str, array.shape)
            else:
                arrays[key] = shared.view(array.shape)
        arena = self.buffer[: self.used] if self.buffer is not None else None
        return {"arena": arena, "layout": layout, "arrays": arrays, "slot": slot}


SPARE_SLOTS = 3  # a worker's pool: prefetch_factor windows in flight + these held downstream


class ArenaPool:
    """A worker's `SharedArena`s, one per slot of its row of `busy` (shared, (W, S)
    int32, W workers, S = prefetch_factor + SPARE_SLOTS slots each): the worker marks a
    slot busy when it packs a window into it, the consuming process marks it free when
    the last array of that window is released (`unpack_message`). A worker never waits: with every slot busy, or before its first
    window (no size known yet), it packs into fresh segments as before. Buffers are
    sized from the largest window seen (x1.5; pages never written cost nothing)."""

    def __init__(self, busy: np.ndarray, worker: int) -> None:
        self.busy, self.worker = busy, worker
        self.buffers: list[torch.Tensor | None] = [None] * busy.shape[1]
        self.high_water = 0

    def acquire(self) -> tuple[tuple[int, int] | None, SharedArena]:
        """A free slot (worker, slot) marked busy and its buffer, or (None, fresh segments)."""
        if self.high_water:
            for slot in range(len(self.buffers)):
                if self.busy[self.worker, slot] == 0:
                    self.busy[self.worker, slot] = 1
                    buffer = self.buffers[slot]
                    if buffer is None or buffer.numel() < self.high_water:
                        buffer = self.buffers[slot] = _new_shared(self.high_water * 3 // 2)
                    return (self.worker, slot), SharedArena(buffer)
        return None, SharedArena()

    def done(self, arena: SharedArena) -> None:
        self.high_water = max(self.high_water, arena.needed)


class _Held:
    """The consumer's view of a worker's arena: every array of the window is a view of
    it, so it lives until the last of them is released; then its slot is freed."""

    def __init__(self, arena: np.ndarray, busy: np.ndarray | None, slot: tuple | None) -> None:
        self.__array_interface__ = arena.__array_interface__
        self.arena = arena  # keeps the mapping (the tensor behind it) alive
        if busy is not None and slot is not None:
            weakref.finalize(self, busy.__setitem__, tuple(slot), 0)


def unpack_message(message: dict, busy: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A worker's `SharedArena.message` as the window's arrays (views, no copy); `busy`:
    the pools' slot flags, the message's slot freed when the views are all released."""
    out = {key: tensor.numpy() for key, tensor in message["arrays"].items()}
    if message["arena"] is not None:
        base = np.asarray(_Held(message["arena"].numpy(), busy, message["slot"]))
        for key, (at, dtype, shape) in message["layout"].items():
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            out[key] = base[at : at + size].view(dtype).reshape(shape)
    return out


class _Windows(Dataset):
    """Window index -> its packed arrays (`read(i, empty)`) as a `SharedArena.message`,
    packed into this worker's pool (row `worker id` of `busy`)."""

    def __init__(
        self, read: Callable[[int, Empty], dict[str, np.ndarray]], size: int, busy: torch.Tensor
    ) -> None:
        self.read, self.size, self.busy = read, size, busy
        self.pool: ArenaPool | None = None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if self.pool is None:  # first window in this worker process
            info = get_worker_info()
            self.pool = ArenaPool(self.busy.numpy(), info.id if info else 0)
        slot, arena = self.pool.acquire()
        message = arena.message(self.read(index, arena), slot)
        self.pool.done(arena)
        return message


def _as_is(item):
    return item


def iter_windows(
    read: Callable[[int, Empty], dict[str, np.ndarray]],
    indices: Sequence[int],
    num_workers: int = 0,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """`read(i, empty)` for i in `indices`, in order: here, or by `num_workers` DataLoader
    workers that each read whole windows ahead (at most num_workers x prefetch_factor in
    flight) into a pool of shared buffers they reuse once this process has released a
    window (`ArenaPool`: prefetch_factor + SPARE_SLOTS per worker, the windows in flight
    and those the consumer still holds). pin_memory: the arrays are pinned (by the DataLoader's
    pinning thread with workers), so the batches that view them are."""
    if num_workers <= 0:
        for index in indices:
            packed = read(index, _empty)
            if pin_memory:
                packed = {k: torch.from_numpy(v).pin_memory().numpy() for k, v in packed.items()}
            yield packed
        return
    slots = prefetch_factor + SPARE_SLOTS
    busy = torch.zeros((num_workers, slots), dtype=torch.int32).share_memory_()
    loader = DataLoader(
        _Windows(read, max(indices, default=-1) + 1, busy),
        batch_size=None,
        sampler=list(indices),
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        collate_fn=_as_is,
        pin_memory=pin_memory,
    )
    flags = busy.numpy()
    stream = iter(loader)
    try:
        for message in stream:
            if pin_memory and message["slot"] is not None:  # pinned: a copy, made already
                flags[tuple(message["slot"])] = 0
            yield unpack_message(message, None if pin_memory else flags)
    finally:
        del stream  # stops the workers when the consumer stops early
