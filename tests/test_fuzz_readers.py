"""Property-based fuzzing of every reader of outside input (hypothesis, derandomized).

Random corruptions of valid inputs (bytes flipped, cut, inserted; values swapped for
hostile ones: NaN, 2**70, huge ids, deep nesting, nulls, wrong types) never crash a
reader, and every record read is either used or rejected with a reason:

- Amazon reviews and metadata (JSON lines / Python literals, gzip or plain);
- the logs job's CSV and Parquet batches;
- the whole Amazon and logs jobs (a few examples each): a finished job satisfies
  read = used + rejected and its folder verifies; a refused one raises a DataPrepError
  naming the input and leaves nothing behind;
- score_requests: every request row is scored or rejected.

Small limits (ids of 8 characters, lines of 300 bytes, depth 4) make the bounds reachable
with small examples. Deterministic: `derandomize=True`, no example database.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from data_prep.amazon import read_meta, read_reviews
from data_prep.embed import EmbedSettings
from data_prep.integrity import staging_folder
from data_prep.limits import Limits
from data_prep.logs_job import load_items, parse_batch
from data_prep.manifest import verify_folder
from data_prep.rejects import DataPrepError, InputError, RejectLog
from data_prep.tables import iter_batches
from data_prep.vocab import Vocab
from pipeline import export, score_requests
from pipeline.data import PreparedData
from tests.fixtures import write_prepared
from tests.test_data_prep_amazon import META, REVIEWS
from tests.test_data_prep_logs import CSV_LINES, write_items

LIMITS = Limits(
    max_id_length=8, max_line_bytes=300, max_depth=4, min_timestamp=0, max_timestamp=10**10
)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JOBS = settings(FUZZ, max_examples=15)

HOSTILE_VALUES = [
    b"NaN", b"Infinity", b"-Infinity", b"1e300", b"-1", b"1180591620717411303424", b"1.5",
    b'"soon"', b'"123"', b"null", b"true", b"[]", b"{}", b'"' + b"x" * 40 + b'"',
    b"[" * 50 + b"]" * 50, b"9223372036854775808", b"0", b"99999999999",
]  # fmt: skip
HOSTILE_BYTES = [b"\xff", b"\xef\xbb\xbf", b"\r", b"\n", b"\r\n", b"\0", b'"', b",", b"{", b"]"]


@st.composite
def corrupted_lines(draw, lines: list[bytes]) -> list[bytes]:
    """`lines` with a few random corruptions applied."""
    lines = list(lines)
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        kind = draw(st.sampled_from(["flip", "cut", "insert", "value", "long", "dup", "drop"]))
        if kind == "flip" and line:
            j = draw(st.integers(0, len(line) - 1))
            line = line[:j] + bytes([line[j] ^ draw(st.integers(1, 255))]) + line[j + 1 :]
        elif kind == "cut":
            line = line[: draw(st.integers(0, len(line)))]
        elif kind == "insert":
            j = draw(st.integers(0, len(line)))
            line = line[:j] + draw(st.sampled_from(HOSTILE_BYTES)) + line[j:]
        elif kind == "value":  # replace the last value of the record
            cut = max(line.rfind(b":"), line.rfind(b","))
            if cut > 0:
                line = line[: cut + 1] + b" " + draw(st.sampled_from(HOSTILE_VALUES)) + b"}"
        elif kind == "long":  # a long id (beyond the id limit, or the line limit)
            j = draw(st.integers(0, len(line)))
            line = line[:j] + b"A" * draw(st.integers(5, 400)) + line[j:]
        elif kind == "dup":
            lines.insert(i, line)
        elif kind == "drop" and len(lines) > 1:
            lines.pop(i)
            continue
        lines[i] = line
    return lines


def write_text(path: Path, lines: list[bytes], compress: bool, end: bytes = b"\n") -> Path:
    data = end.join(lines) + end
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


# ------------------------------------------------------------------ Amazon readers
@FUZZ
@given(
    lines=corrupted_lines(REVIEWS),
    compress=st.booleans(),
    end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_review_reader_accounts_for_every_line(tmp_path, lines, compress, end):
    path = write_text(tmp_path / ("r.json.gz" if compress else "r.json"), lines, compress, end)
    rejects = RejectLog(None)
    raw, raw_items = read_reviews(
        path, Vocab(["i1", "i2", "i3", "i4", "i5", "i6"]), rejects, LIMITS
    )
    assert rejects.read == len(raw) + sum(rejects.rejected.values())
    assert len(raw_items) == len(raw) and raw.user.dtype.itemsize <= 4 * LIMITS.max_id_length
    assert np.all((raw.ts >= LIMITS.min_timestamp) & (raw.ts <= LIMITS.max_timestamp))


@FUZZ
@given(lines=corrupted_lines(META), compress=st.booleans())
def test_metadata_reader_accounts_for_every_line(tmp_path, lines, compress):
    path = write_text(tmp_path / ("m.json.gz" if compress else "m.json"), lines, compress)
    rejects = RejectLog(None)
    meta = read_meta(path, rejects, LIMITS)
    assert rejects.read == len(meta.asin) + sum(rejects.rejected.values())
    assert all(len(a) <= LIMITS.max_id_length for a in meta.asin)


@FUZZ
@given(cut=st.integers(10, 400))
def test_a_truncated_gzip_is_an_input_error_naming_the_file(tmp_path, cut):
    path = write_text(tmp_path / "r.json.gz", REVIEWS * 20, compress=True)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, len(data) - cut)])
    rejects = RejectLog(None)
    try:
        read_reviews(path, Vocab(["i1"]), rejects, LIMITS)
    except InputError as error:
        assert "r.json.gz" in str(error)


# ------------------------------------------------------------------ logs readers
def _parse_logs(path: Path) -> tuple[RejectLog, int]:
    rejects = RejectLog(None)
    used = 0

    def bad(line: int, reason: str, excerpt: str) -> None:
        rejects.add_read(1)
        rejects.reject(path.name, line, reason, excerpt)

    for batch in iter_batches(path, 7, bad, LIMITS.max_line_bytes):
        raw, _ = parse_batch(
            batch, [path.name], 0, dict(DEFAULT_COLUMNS), Vocab(list("abcd")), rejects, LIMITS
        )
        used += len(raw)
        assert np.all(raw.line >= 2)  # line 1 is the header
    return rejects, used


DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "click": "click"}


@FUZZ
@given(lines=corrupted_lines(CSV_LINES[1:]), end=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_csv_reader_accounts_for_every_row(tmp_path, lines, end):
    path = write_text(tmp_path / "logs.csv", [CSV_LINES[0], *lines], compress=False, end=end)
    try:
        rejects, used = _parse_logs(path)
    except InputError as error:  # e.g. the header itself was corrupted away
        assert "logs.csv" in str(error)
        return
    assert rejects.read == used + sum(rejects.rejected.values())


def _column(draw, kind: str, n: int) -> pa.Array:
    if kind == "int":
        values = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(0, 400))
        return pa.array([draw(values) for _ in range(n)], pa.int64())
    if kind == "float":
        values = st.one_of(
            st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 400)
        )
        return pa.array([None if v is None else float(v) for v in (draw(values) for _ in range(n))])
    if kind == "text":
        values = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["a", "b", "u1", "7"]))
        return pa.array([draw(values) for _ in range(n)], pa.string())
    values = st.one_of(st.none(), st.binary(max_size=12), st.sampled_from([b"a", b"\xff", b"12"]))
    return pa.array([draw(values) for _ in range(n)], pa.binary())


@st.composite
def log_tables(draw) -> pa.Table:
    n = draw(st.integers(0, 12))
    kinds = st.sampled_from(["int", "float", "text", "binary"])
    columns = {name: _column(draw, draw(kinds), n) for name in ("user_id", "item_id", "timestamp")}
    if draw(st.booleans()):
        columns["click"] = _column(draw, draw(kinds), n)
    return pa.table(columns)


@FUZZ
@given(table=log_tables())
def test_parquet_batches_account_for_every_row(tmp_path, table):
    path = tmp_path / "logs.parquet"
    pq.write_table(table, path)
    rejects, used = _parse_logs_parquet(path)
    assert rejects.read == used + sum(rejects.rejected.values()) == table.num_rows


def _parse_logs_parquet(path: Path) -> tuple[RejectLog, int]:
    rejects, used = RejectLog(None), 0
    for batch in iter_batches(path, 5):
        raw, _ = parse_batch(
            batch, [path.name], 0, dict(DEFAULT_COLUMNS), Vocab(list("ab")), rejects, LIMITS
        )
        used += len(raw)
        assert np.all((raw.ts >= 0) & (raw.ts <= LIMITS.max_timestamp))
        assert set(np.unique(raw.click)) <= {0, 1}
    return rejects, used


ITEM_CSV = [b"item_id,title,category", b"a,usb cable,x", b'b,"hdmi, long",x', b"c,camera,y",
            b"d,,", b"e,tripod,y"]  # fmt: skip


@FUZZ
@given(lines=corrupted_lines(ITEM_CSV[1:]), end=st.sampled_from([b"\n", b"\r"]))
def test_item_csv_reader_accounts_for_every_row(tmp_path, lines, end):
    path = write_text(tmp_path / "items.csv", [ITEM_CSV[0], *lines], compress=False, end=end)
    rejects = RejectLog(None)
    settings = EmbedSettings(encoder="hashed", hashed_dim=16, cache_dir=None)
    try:
        items = load_items(path, settings, rejects, LIMITS)
    except InputError as error:
        assert "items.csv" in str(error)
        return
    assert rejects.read == len(items.vocab.raw_ids) + sum(rejects.rejected.values())
    assert all(len(i) <= LIMITS.max_id_length for i in items.vocab.raw_ids)


# ------------------------------------------------------------------ whole jobs
def _check_job(run, out: Path) -> None:
    try:
        run()
    except DataPrepError as error:  # refused: says why, names an input, writes nothing
        event(f"refused: {type(error).__name__}")
        assert str(error)
        assert not (out / "manifest.json").exists() and not staging_folder(out).exists()
        return
    event("finished")
    manifest = verify_folder(out, full=True)
    records = manifest["records"]
    assert records["read"] == records["used"] + sum(records["rejected"].values())
    PreparedData(out, verify="full")


@JOBS
@given(reviews=corrupted_lines(REVIEWS), meta=corrupted_lines(META))
def test_amazon_job_accounts_or_refuses(tmp_path_factory, reviews, meta):
    from data_prep.__main__ import main

    tmp = tmp_path_factory.mktemp("amazon")
    paths = write_text(tmp / "r.json.gz", reviews, True), write_text(tmp / "m.json.gz", meta, True)
    out = tmp / "out"
    argv = ["amazon", "--reviews", str(paths[0]), "--meta", str(paths[1]), "--out", str(out),
            "--encoder", "hashed", "--hashed-dim", "16", "--cache-dir", str(tmp / "c"),
            "--max-id-length", "8", "--max-depth", "4"]  # fmt: skip
    _check_job(lambda: main(argv), out)


@JOBS
@given(lines=corrupted_lines(CSV_LINES[1:]))
def test_logs_job_accounts_or_refuses(tmp_path_factory, lines):
    from data_prep.__main__ import main

    tmp = tmp_path_factory.mktemp("logs")
    logs = write_text(tmp / "logs.csv", [CSV_LINES[0], *lines], compress=False)
    items = write_items(tmp / "items.parquet")
    out = tmp / "out"
    argv = ["logs", "--interactions", str(logs), "--items", str(items), "--out", str(out),
            "--max-id-length", "8"]  # fmt: skip
    _check_job(lambda: main(argv), out)


# ------------------------------------------------------------------ score_requests
@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from tests.test_serving import random_model

    tmp = tmp_path_factory.mktemp("artifact")
    data = PreparedData(write_prepared(tmp / "data", num_items=40))
    model = random_model("ta", data.feature_spec(), seed=3)
    return export.load_artifact(export.export_model(model, data, tmp / "scorer.pt"))


ID = st.one_of(st.none(), st.integers(-3, 45), st.integers(-(2**63), 2**63 - 1))


@st.composite
def request_tables(draw) -> pa.Table:
    n = draw(st.integers(0, 8))

    def ids(kind: str) -> pa.Array:
        if kind == "int":
            return pa.array([draw(ID) for _ in range(n)], pa.int64())
        if kind == "float":
            return pa.array([draw(st.one_of(st.none(), st.floats())) for _ in range(n)])
        return pa.array([draw(st.one_of(st.none(), st.text(max_size=3))) for _ in range(n)])

    def lists(kind: str) -> pa.Array:
        if kind == "text":
            return pa.array([draw(st.one_of(st.none(), st.text(max_size=4))) for _ in range(n)])
        element = ID if kind == "int" else st.one_of(st.none(), st.floats())
        rows = [draw(st.one_of(st.none(), st.lists(element, max_size=10))) for _ in range(n)]
        return pa.array(rows, pa.list_(pa.int64() if kind == "int" else pa.float64()))

    kinds = st.sampled_from(["int", "int", "int", "float", "text"])
    return pa.table(
        {
            "request_id": pa.array([draw(st.one_of(st.none(), st.text(max_size=3))) for _ in range(n)], pa.string()),
            "user": ids(draw(kinds)),
            "hist_items": lists(draw(kinds)),
            "candidates": lists(draw(kinds)),
        }
    )  # fmt: skip


@FUZZ
@given(requests=request_tables())
def test_every_request_is_scored_or_rejected(scorer, requests):
    module, info = scorer
    rejects: list[dict] = []
    scores = score_requests.score_table(module, requests, rejects, info["max_history"])
    rejected = {r["row"] for r in rejects}
    assert len(rejected) == len(rejects)
    scored = [i for i in range(requests.num_rows) if i not in rejected]
    candidates = requests.column("candidates").to_pylist()
    assert scores.num_rows == sum(len(candidates[i]) for i in scored)
    assert scores.column("candidate").to_pylist() == [c for i in scored for c in candidates[i]]
    values = scores.column("score").to_pylist()
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
    assert all(r["reason"] and json.dumps(r) for r in rejects)
    assert torch.get_num_threads() >= 1
