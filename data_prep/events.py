"""Interaction events: the cleaning rules shared by all jobs.

Cleaning, in this order (each rejected record is counted under one reason):
1. `unknown_item`: the item is not in the item table (checked while parsing).
2. `duplicate_event`: same user, item and timestamp as an earlier record (first kept).
3. `too_few_events`: all records of a user left with fewer than `min_events` events.
Timestamps need not be sorted: events are sorted by (user, timestamp, file order).
Rules 2 and 3 only look at one user's records, so they run per user partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_prep.history import TIE_ORDERS, sort_order
from data_prep.rejects import RejectLog
from data_prep.vocab import FIRST_ID, OOV


@dataclass
class RawEvents:
    """Parsed records (N,) in file order; items already encoded (OOV = unknown).

    user: raw ids (str); item: int64 item index; ts: int64 seconds; click: int8 (1 when
    the log has no click column); source: int32 index into `files`; line: 1-based int64.
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    click: np.ndarray
    source: np.ndarray
    line: np.ndarray
    files: list[str]
    # The schema's event features (data_prep/features.py): name -> (N,) encoded values.
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: np.ndarray) -> RawEvents:
        return RawEvents(
            self.user[mask], self.item[mask], self.ts[mask], self.click[mask],
            self.source[mask], self.line[mask], self.files,
            {k: v[mask] for k, v in self.extra.items()},
        )  # fmt: skip

    def reject(
        self, mask: np.ndarray, reason: str, rejects: RejectLog, item_ids: np.ndarray
    ) -> None:
        """Reject the records in `mask` in file order; `item_ids` decodes item indices."""
        rows = np.flatnonzero(mask)
        for i in rows[np.lexsort((self.line[rows], self.source[rows]))]:
            item = item_ids[self.item[i] - FIRST_ID] if self.item[i] >= FIRST_ID else "?"
            excerpt = f"user={self.user[i]} item={item} ts={self.ts[i]} click={self.click[i]}"
            rejects.reject(self.files[self.source[i]], int(self.line[i]), reason, excerpt)


def concat_raw(parts: list[RawEvents], files: list[str]) -> RawEvents:
    return RawEvents(
        user=np.concatenate([p.user for p in parts]) if parts else np.array([], dtype=str),
        item=np.concatenate([p.item for p in parts]) if parts else np.array([], dtype=np.int64),
        ts=np.concatenate([p.ts for p in parts]) if parts else np.array([], dtype=np.int64),
        click=np.concatenate([p.click for p in parts]) if parts else np.array([], dtype=np.int8),
        source=np.concatenate([p.source for p in parts]) if parts else np.array([], dtype=np.int32),
        line=np.concatenate([p.line for p in parts]) if parts else np.array([], dtype=np.int64),
        files=files,
        extra={k: np.concatenate([p.extra[k] for p in parts]) for k in parts[0].extra}
        if parts
        else {},
    )


@dataclass
class Events:
    """Clean events (N,) sorted by (user, ts, file order); `user` is a dense user code."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    ts: np.ndarray  # int64
    click: np.ndarray  # int8
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # RawEvents.extra, sorted

    def take(self, rows: np.ndarray | slice) -> Events:
        return Events(
            self.user[rows], self.item[rows], self.ts[rows], self.click[rows],
            {k: v[rows] for k, v in self.extra.items()},
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.user)


def drop_unknown_items(raw: RawEvents, rejects: RejectLog, raw_items: np.ndarray) -> RawEvents:
    """Reject records whose item is OOV (`raw_items`: their raw item ids, for the excerpt)."""
    unknown = raw.item == OOV
    rows = np.flatnonzero(unknown)
    for i in rows:
        excerpt = f"user={raw.user[i]} item={raw_items[i]} ts={raw.ts[i]} click={raw.click[i]}"
        rejects.reject(raw.files[raw.source[i]], int(raw.line[i]), "unknown_item", excerpt)
    return raw.take(~unknown)


def clean_events(
    raw: RawEvents,
    rejects: RejectLog,
    item_ids: np.ndarray,
    min_events: int = 2,
    tie_order: str = "file",
) -> tuple[Events, np.ndarray]:
    """Drop duplicates and users with too few events, count used records, sort.

    `raw` must be in file order. Events of one user at the same timestamp are ordered by
    file order (`tie_order` "file") or by item id ("item": the item codes index the sorted
    ids, so for Amazon this is the asin as a string). Returns (events with user codes
    0..U-1, the U raw user ids sorted, which the codes index).
    """
    user_ids, user_code = np.unique(raw.user, return_inverse=True)
    user_code = user_code.astype(np.int64)
    order = np.lexsort((np.arange(len(raw)), raw.ts, raw.item, user_code))
    same = np.zeros(len(order), dtype=bool)
    same[1:] = (
        (user_code[order[1:]] == user_code[order[:-1]])
        & (raw.item[order[1:]] == raw.item[order[:-1]])
        & (raw.ts[order[1:]] == raw.ts[order[:-1]])
    )
    duplicate = np.zeros(len(raw), dtype=bool)
    duplicate[order[same]] = True
    raw.reject(duplicate, "duplicate_event", rejects, item_ids)
    keep = ~duplicate

    counts = np.bincount(user_code[keep], minlength=len(user_ids))
    too_few = keep & (counts[user_code] < min_events)
    raw.reject(too_few, "too_few_events", rejects, item_ids)
    keep &= ~too_few
    rejects.add_used(int(keep.sum()))

    kept_users = np.unique(user_code[keep])
    remap = np.full(len(user_ids), -1, dtype=np.int64)
    remap[kept_users] = np.arange(len(kept_users))
    rows = np.flatnonzero(keep)
    user = remap[user_code[rows]]
    if tie_order not in TIE_ORDERS:
        raise ValueError(f"tie_order must be one of {TIE_ORDERS}, got {tie_order!r}")
    perm = sort_order(user, raw.ts[rows], raw.item[rows] if tie_order == "item" else None)
    order = rows[perm]
    events = Events(
        user=user[perm],
        item=raw.item[order],
        ts=raw.ts[order],
        click=raw.click[order].astype(np.int8),
        extra={k: v[order] for k, v in raw.extra.items()},
    )
    return events, user_ids[kept_users]
