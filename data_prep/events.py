"""Interaction events: cleaning rules, encoding and ordering shared by all log jobs.

Cleaning, in this order (each rejected record is counted under one reason):
1. `unknown_item`: the item is not in the item table.
2. `duplicate_event`: same user, item and timestamp as an earlier record (first kept).
3. `too_few_events`: all records of a user left with fewer than `min_events` events.
Timestamps need not be sorted: events are sorted by (user, timestamp, file order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from data_prep.history import sort_order
from data_prep.rejects import RejectLog
from data_prep.vocab import OOV, Vocab


@dataclass
class RawEvents:
    """Parsed records (N,) before cleaning; `source` indexes `files`, `line` is 1-based."""

    user: np.ndarray  # str
    item: np.ndarray  # str
    ts: np.ndarray  # int64 seconds
    click: np.ndarray  # int8, 1 when the log has no click column
    source: np.ndarray  # int32
    line: np.ndarray  # int64
    files: list[str]

    def __len__(self) -> int:
        return len(self.user)

    def describe(self, i: int) -> str:
        return f"user={self.user[i]} item={self.item[i]} ts={self.ts[i]} click={self.click[i]}"


@dataclass
class Events:
    """Clean events (N,) encoded to dense indices, sorted by (user, ts, file order)."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    ts: np.ndarray  # int64
    click: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.user)


def clean_events(
    raw: RawEvents,
    item_vocab: Vocab,
    rejects: RejectLog,
    min_events: int = 2,
    describe: Callable[[int], str] | None = None,
) -> tuple[Events, Vocab]:
    """Apply the cleaning rules, count used records, build the user vocabulary, sort.

    Returns (events, user_vocab). `describe(i)` gives the rejects excerpt of record i.
    """
    describe = describe or raw.describe
    item = item_vocab.encode(raw.item)
    keep = item != OOV
    _reject(raw, ~keep, "unknown_item", rejects, describe)

    user_ids, user_code = np.unique(raw.user, return_inverse=True)
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((rows, raw.ts[rows], item[rows], user_code[rows]))]
    same = np.zeros(len(order), dtype=bool)
    same[1:] = (
        (user_code[order[1:]] == user_code[order[:-1]])
        & (item[order[1:]] == item[order[:-1]])
        & (raw.ts[order[1:]] == raw.ts[order[:-1]])
    )
    duplicate = np.zeros(len(raw), dtype=bool)
    duplicate[order[same]] = True
    _reject(raw, duplicate, "duplicate_event", rejects, describe)
    keep &= ~duplicate

    counts = np.bincount(user_code[keep], minlength=len(user_ids))
    too_few = keep & (counts[user_code] < min_events)
    _reject(raw, too_few, "too_few_events", rejects, describe)
    keep &= ~too_few
    rejects.add_used(int(keep.sum()))

    user_vocab = Vocab(user_ids[np.unique(user_code[keep])])
    rows = np.flatnonzero(keep)
    user = user_vocab.encode(raw.user[rows])
    perm = sort_order(user, raw.ts[rows])
    order = rows[perm]
    events = Events(
        user=user[perm],
        item=item[order],
        ts=raw.ts[order].astype(np.int64),
        click=raw.click[order].astype(np.int8),
    )
    return events, user_vocab


def _reject(
    raw: RawEvents,
    mask: np.ndarray,
    reason: str,
    rejects: RejectLog,
    describe: Callable[[int], str],
) -> None:
    """Reject the records in `mask` in file order."""
    rows = np.flatnonzero(mask)
    for i in rows[np.lexsort((raw.line[rows], raw.source[rows]))]:
        rejects.reject(raw.files[raw.source[i]], int(raw.line[i]), reason, describe(i))
