"""Synthetic raw click logs with planted structure (the embedded default dataset).

The generator writes what a real system logs, not prepared samples:
- items: a topic each, a frozen multimodal vector normalize(topic_center + noise) (same
  topic: cosine about 0.6, different topics: about 0), a Zipf-like exposure popularity
  (a long tail of rarely shown items) and a quality effect that only the item ID carries;
- users: a Dirichlet interest mixture over topics that drifts over the days, and an
  activity level;
- impressions: requests of a few items, each drawn from global popularity or from the
  user's current interests (so negatives are hard), clicked with probability
  sigmoid(bias + w_interest * interest[topic] + w_quality * quality).
So recent clicked history predicts clicks through topic (visible to multimodal
similarity), item IDs carry quality, and popularity alone is a weak baseline.

Two modalities with different signal (`styles` > 0, the default): the topic vector above
is the item's *text* vector; each item also has a visual style (one of `styles`) and an
*image* vector normalize(style_center + noise) that knows nothing of the topic, and each
user a Dirichlet style preference that adds w_style * (preference[style] - 1/styles) to
the click logit. Candidates are drawn by topic only, so the style is a re-ranking signal
that only image similarity sees, and topic one that only text similarity sees. The item
table then has `text_vector` and `image_vector` beside `mm_vector`, their fusion
normalize([text; image]) (cosine: the mean of the two), which is what a one-vector model
such as DMF reads. The style draws come from their own generator, so `styles=0` gives
exactly the one-modality data of before (mm_vector = the text vector).

Schema features (`features=True`, off by default: the default data is unchanged), drawn
from their own generator: a user table with a profile `segment` (one of `segments`) and an
`age` (dense, no effect), an item `price` (dense) and `brand`, and a context `device` and `hour` on
each request (no effect). Planted signal: + w_segment * ([topic % segments == segment] -
1/segments) (a profile that interacts with the topic) and - w_price * z(log price) (cheap
items are clicked more). `FEATURE_SCHEMA` is the schema that reads them
(docs/feature-schema.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.integrity import atomic_file

START_TS = 1_704_067_200  # 2024-01-01 00:00 UTC
DAY = 86_400
TOPIC_WORDS = (
    "audio camera laptop phone tablet printer monitor keyboard mouse speaker router drone "
    "watch headset charger cable storage projector console television"
).split()


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    users: int = 3000
    items: int = 3000
    topics: int = 20
    dim: int = 64
    days: int = 14
    requests_per_day: float = 1.4
    items_per_request: int = 4
    zipf: float = 1.1
    zipf_offset: float = 5.0
    topic_noise: float = 0.1
    interest_concentration: float = 0.15
    drift: float = 0.7
    popular_share: float = 0.5
    click_bias: float = -3.3
    w_interest: float = 8.0
    w_quality: float = 0.6
    styles: int = 8
    image_dim: int = 32
    style_noise: float = 0.15
    style_concentration: float = 0.3
    w_style: float = 3.0
    features: bool = False
    segments: int = 4
    w_segment: float = 2.5
    w_price: float = 1.5

    def as_dict(self) -> dict[str, float | int]:
        """The settings (without the feature ones when `features` is off: the default
        data's manifest, which records these, stays what it was)."""
        out = asdict(self)
        if not self.features:
            for key in ("features", "segments", "w_segment", "w_price"):
                del out[key]
        return out


# The schema of the planted features (`features=True`): user profile, item and context.
FEATURE_SCHEMA = {
    "features": [
        {"name": "segment", "kind": "sparse", "source": "user", "column": "segment",
         "vocab": "auto", "dim": 8},
        {"name": "age", "kind": "dense", "source": "user", "column": "age", "fill": 0.0,
         "transform": "log1p"},
        {"name": "brand", "kind": "sparse", "source": "item", "column": "brand",
         "hash_buckets": 64, "dim": 8},
        {"name": "price", "kind": "dense", "source": "item", "column": "price",
         "transform": "log1p"},
        {"name": "device", "kind": "sparse", "source": "event", "column": "device",
         "vocab": ["android", "ios", "web"], "dim": 4},
        {"name": "hour", "kind": "dense", "source": "event", "column": "hour", "fill": 0.0},
    ]
}  # fmt: skip


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: cdf (N, K) cumulative, u (N,) uniform -> (N,) index."""
    return np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)


MODALITY_COLUMNS = {"text": "text_vector", "image": "image_vector"}


def modality_columns(config: SyntheticConfig) -> dict[str, str]:
    """The item table's modality columns (none with `styles=0`: one vector, mm_vector)."""
    return dict(MODALITY_COLUMNS) if config.styles > 0 else {}


def generate(config: SyntheticConfig) -> tuple[pa.Table, pa.Table]:
    """(interactions, items) raw tables, deterministic given the config."""
    interactions, items, _ = generate_all(config)
    return interactions, items


def generate_all(config: SyntheticConfig) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """(interactions, items, users) raw tables; users (and the feature columns) only with
    `features`."""
    rng = np.random.default_rng(config.seed)
    style_rng = np.random.default_rng([config.seed, 1])  # its own stream: styles=0 is the old data
    n_items, n_topics = config.items, config.topics

    centers = _normalize(rng.normal(size=(n_topics, config.dim)))
    topic = rng.integers(n_topics, size=n_items)
    mm = _normalize(
        centers[topic] + rng.normal(scale=config.topic_noise, size=(n_items, config.dim))
    )
    rank = rng.permutation(n_items)
    popularity = (rank + config.zipf_offset) ** -config.zipf
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    quality = 0.4 * (log_pop - log_pop.mean()) / log_pop.std() + 0.9 * rng.normal(size=n_items)

    # Items grouped by topic, with cumulative popularity inside each topic shifted by the
    # topic number, so one searchsorted draws "an item of topic t by popularity".
    by_topic = np.lexsort((np.arange(n_items), topic))
    within = popularity[by_topic]
    topic_sorted = topic[by_topic]
    totals = np.bincount(topic_sorted, weights=within, minlength=n_topics)
    cum_within = np.cumsum(within) - np.repeat(
        np.cumsum(totals) - totals, np.bincount(topic_sorted, minlength=n_topics)
    )
    keys = topic_sorted + cum_within / totals[topic_sorted]

    alpha = np.full(n_topics, config.interest_concentration)
    start = rng.dirichlet(alpha, size=config.users)
    end = rng.dirichlet(alpha, size=config.users)
    activity = rng.lognormal(0.0, 0.6, size=config.users)
    activity *= config.requests_per_day / activity.mean()

    n_req = rng.poisson(np.repeat(activity, config.days))
    req_user = np.repeat(np.repeat(np.arange(config.users), config.days), n_req)
    req_day = np.repeat(np.tile(np.arange(config.days), config.users), n_req)
    req_ts = START_TS + req_day * DAY + rng.integers(DAY, size=len(req_user))
    frac = config.drift * req_day / max(config.days - 1, 1)
    interest = (1 - frac)[:, None] * start[req_user] + frac[:, None] * end[req_user]  # (R, T)

    slots = np.repeat(np.arange(len(req_user)), config.items_per_request)
    from_interest = rng.random(len(slots)) >= config.popular_share
    slot_topic = _draw(np.cumsum(interest[slots], axis=1), rng.random(len(slots)))
    by_interest = by_topic[
        np.minimum(np.searchsorted(keys, slot_topic + rng.random(len(slots))), n_items - 1)
    ]
    by_popularity = np.minimum(
        np.searchsorted(np.cumsum(popularity), rng.random(len(slots))), n_items - 1
    )
    slot_item = np.where(from_interest, by_interest, by_popularity)
    _, first = np.unique(
        slots * n_items + slot_item, return_index=True
    )  # one item once per request
    slots, slot_item = slots[np.sort(first)], slot_item[np.sort(first)]

    logit = (
        config.click_bias
        + config.w_interest * interest[slots, topic[slot_item]]
        + config.w_quality * quality[slot_item]
    )
    if config.styles > 0:
        style = style_rng.integers(config.styles, size=n_items)
        style_centers = _normalize(style_rng.normal(size=(config.styles, config.image_dim)))
        image = _normalize(
            style_centers[style]
            + style_rng.normal(scale=config.style_noise, size=(n_items, config.image_dim))
        )
        liking = style_rng.dirichlet(
            np.full(config.styles, config.style_concentration), size=config.users
        )
        liking = liking[req_user[slots], style[slot_item]] - 1.0 / config.styles
        logit = logit + config.w_style * liking
    if config.features:
        feature_rng = np.random.default_rng([config.seed, 2])
        segment = feature_rng.integers(config.segments, size=config.users)
        age = feature_rng.integers(18, 70, size=config.users)
        price = np.exp(feature_rng.normal(3.0, 0.8, size=n_items))
        brand = feature_rng.integers(40, size=n_items)
        device = feature_rng.integers(3, size=len(req_user))
        z_price = (np.log1p(price) - np.log1p(price).mean()) / np.log1p(price).std()
        match = (topic[slot_item] % config.segments == segment[req_user[slots]]).astype(float)
        logit = logit + config.w_segment * (match - 1.0 / config.segments)
        logit = logit - config.w_price * z_price[slot_item]
    click = (rng.random(len(slots)) < 1 / (1 + np.exp(-logit))).astype(np.int8)

    order = np.lexsort((slot_item, slots, req_ts[slots]))  # a log is written in time order
    slots, slot_item, click = slots[order], slot_item[order], click[order]
    interactions = pa.table(
        {
            "user_id": pa.array([f"u{u:05d}" for u in req_user[slots]], pa.string()),
            "item_id": pa.array([f"i{i:05d}" for i in slot_item], pa.string()),
            "timestamp": pa.array(req_ts[slots].astype(np.int64)),
            "click": pa.array(click),
            "impression_id": pa.array([f"r{r:07d}" for r in slots], pa.string()),
        }
    )
    users = None
    if config.features:
        devices = np.array(["android", "ios", "web"])
        interactions = interactions.append_column("device", pa.array(devices[device[slots]]))
        hour = (req_ts[slots] % DAY) // 3600
        interactions = interactions.append_column("hour", pa.array(hour.astype(np.int64)))
        users = pa.table(
            {
                "user_id": pa.array([f"u{u:05d}" for u in range(config.users)], pa.string()),
                "segment": pa.array([f"s{k}" for k in segment], pa.string()),
                "age": pa.array(age.astype(np.int64)),
            }
        )
    words = np.array(TOPIC_WORDS * (n_topics // len(TOPIC_WORDS) + 1))
    columns = {
        "item_id": pa.array([f"i{i:05d}" for i in range(n_items)], pa.string()),
        "title": pa.array([f"{words[t]} model {i}" for i, t in enumerate(topic)], pa.string()),
        "category": pa.array([f"group{t // 4}" for t in topic], pa.string()),
    }
    if config.styles > 0:
        fused = _normalize(np.concatenate([mm, image], axis=1))
        columns["mm_vector"] = pa.array(list(fused), pa.list_(pa.float32()))
        columns[MODALITY_COLUMNS["text"]] = pa.array(list(mm), pa.list_(pa.float32()))
        columns[MODALITY_COLUMNS["image"]] = pa.array(list(image), pa.list_(pa.float32()))
    else:
        columns["mm_vector"] = pa.array(list(mm), pa.list_(pa.float32()))
    if config.features:
        columns["price"] = pa.array(np.round(price, 2))
        columns["brand"] = pa.array([f"b{b}" for b in brand], pa.string())
    return interactions, pa.table(columns), users


def write_raw(config: SyntheticConfig, raw_dir: Path) -> tuple[Path, Path]:
    """Generate and write raw/interactions.parquet and raw/items.parquet (and, with
    `features`, raw/users.parquet and raw/schema.json, the schema reading them)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    interactions, items, users = generate_all(config)
    paths = raw_dir / "interactions.parquet", raw_dir / "items.parquet"
    tables = [(interactions, paths[0]), (items, paths[1])]
    if users is not None:
        tables.append((users, raw_dir / "users.parquet"))
        (raw_dir / "schema.json").write_text(json.dumps(FEATURE_SCHEMA, indent=2) + "\n")
    for table, path in tables:
        with atomic_file(path) as tmp:  # never a half-written raw file
            pq.write_table(table, tmp)
    return paths
