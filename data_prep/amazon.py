"""`python -m data_prep amazon`: Amazon 2014 review + metadata files -> prepared folder.

Reviews: gzip JSON lines with reviewerID, asin, unixReviewTime (other fields ignored).
Metadata: gzip, one Python-literal dict a line (parsed with `ast.literal_eval`, never
`eval`) with asin, title, categories (the leaf of the first list is the item category)
and other ignored fields. Blank lines are not records.

Protocol (DIN-style, `protocols.next_item_samples`): each user's reviews are ordered by
time, ties by file order; reviews 2 to second-last are training positives with all
earlier reviews as history (the most recent `--max-history`), the last review is the test
positive, and every positive has one negative with the same history whose item is a
random item the user never reviewed (deterministic given `--seed`).

Item vectors: titles embedded by `--encoder` (cached), or `--item-vectors FILE` (Parquet
item_id, mm_vector) with `--encoder precomputed`, or both fused (`embed.fuse`).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from data_prep.embed import EmbedSettings, add_embed_arguments, embed_settings, embed_titles, fuse
from data_prep.events import Events, RawEvents, clean_events
from data_prep.items import (
    ItemTable,
    align_rows,
    category_table,
    first_occurrences,
    vectors_from_column,
)
from data_prep.manifest import input_record
from data_prep.output import write_prepared
from data_prep.protocols import next_item_samples
from data_prep.rejects import RejectLog
from data_prep.vocab import FIRST_ID, Vocab
from data_prep.writer import DEFAULT_ROW_GROUP_SIZE

REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")


@dataclass
class MetaRecords:
    """Parsed metadata lines (N,): asin, title ("" if none), leaf category ("" if none), line."""

    asin: np.ndarray
    title: np.ndarray
    category: np.ndarray
    line: np.ndarray
    excerpt: list[str]


def _lines(path: Path):
    """(1-based line number, raw bytes) of the non-blank lines of a gzip or plain file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw


def _decode(raw: bytes, file: str, number: int, rejects: RejectLog) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        rejects.reject(file, number, "not_utf8", raw)
        return None


def read_reviews(path: Path, rejects: RejectLog) -> RawEvents:
    """Review lines -> RawEvents (click 1); bad lines are rejected."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    lines: list[int] = []
    for number, raw in _lines(path):
        rejects.add_read(1)
        text = _decode(raw, path.name, number, rejects)
        if text is None:
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            rejects.reject(path.name, number, "malformed", f"{error.msg}: {text}")
            continue
        problem = _review_problem(record)
        if problem is not None:
            rejects.reject(path.name, number, problem, text)
            continue
        users.append(record["reviewerID"])
        items.append(record["asin"])
        times.append(int(record["unixReviewTime"]))
        lines.append(number)
    n = len(users)
    return RawEvents(
        user=np.asarray(users, dtype=str),
        item=np.asarray(items, dtype=str),
        ts=np.asarray(times, dtype=np.int64),
        click=np.ones(n, dtype=np.int8),
        source=np.zeros(n, dtype=np.int32),
        line=np.asarray(lines, dtype=np.int64),
        files=[path.name],
    )


def _review_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "malformed"
    for field in REVIEW_FIELDS:
        value = record.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return "missing_field"
    if not isinstance(record["reviewerID"], str) or not isinstance(record["asin"], str):
        return "malformed"
    ts = record["unixReviewTime"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts != int(ts):
        return "malformed"
    return None


def read_meta(path: Path, rejects: RejectLog) -> MetaRecords:
    """Metadata lines -> MetaRecords; unparsable lines and lines without asin are rejected."""
    asins: list[str] = []
    titles: list[str] = []
    categories: list[str] = []
    lines: list[int] = []
    excerpts: list[str] = []
    for number, raw in _lines(path):
        rejects.add_read(1)
        text = _decode(raw, path.name, number, rejects)
        if text is None:
            continue
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
            rejects.reject(path.name, number, "malformed", f"{type(error).__name__}: {text}")
            continue
        if not isinstance(record, dict):
            rejects.reject(path.name, number, "malformed", text)
            continue
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin.strip():
            rejects.reject(path.name, number, "missing_field", text)
            continue
        title = record.get("title")
        asins.append(asin)
        titles.append(title.strip() if isinstance(title, str) else "")
        categories.append(_leaf_category(record.get("categories")))
        lines.append(number)
        excerpts.append(text)
    return MetaRecords(
        asin=np.asarray(asins, dtype=str),
        title=np.asarray(titles, dtype=object),
        category=np.asarray(categories, dtype=str),
        line=np.asarray(lines, dtype=np.int64),
        excerpt=excerpts,
    )


def _leaf_category(categories: Any) -> str:
    """Last entry of the first category path, or "" when there is none."""
    if (
        isinstance(categories, list)
        and categories
        and isinstance(categories[0], list)
        and categories[0]
    ):
        leaf = categories[0][-1]
        return leaf.strip() if isinstance(leaf, str) else ""
    return ""


@dataclass
class AmazonConfig:
    reviews: Path
    meta: Path
    out: Path
    embedding: EmbedSettings
    item_vectors: Path | None = None
    max_history: int = 50
    num_buckets: int = 35
    seed: int = 0
    valid_frac: float = 0.0
    strict: bool = False
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    created_by: str = ""


def item_vectors(
    config: AmazonConfig,
    titles: np.ndarray,
    asins: np.ndarray,
    meta_lines: np.ndarray,
    rejects: RejectLog,
) -> tuple[np.ndarray, str]:
    """Vectors (V, d) of the items `asins` (V,) in vocabulary order, and their description.

    Blank titles (when titles are embedded) and items without a usable precomputed vector
    are repaired: that modality is a zero vector for them.
    """
    settings = config.embedding
    modalities: list[np.ndarray] = []
    sources: list[str] = []
    if settings.encoder != "precomputed":
        for i in np.flatnonzero(titles == ""):
            rejects.repair(config.meta.name, int(meta_lines[i]), "empty_title", asins[i])
        encoder = settings.text_encoder()
        modalities.append(embed_titles(titles, encoder, settings.cache_dir))
        sources.append(f"title:{encoder.name}:{json.dumps(encoder.settings(), sort_keys=True)}")
    if config.item_vectors is not None:
        table = pq.read_table(config.item_vectors, columns=["item_id", "mm_vector"])
        vectors, bad = vectors_from_column(table.column("mm_vector"))
        ids = np.asarray(table.column("item_id").to_pylist(), dtype=str)
        aligned, missing = align_rows(ids, vectors, bad, asins)
        for i in np.flatnonzero(missing):
            rejects.repair(config.meta.name, int(meta_lines[i]), "bad_vector", asins[i])
        modalities.append(aligned)
        sources.append(f"vectors:{config.item_vectors.name}")
    if not modalities:
        raise ValueError("--encoder precomputed needs --item-vectors")
    fused = fuse(modalities, settings.project_dim, settings.seed)
    if settings.project_dim is not None:
        sources.append(f"orthogonal-projection:{settings.project_dim}:seed={settings.seed}")
    return fused, " + ".join(sources)


def run_amazon(config: AmazonConfig) -> dict[str, Any]:
    """Run the job; returns the manifest."""
    config.out.mkdir(parents=True, exist_ok=True)
    with RejectLog(config.out / "rejects.jsonl", strict=config.strict) as rejects:
        meta = read_meta(config.meta, rejects)
        duplicate = ~first_occurrences(meta.asin)
        for i in np.flatnonzero(duplicate):
            rejects.reject(config.meta.name, int(meta.line[i]), "duplicate_item", meta.excerpt[i])
        keep = np.flatnonzero(~duplicate)
        raw = read_reviews(config.reviews, rejects)
        events, user_vocab = clean_events(raw, Vocab(meta.asin[keep]), rejects)
        items, events = _items_with_events(config, meta, keep, events, rejects)
        splits, protocol_counts = next_item_samples(
            events, len(items.vocab), config.max_history, config.seed, config.valid_frac
        )
        protocol = {
            "name": "next-item",
            "max_history": config.max_history,
            "min_events": 2,
            "seed": config.seed,
            "valid_frac": config.valid_frac,
            "negatives_per_positive": 1,
            "tie_order": "file order",
            "counts_before_valid": protocol_counts,
        }
        manifest = write_prepared(
            config.out,
            "amazon",
            splits,
            user_vocab,
            items,
            rejects,
            created_by=config.created_by,
            max_history=config.max_history,
            num_buckets=config.num_buckets,
            inputs={p.name: input_record(p) for p in (config.reviews, config.meta)},
            protocol=protocol,
            row_group_size=config.row_group_size,
        )
        print(rejects.summary())
    return manifest


def _items_with_events(
    config: AmazonConfig, meta: MetaRecords, keep: np.ndarray, events: Events, rejects: RejectLog
) -> tuple[ItemTable, Events]:
    """Restrict items to those with events (others: `item_without_events`), embed them, re-index events."""
    all_items = Vocab(meta.asin[keep])
    used = np.zeros(len(all_items), dtype=bool)
    used[events.item] = True
    rows = keep[np.argsort(meta.asin[keep], kind="stable")]  # meta rows in all_items order
    for i in np.sort(rows[~used[FIRST_ID:]]):
        rejects.reject(config.meta.name, int(meta.line[i]), "item_without_events", meta.excerpt[i])
    rows = rows[used[FIRST_ID:]]
    rejects.add_used(len(rows))

    vocab = Vocab(meta.asin[rows])
    remap = np.zeros(len(all_items), dtype=np.int64)
    remap[np.flatnonzero(used)] = np.arange(FIRST_ID, len(vocab))
    events = Events(user=events.user, item=remap[events.item], ts=events.ts, click=events.click)

    start = time.perf_counter()
    vectors, source = item_vectors(
        config, meta.title[rows], meta.asin[rows], meta.line[rows], rejects
    )
    print(
        f"item vectors: {len(rows):,} items, {vectors.shape[1]}-d, {time.perf_counter() - start:.1f} s ({source})"
    )
    mm = np.zeros((len(vocab), vectors.shape[1]), dtype=np.float32)
    mm[FIRST_ID:] = vectors
    category_vocab, category = category_table(vocab, meta.category[rows])
    return ItemTable(
        vocab, mm, source, category_vocab, category, meta.title[rows].astype(str)
    ), events


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviews", type=Path, required=True, help="reviews JSON lines (.json.gz)")
    parser.add_argument(
        "--meta", type=Path, required=True, help="metadata, Python-literal dicts (.json.gz)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--max-history", type=int, default=50)
    parser.add_argument("--num-buckets", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0, help="negative sampling and valid users")
    parser.add_argument(
        "--valid-frac", type=float, default=0.0, help="fraction of users with a valid pair"
    )
    add_embed_arguments(parser, ("minilm", "hashed", "precomputed"))
    parser.add_argument(
        "--item-vectors", type=Path, help="Parquet item_id, mm_vector (fused with titles)"
    )
    parser.add_argument("--row-group-size", type=int, default=DEFAULT_ROW_GROUP_SIZE)
    parser.add_argument("--strict", action="store_true", help="fail at the first bad record")


def main(args: argparse.Namespace, command: str) -> None:
    start = time.perf_counter()
    config = AmazonConfig(
        reviews=args.reviews,
        meta=args.meta,
        out=args.out,
        embedding=embed_settings(args),
        item_vectors=args.item_vectors,
        max_history=args.max_history,
        num_buckets=args.num_buckets,
        seed=args.seed,
        valid_frac=args.valid_frac,
        strict=args.strict,
        row_group_size=args.row_group_size,
        created_by=command,
    )
    manifest = run_amazon(config)
    print(f"wrote {config.out} in {time.perf_counter() - start:.1f} s: {manifest['counts']}")
