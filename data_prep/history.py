"""Per-event behaviour histories, vectorised over all events of many users.

Events come sorted by (user, timestamp, file order). A history is a window
`source[lo[i]:hi[i]]` into an array of positions of earlier events, oldest first, at most
`max_history` long (the most recent ones); `gather` materialises the windows of chosen
rows only, so no job builds the histories of rows it does not write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.ragged import offsets_from_lengths, range_indices


@dataclass
class Windows:
    """History of event i = values[source[lo[i]:hi[i]]]; source (K,), lo and hi (N,)."""

    source: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def gather(self, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Histories of `rows` (R,) -> (offsets (R+1,), values[...] flat)."""
        lengths = self.hi[rows] - self.lo[rows]
        return offsets_from_lengths(lengths), values[
            self.source[range_indices(self.lo[rows], lengths)]
        ]


TIE_ORDERS = ("file", "item")


def sort_order(user: np.ndarray, ts: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """Permutation sorting events by (user, ts); ties by `tie` (the item code: `tie_order`
    "item") when given, then input (file) order.

    >>> sort_order(np.array([0, 0, 0]), np.array([5, 5, 1]), tie=np.array([9, 3, 7])).tolist()
    [2, 1, 0]
    >>> sort_order(np.array([0, 0, 0]), np.array([5, 5, 1])).tolist()
    [2, 0, 1]
    """
    if tie is None:
        return np.lexsort((np.arange(len(user)), ts, user))
    return np.lexsort((np.arange(len(user)), tie, ts, user))


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


def clicked_windows(
    user: np.ndarray, ts: np.ndarray, click: np.ndarray, max_history: int
) -> Windows:
    """Temporal click-log history: the user's most recent clicked events strictly earlier in time.

    Events at the same timestamp as the target (e.g. the same impression) are never in its
    history. Inputs (N,) sorted by (user, ts).
    """
    clicked = click.astype(bool)
    clicks_before = offsets_from_lengths(clicked.astype(np.int64))  # (N+1,) clicks before i
    hi = clicks_before[_first_of_run(user, ts)]
    lo = np.maximum(clicks_before[_first_of_run(user)], hi - max_history)
    return Windows(np.flatnonzero(clicked), lo, hi)


def sequence_windows(user: np.ndarray, max_history: int) -> Windows:
    """Next-item history: every earlier event of the user in sequence order (ties: file order)."""
    pos = np.arange(len(user), dtype=np.int64)
    return Windows(pos, np.maximum(_first_of_run(user), pos - max_history), pos)
