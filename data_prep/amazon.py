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

Item features (`--item-features price,brand,salesrank`, off by default): the metadata's
price, brand and salesRank become schema item features (docs/feature-schema.md) through
the logs job's machinery (`data_prep.features.SchemaPrep`): `features/item_NAME.npy` and
the manifest's `features`. `price_bucket`: bucket floor(log2(1 + price)) (cap
PRICE_BUCKETS - 1), `brand`: vocab auto over the used items, `salesrank_bucket`: bucket
floor(log2(rank)) (cap RANK_BUCKETS - 1) of the rank in the item's top category (the
salesRank key equal to the root of its first category path, else the first key). A
missing field is index 1; a bad one (a negative, non-finite or non-numeric price, a brand
that is not a string or is too long, a salesRank that is not a {category: positive
integer} dict) is repaired to missing (`bad_price`, `bad_brand`, `bad_sales_rank`).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.columns import ColumnTypeError, as_ids
from data_prep.coordination import Coordinator
from data_prep.embed import EmbedSettings, add_embed_arguments, embed_settings, embed_titles, fuse
from data_prep.engines import add_engine_argument, make_coordinator
from data_prep.events import RawEvents, drop_unknown_items
from data_prep.features import SchemaPrep
from data_prep.history import TIE_ORDERS
from data_prep.items import (
    ItemTable,
    align_rows,
    category_table,
    first_occurrences,
    vectors_from_column,
)
from data_prep.limits import (
    Limits,
    add_limit_arguments,
    at_least_two,
    fraction,
    limits_from_args,
    positive_int,
)
from data_prep.manifest import input_record
from data_prep.partitions import PipelineSettings, load_candidates, run_pipeline, work_dir
from data_prep.protocols import Protocol
from data_prep.rejects import InputError, RejectLog, excerpt, summary
from data_prep.scatter import ScatterWriter
from data_prep.tables import read_lines
from data_prep.vocab import FIRST_ID, Vocab
from data_prep.writer import DEFAULT_ROW_GROUP_SIZE
from models.schema import Feature, FeatureSchema

REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")

# --item-features: option name -> (feature name, repair reason of a bad value)
ITEM_FEATURES = {
    "price": ("price_bucket", "bad_price"),
    "brand": ("brand", "bad_brand"),
    "salesrank": ("salesrank_bucket", "bad_sales_rank"),
}
PRICE_BUCKETS = 24  # floor(log2(1 + price)): 0 below $1, 1 for [1, 3), ..., 23 from 2^23 - 1
RANK_BUCKETS = 32  # floor(log2(rank)): 0 for rank 1, 1 for 2-3, 2 for 4-7, ...


def _labels(buckets: int) -> tuple[str, ...]:
    """Zero-padded labels: the fixed vocabulary sorts them in bucket order (index 2 + k)."""
    return tuple(f"{k:02d}" for k in range(buckets))


def price_bucket(value: Any) -> tuple[str, str]:
    """(bucket label or "" when missing, repair reason or "") of a metadata price."""
    if value is None:
        return "", ""
    if isinstance(value, str):
        try:
            value = float(value.strip().lstrip("$").replace(",", ""))
        except ValueError:
            return "", "bad_price"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "", "bad_price"
    price = float(value)
    if not math.isfinite(price) or price < 0:
        return "", "bad_price"
    return f"{min(int(math.floor(math.log2(1.0 + price))), PRICE_BUCKETS - 1):02d}", ""


def salesrank_bucket(value: Any, root: str) -> tuple[str, str]:
    """(bucket label or "", repair reason or "") of a salesRank {category: rank}: the rank
    in `root` (the item's top category) when it is a key, else in the first key."""
    if value is None:
        return "", ""
    if not isinstance(value, dict) or not value:
        return "", "bad_sales_rank"
    rank = value[root] if root in value else next(iter(value.values()))
    if isinstance(rank, float) and math.isfinite(rank) and rank == math.floor(rank):
        rank = int(rank)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        return "", "bad_sales_rank"
    return f"{min(rank.bit_length() - 1, RANK_BUCKETS - 1):02d}", ""


def brand_value(value: Any, max_length: int) -> tuple[str, str]:
    if value is None:
        return "", ""
    if not isinstance(value, str) or len(value.strip()) > max_length:
        return "", "bad_brand"
    return value.strip(), ""


def item_feature_schema(names: tuple[str, ...]) -> FeatureSchema:
    """The default schema plus the requested item features.

    Kind `sequence`, as docs/feature-schema.md's item attributes (and the built-in
    category): an item's price, brand and rank are joined to the item representation of
    the target and of every history item, so the interest arch sees them on the reviewed
    items too (a pooled `sparse` feature would describe the target only, and this job's
    signal is the history)."""
    features = []
    for name in names:
        feature = ITEM_FEATURES[name][0]
        vocab: Any = {
            "price": _labels(PRICE_BUCKETS),
            "brand": "auto",
            "salesrank": _labels(RANK_BUCKETS),
        }[name]
        features.append(Feature(feature, "sequence", "item", feature, f"t_{feature}", vocab=vocab))
    return FeatureSchema(FeatureSchema().features + tuple(features))


def parse_item_features(text: str) -> tuple[str, ...]:
    """--item-features: "" / "none" or a comma list of price, brand, salesrank."""
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in ITEM_FEATURES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown item features {unknown}: choose from {', '.join(ITEM_FEATURES)}"
        )
    return tuple(dict.fromkeys(names))


@dataclass
class MetaRecords:
    """Parsed metadata lines (N,): asin, title ("" if none), leaf category ("" if none), line."""

    asin: np.ndarray
    title: np.ndarray
    category: np.ndarray
    line: np.ndarray
    excerpt: list[str]
    # --item-features option name -> (N,) labels ("" missing) and repair reasons ("" none)
    attrs: dict[str, np.ndarray] = field(default_factory=dict)
    problems: dict[str, np.ndarray] = field(default_factory=dict)


def _decode(raw: bytes, file: str, number: int, rejects: RejectLog) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        rejects.reject(file, number, "not_utf8", raw)
        return None


def _records(
    path: Path, rejects: RejectLog, limits: Limits, parse
) -> Iterator[tuple[int, str, Any]]:
    """(line, text, parsed record) of the lines of `path` that parse within the limits;
    every other line is counted read and rejected (`line_too_long`, `not_utf8`,
    `malformed`, `too_deep`)."""
    for number, raw in read_lines(path, limits.max_line_bytes):
        rejects.add_read(1)
        if raw is None:
            rejects.reject(
                path.name, number, "line_too_long", f"longer than {limits.max_line_bytes} bytes"
            )
            continue
        text = _decode(raw, path.name, number, rejects)
        if text is None:
            continue
        try:
            record = parse(text)
        except RecursionError:
            rejects.reject(path.name, number, "too_deep", text)
            continue
        except SyntaxError as error:  # Python literals; the parser's own nesting limit too
            reason = "too_deep" if "nested" in str(error.msg) else "malformed"
            rejects.reject(path.name, number, reason, f"{error.msg}: {text}")
            continue
        except (ValueError, MemoryError, TypeError) as error:
            message = getattr(error, "msg", None) or str(error) or type(error).__name__
            # ast's message names the node by its memory address ("<ast.Call object at
            # 0x7f...>"): dropped, so that rejects.jsonl is the same from run to run.
            message = re.sub(r" object at 0x[0-9a-f]+>", ">", message)
            rejects.reject(path.name, number, "malformed", f"{message}: {text}")
            continue
        openers = text.count("[") + text.count("{") + text.count("(")
        if openers > limits.max_depth and nesting_exceeds(record, limits.max_depth):
            rejects.reject(path.name, number, "too_deep", text)
            continue
        yield number, text, record


def nesting_exceeds(record: Any, max_depth: int) -> bool:
    """Whether lists, tuples, sets and dicts nest deeper than `max_depth` in `record`."""
    stack = [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list | tuple | set | frozenset):
            children = value
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_json(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _parse_literal(text: str) -> Any:
    return ast.literal_eval(text.strip())


def read_reviews(
    path: Path, items: Vocab, rejects: RejectLog, limits: Limits | None = None
) -> tuple[RawEvents, np.ndarray]:
    """Review lines -> (RawEvents (click 1), raw item ids); bad lines are rejected."""
    limits = limits or Limits()
    users: list[str] = []
    asins: list[str] = []
    times: list[int] = []
    lines: list[int] = []
    for number, text, record in _records(path, rejects, limits, _parse_json):
        problem = _review_problem(record, limits)
        if problem is not None:
            rejects.reject(path.name, number, problem, text)
            continue
        users.append(record["reviewerID"])
        asins.append(record["asin"])
        times.append(int(record["unixReviewTime"]))
        lines.append(number)
    n = len(users)
    raw_items = np.asarray(asins, dtype=str)  # ids are bounded by limits.max_id_length
    raw = RawEvents(
        user=np.asarray(users, dtype=str),
        item=items.encode(raw_items),
        ts=np.asarray(times, dtype=np.int64),
        click=np.ones(n, dtype=np.int8),
        source=np.zeros(n, dtype=np.int32),
        line=np.asarray(lines, dtype=np.int64),
        files=[path.name],
    )
    return raw, raw_items


def _review_problem(record: Any, limits: Limits) -> str | None:
    if not isinstance(record, dict):
        return "malformed"
    for name in REVIEW_FIELDS:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return "missing_field"
    if not isinstance(record["reviewerID"], str) or not isinstance(record["asin"], str):
        return "malformed"
    if max(len(record["reviewerID"]), len(record["asin"])) > limits.max_id_length:
        return "id_too_long"
    ts = record["unixReviewTime"]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return "malformed"
    if isinstance(ts, float):
        if not math.isfinite(ts) or ts != math.floor(ts):
            return "malformed"
        if not -(2.0**63) <= ts < 2.0**63:
            return "timestamp_out_of_range"
        ts = int(ts)
    if not limits.timestamp_ok(ts):
        return "timestamp_out_of_range"
    return None


def read_meta(path: Path, rejects: RejectLog, limits: Limits | None = None) -> MetaRecords:
    """Metadata lines -> MetaRecords; unparsable lines and lines without asin are rejected."""
    limits = limits or Limits()
    asins: list[str] = []
    titles: list[str] = []
    categories: list[str] = []
    lines: list[int] = []
    excerpts: list[str] = []
    attrs: dict[str, list[tuple[str, str]]] = {name: [] for name in ITEM_FEATURES}
    for number, text, record in _records(path, rejects, limits, _parse_literal):
        if not isinstance(record, dict):
            rejects.reject(path.name, number, "malformed", text)
            continue
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin.strip():
            rejects.reject(path.name, number, "missing_field", text)
            continue
        category = _leaf_category(record.get("categories"))
        if max(len(asin), len(category)) > limits.max_id_length:
            rejects.reject(path.name, number, "id_too_long", text)
            continue
        title = record.get("title")
        asins.append(asin)
        titles.append(title.strip() if isinstance(title, str) else "")
        categories.append(category)
        lines.append(number)
        excerpts.append(excerpt(text))
        attrs["price"].append(price_bucket(record.get("price")))
        attrs["brand"].append(brand_value(record.get("brand"), limits.max_id_length))
        attrs["salesrank"].append(
            salesrank_bucket(record.get("salesRank"), _root_category(record.get("categories")))
        )
    return MetaRecords(
        asin=np.asarray(asins, dtype=str),
        title=np.asarray(titles, dtype=object),
        category=np.asarray(categories, dtype=str),
        line=np.asarray(lines, dtype=np.int64),
        excerpt=excerpts,
        attrs={n: np.array([v for v, _ in a] or [], dtype=object) for n, a in attrs.items()},
        problems={n: np.array([p for _, p in a] or [], dtype=object) for n, a in attrs.items()},
    )


def _root_category(categories: Any) -> str:
    """First entry of the first category path (the top category), or ""."""
    if isinstance(categories, list) and categories and isinstance(categories[0], list):
        if categories[0] and isinstance(categories[0][0], str):
            return categories[0][0]
    return ""


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
    protocol: Protocol
    item_vectors: Path | None = None
    num_buckets: int = 35
    partitions: int = 1
    workers: int = 1
    distributed: bool | None = False
    engine: str = "local"  # coordination.ENGINES
    strict: bool = False
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    created_by: str = ""
    limits: Limits = field(default_factory=Limits)
    item_features: tuple[str, ...] = ()  # --item-features: keys of ITEM_FEATURES

    def schema_prep(self) -> SchemaPrep | None:
        """The item features' side of the run; None without --item-features (today's output)."""
        if not self.item_features:
            return None
        return SchemaPrep(item_feature_schema(self.item_features), None, self.limits)


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
        name = config.item_vectors.name
        try:
            table = pq.read_table(config.item_vectors, columns=["item_id", "mm_vector"])
            ids = as_ids(table.column("item_id"), config.limits.max_id_length)
        except (pa.ArrowException, OSError, ColumnTypeError) as error:
            raise InputError(
                f"{name}: not a Parquet table of item_id, mm_vector: {error}"
            ) from None
        vectors, bad = vectors_from_column(table.column("mm_vector"), name)
        bad |= ids.missing | ids.not_utf8 | ids.too_long
        aligned, missing = align_rows(ids.values, vectors, bad, asins)
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


class AmazonItems:
    """Item side of the Amazon job: metadata items that have at least one clean review."""

    def __init__(self, config: AmazonConfig, features: SchemaPrep | None = None) -> None:
        self.config = config
        self.features = features
        self.meta: MetaRecords | None = None
        self.rows = np.array([], dtype=np.int64)  # metadata rows of the candidates, sorted by asin

    def load(self, rejects: RejectLog) -> np.ndarray:
        meta = read_meta(self.config.meta, rejects, self.config.limits)
        duplicate = ~first_occurrences(meta.asin)
        for i in np.flatnonzero(duplicate):
            rejects.reject(
                self.config.meta.name, int(meta.line[i]), "duplicate_item", meta.excerpt[i]
            )
        keep = np.flatnonzero(~duplicate)
        self.meta = meta
        self.rows = keep[np.argsort(meta.asin[keep], kind="stable")]
        return meta.asin[self.rows]

    def finalize(self, used: np.ndarray, rejects: RejectLog) -> tuple[ItemTable, np.ndarray]:
        """Reject unused metadata lines (`item_without_events`), embed the others."""
        meta, name = self.meta, self.config.meta.name
        assert meta is not None, "load() runs first"
        for i in np.sort(self.rows[~used]):
            rejects.reject(name, int(meta.line[i]), "item_without_events", meta.excerpt[i])
        rows = self.rows[used]
        rejects.add_used(len(rows))
        vocab = Vocab(meta.asin[rows])
        remap = np.zeros(len(self.rows) + FIRST_ID, dtype=np.int64)
        remap[:FIRST_ID] = np.arange(FIRST_ID)
        remap[FIRST_ID:][used] = np.arange(FIRST_ID, len(vocab))

        start = time.perf_counter()
        vectors, source = item_vectors(
            self.config, meta.title[rows], meta.asin[rows], meta.line[rows], rejects
        )
        print(
            f"item vectors: {len(rows):,} items, {vectors.shape[1]}-d, {time.perf_counter() - start:.1f} s ({source})"
        )
        mm = np.zeros((len(vocab), vectors.shape[1]), dtype=np.float32)
        mm[FIRST_ID:] = vectors
        category_vocab, category = category_table(vocab, meta.category[rows])
        if self.features is not None:
            self._item_features(rows, rejects)
        return ItemTable(vocab, mm, source, category_vocab, category), remap

    def _item_features(self, rows: np.ndarray, rejects: RejectLog) -> None:
        """Hand the used items' metadata fields to SchemaPrep as an item table (item_id and
        one string column per feature, null when missing); bad values were repaired to
        missing at parse time and are counted here, for the used items only."""
        meta, name = self.meta, self.config.meta.name
        assert meta is not None
        columns: dict[str, Any] = {"item_id": pa.array(meta.asin[rows].tolist(), pa.string())}
        for option in self.config.item_features:
            feature, _ = ITEM_FEATURES[option]
            problem = meta.problems[option][rows]
            for i in np.flatnonzero(problem != ""):
                rejects.repair(
                    name, int(meta.line[rows[i]]), str(problem[i]), meta.excerpt[rows[i]]
                )
            values = meta.attrs[option][rows]
            if not (values != "").any():
                print(f"item features: no used item has a {option!r}: {feature} is all missing (1)")
            columns[feature] = pa.array([v or None for v in values.tolist()], pa.string())
        table = pa.table(columns)
        assert self.features is not None
        self.features.filter_items(table, meta.line[rows], name, rejects)


@dataclass(frozen=True)
class AmazonScatterTask:
    """Parse the review file and scatter it into user partitions."""

    reviews: Path
    work: Path
    partitions: int
    strict: bool
    limits: Limits = field(default_factory=Limits)

    def run(self) -> dict[str, Any]:
        items = load_candidates(self.work)
        writer = ScatterWriter(self.work, self.partitions, "reviews")
        try:
            with RejectLog(
                self.work / "rejects" / "b-scatter-reviews.jsonl", self.strict
            ) as rejects:
                raw, raw_items = read_reviews(self.reviews, items, rejects, self.limits)
                writer.write(drop_unknown_items(raw, rejects, raw_items))
        finally:
            writer.close()
        return rejects.as_manifest()


def run_amazon(
    config: AmazonConfig, coordinator: Coordinator | None = None
) -> dict[str, Any] | None:
    """Run the job; returns the manifest (None on ranks other than the leader)."""
    if coordinator is None:
        coordinator = make_coordinator(config.workers, config.distributed, config.engine)
        try:
            return run_amazon(config, coordinator)
        finally:
            coordinator.close()
    for path in (config.reviews, config.meta, config.item_vectors):
        if path is not None and not path.is_file():
            raise InputError(f"{path}: no such file")
    features = config.schema_prep()
    settings = PipelineSettings(
        out=config.out,
        job="amazon",
        created_by=config.created_by,
        protocol=config.protocol,
        partitions=config.partitions,
        num_buckets=config.num_buckets,
        row_group_size=config.row_group_size,
        strict=config.strict,
        limits=config.limits,
        features=features,
    )
    task = AmazonScatterTask(
        config.reviews, work_dir(config.out), config.partitions, config.strict, config.limits
    )
    inputs = {p.name: input_record(p) for p in (config.reviews, config.meta)}
    manifest = run_pipeline(
        settings, coordinator, AmazonItems(config, features), [task], [config.reviews.name], inputs
    )
    if manifest is not None:
        print(summary(manifest["records"]))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviews", type=Path, required=True, help="reviews JSON lines (.json.gz)")
    parser.add_argument(
        "--meta", type=Path, required=True, help="metadata, Python-literal dicts (.json.gz)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--max-history", type=positive_int, default=50)
    parser.add_argument("--num-buckets", type=at_least_two, default=35)
    parser.add_argument("--seed", type=int, default=0, help="negative sampling and valid users")
    parser.add_argument(
        "--valid-frac",
        type=fraction,
        default=0.0,
        help="fraction of users with a valid pair (0..1)",
    )
    parser.add_argument(
        "--tie-order",
        choices=TIE_ORDERS,
        default="file",
        help="a user's reviews at the same time: in file order (the default, as before) or "
        "by asin; it decides which of a user's last-day reviews is the test positive",
    )
    add_embed_arguments(parser, ("minilm", "hashed", "precomputed"))
    parser.add_argument(
        "--item-vectors", type=Path, help="Parquet item_id, mm_vector (fused with titles)"
    )
    parser.add_argument(
        "--partitions", type=positive_int, default=1, help="user partitions (hash of the user id)"
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="local processes")
    parser.add_argument(
        "--distributed", action="store_true", help="torch.distributed ranks (torchrun/TorchX)"
    )
    add_engine_argument(parser)
    parser.add_argument("--row-group-size", type=positive_int, default=DEFAULT_ROW_GROUP_SIZE)
    parser.add_argument("--strict", action="store_true", help="fail at the first bad record")
    parser.add_argument(
        "--item-features",
        type=parse_item_features,
        default=(),
        help="metadata fields to turn into item features (sequence kind, docs/data-prep.md): "
        "a comma list of price (price_bucket), brand, salesrank (salesrank_bucket); "
        "default none: the output of earlier versions",
    )
    add_limit_arguments(parser)


def main(args: argparse.Namespace, command: str) -> None:
    start = time.perf_counter()
    config = AmazonConfig(
        reviews=args.reviews,
        meta=args.meta,
        out=args.out,
        embedding=embed_settings(args),
        protocol=Protocol(
            name="next-item",
            max_history=args.max_history,
            seed=args.seed,
            valid_frac=args.valid_frac,
            tie_order=args.tie_order,
        ),
        item_vectors=args.item_vectors,
        num_buckets=args.num_buckets,
        partitions=args.partitions,
        workers=args.workers,
        distributed=args.distributed or None,
        engine=args.engine,
        strict=args.strict,
        row_group_size=args.row_group_size,
        created_by=command,
        limits=limits_from_args(args),
        item_features=args.item_features,
    )
    manifest = run_amazon(config)
    if manifest is not None:
        print(f"wrote {config.out} in {time.perf_counter() - start:.1f} s: {manifest['counts']}")
