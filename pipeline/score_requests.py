"""Batch scoring job: requests Parquet -> scores Parquet, with an exported scorer.

    python -m pipeline.score_requests --artifact scorer.pt2 --requests R.parquet --out S.parquet

Requests (one row per request): request_id (any type, not null), user (integer),
hist_items (list<integer>, oldest first), candidates (list<integer>). Output: one row per
candidate, request_id, candidate (int64), score (float32 CTR), in request and candidate
order. Every request row is either scored or written to the rejects file (`--rejects`,
default `S.rejects.jsonl`: row, request_id, reason, detail); types are checked, never
coerced (a float id is rejected, not truncated). Reasons:

| reason | rule |
|---|---|
| `bad_type` | a column of the wrong type (user not an integer, a list column not list<integer>) |
| `missing_request_id` / `missing_user` / `missing_history` / `missing_candidates` | null |
| `no_candidates` | an empty candidate list |
| `null_id` | a null inside hist_items or candidates |
| `padding_id` | id 0 (padding, never a real id) as user, history item or candidate |
| `id_out_of_range` | an id outside the artifact's tables (map unknown raw ids to 1, OOV); for an artifact with managed collisions a user id at or above its `input_id_space` (2^62) |
| `history_too_long` | more history items than the model was trained with (`max_history`) |
| `missing_times` | the artifact reads behaviour times (serving.json `needs_times`: DMAE) and the row has no `hist_ts_delta` (no such column: every row) |
| `bad_time` | `hist_ts_delta` not list<integer or float>, or a null, NaN, infinite or negative value |
| `times_misaligned` | `hist_ts_delta` has not one entry per `hist_items` item |
| `bad_context` | a context column (below) null, of the wrong type, out of its table or not finite |

Context columns: an artifact of a model whose feature schema has event (context)
features lists them in serving.json's `context` (docs/feature-schema.md): one integer
column per sparse one (its prepared index, 1 for unknown) and one float column per dense
one (the raw value; the scorer applies the schema's transform). They are set in the state
(`state["context"]`, `state["context_dense"]`) between `encode_user` and `score`; the
user's features come from the artifact's tables, the candidates' per candidate.

Managed collisions (an artifact whose serving.json has `managed_collisions`): `user` is a
raw id, any integer in [1, input_id_space), looked up in the artifact's user id map (ids
never admitted at training score with the table's miss row); history items and
candidates are raw item ids too, mapped likewise, and must be below `num_items` (the
multimodal table is indexed by them).

Behaviour times (only for an artifact with `needs_times`; ignored otherwise): the column
`hist_ts_delta`, list<integer or float>, aligned with hist_items, the request's time minus
each behaviour's in seconds (the prepared data's column of the same name).

The user side (`encode_user`) is computed once per request; the candidates are scored in
the scorer's batches. The artifact may be of any format of pipeline/artifact.py (`pt2`,
`aoti`, `torchscript`; serving.json says which); its checksums are verified before it is
loaded (`load_artifact`). Needs torch, pyarrow, `pipeline.artifact` and
`data_prep.integrity` (both torch and the standard library only), no models/ code, so it
runs wherever the artifact is deployed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from data_prep.integrity import atomic_file
from pipeline.artifact import (
    METADATA,
    ArtifactError,
    load_artifact,
    payload_checksums,
    read_metadata,
    retain_freed_memory,
    table_sizes,
    verify_artifact,
)

REQUEST_COLUMNS = ("request_id", "user", "hist_items", "candidates")
TIMES_COLUMN = "hist_ts_delta"  # read when the artifact's model reads times (DMAE)
PAD = 0
OOV_HINT = "map unknown raw ids to 1 (out of vocabulary) with the prepared data's vocab"
# An artifact with managed collisions (serving.json `managed_collisions`) maps raw ids.
MC_USER_HINT = "raw user ids of this artifact (managed collisions) lie below its input_id_space"
MC_ITEM_HINT = (
    "raw item ids of this artifact (managed collisions) index its multimodal table: an item "
    "without a multimodal vector cannot be scored"
)

__all__ = [
    "METADATA",
    "ArtifactError",
    "RequestError",
    "load_artifact",
    "payload_checksums",
    "read_metadata",
    "run",
    "score_table",
    "validate",
    "verify_artifact",
]


class RequestError(ValueError):
    """A request that cannot be scored (strict mode), or a requests file that cannot be read."""


# --------------------------------------------------------------------- requests
def _integer_list(kind: pa.DataType) -> bool:
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_integer(
        kind.value_type
    )


def _flat(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """list column (N,) -> (flat values int64 (V,), parent row (V,), value null (V,), row
    lengths (N,)); null lists have length 0 here (they are rejected apart)."""
    values = pc.list_flatten(column)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = values.is_null().to_numpy(zero_copy_only=False)
    flat = values.fill_null(0).to_numpy(zero_copy_only=False)
    if flat.dtype == np.uint64:  # ids above int64 are out of range anyway
        flat = np.where(flat > np.iinfo(np.int64).max, -1, flat)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    return flat.astype(np.int64), parents, nulls, lengths.astype(np.int64)


class _Rejects:
    """First reason per row wins (checks run in the order of the docstring's table)."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, "", dtype=object)
        self.detail = np.full(n, "", dtype=object)

    def add(self, rows: np.ndarray, reason: str, detail) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        for row in np.unique(rows):
            if not self.reason[row]:
                self.reason[row] = reason
                self.detail[row] = detail(int(row)) if callable(detail) else detail

    @property
    def bad(self) -> np.ndarray:
        return self.reason != ""


def _check_ids(
    rejects: _Rejects,
    name: str,
    flat,
    parents,
    nulls,
    size: int,
    hint: str = OOV_HINT,
) -> None:
    rejects.add(parents[nulls], "null_id", f"a null {name}")
    ok = ~nulls
    pad = ok & (flat == PAD)
    rejects.add(parents[pad], "padding_id", f"{name} 0 is the padding id, never a real one")
    out = ok & ((flat < 0) | (flat >= size))
    first_bad = {}
    for i in np.flatnonzero(out)[::-1]:
        first_bad[int(parents[i])] = int(flat[i])
    rejects.add(
        parents[out],
        "id_out_of_range",
        lambda row: f"{name} id {first_bad[row]} is outside the table [0, {size}); {hint}",
    )


def _check_times(
    requests: pa.Table, rejects: _Rejects, hist_lengths: np.ndarray
) -> np.ndarray | None:
    """The behaviour times (V,) float32 aligned with the flat history, or None when every
    row is rejected; rows without usable times are added to `rejects`."""
    n = requests.num_rows
    if TIMES_COLUMN not in requests.column_names:
        rejects.add(
            np.arange(n), "missing_times",
            f"the artifact's model reads the behaviours' times: add {TIMES_COLUMN} "
            "(list<number>, seconds before the request, one per hist_items item)",
        )  # fmt: skip
        return None
    column = requests.column(TIMES_COLUMN).combine_chunks()
    kind = column.type
    if not (
        (pa.types.is_list(kind) or pa.types.is_large_list(kind))
        and (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type))
    ):
        rejects.add(np.arange(n), "bad_time", f"{TIMES_COLUMN} is {kind}, list<number> expected")
        return None
    rejects.add(np.flatnonzero(_null(column)), "missing_times", f"null {TIMES_COLUMN}")
    values = pc.list_flatten(column)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    times = values.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = values.is_null().to_numpy(zero_copy_only=False) | ~np.isfinite(times) | (times < 0)
    rejects.add(parents[bad], "bad_time", f"a null, NaN, infinite or negative {TIMES_COLUMN}")
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    misaligned = np.flatnonzero(~_null(column) & (lengths != hist_lengths))
    rejects.add(
        misaligned, "times_misaligned",
        lambda row: f"{lengths[row]} times for {hist_lengths[row]} history items",
    )  # fmt: skip
    # Aligned with the flat history: rows whose lengths differ are rejected, so give them
    # their history's length of (unused) zeros.
    aligned = np.zeros(int(hist_lengths.sum()), dtype=np.float32)
    hist_off, time_off = np.r_[0, np.cumsum(hist_lengths)], np.r_[0, np.cumsum(lengths)]
    for row in np.flatnonzero(lengths == hist_lengths):
        aligned[hist_off[row] : hist_off[row + 1]] = times[time_off[row] : time_off[row + 1]]
    return aligned


def validate(
    requests: pa.Table,
    num_users: int,
    num_items: int,
    max_history: int | None = None,
    needs_times: bool = False,
    raw_user_ids: bool = False,
) -> tuple[_Rejects, dict[str, Any]]:
    """Check every request row; returns the rejects and the parsed columns (`times`, the
    behaviour times aligned with `hist`, when `needs_times`). raw_user_ids: `num_users`
    is the raw id space of an artifact with managed collisions, not a table's rows."""
    missing = set(REQUEST_COLUMNS) - set(requests.column_names)
    if missing:
        raise RequestError(f"requests lack columns {sorted(missing)}")
    n = requests.num_rows
    rejects = _Rejects(n)
    everyone = np.arange(n)
    columns = {name: requests.column(name).combine_chunks() for name in REQUEST_COLUMNS}
    user_type = columns["user"].type
    types_ok = True
    for name, ok in (
        ("user", pa.types.is_integer(user_type)),
        ("hist_items", _integer_list(columns["hist_items"].type)),
        ("candidates", _integer_list(columns["candidates"].type)),
    ):
        if not ok:
            kind = columns[name].type
            want = "an integer" if name == "user" else "list<integer>"
            rejects.add(everyone, "bad_type", f"{name} is {kind}, {want} expected (not coerced)")
            types_ok = False
    if not types_ok:  # a column of the wrong type: every row is rejected
        return rejects, {}
    rejects.add(np.flatnonzero(_null(columns["request_id"])), "missing_request_id", "null")
    user_null = _null(columns["user"])
    rejects.add(np.flatnonzero(user_null), "missing_user", "null user")
    rejects.add(np.flatnonzero(_null(columns["hist_items"])), "missing_history", "null hist_items")
    cand_null = _null(columns["candidates"])
    rejects.add(np.flatnonzero(cand_null), "missing_candidates", "null candidates")
    cands, cand_rows, cand_nulls, cand_lengths = _flat(columns["candidates"])
    rejects.add(np.flatnonzero(~cand_null & (cand_lengths == 0)), "no_candidates", "empty list")
    users = columns["user"].fill_null(0).to_numpy(zero_copy_only=False)
    if users.dtype == np.uint64:
        users = np.where(users > np.iinfo(np.int64).max, -1, users)
    users = users.astype(np.int64)
    user_hint, item_hint = (MC_USER_HINT, MC_ITEM_HINT) if raw_user_ids else (OOV_HINT, OOV_HINT)
    _check_ids(rejects, "user", users, everyone, user_null, num_users, user_hint)
    hist, hist_rows, hist_nulls, hist_lengths = _flat(columns["hist_items"])
    _check_ids(rejects, "history item", hist, hist_rows, hist_nulls, num_items, item_hint)
    _check_ids(rejects, "candidate", cands, cand_rows, cand_nulls, num_items, item_hint)
    if max_history is not None:
        long = np.flatnonzero(hist_lengths > max_history)
        rejects.add(
            long,
            "history_too_long",
            lambda row: f"{hist_lengths[row]} history items, the model takes at most {max_history}",
        )
    times = _check_times(requests, rejects, hist_lengths) if needs_times else None
    parsed = {
        "times": times,
        "users": users,
        "hist": hist,
        "hist_off": np.r_[0, np.cumsum(hist_lengths)],
        "cands": cands,
        "cand_off": np.r_[0, np.cumsum(cand_lengths)],
    }
    return rejects, parsed


def _null(column: pa.Array) -> np.ndarray:
    return column.is_null().to_numpy(zero_copy_only=False)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def context_arrays(
    requests: pa.Table, context: dict[str, Any] | None, rejects: _Rejects
) -> tuple[np.ndarray, np.ndarray]:
    """The context columns (serving.json `context`) -> (sparse (N, Ks) int64, dense (N, Fd)
    float32); bad rows go to `rejects` (`bad_context`); a missing column is a RequestError."""
    n = requests.num_rows
    context = context or {"sparse": [], "dense": []}
    names = [name for name, _ in context["sparse"]] + list(context["dense"])
    missing = [name for name in names if name not in requests.column_names]
    if missing:
        raise RequestError(f"requests lack the artifact's context columns {missing}")
    sparse = np.ones((n, len(context["sparse"])), dtype=np.int64)
    for k, (name, rows) in enumerate(context["sparse"]):
        column = requests.column(name).combine_chunks()
        if not pa.types.is_integer(column.type):
            rejects.add(
                np.arange(n), "bad_context", f"{name} is {column.type}, an integer expected"
            )
            continue
        values = column.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = (values < 0) | (values >= rows)
        rejects.add(np.flatnonzero(bad), "bad_context",
                    lambda row, name=name, values=values, rows=rows:
                    f"{name} {values[row]} is null or outside its table [0, {rows})")  # fmt: skip
        sparse[:, k] = np.where(bad, 1, values)
    dense = np.zeros((n, len(context["dense"])), dtype=np.float32)
    for k, name in enumerate(context["dense"]):
        column = requests.column(name).combine_chunks()
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            rejects.add(np.arange(n), "bad_context", f"{name} is {column.type}, a number expected")
            continue
        values = column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(values)
        rejects.add(np.flatnonzero(bad), "bad_context", f"{name} is null or not finite")
        dense[:, k] = np.where(bad, 0.0, values)
    return sparse, dense


def score_table(
    scorer: Any,
    requests: pa.Table,
    rejects: list[dict[str, Any]] | None = None,
    max_history: int | None = None,
    context: dict[str, Any] | None = None,
    needs_times: bool = False,
    user_id_space: int | None = None,
) -> pa.Table:
    """Score every valid request of `requests`; returns (request_id, candidate, score).
    needs_times: the artifact's model reads the behaviour times (serving.json; DMAE).
    user_id_space: serving.json's `managed_collisions.input_id_space`: users are raw ids
    below it (the scorer maps them), not rows of the user table.

    A request that cannot be scored is appended to `rejects` (row, request_id, reason,
    detail); without a `rejects` list the first one raises RequestError naming it.
    """
    num_items, num_users = table_sizes(scorer)
    raw_users = user_id_space is not None
    if raw_users:
        num_users = int(user_id_space)
    found, parsed = validate(
        requests, num_users, num_items, max_history, needs_times, raw_user_ids=raw_users
    )
    context_sparse, context_dense = context_arrays(requests, context, found)
    with_context = bool(context) and bool(context["sparse"] or context["dense"])
    for row in np.flatnonzero(found.bad):
        request_id = requests.column("request_id")[int(row)].as_py()
        entry = {
            "row": int(row),
            "request_id": _jsonable(request_id),
            "reason": found.reason[row],
            "detail": found.detail[row],
        }
        if rejects is None:
            raise RequestError(
                f"request row {row} (request_id {request_id!r}): {entry['detail']} "
                f"[{entry['reason']}]"
            )
        rejects.append(entry)
    good = np.flatnonzero(~found.bad)
    ids = requests.column("request_id").combine_chunks()
    if not len(good):
        return pa.table(
            {
                "request_id": pa.array([], ids.type),
                "candidate": pa.array([], pa.int64()),
                "score": pa.array([], pa.float32()),
            }
        )
    users, hist, hist_off = parsed["users"], parsed["hist"], parsed["hist_off"]
    cands, cand_off = parsed["cands"], parsed["cand_off"]
    hist_t, cands_t = torch.from_numpy(hist), torch.from_numpy(cands)
    out_cands, out_scores, out_rows = [], [], []
    with torch.inference_mode():
        for i in good:
            lo, hi = cand_off[i], cand_off[i + 1]
            args = [hist_t[hist_off[i] : hist_off[i + 1]], torch.tensor(users[i])]
            if needs_times:
                args.append(torch.from_numpy(parsed["times"][hist_off[i] : hist_off[i + 1]]))
            state = scorer.encode_user(*args)
            if with_context:  # the request's context features (module docstring)
                state["context"] = torch.from_numpy(context_sparse[i])
                state["context_dense"] = torch.from_numpy(context_dense[i])
            out_scores.append(scorer.score(state, cands_t[lo:hi]).numpy().astype(np.float32))
            out_cands.append(cands[lo:hi])
            out_rows.append(np.full(hi - lo, i, dtype=np.int64))
    return pa.table(
        {
            "request_id": ids.take(pa.array(np.concatenate(out_rows))),
            "candidate": pa.array(np.concatenate(out_cands)),
            "score": pa.array(np.concatenate(out_scores)),
        }
    )


def run(
    artifact: Path,
    requests: Path,
    out: Path,
    threads: int | None = None,
    rejects_path: Path | None = None,
    strict: bool = False,
    retain_memory: bool = False,
) -> dict:
    """Score a requests file into `out` (and its rejects into `rejects_path`, by default
    OUT.rejects.jsonl); returns counts and throughput. Outputs are written atomically.
    retain_memory: keep freed memory in the process between requests
    (pipeline.artifact.retain_freed_memory; glibc)."""
    if retain_memory:
        retain_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    scorer, metadata = load_artifact(artifact)
    try:
        table = pq.read_table(requests)
    except (OSError, pa.ArrowException) as error:
        raise RequestError(f"{requests}: not a readable Parquet file ({error})") from None
    rejected: list[dict[str, Any]] | None = None if strict else []
    start = time.perf_counter()
    result = score_table(
        scorer,
        table,
        rejected,
        metadata.get("max_history"),
        metadata.get("context"),
        bool(metadata.get("needs_times")),
        (metadata.get("managed_collisions") or {}).get("input_id_space"),
    )
    elapsed = time.perf_counter() - start
    rejected = rejected or []
    rejects_path = rejects_path or out.with_name(out.stem + ".rejects.jsonl")
    with atomic_file(out) as tmp:
        pq.write_table(result, tmp)
    with atomic_file(rejects_path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for entry in rejected:
                f.write(json.dumps({"file": requests.name, **entry}, ensure_ascii=False) + "\n")
    scored = table.num_rows - len(rejected)
    return {
        "requests": table.num_rows,
        "scored": scored,
        "rejected": dict(sorted(Counter(e["reason"] for e in rejected).items())),
        "candidates": result.num_rows,
        "seconds": elapsed,
        "requests_per_s": scored / max(elapsed, 1e-9),
        "rejects_path": str(rejects_path),
    }


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="pipeline.export output")
    parser.add_argument("--requests", type=Path, required=True, help="requests Parquet file")
    parser.add_argument("--out", type=Path, required=True, help="scores Parquet file")
    parser.add_argument("--rejects", type=Path, default=None, help="(OUT.rejects.jsonl)")
    parser.add_argument("--threads", type=_positive, default=None, help="torch threads")
    parser.add_argument("--strict", action="store_true", help="fail at the first bad request")
    parser.add_argument(
        "--malloc",
        choices=("retain", "default"),
        default="default",
        help="retain (recommended for a serving process): keep freed memory in the process "
        "between requests (glibc mallopt), so large temporaries are not faulted in again per "
        "request; default: glibc's behaviour",
    )
    args = parser.parse_args(argv)
    try:
        stats = run(
            args.artifact, args.requests, args.out, args.threads, args.rejects, args.strict,
            retain_memory=args.malloc == "retain",
        )  # fmt: skip
    except (ArtifactError, RequestError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rejected = sum(stats["rejected"].values())
    print(
        f"read {stats['requests']} requests: scored {stats['scored']} ({stats['candidates']} "
        f"candidates) in {stats['seconds']:.2f}s ({stats['requests_per_s']:.1f} requests/s) -> "
        f"{args.out}; rejected {rejected} {stats['rejected'] or ''} -> {stats['rejects_path']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
