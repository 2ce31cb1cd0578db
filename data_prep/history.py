"""Per-event behaviour histories, vectorised over all events of many users.

Both functions take events already sorted by (user, timestamp, file order) and return the
history of every event as a ragged array (offsets (N+1,), items (H,)), oldest first,
truncated to the most recent `max_history` entries.
"""

from __future__ import annotations

import numpy as np

from data_prep.ragged import offsets_from_lengths, range_indices


def sort_order(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (user, ts); ties keep input (file) order."""
    return np.lexsort((np.arange(len(user)), ts, user))


def _first_of_run(*keys: np.ndarray) -> np.ndarray:
    """For sorted keys (N,), the index of the first element of each element's run of equal keys."""
    n = len(keys[0])
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    return starts[np.cumsum(change) - 1]


def clicked_history(
    user: np.ndarray, ts: np.ndarray, item: np.ndarray, click: np.ndarray, max_history: int
) -> tuple[np.ndarray, np.ndarray]:
    """Temporal click-log history: the user's most recent clicked items strictly earlier in time.

    Events at the same timestamp as the target (e.g. the same impression) are never in its
    history. Inputs (N,) sorted by (user, ts); returns (offsets (N+1,), hist_items).
    """
    clicked = click.astype(bool)
    clicks_before = offsets_from_lengths(clicked.astype(np.int64))  # (N+1,) clicks before i
    hi = clicks_before[_first_of_run(user, ts)]
    lo = np.maximum(clicks_before[_first_of_run(user)], hi - max_history)
    lengths = hi - lo
    clicked_pos = np.flatnonzero(clicked)
    return offsets_from_lengths(lengths), item[clicked_pos[range_indices(lo, lengths)]]


def sequence_history(
    user: np.ndarray, item: np.ndarray, max_history: int
) -> tuple[np.ndarray, np.ndarray]:
    """Next-item history: every earlier event of the user in sequence order.

    Inputs (N,) sorted by (user, ts, file order); returns (offsets (N+1,), hist_items).
    """
    pos = np.arange(len(user), dtype=np.int64)
    lo = np.maximum(_first_of_run(user), pos - max_history)
    lengths = pos - lo
    return offsets_from_lengths(lengths), item[range_indices(lo, lengths)]
