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
"""

from __future__ import annotations

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

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


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
    return interactions, pa.table(columns)


def write_raw(config: SyntheticConfig, raw_dir: Path) -> tuple[Path, Path]:
    """Generate and write raw/interactions.parquet and raw/items.parquet."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    interactions, items = generate(config)
    paths = raw_dir / "interactions.parquet", raw_dir / "items.parquet"
    for table, path in ((interactions, paths[0]), (items, paths[1])):
        with atomic_file(path) as tmp:  # never a half-written raw file
            pq.write_table(table, tmp)
    return paths
