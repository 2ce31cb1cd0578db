"""Variable-length lists as (offsets, flat values), vectorised with numpy.

A ragged array of N lists is `offsets` (N+1,) int64 with offsets[0] = 0 and `values`
(offsets[-1],): list i is values[offsets[i]:offsets[i+1]].
"""

from __future__ import annotations

import numpy as np


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """Lengths (N,) -> offsets (N+1,) int64."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def range_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[i], starts[i] + lengths[i]) for all i, shape (sum(lengths),)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = offsets_from_lengths(lengths)
    return np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)


def row_ids(offsets: np.ndarray) -> np.ndarray:
    """Offsets (N+1,) -> the list index of every flat value, shape (offsets[-1],)."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
