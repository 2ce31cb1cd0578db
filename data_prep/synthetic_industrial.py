"""`python -m data_prep synthetic-industrial`: industrial-shaped raw click logs at scale.

Shape: many items with a Zipf exposure popularity, long user sequences (so histories
reach `--history`), several topics per user, multimodal item vectors that match topics.
Users are generated in groups, one interaction file per group, so memory is bounded by a
group whatever `--samples` is. Writes DIR/raw/interactions-NNNNN.parquet and
DIR/raw/items.parquet, then (unless --raw-only) runs the `logs` job on them into DIR.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.engines import add_engine_argument
from data_prep.integrity import atomic_file
from data_prep.limits import fraction, positive_int

START_TS = 1_704_067_200
DAY = 86_400
FAVOURITE_WEIGHTS = np.array([0.5, 0.3, 0.2])


@dataclass(frozen=True)
class IndustrialConfig:
    samples: int = 10_000_000
    users: int = 20_000
    items: int = 200_000
    topics: int = 100
    dim: int = 64
    days: int = 30
    zipf: float = 1.05
    popular_share: float = 0.4
    files: int = 8
    seed: int = 0


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def item_side(
    config: IndustrialConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(topic (I,), popularity (I,), quality (I,), vectors (I, dim) float32)."""
    centers = rng.normal(size=(config.topics, config.dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    topic = rng.integers(config.topics, size=config.items)
    vectors = centers[topic] + rng.normal(scale=0.1, size=(config.items, config.dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    popularity = (rng.permutation(config.items) + 10.0) ** -config.zipf
    popularity /= popularity.sum()
    quality = rng.normal(size=config.items)
    return topic, popularity, quality, vectors


def write_raw(config: IndustrialConfig, raw_dir: Path) -> list[Path]:
    """Write the raw files; returns the interaction file paths."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    topic, popularity, quality, vectors = item_side(config, rng)
    items = pa.table(
        {
            "item_id": _ids("i", np.arange(config.items)),
            "category": _ids("c", topic // 10),
            "mm_vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1)), config.dim
            ).cast(pa.list_(pa.float32())),
        }
    )
    with atomic_file(raw_dir / "items.parquet") as tmp:  # never a half-written raw file
        pq.write_table(items, tmp)

    by_topic = np.lexsort((np.arange(config.items), topic))
    topic_sorted = topic[by_topic]
    totals = np.bincount(topic_sorted, weights=popularity[by_topic], minlength=config.topics)
    starts = np.cumsum(totals) - totals
    keys = (
        topic_sorted
        + (np.cumsum(popularity[by_topic]) - starts[topic_sorted]) / totals[topic_sorted]
    )
    global_cdf = np.cumsum(popularity)

    activity = rng.lognormal(0.0, 0.5, size=config.users)
    events_per_user = np.maximum(2, np.round(activity / activity.sum() * config.samples)).astype(
        np.int64
    )
    favourites = rng.integers(config.topics, size=(config.users, len(FAVOURITE_WEIGHTS)))
    paths = []
    for group, users in enumerate(np.array_split(np.arange(config.users), config.files)):
        group_rng = np.random.default_rng([config.seed, group])
        user = np.repeat(users, events_per_user[users])
        n = len(user)
        ts = START_TS + group_rng.integers(config.days * DAY, size=n)
        slot = group_rng.choice(len(FAVOURITE_WEIGHTS), size=n, p=FAVOURITE_WEIGHTS)
        wanted_topic = favourites[user, slot]
        by_interest = by_topic[
            np.minimum(np.searchsorted(keys, wanted_topic + group_rng.random(n)), config.items - 1)
        ]
        by_popularity = np.minimum(
            np.searchsorted(global_cdf, group_rng.random(n)), config.items - 1
        )
        item = np.where(group_rng.random(n) < config.popular_share, by_popularity, by_interest)
        affinity = (favourites[user] == topic[item][:, None]) @ FAVOURITE_WEIGHTS
        logit = -2.0 + 5.0 * affinity + 0.5 * quality[item]
        click = (group_rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        order = np.argsort(ts, kind="stable")
        table = pa.table(
            {
                "user_id": _ids("u", user[order]),
                "item_id": _ids("i", item[order]),
                "timestamp": pa.array(ts[order]),
                "click": pa.array(click[order]),
            }
        )
        path = raw_dir / f"interactions-{group:05d}.parquet"
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp, row_group_size=1 << 20)
        paths.append(path)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = IndustrialConfig()
    parser.add_argument("--out", type=Path, required=True, help="output folder (raw/ inside)")
    for name in ("samples", "users", "items", "topics", "dim", "days", "files"):
        parser.add_argument(f"--{name}", type=positive_int, default=getattr(defaults, name))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--zipf", type=float, default=defaults.zipf, help="item exposure exponent")
    parser.add_argument("--popular-share", type=fraction, default=defaults.popular_share)
    parser.add_argument(
        "--history", type=positive_int, default=100, help="max history of the prepared samples"
    )
    parser.add_argument("--partitions", type=positive_int, default=16)
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--raw-only", action="store_true", help="only write the raw logs")
    add_engine_argument(parser)


def config_from_args(args: argparse.Namespace) -> IndustrialConfig:
    fields = asdict(IndustrialConfig())
    return IndustrialConfig(**{name: getattr(args, name) for name in fields})


def main(args: argparse.Namespace, command: str) -> None:
    from data_prep.logs_job import LogsConfig, run_logs
    from data_prep.protocols import Protocol

    start = time.perf_counter()
    config = config_from_args(args)
    paths = write_raw(config, args.out / "raw")
    print(f"wrote {len(paths)} interaction files in {time.perf_counter() - start:.1f} s")
    if args.raw_only:
        return
    logs = LogsConfig(
        interactions=str(args.out / "raw" / "interactions-*.parquet"),
        items=str(args.out / "raw" / "items.parquet"),
        out=args.out,
        protocol=Protocol(name="temporal", max_history=args.history),
        partitions=args.partitions,
        workers=args.workers,
        engine=args.engine,
        job="synthetic",
        created_by=command,
    )
    manifest = run_logs(logs, extra_protocol={"generator": asdict(config)})
    if manifest is not None:
        print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {manifest['counts']}")
