"""Offline evaluation metrics for CTR prediction: AUC, GAUC, log loss, NE.

All metric functions take 1-d numpy arrays of equal length N (anything `np.asarray`
accepts). Labels are binary: a label > 0.5 is a positive. Undefined values are NaN
(AUC with one class only, GAUC with no group holding both classes, log loss of nothing);
`to_jsonable` writes them as JSON null.

- `auc`: exact ROC AUC, ties counted as one half (Mann-Whitney U with average ranks).
- `gauc`: AUC per group (user), averaged over the groups holding both classes, either
  uniformly (one vote per user, as torchrec's GAUCMetric) or by the group's sample count
  (the DIN paper). One sort, no Python loop over groups.
- `ne`: normalized entropy, the log loss divided by the entropy of the base click rate
  (the metric torchrec's `NEMetric` and industry report; below 1 beats predicting the
  average rate).
- `EvalAccumulator`: collects batches of model outputs on any device and computes all of
  the above overall and split by history length. Across ranks (torch.distributed
  initialised) no rank gathers every row: for GAUC each row is sent to the rank that owns
  its user (a hash of the user id), which computes that user's AUC once; for the exact AUC
  rows are range-partitioned by score (ties on one rank) and each rank's Mann-Whitney sum
  is combined with the negatives ranked below it; log loss and NE are sums. Each rank
  holds about 1/world of the rows, and every rank returns the same dict.
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


def _u_statistic(scores: np.ndarray, positive: np.ndarray) -> tuple[float, int, int]:
    """Mann-Whitney U of the positives over the negatives (pairs ordered right, ties 1/2).

    scores float64 (N,), positive bool (N,). Returns (U, positives, negatives); the AUC is
    U / (positives * negatives). O(N log N).
    """
    n = scores.size
    positives = int(np.count_nonzero(positive))
    if n == 0 or positives in (0, n):
        return 0.0, positives, n - positives
    order = np.argsort(scores)  # tied scores get one average rank, so order among them is moot
    s_sorted = scores[order]
    new_block = np.empty(n, dtype=bool)
    new_block[0] = True
    np.not_equal(s_sorted[1:], s_sorted[:-1], out=new_block[1:])
    rank_sum = float(_average_ranks(new_block)[positive[order]].sum())
    return rank_sum - positives * (positives + 1.0) / 2.0, positives, n - positives


def auc(scores: Any, labels: Any) -> float:
    """Exact ROC AUC of scores (N,) against binary labels (N,); ties count one half.

    O(N log N). NaN when only one class (or nothing) is present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary(labels)
    if s.size != y.size:
        raise ValueError(f"scores has {s.size} rows, labels {y.size}")
    u, positives, negatives = _u_statistic(s, y)
    return u / (positives * negatives) if positives and negatives else math.nan


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
    total, weight, used = _gauc_sums(scores, labels, groups, weighting)
    return (total / weight if used else math.nan), used


def _gauc_sums(
    scores: Any, labels: Any, groups: Any, weighting: Weighting = "uniform"
) -> tuple[float, float, int]:
    """(sum of weight x per-group AUC, sum of weights, groups used) over the groups holding
    both classes: the parts of `gauc` that add up across disjoint sets of groups."""
    if weighting not in ("uniform", "impressions"):
        raise ValueError(f"weighting must be 'uniform' or 'impressions', got {weighting!r}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary(labels)
    g = np.asarray(groups).reshape(-1)
    if not s.size == y.size == g.size:
        raise ValueError(f"lengths differ: scores {s.size}, labels {y.size}, groups {g.size}")
    if s.size == 0:
        return 0.0, 0.0, 0
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
        return 0.0, 0.0, 0
    weights = rows[used].astype(np.float64) if weighting == "impressions" else np.ones(n_used)
    return float(np.dot(per_group[used], weights)), float(weights.sum()), n_used


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


def _logloss_sum(probs: np.ndarray, labels: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    p = np.clip(probs, eps, 1.0 - eps)
    return float(-np.sum(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)))


def _base_entropy(label_sum: float, n: float) -> float:
    """Entropy (nats) of always predicting the average label; NaN when it is 0 or 1."""
    if n <= 0:
        return math.nan
    ctr = label_sum / n
    if not 0.0 < ctr < 1.0:
        return math.nan
    return -(ctr * math.log(ctr) + (1.0 - ctr) * math.log1p(-ctr))


def ne(probs: Any, labels: Any, eps: float = LOGLOSS_EPS) -> float:
    """Normalized entropy: log loss / entropy of the base rate mean(labels) (torchrec's NE,
    He et al. 2014). 1.0 = no better than predicting the average rate; lower is better.
    NaN when N == 0 or every label is equal.

    >>> round(ne([0.2, 0.2, 0.2, 0.2, 0.2], [1, 0, 0, 0, 0]), 6)
    1.0
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.size != y.size:
        raise ValueError(f"probs has {p.size} rows, labels {y.size}")
    base = _base_entropy(float(y.sum()), float(y.size))
    return logloss(p, y, eps) / base if math.isfinite(base) else math.nan


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


def _user_owner(users: np.ndarray, world: int) -> np.ndarray:
    """Rank (0..world-1) that owns each user id: a splitmix64 hash of the id, mod world, so
    any id layout (contiguous, strided, clustered) spreads evenly. int64 (N,) -> int64 (N,)."""
    z = users.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z % np.uint64(world)).astype(np.int64)


def _exchange(rows: np.ndarray, dest: np.ndarray, group: dist.ProcessGroup | None) -> np.ndarray:
    """Send each row to rank dest[i] (one all-to-all); returns the rows this rank received.

    rows int64 (N, k) on this rank, dest int64 (N,) in 0..world-1 -> int64 (M, k), the rows
    of every rank addressed here, in rank order.
    """
    device = _collective_device(group)
    world = dist.get_world_size(group)
    k = rows.shape[1]
    order = np.argsort(dest, kind="stable")
    send = torch.from_numpy(np.ascontiguousarray(rows[order]).reshape(-1)).to(device)
    del order
    send_counts = torch.from_numpy(np.bincount(dest, minlength=world).astype(np.int64))
    recv_counts = torch.empty(world, dtype=torch.int64, device=device)
    dist.all_to_all_single(recv_counts, send_counts.to(device), group=group)
    recv_counts = recv_counts.cpu()
    recv = torch.empty(int(recv_counts.sum()) * k, dtype=torch.int64, device=device)
    dist.all_to_all_single(
        recv,
        send,
        output_split_sizes=(recv_counts * k).tolist(),
        input_split_sizes=(send_counts * k).tolist(),
        group=group,
    )
    del send
    return recv.cpu().numpy().reshape(-1, k)


SPLITTER_SAMPLES = 64  # score samples per rank for the range partition of the exact AUC


def _score_ranges(scores: np.ndarray, group: dist.ProcessGroup | None) -> np.ndarray:
    """world-1 increasing cut points that split every rank's scores into world ranges of
    about equal size: weighted quantiles of SPLITTER_SAMPLES order statistics per rank
    (one all_gather). The same array on every rank."""
    device = _collective_device(group)
    world = dist.get_world_size(group)
    n, k = scores.size, SPLITTER_SAMPLES
    sample = np.zeros((2, k), np.float64)  # values, weights (0 for an empty rank)
    if n:
        sample[0] = np.sort(scores)[((np.arange(k) + 0.5) * n / k).astype(np.int64)]
        sample[1] = n / k
    local = torch.from_numpy(sample).to(device)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    gathered = np.concatenate([p.cpu().numpy() for p in parts], axis=1)
    order = np.argsort(gathered[0], kind="stable")
    values, cumulative = gathered[0][order], np.cumsum(gathered[1][order])
    targets = cumulative[-1] * np.arange(1, world) / world
    return values[np.minimum(np.searchsorted(cumulative, targets), values.size - 1)]


SLICES = ("all", "short", "long")
# Per slice, the parts every rank adds up: log loss sum, label sum, rows, positive rows;
# GAUC's weighted sum, weight sum, users; the AUC's U, positives, negatives.
_SUMS, _GAUC, _AUC = slice(0, 4), slice(4, 7), slice(7, 10)
_STATS = 10


def _metrics_of(per_rank: np.ndarray) -> dict[str, float | int]:
    """One slice's metrics from every rank's stats, float64 (world, _STATS), ranks in score
    order for the AUC (rank r holds the r-th score range)."""
    logloss_sum, label_sum, samples, positives = per_rank[:, _SUMS].sum(axis=0)
    gauc_sum, gauc_weight, gauc_users = per_rank[:, _GAUC].sum(axis=0)
    u, pos, neg = per_rank[:, _AUC].T
    negatives_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    pairs = pos.sum() * neg.sum()
    return {
        "auc": float((u + pos * negatives_below).sum() / pairs) if pairs else math.nan,
        "gauc": float(gauc_sum / gauc_weight) if gauc_users else math.nan,
        "gauc_users": int(gauc_users),
        "logloss": float(logloss_sum / samples) if samples else math.nan,
        "ne": (
            float(logloss_sum / samples / _base_entropy(label_sum, samples))
            if math.isfinite(_base_entropy(label_sum, samples))
            else math.nan
        ),
        "samples": int(samples),
        "positives": int(positives),
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

        Returns {"auc", "gauc", "gauc_users", "logloss", "ne", "samples", "positives",
        "by_activity": {"short": {same keys}, "long": {same keys}}}, NaN where undefined,
        the same on every rank. Across ranks rows are routed, not gathered (module
        docstring): each rank holds about 1/world of them at a time.
        """
        floats, ints = self._local_rows()
        self._floats, self._ints = [floats], [ints]  # one copy of the rows, not two
        scores, labels = floats[:, 0], floats[:, 1]
        users, history = ints[:, 0], ints[:, 1]
        probs = _sigmoid(scores) if self.from_logits else scores
        short = history <= self.short_history_max
        del history
        positive = _binary(labels)
        stats = np.zeros((len(SLICES), _STATS), np.float64)
        for i, mask in enumerate(_slice_masks(short)):
            y = labels if mask is None else labels[mask]
            p = probs if mask is None else probs[mask]
            stats[i, _SUMS] = (_logloss_sum(p, y), y.sum(), y.size, np.count_nonzero(y > 0.5))
        del probs, labels
        flags = positive.astype(np.int64) | (short.astype(np.int64) << 1)
        del positive, short
        group = process_group
        world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1

        # GAUC: every row to the rank owning its user; that rank computes the user's AUC.
        if world > 1:
            routed = _exchange(
                np.stack([scores.view(np.int64), users, flags], axis=1),
                _user_owner(users, world),
                group,
            )
            g_scores, g_users, g_flags = routed[:, 0].view(np.float64), routed[:, 1], routed[:, 2]
        else:
            g_scores, g_users, g_flags = scores, users, flags
        del users
        for i, mask in enumerate(_slice_masks((g_flags & 2) > 0)):
            pick = slice(None) if mask is None else mask
            stats[i, _GAUC] = _gauc_sums(
                g_scores[pick], (g_flags[pick] & 1) > 0, g_users[pick], self.gauc_weighting
            )
        del g_scores, g_users, g_flags
        if world > 1:
            del routed

        # Exact AUC: rows range-partitioned by score (equal scores on one rank).
        if world > 1:
            cuts = _score_ranges(scores, group)
            routed = _exchange(
                np.stack([scores.view(np.int64), flags], axis=1),
                np.searchsorted(cuts, scores, side="right").astype(np.int64),
                group,
            )
            del scores, flags
            a_scores, a_flags = routed[:, 0].view(np.float64), routed[:, 1]
        else:
            a_scores, a_flags = scores, flags
        for i, mask in enumerate(_slice_masks((a_flags & 2) > 0)):
            pick = slice(None) if mask is None else mask
            stats[i, _AUC] = _u_statistic(a_scores[pick], (a_flags[pick] & 1) > 0)
        del a_scores, a_flags

        per_rank = _all_gather_stats(stats, group) if world > 1 else stats[None]
        result = {name: _metrics_of(per_rank[:, i]) for i, name in enumerate(SLICES)}
        return {**result["all"], "by_activity": {"short": result["short"], "long": result["long"]}}


def _slice_masks(short: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Row masks of SLICES: None (every row), short history, long history."""
    return None, short, ~short


def _all_gather_stats(stats: np.ndarray, group: dist.ProcessGroup | None) -> np.ndarray:
    """Every rank's stats (S, _STATS) -> (world, S, _STATS), in rank order, on every rank."""
    device = _collective_device(group)
    local = torch.from_numpy(stats).to(device)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return np.stack([p.cpu().numpy() for p in parts])


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
