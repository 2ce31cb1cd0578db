"""Counter-based hashing: random numbers that depend only on their keys.

Draws keyed by (seed, user, position, ...) do not depend on the order, the batching or
the partitioning of the data, so every layout of a job gives the same samples.
"""

from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based 64-bit hash (uint64 -> uint64): random numbers independent of order."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_keys(seed: int, *keys: np.ndarray) -> np.ndarray:
    """Hash of (seed, keys...) per element, uint64."""
    h = splitmix64(np.asarray(seed, dtype=np.uint64))
    for key in keys:
        with np.errstate(over="ignore"):
            h = splitmix64(h ^ splitmix64(np.asarray(key).astype(np.uint64)))
    return h
