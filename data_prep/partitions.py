"""The partitioned pipeline every job runs after parsing its inputs.

    leader: item side -> candidate item ids          (job-specific ItemSide.load)
    scatter tasks: parse inputs -> user partitions   (job-specific, one task per input part)
    clean tasks, one per partition: duplicates, too-few-events, sort
    user range tasks: the global user vocabulary, sample-sorted (user_vocab.py)
    leader: vocab/user.parquet streamed from the ranges; final item table (ItemSide.finalize)
    build tasks, one per partition, in blocks of whole users: protocol -> samples ->
        similarities -> shards; each returns its histogram of training similarities
    leader: merged histogram -> bucket boundaries; rejects.jsonl; checksums of every
        file; manifest.json; the folder is moved into place

Tasks run through a `Coordinator`: in-process, in a local process pool, or spread over
torch.distributed ranks (task i on rank i % world_size). Memory per task is bounded by
its partition (build tasks: by `block_events`), not by the dataset.

Atomic output: everything is written into `.DIR.partial` beside DIR (intermediate files
in its `_work/`, removed at the end), the manifest last, and only then moved into DIR
(`integrity.commit_folder`). A job killed at any point leaves DIR as it was (or, in the
moment of the move, without a manifest, which every reader refuses); the next run starts
from an empty `.DIR.partial`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np

from data_prep import SCHEMA_VERSION
from data_prep.coordination import Coordinator
from data_prep.events import Events, clean_events
from data_prep.features import FEATURES_DIR, SchemaPrep
from data_prep.integrity import (
    checksum_files,
    commit_folder,
    file_entry,
    fresh_staging_folder,
    staging_folder,
)
from data_prep.item_rows import BlockItems, ItemStore
from data_prep.items import ItemTable, modality_file, save_item_arrays
from data_prep.limits import Limits
from data_prep.manifest import MANIFEST, write_manifest
from data_prep.protocols import Protocol
from data_prep.rejects import InputError, RejectLog, check_records, merge_records, summary
from data_prep.samples import Samples
from data_prep.scatter import read_partition
from data_prep.similarity import SimilarityHistogram, history_similarities
from data_prep.user_vocab import (
    partition_index,
    partition_slices,
    range_tasks,
    splitters,
    write_vocab,
)
from data_prep.vocab import Vocab, hash_index
from data_prep.writer import DEFAULT_ROW_GROUP_SIZE, ShardWriter

DEFAULT_BLOCK_EVENTS = 200_000
# What a job writes in its folder; a rerun removes those it no longer produces (a split).
OUTPUTS = (
    MANIFEST, "vocab", "item_mm.npy", "item_category.npy", "rejects.jsonl",
    "train", "valid", "test", "_work", FEATURES_DIR,
)  # fmt: skip


def work_dir(out: Path) -> Path:
    """Intermediate files of the job writing `out` (inside its staging folder)."""
    return staging_folder(out) / "_work"


class Task(TypingProtocol):
    def run(self) -> Any: ...


def save_candidates(work: Path, candidates: np.ndarray) -> None:
    """The candidate item ids (sorted, unique) and their hash index, for `load_candidates`."""
    np.save(work / "candidates.npy", candidates)
    np.save(work / "candidates-index.npy", hash_index(candidates))


def load_candidates(work: Path) -> Vocab:
    """The candidates as a Vocab (the scatter tasks' item lookups), both files memory-mapped
    read-only: one copy in the page cache shared by the tasks of a node, not rebuilt."""
    return Vocab.of_sorted(
        np.load(work / "candidates.npy", mmap_mode="r"),
        np.load(work / "candidates-index.npy", mmap_mode="r"),
    )


def run_task(task: Task) -> Any:
    """Module-level entry point for process pools."""
    return task.run()


class ItemSide(TypingProtocol):
    """The job-specific item table: candidates first, the final table after cleaning."""

    def load(self, rejects: RejectLog) -> np.ndarray:
        """Read the item inputs; returns the candidate raw item ids (sorted, unique)."""
        ...

    def finalize(self, used: np.ndarray, rejects: RejectLog) -> tuple[ItemTable, np.ndarray]:
        """`used` (C,) bool per candidate -> (final ItemTable, remap (C+2,) candidate index -> final index)."""
        ...


@dataclass(frozen=True)
class CleanTask:
    work: Path
    partition: int
    files: list[str]
    strict: bool
    tie_order: str = "file"

    def run(self) -> dict[str, Any]:
        item_ids = np.load(self.work / "candidates.npy", mmap_mode="r")  # read at rejects only
        path = self.work / "rejects" / f"c-clean-{self.partition:05d}.jsonl"
        with RejectLog(path, self.strict) as rejects:
            raw = read_partition(self.work, self.partition, self.files)
            events, users = clean_events(raw, rejects, item_ids, tie_order=self.tie_order)
        folder = self.work / "clean"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(
            folder / f"p{self.partition:05d}.npz",
            user=events.user,
            item=events.item,
            ts=events.ts,
            click=events.click,
            **{f"x_{k}": v for k, v in events.extra.items()},
        )
        np.save(folder / f"p{self.partition:05d}-users.npy", users)
        return {
            "records": rejects.as_manifest(),
            "max_ts": int(events.ts.max()) if len(events) else None,
            "items": np.unique(events.item),
        }


@dataclass(frozen=True)
class BuildTask:
    work: Path
    out: Path
    partition: int
    protocol: Protocol
    last_ts: int
    row_group_size: int
    block_events: int
    features: SchemaPrep | None = None
    user_slices: tuple[tuple[int, int, int, int], ...] = ()  # user_vocab.partition_slices

    def run(self) -> dict[str, Any]:
        folder = self.work / "clean"
        stored = np.load(folder / f"p{self.partition:05d}.npz")
        user_index = partition_index(self.work, self.user_slices)
        # Mapped: only the rows of this partition's items are read.
        remap = np.load(self.work / "item-remap.npy", mmap_mode="r")
        events = Events(
            user_index[stored["user"]],
            np.asarray(remap[stored["item"]]),
            stored["ts"],
            stored["click"],
            {k[2:]: stored[k] for k in stored.files if k.startswith("x_")},
        )
        names = sorted(
            p.name[len("item_mm_") : -len(".npy")] for p in self.out.glob("item_mm_*.npy")
        )
        items = ItemStore(self.out, names)  # read by block, never whole (data_prep/item_rows.py)
        histogram = SimilarityHistogram()
        writers = {
            s: ShardWriter(self.out, s, self.partition, self.row_group_size)
            for s in self.protocol.splits
        }
        counts = dict.fromkeys(self.protocol.splits, 0)
        before_valid: dict[str, int] = {}
        users = dict.fromkeys(self.protocol.splits, 0)
        for block in user_blocks(events, self.block_events):
            splits, protocol_counts = self.protocol.samples(block, items.size, self.last_ts)
            # Histories are earlier events of the block's users: the block's items and the
            # samples' targets (negatives included) are every row the block reads.
            wanted = [block.item, *(samples.item for samples in splits.values())]
            block_items = items.block(np.unique(np.concatenate(wanted)))
            for name, samples in splits.items():
                fill_item_features(samples, block_items)
                if self.features is not None:
                    self.features.fill_samples(samples, self.out, samples.event_extra or {})
                if name == "train":
                    histogram.add(samples.hist_sims)
                writers[name].write(samples)
                counts[name] += len(samples)
                users[name] += len(np.unique(samples.user))
            for name, n in protocol_counts.items():
                before_valid[name] = before_valid.get(name, 0) + n
        paths = {name: writer.close() for name, writer in writers.items()}
        files = {p: file_entry(self.out / p) for ps in paths.values() for p in ps}
        return {
            "paths": paths,
            "files": files,
            "counts": counts,
            "counts_before_valid": before_valid,
            "users": users,
            "histogram": histogram.counts,
        }


def user_blocks(events: Events, block_events: int) -> Iterator[Events]:
    """Consecutive slices of `events` holding whole users, about `block_events` events each."""
    n = len(events)
    if n == 0:
        return
    bounds = np.r_[np.flatnonzero(np.r_[True, events.user[1:] != events.user[:-1]]), n]
    begin = 0
    while begin < n:
        k = np.searchsorted(bounds, begin + block_events)
        end = n if k >= len(bounds) else int(bounds[k])
        yield events.take(slice(begin, end))
        begin = end


def fill_item_features(samples: Samples, items: BlockItems) -> None:
    """Fill hist_sims, the per-modality similarities when items have modalities, and the
    categories when items have them, in place, from the block's item rows."""
    target = items.local(samples.item)
    hist = items.local(samples.hist_items)
    samples.hist_sims = history_similarities(items.mm, target, samples.hist_offsets, hist)
    if items.modalities:
        samples.hist_modality_sims = {
            name: history_similarities(table, target, samples.hist_offsets, hist)
            for name, table in items.modalities.items()
        }
    if items.category is not None:
        samples.category = items.category[target]
        samples.hist_categories = items.category[hist]


@dataclass
class PipelineSettings:
    out: Path
    job: str
    created_by: str
    protocol: Protocol
    partitions: int = 1
    num_buckets: int = 35
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    block_events: int = DEFAULT_BLOCK_EVENTS
    strict: bool = False
    limits: Limits | None = None
    features: SchemaPrep | None = None  # the feature schema's columns (data_prep/features.py)


def run_pipeline(
    settings: PipelineSettings,
    coordinator: Coordinator,
    item_side: ItemSide,
    scatter_tasks: list[Task],
    files: list[str],
    inputs: dict[str, dict[str, Any]],
    extra_protocol: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Run the pipeline; returns the manifest on the leader, None on other ranks.

    Writes into the staging folder and moves it into `settings.out` when complete; on a
    failure the staging folder is removed and `settings.out` is left as it was.
    """
    stage = staging_folder(settings.out)
    try:
        return _run_pipeline(
            settings, stage, coordinator, item_side, scatter_tasks, files, inputs, extra_protocol
        )
    except BaseException:
        if coordinator.is_leader:
            shutil.rmtree(stage, ignore_errors=True)
        raise


def _run_pipeline(
    settings: PipelineSettings,
    out: Path,
    coordinator: Coordinator,
    item_side: ItemSide,
    scatter_tasks: list[Task],
    files: list[str],
    inputs: dict[str, dict[str, Any]],
    extra_protocol: dict[str, Any] | None,
) -> dict[str, Any] | None:
    work = out / "_work"
    assert work == work_dir(settings.out)
    if coordinator.is_leader:
        fresh_staging_folder(settings.out)
        (work / "rejects").mkdir(parents=True)
        with RejectLog(work / "rejects" / "a-items.jsonl", settings.strict) as item_rejects:
            candidates = item_side.load(item_rejects)
            if len(candidates) > 1 and not np.all(candidates[1:] > candidates[:-1]):
                raise ValueError("ItemSide.load must return sorted unique ids")  # Vocab.of_sorted
            save_candidates(work, candidates)
            del candidates
        item_records = item_rejects.as_manifest()
    coordinator.barrier()

    scatter_records = coordinator.map(run_task, scatter_tasks)
    clean_tasks = [
        CleanTask(work, p, files, settings.strict, settings.protocol.tie_order)
        for p in range(settings.partitions)
    ]
    cleaned = coordinator.map(run_task, clean_tasks)
    cuts = (
        splitters(work, settings.partitions, settings.partitions) if coordinator.is_leader else []
    )
    cuts = coordinator.broadcast(cuts)
    user_ranges = coordinator.map(run_task, range_tasks(work, settings.partitions, cuts))

    last_ts = 0
    if coordinator.is_leader:
        last_ts = max((c["max_ts"] for c in cleaned if c["max_ts"] is not None), default=0)
        user_vocab_size = write_vocab(work, len(user_ranges), out / "vocab" / "user.parquet")
        candidates = np.load(work / "candidates.npy", mmap_mode="r")  # for its length
        used = np.zeros(len(candidates) + 2, dtype=bool)
        for c in cleaned:
            used[c["items"]] = True
        with RejectLog(work / "rejects" / "d-items.jsonl", settings.strict) as final_rejects:
            items, remap = item_side.finalize(used[2:], final_rejects)
        save_item_arrays(out, items)
        np.save(work / "item-remap.npy", remap)
        feature_files: list[str] = []
        if settings.features is not None:
            feature_files += settings.features.save_items(items.vocab, out)
            with RejectLog(work / "rejects" / "a-users.jsonl", settings.strict) as user_rejects:
                # The schema's user table is joined on the whole vocabulary (driver).
                user_vocab = Vocab.load(out / "vocab" / "user.parquet")
                feature_files += settings.features.save_users(user_vocab, out, user_rejects)
            user_records = user_rejects.as_manifest()
    last_ts = coordinator.broadcast(last_ts)
    coordinator.barrier()

    build_tasks = [
        BuildTask(
            work,
            out,
            p,
            settings.protocol,
            last_ts,
            settings.row_group_size,
            settings.block_events,
            settings.features,
            tuple(partition_slices(user_ranges, p)),
        )
        for p in range(settings.partitions)
    ]
    built = coordinator.map(run_task, build_tasks)
    if not coordinator.is_leader:
        return None

    records = merge_records(
        [
            item_records,
            *scatter_records,
            *[c["records"] for c in cleaned],
            final_rejects.as_manifest(),
            *([user_records] if settings.features is not None else []),
        ]
    )
    check_records(records)
    histogram = SimilarityHistogram()
    for b in built:
        histogram.counts += b["histogram"]
    train_samples = sum(b["counts"].get("train", 0) for b in built)
    if train_samples == 0 or histogram.total == 0:
        what = "samples" if train_samples == 0 else "sample with a history (no similarities)"
        raise InputError(
            f"no training {what} from {', '.join(inputs) or 'the inputs'}; nothing written. "
            + summary(records).replace("\n", ";")
        )
    _concat_rejects(work / "rejects", out / "rejects.jsonl")
    boundaries = histogram.equal_frequency_boundaries(settings.num_buckets)
    splits = settings.protocol.splits
    vocab_sizes = {"user": user_vocab_size, "item": len(items.vocab)}
    if items.category_vocab is not None:
        vocab_sizes["category"] = len(items.category_vocab)
    if settings.features is not None:
        vocab_sizes |= settings.features.table_sizes()
    protocol = settings.protocol.settings() | (extra_protocol or {})
    if settings.protocol.name == "next-item":
        protocol["counts_before_valid"] = {
            s: sum(b["counts_before_valid"].get(s, 0) for b in built) for s in ("train", "test")
        }
    shards = {s: [p for b in built for p in b["paths"][s]] for s in splits}
    item_files = [p.relative_to(out).as_posix() for p in (out / "vocab").glob("*.parquet")]
    item_files += [n for n in ("item_mm.npy", "item_category.npy") if (out / n).exists()]
    item_files += [modality_file(name) for name in items.modalities]
    item_files += [f for f in feature_files if not f.startswith("vocab/")]
    checksums = checksum_files(out, [*item_files, "rejects.jsonl"])
    for b in built:
        checksums.update(b["files"])
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "job": settings.job,
        "created_by": settings.created_by,
        "counts": {s: sum(b["counts"][s] for b in built) for s in splits},
        "users_per_split": {s: sum(b["users"][s] for b in built) for s in splits},
        "vocab_sizes": vocab_sizes,
        "max_history": settings.protocol.max_history,
        "buckets": {
            "num_buckets": settings.num_buckets,
            "boundaries": [float(b) for b in boundaries],
        },
        "item_embeddings": {
            "path": "item_mm.npy",
            "dim": int(items.mm.shape[1]),
            "source": items.mm_source,
            "sha256": checksums["item_mm.npy"]["sha256"],
        },
        **modality_entries(items, checksums),
        "history_times": {
            "column": "hist_ts_delta",
            "unit": "seconds",
            "meaning": "the target's time minus each behaviour's (>= 0), aligned with hist_items",
        },
        **(
            {"features": settings.features.manifest_schema()}
            if settings.features is not None
            else {}
        ),
        "inputs": inputs,
        "protocol": protocol,
        "limits": (settings.limits or Limits()).as_dict(),
        "records": records,
        "splits": shards,
        "files": dict(sorted(checksums.items())),
    }
    shutil.rmtree(work)
    manifest = write_manifest(out, manifest)
    stale = [p.name for p in Path(settings.out).glob("item_mm_*.npy")]  # an earlier run's
    commit_folder(out, settings.out, [*OUTPUTS, *stale], MANIFEST)
    return manifest


def modality_entries(items: ItemTable, checksums: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `modalities` list (when the items have 2+ modalities): name, table,
    dimension, source, sha256 and sample column of each, by name."""
    if not items.modalities:
        return {}
    entries = []
    for name, table in sorted(items.modalities.items()):
        path = modality_file(name)
        entries.append(
            {
                "name": name,
                "path": path,
                "dim": int(table.shape[1]),
                "source": items.modality_sources.get(name, ""),
                "sha256": checksums[path]["sha256"],
                "column": f"hist_sims_{name}",
            }
        )
    return {"modalities": entries}


def _concat_rejects(folder: Path, target: Path) -> None:
    with target.open("wb") as out:
        for path in sorted(folder.glob("*.jsonl")):
            with path.open("rb") as f:
                shutil.copyfileobj(f, out)
