"""Batch scoring job: requests Parquet -> scores Parquet, with an exported scorer.

    python -m pipeline.score_requests --artifact scorer.pt --requests R.parquet --out S.parquet

Requests (one row per request): request_id (int64 or string), user (int64), hist_items
(list<int64>, oldest first), candidates (list<int64>). Output: one row per candidate,
request_id, candidate (int64), score (float32 CTR), in request and candidate order.
The user side (`encode_user`) is computed once per request; the candidates are scored
in the scorer's batches. Needs torch and pyarrow only (no models/ or pipeline/ imports),
so it runs wherever the artifact is deployed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REQUEST_COLUMNS = ("request_id", "user", "hist_items", "candidates")


def _lists(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """list<int64> column -> (flat values, offsets (N+1,))."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False).astype(np.int64)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def _check_ids(name: str, ids: np.ndarray, offsets: np.ndarray, size: int, requests: pa.Table):
    """Ids are dense indices (docs/data-format.md): map unknown raw ids to 1 (OOV) first."""
    bad = np.flatnonzero((ids < 0) | (ids >= size))
    if bad.size:
        row = int(np.searchsorted(offsets, bad[0], side="right") - 1)
        request_id = requests.column("request_id")[row].as_py()
        raise ValueError(
            f"request row {row} (request_id {request_id!r}): {name} id {int(ids[bad[0]])} is "
            f"outside the table [0, {size}); {bad.size} such ids in all. Map unknown raw ids "
            f"to 1 (out of vocabulary) with the prepared data's vocab."
        )


def score_table(scorer: torch.jit.ScriptModule, requests: pa.Table) -> pa.Table:
    """Score every request of `requests`; returns (request_id, candidate, score)."""
    missing = set(REQUEST_COLUMNS) - set(requests.column_names)
    if missing:
        raise ValueError(f"requests lack columns {sorted(missing)}")
    users = requests.column("user").to_numpy().astype(np.int64)
    hist, hist_off = _lists(requests.column("hist_items"))
    cands, cand_off = _lists(requests.column("candidates"))
    num_items = int(scorer.item_table.shape[0])
    _check_ids("user", users, np.arange(len(users) + 1), int(scorer.user_table.shape[0]), requests)
    _check_ids("history item", hist, hist_off, num_items, requests)
    _check_ids("candidate", cands, cand_off, num_items, requests)
    scores = np.empty(cands.shape[0], np.float32)
    hist_t, cands_t = torch.from_numpy(hist), torch.from_numpy(cands)
    with torch.inference_mode():
        for i, user in enumerate(users):
            lo, hi = cand_off[i], cand_off[i + 1]
            if lo == hi:
                continue
            state = scorer.encode_user(hist_t[hist_off[i] : hist_off[i + 1]], torch.tensor(user))
            scores[lo:hi] = scorer.score(state, cands_t[lo:hi]).numpy()
    repeats = np.diff(cand_off)
    request_ids = (
        requests.column("request_id")
        .combine_chunks()
        .take(pa.array(np.repeat(np.arange(requests.num_rows), repeats)))
    )
    return pa.table(
        {"request_id": request_ids, "candidate": pa.array(cands), "score": pa.array(scores)}
    )


def run(artifact: Path, requests: Path, out: Path, threads: int | None = None) -> dict:
    """Score a requests file into `out`; returns counts and throughput."""
    if threads:
        torch.set_num_threads(threads)
    scorer = torch.jit.load(str(artifact))
    table = pq.read_table(requests)
    start = time.perf_counter()
    result = score_table(scorer, table)
    elapsed = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(result, out)
    return {
        "requests": table.num_rows,
        "candidates": result.num_rows,
        "seconds": elapsed,
        "requests_per_s": table.num_rows / max(elapsed, 1e-9),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="pipeline.export output")
    parser.add_argument("--requests", type=Path, required=True, help="requests Parquet file")
    parser.add_argument("--out", type=Path, required=True, help="scores Parquet file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    stats = run(args.artifact, args.requests, args.out, args.threads)
    print(
        f"scored {stats['candidates']} candidates of {stats['requests']} requests in "
        f"{stats['seconds']:.2f}s ({stats['requests_per_s']:.1f} requests/s) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
