"""Tests of pipeline.metrics against plain references (pairwise AUC, per-user loops)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import (
    EvalAccumulator,
    auc,
    format_table,
    gauc,
    logloss,
    ne,
    to_jsonable,
)
from tests.fixtures import gloo_group


def pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """O(N^2) reference: share of (positive, negative) pairs ordered right, ties 1/2."""
    pos = scores[labels > 0.5]
    neg = scores[labels <= 0.5]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (pos.size * neg.size)


def loop_gauc(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, weighting: str
) -> tuple[float, int]:
    """Per-user Python loop reference for gauc."""
    values, weights = [], []
    for user in np.unique(groups):
        rows = groups == user
        value = pairwise_auc(scores[rows], labels[rows])
        if not math.isnan(value):
            values.append(value)
            weights.append(rows.sum() if weighting == "impressions" else 1.0)
    if not values:
        return math.nan, 0
    return float(np.dot(values, weights) / np.sum(weights)), len(values)


def random_rows(seed: int, n: int, users: int, levels: int = 7) -> dict[str, np.ndarray]:
    """n rows with tied scores (few levels), binary labels, user ids and history lengths."""
    rng = np.random.default_rng(seed)
    return {
        "scores": rng.integers(-levels, levels, n) / 4.0,  # exact in float32
        "labels": (rng.random(n) < 0.35).astype(np.float64),
        "users": rng.integers(0, users, n),
        "history": rng.integers(0, 25, n),
    }


def reference_metrics(rows: dict[str, np.ndarray], short_max: int = 10) -> dict[str, Any]:
    """What EvalAccumulator(from_logits=True).compute() must return, from the references."""

    def on(mask: np.ndarray) -> dict[str, Any]:
        s, y, u = rows["scores"][mask], rows["labels"][mask], rows["users"][mask]
        value, users = loop_gauc(s, y, u, "uniform")
        probs = 1.0 / (1.0 + np.exp(-s))
        return {
            "auc": pairwise_auc(s, y),
            "gauc": value,
            "gauc_users": users,
            "logloss": logloss(probs, y),
            "ne": ne(probs, y),
            "samples": int(mask.sum()),
            "positives": int(y.sum()),
        }

    short = rows["history"] <= short_max
    everything = np.ones_like(short)
    return {**on(everything), "by_activity": {"short": on(short), "long": on(~short)}}


def assert_metrics_close(got: Any, want: Any) -> None:
    """Nested dicts equal, floats to 1e-9 relative, NaN (or None) matching NaN (or None)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_metrics_close(got[key], want[key])
    elif want is None or (isinstance(want, float) and math.isnan(want)):
        assert got is None or math.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-3, 3), st.booleans()),
        min_size=0,
        max_size=40,
    )
)
def test_auc_matches_pairwise_with_ties(pairs: list[tuple[int, bool]]) -> None:
    scores = np.array([p[0] for p in pairs], dtype=np.float64)
    labels = np.array([p[1] for p in pairs], dtype=np.float64)
    assert_metrics_close(auc(scores, labels), pairwise_auc(scores, labels))


def test_auc_edge_cases() -> None:
    assert auc([0.1, 0.9, 0.5], [0, 1, 0]) == 1.0
    assert auc([0.1, 0.9], [1, 0]) == 0.0
    assert auc([0.3, 0.3, 0.3], [0, 1, 0]) == 0.5
    assert math.isnan(auc([0.1, 0.2], [1, 1]))
    assert math.isnan(auc([], []))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(-2, 2), st.booleans()),
        min_size=0,
        max_size=40,
    ),
    st.sampled_from(["uniform", "impressions"]),
)
def test_gauc_matches_loop_property(pairs: list[tuple[int, int, bool]], weighting: str) -> None:
    groups = np.array([p[0] for p in pairs], dtype=np.int64)
    scores = np.array([p[1] for p in pairs], dtype=np.float64)
    labels = np.array([p[2] for p in pairs], dtype=np.float64)
    value, used = gauc(scores, labels, groups, weighting)
    want_value, want_used = loop_gauc(scores, labels, groups, weighting)
    assert used == want_used
    assert_metrics_close(value, want_value)


@pytest.mark.parametrize("weighting", ["uniform", "impressions"])
def test_gauc_matches_loop_on_random_data(weighting: str) -> None:
    rows = random_rows(seed=1, n=600, users=60)
    users = rows["users"] * 1_000_003 - 7  # sparse, negative ids: no dense-id assumption
    value, used = gauc(rows["scores"], rows["labels"], users, weighting)
    want_value, want_used = loop_gauc(rows["scores"], rows["labels"], users, weighting)
    assert used == want_used
    assert value == pytest.approx(want_value, rel=1e-12)


def test_gauc_skips_single_class_users_and_weights() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.6, 0.2, 0.25, 0.3, 0.7])
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    groups = np.array([5, 5, 9, 9, 2, 2, 2, 2])
    # user 5: AUC 1 (2 rows); user 9: positives only, skipped; user 2: 0.25 beats 0.2 only,
    # AUC 1/3 (4 rows).
    assert gauc(scores, labels, groups) == pytest.approx(((1.0 + 1 / 3) / 2, 2))
    assert gauc(scores, labels, groups, "impressions") == pytest.approx(((2 * 1.0 + 4 / 3) / 6, 2))
    assert gauc(scores, np.ones(8), groups)[1] == 0
    assert math.isnan(gauc(scores, np.ones(8), groups)[0])
    with pytest.raises(ValueError):
        gauc(scores, labels, groups, weighting="sessions")  # type: ignore[arg-type]


def test_gauc_matches_torchrec_gauc_metric() -> None:
    gauc_module = pytest.importorskip("torchrec.metrics.gauc")
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 12, 80)
    n = int(counts.sum())
    users = np.repeat(np.arange(counts.size), counts)  # contiguous rows per user
    # distinct, non-zero float32 scores: torchrec breaks ties by sort order and treats 0 as
    # padding; fbgemm's CPU jagged kernels have no float64.
    scores = rng.permutation(np.arange(1, n + 1, dtype=np.float32)) / n
    labels = (rng.random(n) < 0.4).astype(np.float32)
    states = gauc_module.get_auc_states(
        labels=torch.from_numpy(labels)[None],
        predictions=torch.from_numpy(scores)[None],
        weights=torch.ones(1, n),
        num_candidates=torch.from_numpy(counts),
    )
    used = int(states["num_samples"].item())
    value, ours_used = gauc(scores, labels, users)
    assert ours_used == used
    assert value == pytest.approx(states["auc_sum"].item() / used, rel=1e-5)


def test_logloss_matches_formula_and_clips() -> None:
    probs = np.array([0.9, 0.2, 0.5, 1.0, 0.0])
    labels = np.array([1.0, 0.0, 1.0, 1.0, 1.0])
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    manual = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    assert logloss(probs, labels) == pytest.approx(manual, rel=1e-12)
    assert math.isfinite(logloss([0.0], [1.0]))
    assert math.isnan(logloss([], []))


def feed(acc: EvalAccumulator, rows: dict[str, np.ndarray], batch: int) -> None:
    """Add `rows` to `acc` as torch batches of `batch` rows, outputs shaped (B, 1)."""
    for start in range(0, rows["scores"].size, batch):
        part = slice(start, start + batch)
        acc.update(
            torch.from_numpy(rows["scores"][part]).float()[:, None],
            torch.from_numpy(rows["labels"][part]),
            torch.from_numpy(rows["users"][part]).int(),
            torch.from_numpy(rows["history"][part]),
        )


def test_accumulator_over_batches_equals_one_shot() -> None:
    rows = random_rows(seed=2, n=500, users=40)
    acc = EvalAccumulator()
    feed(acc, rows, batch=64)
    got = acc.compute()
    assert_metrics_close(got, reference_metrics(rows))
    probs = 1.0 / (1.0 + np.exp(-rows["scores"]))
    assert got["auc"] == pytest.approx(auc(rows["scores"], rows["labels"]))
    assert got["logloss"] == pytest.approx(logloss(probs, rows["labels"]))
    acc.reset()
    assert acc.compute()["samples"] == 0


def test_accumulator_probabilities_and_threshold() -> None:
    rows = random_rows(seed=4, n=300, users=30)
    rows["scores"] = 1.0 / (1.0 + np.exp(-rows["scores"]))
    acc = EvalAccumulator(from_logits=False, short_history_max=3, gauc_weighting="impressions")
    feed(acc, rows, batch=100)
    got = acc.compute()
    short = rows["history"] <= 3
    assert got["by_activity"]["short"]["samples"] == int(short.sum())
    assert got["logloss"] == pytest.approx(logloss(rows["scores"], rows["labels"]))
    want = loop_gauc(
        rows["scores"][~short], rows["labels"][~short], rows["users"][~short], "impressions"
    )
    long = got["by_activity"]["long"]
    assert (long["gauc"], long["gauc_users"]) == pytest.approx(want)


def test_to_jsonable_and_format_table() -> None:
    d = {"auc": math.nan, "n": np.int64(3), "x": np.float32(0.5), "by": {"s": [math.inf, 1]}}
    out = to_jsonable(d)
    assert out == {"auc": None, "n": 3, "x": 0.5, "by": {"s": [None, 1]}}
    json.dumps(out, allow_nan=False)
    table = format_table(
        [
            {
                "model": "dmf",
                "auc": 0.71234,
                "gauc": 0.65,
                "logloss": 0.4,
                "samples_per_s": 12345.6,
            },
            {"model": "din-baseline", "auc": math.nan, "gauc": None, "logloss": 0.41},
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["model", "AUC", "GAUC", "logloss", "samples/s"]
    assert lines[2].split() == ["dmf", "0.7123", "0.6500", "0.4000", "12,346"]
    assert lines[3].split() == ["din-baseline", "-", "-", "0.4100", "-"]
    assert len({len(line) for line in lines[:3]}) == 1


def _distributed_worker(rank: int, world: int, init: str, out: str, rows: dict) -> None:
    """Rank `rank` of a gloo group: every other row (users split across ranks), in batches."""
    with gloo_group(rank, world, init):
        mine = {k: v[rank::world] for k, v in rows.items()}
        acc = EvalAccumulator()
        feed(acc, mine, batch=37 + 20 * rank)
        lonely = EvalAccumulator()  # only rank 0 holds rows
        if rank == 0:
            feed(lonely, rows, batch=100)
        result = {"split": acc.compute(), "lonely": lonely.compute()}
        Path(out, f"rank{rank}.json").write_text(json.dumps(to_jsonable(result)))


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_two_rank_gloo_gather_equals_single_process(tmp_path: Path) -> None:
    rows = random_rows(seed=5, n=401, users=25)
    init = f"file://{tmp_path / 'rendezvous'}"
    ctx = mp.start_processes(
        _distributed_worker,
        args=(2, init, str(tmp_path), rows),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 150
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.terminate()
            pytest.fail("2-rank gloo workers did not finish in time")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    want = to_jsonable(reference_metrics(rows))
    assert_metrics_close(results[0]["split"], want)
    assert_metrics_close(results[0]["lonely"], want)
    assert (
        results[0]["split"]["gauc_users"]
        == loop_gauc(rows["scores"], rows["labels"], rows["users"], "uniform")[1]
    )
