"""Target/history multimodal similarity and its equal-frequency buckets.

Item tables are L2-normalised (rows 0 and 1 are zero), so cosine similarity is a dot
product. Bucket boundaries come from the training similarities only, through a fine
histogram that partitions can fill independently and merge, so no job ever holds all
similarities at once.
"""

from __future__ import annotations

import numpy as np

from data_prep.ragged import row_ids

# Values gathered per block (32 MiB per float64 operand): bounds temporary memory.
CHUNK_VALUES = 1 << 22
HISTOGRAM_BINS = 1 << 16


NORMALIZE_ROWS = 1 << 13  # rows normalised at a time: small float64 temporaries, reused by malloc


def normalize_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise rows (N, d) -> (float32 (N, d), bad (N,) bool).

    Rows with a non-finite value or zero norm become zero vectors and are flagged bad.
    Computed in float64, `NORMALIZE_ROWS` rows at a time, so the temporaries are bounded
    by a chunk whatever N is (each row's result does not depend on the chunking).
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        vectors = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    out = np.zeros(vectors.shape, dtype=np.float32)
    bad = np.zeros(len(vectors), dtype=bool)
    for start in range(0, len(vectors), NORMALIZE_ROWS):
        stop = start + NORMALIZE_ROWS
        chunk = np.asarray(vectors[start:stop], dtype=np.float64)
        norms = np.linalg.norm(chunk, axis=1)
        chunk_bad = ~np.isfinite(norms) | (norms == 0)  # a NaN or inf value makes the norm so
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:stop] = chunk / norms[:, None]
        if chunk_bad.any():
            out[start:stop][chunk_bad] = 0.0
        bad[start:stop] = chunk_bad
    return out, bad


def history_similarities(
    item_mm: np.ndarray, target: np.ndarray, hist_offsets: np.ndarray, hist_items: np.ndarray
) -> np.ndarray:
    """Cosine(mm[target[i]], mm[hist_items[j]]) for every history entry j of sample i.

    item_mm (V, d) float32 normalised; target (N,); hist_offsets (N+1,); hist_items (H,).
    Returns (H,) float32 aligned with hist_items. The dot products are summed in float64
    and rounded once: a float32 sum's last bits follow the SIMD path numpy dispatches to on
    the CPU, and these values are the data (its checksum, the bucket boundaries).
    """
    targets = target[row_ids(hist_offsets)]
    sims = np.empty(len(hist_items), dtype=np.float32)
    chunk = max(1, CHUNK_VALUES // item_mm.shape[1])
    for start in range(0, len(hist_items), chunk):
        stop = start + chunk
        a = item_mm[targets[start:stop]].astype(np.float64)
        b = item_mm[hist_items[start:stop]].astype(np.float64)
        sims[start:stop] = np.einsum("ij,ij->i", a, b)
    np.clip(sims, -1.0, 1.0, out=sims)
    return sims


class SimilarityHistogram:
    """Counts of similarities in `bins` equal bins over [-1, 1]; mergeable across partitions."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.counts = np.zeros(bins, dtype=np.int64)

    def add(self, sims: np.ndarray) -> None:
        """Count similarities (H,) float32 in [-1, 1] (values outside go to the end bins)."""
        bins = len(self.counts)
        scaled = (np.asarray(sims, dtype=np.float32) + np.float32(1.0)) * np.float32(bins / 2.0)
        np.clip(scaled, 0, bins - 1, out=scaled)
        self.counts += np.bincount(scaled.astype(np.int32), minlength=bins)

    def merge(self, other: SimilarityHistogram) -> None:
        self.counts += other.counts

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def equal_frequency_boundaries(self, num_buckets: int) -> np.ndarray:
        """M-1 strictly increasing float32 cut points splitting the mass into M equal parts.

        Quantiles are interpolated linearly inside a bin (error below one bin width,
        2/bins). Ties (e.g. many identical similarities) would give equal cut points; each
        repeated cut point is moved to the next float32 above its predecessor, which leaves
        that bucket empty instead of breaking `searchsorted`.
        """
        if num_buckets < 2:
            raise ValueError("num_buckets must be >= 2")
        if self.total == 0:
            raise ValueError("no training similarities: cannot compute bucket boundaries")
        bins = len(self.counts)
        cum = np.cumsum(self.counts)
        targets = self.total * np.arange(1, num_buckets) / num_buckets
        k = np.searchsorted(cum, targets, side="left")
        before = np.where(k > 0, cum[np.maximum(k - 1, 0)], 0)
        frac = (targets - before) / np.maximum(self.counts[k], 1)
        cuts = (-1.0 + (k + frac) * (2.0 / bins)).astype(np.float32)
        for j in range(1, len(cuts)):
            if cuts[j] <= cuts[j - 1]:
                cuts[j] = np.nextafter(cuts[j - 1], np.float32(np.inf))
        return cuts


def bucketize(sims: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Similarity -> bucket in 0..M-1, as the trainer does (torch.bucketize(right=True))."""
    return np.searchsorted(boundaries, sims, side="right")
