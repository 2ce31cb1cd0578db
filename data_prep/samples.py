"""A block of prepared samples in columnar form, and its Arrow conversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass
class Samples:
    """N samples; rows of one user are contiguous. Histories are ragged, oldest first.

    user, item, ts: (N,) int64; label: (N,) float32; hist_offsets: (N+1,) int64;
    hist_items: (H,) int64; hist_sims: (H,) float32; category: (N,) int64 or None;
    hist_categories: (H,) int64 or None; hist_ts_delta: (H,) int64 seconds, the target's
    time minus each behaviour's (>= 0), or None; hist_modality_sims: modality name ->
    (H,) float32 cosine of that modality's vectors, when the items have 2+ modalities.
    """

    user: np.ndarray
    item: np.ndarray
    label: np.ndarray
    ts: np.ndarray
    hist_offsets: np.ndarray
    hist_items: np.ndarray
    hist_sims: np.ndarray
    category: np.ndarray | None = None
    hist_categories: np.ndarray | None = None
    hist_ts_delta: np.ndarray | None = None
    hist_modality_sims: dict[str, np.ndarray] | None = None
    # The schema's extended features (data_prep/features.py): shard column -> (N,) values,
    # (H,) for a sequence feature's hist_NAME, or (offsets (N+1,), values) for a
    # multi-valued one (a list column).
    features: dict[str, Any] | None = None
    # The target events' RawEvents.extra (N,) per name, read by fill_samples; not a column.
    event_extra: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.user)

    def to_arrow(self) -> pa.Table:
        """Arrow table with the columns of docs/data-format.md."""
        if len(self.hist_items) >= 2**31:
            raise ValueError(
                "block too large for list<int64> with int32 offsets; use smaller blocks"
            )
        offsets = pa.array(self.hist_offsets.astype(np.int32))
        columns = {
            "user": pa.array(self.user.astype(np.int64)),
            "item": pa.array(self.item.astype(np.int64)),
            "label": pa.array(self.label.astype(np.float32)),
            "ts": pa.array(self.ts.astype(np.int64)),
            "hist_items": pa.ListArray.from_arrays(
                offsets, pa.array(self.hist_items.astype(np.int64))
            ),
            "hist_sims": pa.ListArray.from_arrays(
                offsets, pa.array(self.hist_sims.astype(np.float32))
            ),
        }
        if self.hist_ts_delta is not None:
            columns["hist_ts_delta"] = pa.ListArray.from_arrays(
                offsets, pa.array(self.hist_ts_delta.astype(np.int64))
            )
        for name, sims in (self.hist_modality_sims or {}).items():
            columns[f"hist_sims_{name}"] = pa.ListArray.from_arrays(
                offsets, pa.array(sims.astype(np.float32))
            )
        if self.category is not None and self.hist_categories is not None:
            columns["category"] = pa.array(self.category.astype(np.int64))
            columns["hist_categories"] = pa.ListArray.from_arrays(
                offsets, pa.array(self.hist_categories.astype(np.int64))
            )
        for name, values in (self.features or {}).items():
            if isinstance(values, tuple):  # multi-valued: (offsets, values)
                columns[name] = pa.ListArray.from_arrays(
                    pa.array(values[0].astype(np.int32)), pa.array(values[1].astype(np.int64))
                )
            elif name.startswith("hist_"):
                columns[name] = pa.ListArray.from_arrays(offsets, pa.array(values))
            else:
                columns[name] = pa.array(values)
        return pa.table(columns)
