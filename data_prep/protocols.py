"""Sample protocols: clean sorted events -> samples per split (similarities not yet filled).

- `temporal_samples` (click logs): every event is a sample labelled by its click; the last
  `test_days` days are test, the `valid_days` before them valid, earlier days train;
  history = the user's most recent clicked items strictly earlier in time.
- `next_item_samples` (implicit feedback, DIN-style): per user in sequence order, events 2
  to second-last are training positives, the last is the test positive; every positive
  is paired with one negative (same history and time, target a random item the user never
  interacted with); history = all earlier events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data_prep.events import Events
from data_prep.hashing import hash_keys
from data_prep.history import TIE_ORDERS, clicked_windows, sequence_windows
from data_prep.rejects import InputError
from data_prep.samples import Samples
from data_prep.vocab import FIRST_ID

# How the manifest names each tie rule (next-item manifests said "file order" before).
TIE_NAMES = {"file": "file order", "item": "item id"}

DAY_SECONDS = 86_400


def _samples(user, item, label, ts, offsets, hist_items, hist_ts) -> Samples:
    """hist_ts (H,): each behaviour's time; stored as the target's time minus it."""
    ts = ts.astype(np.int64)
    return Samples(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        label=label.astype(np.float32),
        ts=ts,
        hist_offsets=offsets,
        hist_items=hist_items.astype(np.int64),
        hist_sims=np.zeros(len(hist_items), dtype=np.float32),
        hist_ts_delta=np.repeat(ts, np.diff(offsets)) - hist_ts.astype(np.int64),
    )


def temporal_samples(
    events: Events,
    max_history: int,
    last_ts: int,
    valid_days: int = 1,
    test_days: int = 1,
    day_seconds: int = DAY_SECONDS,
) -> dict[str, Samples]:
    """Temporal click-log protocol; days are counted back from `last_ts`, the latest event."""
    windows = clicked_windows(events.user, events.ts, events.click, max_history)
    day = events.ts // day_seconds
    last = int(last_ts) // day_seconds
    split = np.where(day > last - test_days, 2, np.where(day > last - test_days - valid_days, 1, 0))
    out = {}
    for code, name in enumerate(("train", "valid", "test")):
        if name == "valid" and valid_days == 0:
            continue
        rows = np.flatnonzero(split == code)
        offsets, hist = windows.gather(events.item, rows)
        _, hist_ts = windows.gather(events.ts, rows)
        out[name] = _samples(
            events.user[rows],
            events.item[rows],
            events.click[rows],
            events.ts[rows],
            offsets,
            hist,
            hist_ts,
        )
        out[name].event_extra = {k: v[rows] for k, v in events.extra.items()}
    return out


def sample_negatives(
    user: np.ndarray, position: np.ndarray, num_items: int, seen: np.ndarray, seed: int
) -> np.ndarray:
    """One random item per (user, position) that the user never interacted with.

    user, position: (N,) keys of the draw (the result depends only on them and the seed,
    not on the order or the partitioning of the data). seen: sorted unique
    user * num_items + item keys of the user's items. Items are uniform over 2..num_items-1.
    """
    real = num_items - FIRST_ID
    seen_users, seen_counts = np.unique(seen // num_items, return_counts=True)
    if np.any(seen_counts >= real):
        full = seen_users[seen_counts >= real]
        raise InputError(
            f"cannot sample negatives: user index {full[0]} interacted with every item "
            "(the next-item protocol needs items a user has not seen)"
        )
    out = np.empty(len(user), dtype=np.int64)
    todo = np.arange(len(user))
    attempt = 0
    while len(todo):
        draw = hash_keys(seed, user[todo], position[todo], np.full(len(todo), attempt))
        item = FIRST_ID + (draw % np.uint64(real)).astype(np.int64)
        key = user[todo] * num_items + item
        hit = np.searchsorted(seen, key)
        clash = (hit < len(seen)) & (seen[np.minimum(hit, len(seen) - 1)] == key)
        out[todo[~clash]] = item[~clash]
        todo = todo[clash]
        attempt += 1
        if attempt > 10_000:
            raise RuntimeError(
                "cannot sample negatives: some user interacted with almost every item"
            )
    return out


def next_item_samples(
    events: Events, num_items: int, max_history: int, seed: int, valid_frac: float = 0.0
) -> tuple[dict[str, Samples], dict[str, int]]:
    """DIN-style next-item protocol; returns (samples per split, counts before carving valid).

    `valid_frac` F moves the latest training pair of a hash-selected fraction F of users
    into a "valid" split.
    """
    windows = sequence_windows(events.user, max_history)
    n = len(events)
    starts = np.flatnonzero(np.r_[True, events.user[1:] != events.user[:-1]])
    ends = np.r_[starts[1:], n]
    position = np.arange(n) - np.repeat(starts, ends - starts)
    split = np.where(position >= 1, 0, -1)  # the first event of a user is never a target
    split[ends - 1] = 2
    protocol_counts = {"train": 2 * int(np.sum(split == 0)), "test": 2 * int(np.sum(split == 2))}
    if valid_frac > 0:
        chosen = hash_keys(seed + 1, events.user) % np.uint64(1 << 32) < np.uint64(
            valid_frac * (1 << 32)
        )
        latest_train = ends - 2
        latest_train = latest_train[(position[latest_train] >= 1) & chosen[latest_train]]
        split[latest_train] = 1

    seen = np.unique(events.user * num_items + events.item)
    out = {}
    for code, name in enumerate(("train", "valid", "test")):
        if name == "valid" and valid_frac <= 0:
            continue
        rows = np.flatnonzero(split == code)
        negative = sample_negatives(events.user[rows], position[rows], num_items, seen, seed)
        # Each positive is followed by its negative: a user's rows stay contiguous and ordered.
        pair_rows = np.repeat(rows, 2)
        item = events.item[pair_rows]
        item[1::2] = negative
        label = np.tile(np.array([1, 0], dtype=np.float32), len(rows))
        offsets, hist = windows.gather(events.item, pair_rows)
        _, hist_ts = windows.gather(events.ts, pair_rows)
        out[name] = _samples(
            events.user[pair_rows], item, label, events.ts[pair_rows], offsets, hist, hist_ts
        )
        out[name].event_extra = {k: v[pair_rows] for k, v in events.extra.items()}
    return out, protocol_counts


@dataclass(frozen=True)
class Protocol:
    """The sample protocol and its settings (recorded in the manifest)."""

    name: str = "temporal"
    max_history: int = 50
    valid_days: int = 1
    test_days: int = 1
    day_seconds: int = DAY_SECONDS
    seed: int = 0
    valid_frac: float = 0.0
    min_events: int = 2
    tie_order: str = "file"  # same-timestamp events of a user: "file" order or "item" id

    def __post_init__(self) -> None:
        if self.name not in ("temporal", "next-item"):
            raise ValueError(f"unknown protocol {self.name!r} (temporal or next-item)")
        if self.tie_order not in TIE_ORDERS:
            raise ValueError(f"tie_order must be one of {TIE_ORDERS}, got {self.tie_order!r}")

    @property
    def splits(self) -> tuple[str, ...]:
        has_valid = self.valid_days > 0 if self.name == "temporal" else self.valid_frac > 0
        return ("train", "valid", "test") if has_valid else ("train", "test")

    def settings(self) -> dict[str, Any]:
        common = {"name": self.name, "max_history": self.max_history, "min_events": self.min_events}
        if self.tie_order != "file":  # recorded always for next-item (below)
            common["tie_order"] = TIE_NAMES[self.tie_order]
        if self.name == "temporal":
            return common | {
                "valid_days": self.valid_days,
                "test_days": self.test_days,
                "day_seconds": self.day_seconds,
            }
        return common | {
            "seed": self.seed,
            "valid_frac": self.valid_frac,
            "negatives_per_positive": 1,
            "tie_order": TIE_NAMES[self.tie_order],
        }

    def samples(
        self, events: Events, num_items: int, last_ts: int
    ) -> tuple[dict[str, Samples], dict[str, int]]:
        """Samples per split of whole users, and the counts before carving a valid split."""
        if self.name == "temporal":
            splits = temporal_samples(
                events, self.max_history, last_ts, self.valid_days, self.test_days, self.day_seconds
            )
            return splits, {name: len(s) for name, s in splits.items()}
        return next_item_samples(events, num_items, self.max_history, self.seed, self.valid_frac)
