"""Evaluation across ranks routes rows instead of gathering them (pipeline/metrics.py):
GAUC on the rank that owns each user, the exact AUC over score ranges, NE from sums."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pipeline.metrics import EvalAccumulator, _user_owner, ne, to_jsonable
from tests.fixtures import gloo_group
from tests.test_metrics import (
    assert_metrics_close,
    feed,
    loop_gauc,
    random_rows,
    reference_metrics,
)

WORLD = 2


def test_user_owner_is_balanced_and_stable() -> None:
    users = np.arange(2, 20_002)
    owners = _user_owner(users, 4)
    assert set(np.unique(owners)) == {0, 1, 2, 3}
    assert np.bincount(owners).min() > 0.22 * users.size  # contiguous ids spread evenly
    strided = _user_owner(users * 4, 4)  # ids that are all multiples of the world size
    assert np.bincount(strided, minlength=4).min() > 0.22 * users.size
    assert (_user_owner(users, 4) == owners).all()


def test_ne_matches_torchrec() -> None:
    from torchrec.metrics.ne import compute_ne, get_ne_states

    rng = np.random.default_rng(3)
    probs = rng.uniform(0.01, 0.99, 1000)
    labels = (rng.random(1000) < probs).astype(np.float64)
    states = get_ne_states(
        torch.from_numpy(labels)[None],
        torch.from_numpy(probs)[None],
        torch.ones(1, 1000, dtype=torch.float64),
        1e-12,
    )
    want = compute_ne(
        states["cross_entropy_sum"],
        states["weighted_num_samples"],
        states["pos_labels"],
        states["neg_labels"],
        1e-12,
    )
    assert ne(probs, labels) == pytest.approx(float(want), rel=1e-9)
    assert ne(np.full(10, 0.3), np.r_[np.ones(3), np.zeros(7)]) == pytest.approx(1.0)
    assert math.isnan(ne([0.5, 0.5], [1.0, 1.0]))


def _worker(rank: int, init: str, out: str, cases: dict) -> None:
    with gloo_group(rank, WORLD, init):
        from pipeline.metrics import _exchange

        results = {}
        for name, rows in cases.items():
            # Uneven parts: rank 0 holds two thirds of the rows, every user on both ranks.
            cut = 2 * rows["scores"].size // 3
            part = slice(0, cut) if rank == 0 else slice(cut, None)
            mine = {k: v[part] for k, v in rows.items()}
            acc = EvalAccumulator()
            feed(acc, mine, batch=53)
            results[name] = acc.compute()
            # Where the GAUC rows went: the users this rank received.
            routed = _exchange(
                mine["users"].astype(np.int64)[:, None],
                _user_owner(mine["users"].astype(np.int64), WORLD),
                None,
            )
            results[name + "/received_users"] = sorted(set(routed[:, 0].tolist()))
            results[name + "/received_rows"] = int(routed.shape[0])
        Path(out, f"rank{rank}.json").write_text(json.dumps(to_jsonable(results)))


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_routed_metrics_equal_the_plain_reference_on_two_ranks(tmp_path: Path) -> None:
    sorted_users = random_rows(seed=8, n=600, users=30)
    order = np.argsort(sorted_users["users"], kind="stable")  # a user's rows contiguous,
    sorted_users = {k: v[order] for k, v in sorted_users.items()}  # as the shards keep them
    constant = random_rows(seed=9, n=300, users=20)
    constant["scores"] = np.zeros(300)  # every score tied: one score range holds them all
    cases = {"ties": random_rows(seed=7, n=900, users=45), "sorted": sorted_users}
    cases["constant"] = constant
    ctx = mp.start_processes(
        _worker,
        args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path), cases),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 150
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.terminate()
            pytest.fail("2-rank gloo workers did not finish in time")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for name, rows in cases.items():
        got = [r[name] for r in ranks]
        assert got[0] == got[1]  # the same dict on every rank
        assert_metrics_close(got[0], to_jsonable(reference_metrics(rows)))
        # Computed once: each user counted by one rank only.
        users = loop_gauc(rows["scores"], rows["labels"], rows["users"], "uniform")[1]
        assert got[0]["gauc_users"] == users
        received = [set(r[name + "/received_users"]) for r in ranks]
        assert not received[0] & received[1]
        assert received[0] | received[1] == set(rows["users"].tolist())
        counts = [r[name + "/received_rows"] for r in ranks]
        assert sum(counts) == rows["scores"].size
        assert min(counts) > 0.25 * rows["scores"].size  # about half each, not all on one
    assert ranks[0]["constant"]["auc"] == 0.5
