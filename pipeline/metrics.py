"""Offline evaluation metrics for CTR prediction: AUC, GAUC, log loss.

All metric functions take 1-d numpy arrays of equal length N (anything `np.asarray`
accepts). Labels are binary: a label > 0.5 is a positive. Undefined values are NaN
(AUC with one class only, GAUC with no group holding both classes, log loss of nothing);
`to_jsonable` writes them as JSON null.

- `auc`: exact ROC AUC, ties counted as one half (Mann-Whitney U with average ranks).
- `gauc`: AUC per group (user), averaged over the groups holding both classes, either
  uniformly (one vote per user, as torchrec's GAUCMetric) or by the group's sample count
  (the DIN paper). One sort, no Python loop over groups.
- `EvalAccumulator`: collects batches of model outputs on any device, gathers the rows of
  every rank when torch.distributed is initialised (a user's rows may sit on several
  ranks), and computes all of the above overall and split by history length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

LOGLOSS_EPS = 1e-7
DEFAULT_SHORT_HISTORY_MAX = 10
Weighting = Literal["uniform", "impressions"]
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("auc", "AUC"),
    ("gauc", "GAUC"),
    ("logloss", "logloss"),
    ("samples_per_s", "samples/s"),
)


def _binary(labels: Any) -> np.ndarray:
    """Labels (N,) -> bool (N,), True for positives (label > 0.5)."""
    return np.asarray(labels).reshape(-1) > 0.5


def _average_ranks(new_block: np.ndarray) -> np.ndarray:
    """1-based ranks of a sorted sequence, ties sharing the average rank of their block.

    new_block: bool (N,), True where a position starts a new run of equal keys
    (position 0 must be True). Returns float64 (N,).
    """
    n = new_block.size
    starts = np.flatnonzero(new_block)
    ends = np.append(starts[1:], n)
    block_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    return block_rank[np.cumsum(new_block) - 1]


def _auc_from_rank_sums(
    positive_rank_sum: np.ndarray, positives: np.ndarray, negatives: np.ndarray
) -> np.ndarray:
    """Mann-Whitney AUC per group from the rank sum of its positives; NaN without both classes.

    All arguments and the result have shape (G,).
    """
    pos = positives.astype(np.float64)
    pairs = pos * negatives
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (positive_rank_sum - pos * (pos + 1.0) / 2.0) / pairs
    return np.where(pairs > 0, value, np.nan)


def auc(scores: Any, labels: Any) -> float:
    """Exact ROC AUC of scores (N,) against binary labels (N,); ties count one half.

    O(N log N). NaN when only one class (or nothing) is present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary(labels)
    if s.size != y.size:
        raise ValueError(f"scores has {s.size} rows, labels {y.size}")
    if s.size == 0:
        return math.nan
    order = np.argsort(s)  # tied scores get one average rank, so order among them is moot
    s_sorted = s[order]
    new_block = np.empty(s.size, dtype=bool)
    new_block[0] = True
    np.not_equal(s_sorted[1:], s_sorted[:-1], out=new_block[1:])
    ranks = _average_ranks(new_block)
    y_sorted = y[order]
    positives = np.count_nonzero(y)
    value = _auc_from_rank_sums(
        np.array([ranks[y_sorted].sum()]),
        np.array([positives]),
        np.array([y.size - positives]),
    )
    return float(value[0])


def gauc(
    scores: Any, labels: Any, groups: Any, weighting: Weighting = "uniform"
) -> tuple[float, int]:
    """Group AUC: AUC within each group, averaged over the groups holding both classes.

    scores (N,), labels (N,) binary, groups (N,) integer ids (rows of a group need not be
    contiguous). weighting: "uniform" gives every group the same weight (torchrec's
    GAUCMetric); "impressions" weights a group by its number of rows (DIN paper).
    Returns (value, number of groups used); value is NaN when no group is used.
    One lexsort over (group, score): O(N log N), no loop over groups.
    """
    if weighting not in ("uniform", "impressions"):
        raise ValueError(f"weighting must be 'uniform' or 'impressions', got {weighting!r}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary(labels)
    g = np.asarray(groups).reshape(-1)
    if not s.size == y.size == g.size:
        raise ValueError(f"lengths differ: scores {s.size}, labels {y.size}, groups {g.size}")
    if s.size == 0:
        return math.nan, 0
    order = np.lexsort((s, g))
    s, y, g = s[order], y[order], g[order]
    new_group = np.empty(s.size, dtype=bool)
    new_group[0] = True
    np.not_equal(g[1:], g[:-1], out=new_group[1:])
    new_block = new_group.copy()
    new_block[1:] |= s[1:] != s[:-1]
    group_start = np.flatnonzero(new_group)
    group_id = np.cumsum(new_group) - 1
    ranks = _average_ranks(new_block) - group_start[group_id]
    rows = np.bincount(group_id)
    positives = np.bincount(group_id, weights=y).astype(np.int64)
    rank_sums = np.bincount(group_id, weights=np.where(y, ranks, 0.0))
    per_group = _auc_from_rank_sums(rank_sums, positives, rows - positives)
    used = ~np.isnan(per_group)
    n_used = int(np.count_nonzero(used))
    if n_used == 0:
        return math.nan, 0
    weights = rows[used] if weighting == "impressions" else None
    return float(np.average(per_group[used], weights=weights)), n_used


def logloss(probs: Any, labels: Any, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities (N,) clipped to [eps, 1 - eps].

    Labels (N,) are used as given (soft labels allowed). NaN when N == 0.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.size != y.size:
        raise ValueError(f"probs has {p.size} rows, labels {y.size}")
    if p.size == 0:
        return math.nan
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float64 (N,) -> (N,)."""
    return np.exp(-np.logaddexp(0.0, -x))


_TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.int64): torch.int64}


def _to_numpy(t: torch.Tensor | np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """Tensor (any device, dtype, shape) or array -> 1-d CPU numpy array of `dtype`.

    dtype: np.float64 or np.int64.
    """
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", _TORCH_DTYPES[np.dtype(dtype)]).numpy().reshape(-1)
    return np.asarray(t, dtype=dtype).reshape(-1)


def _collective_device(group: dist.ProcessGroup | None) -> torch.device:
    """Device the collectives of `group` run on: the current CUDA device for NCCL, else CPU."""
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_rows(local: np.ndarray, group: dist.ProcessGroup | None) -> np.ndarray:
    """Concatenate every rank's rows in rank order; the same (sum N_r, ...) array on all ranks.

    local: (N_r, ...) on this rank; ranks may hold different N_r (sizes are exchanged
    first and the rows padded to the largest).
    """
    device = _collective_device(group)
    world = dist.get_world_size(group)
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(c.item()) for c in sizes]
    largest = max(counts)
    if largest == 0:
        return local
    padded_rows = np.zeros((largest, *local.shape[1:]), dtype=local.dtype)
    padded_rows[: local.shape[0]] = local
    padded = torch.from_numpy(padded_rows).to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts)])


def _metric_dict(
    scores: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    users: np.ndarray,
    weighting: Weighting,
) -> dict[str, float | int]:
    """auc, gauc, gauc_users, logloss, samples, positives of one slice of rows (N,)."""
    gauc_value, gauc_users = gauc(scores, labels, users, weighting)
    return {
        "auc": auc(scores, labels),
        "gauc": gauc_value,
        "gauc_users": gauc_users,
        "logloss": logloss(probs, labels),
        "samples": int(labels.size),
        "positives": int(np.count_nonzero(_binary(labels))),
    }


class EvalAccumulator:
    """Collects evaluation batches and computes AUC, GAUC and log loss over all of them.

    `update` copies each batch to CPU numpy (float64 outputs and labels, int64 user ids and
    history lengths), so batches may live on any device. `compute` gathers the rows of all
    ranks when torch.distributed is initialised, so GAUC groups a user's rows across
    batches and ranks, and returns the same dict on every rank.

    from_logits: outputs are logits (AUC/GAUC use them as is, log loss uses their sigmoid);
    otherwise they are probabilities. short_history_max: rows whose history length is
    <= this count as "short", the others as "long" (paper, Figure 6).
    """

    def __init__(
        self,
        from_logits: bool = True,
        short_history_max: int = DEFAULT_SHORT_HISTORY_MAX,
        gauc_weighting: Weighting = "uniform",
    ) -> None:
        if gauc_weighting not in ("uniform", "impressions"):
            raise ValueError(
                f"gauc_weighting must be 'uniform' or 'impressions', got {gauc_weighting!r}"
            )
        self.from_logits = from_logits
        self.short_history_max = short_history_max
        self.gauc_weighting = gauc_weighting
        self.reset()

    def reset(self) -> None:
        """Drop every batch collected so far."""
        self._floats: list[np.ndarray] = []
        self._ints: list[np.ndarray] = []

    def update(
        self,
        outputs: torch.Tensor,
        labels: torch.Tensor,
        users: torch.Tensor,
        history_lengths: torch.Tensor,
    ) -> None:
        """Add one batch: outputs (B,) or (B, 1), labels (B,), users (B,), history_lengths (B,)."""
        columns = (
            _to_numpy(outputs, np.float64),
            _to_numpy(labels, np.float64),
            _to_numpy(users, np.int64),
            _to_numpy(history_lengths, np.int64),
        )
        if len({c.size for c in columns}) != 1:
            raise ValueError(f"batch columns differ in length: {[c.size for c in columns]}")
        self._floats.append(np.stack(columns[:2], axis=1))
        self._ints.append(np.stack(columns[2:], axis=1))

    def _local_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's rows: float64 (N, 2) [output, label] and int64 (N, 2) [user, history]."""
        if not self._floats:
            return np.zeros((0, 2), np.float64), np.zeros((0, 2), np.int64)
        return np.concatenate(self._floats), np.concatenate(self._ints)

    def compute(self, process_group: dist.ProcessGroup | None = None) -> dict[str, Any]:
        """Metrics over every collected row of every rank (a collective when distributed).

        Returns {"auc", "gauc", "gauc_users", "logloss", "samples", "positives",
        "by_activity": {"short": {same keys}, "long": {same keys}}}, NaN where undefined.
        """
        floats, ints = self._local_rows()
        if dist.is_available() and dist.is_initialized():
            floats = _all_gather_rows(floats, process_group)
            ints = _all_gather_rows(ints, process_group)
        scores, labels = floats[:, 0], floats[:, 1]
        users, history = ints[:, 0], ints[:, 1]
        probs = _sigmoid(scores) if self.from_logits else scores
        short = history <= self.short_history_max

        def on(rows: np.ndarray | slice) -> dict[str, float | int]:
            return _metric_dict(
                scores[rows], probs[rows], labels[rows], users[rows], self.gauc_weighting
            )

        return {**on(slice(None)), "by_activity": {"short": on(short), "long": on(~short)}}


def to_jsonable(value: Any) -> Any:
    """A metrics dict (nested dicts/lists, numpy scalars) -> JSON-ready, NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value: Any) -> str:
    """One table cell: '-' for missing/NaN, 4 decimals below 100, thousands separators above."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{value:,}"
    if isinstance(value, float | np.floating):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]] = TABLE_COLUMNS,
) -> str:
    """Fixed-width text table: one line per row dict, columns given as (key, header) pairs.

    Missing keys and NaN show as '-'; text is left-aligned, numbers right-aligned.
    """
    headers = [header for _, header in columns]
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(not isinstance(row.get(key), str) for row in rows) for key, _ in columns]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if is_num else v.ljust(w) for v, w, is_num in zip(values, widths, numeric)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])
