"""Nothing silently wrong: one regression test (or a few) per case of the reliability issue.

Case numbers follow the issue (docs/reliability.md lists what is guaranteed):
1 atomic outputs, 2 timestamp window, 3 long ids, 4 checksummed checkpoints and artifacts,
5 code-bearing files and confined paths, 6 bad records become rejects, 7 resume fallback,
8 score_requests accounting, 9 input odds and ends and argument checks.
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import shutil
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_prep.__main__ import main as prep
from data_prep.default_job import is_up_to_date, logs_config
from data_prep.integrity import IntegrityError, staging_folder
from data_prep.logs_job import run_logs
from data_prep.manifest import read_manifest, verify_folder
from data_prep.rejects import BadRecordError, InputError
from data_prep.synthetic import SyntheticConfig, write_raw
from pipeline import export, score_requests
from pipeline.checkpoint import Checkpointer, CheckpointError
from pipeline.data import DataError, PreparedData, ShardReader
from tests.fixtures import one_rank_process_group, write_prepared
from tests.test_data_prep_amazon import META, REVIEWS, write_gz
from tests.test_data_prep_logs import CSV_LINES, write_items

ROOT = Path(__file__).resolve().parents[1]
SMALL_LOGS = SyntheticConfig(users=300, items=400, days=6)


def run_logs_cli(logs: Path, items: Path, out: Path, *extra: str) -> dict:
    prep(["logs", "--interactions", str(logs), "--items", str(items), "--out", str(out), *extra])
    return json.loads((out / "manifest.json").read_text())


def run_amazon_cli(reviews: Path, meta: Path, out: Path, *extra: str) -> dict:
    prep(["amazon", "--reviews", str(reviews), "--meta", str(meta), "--out", str(out),
          "--encoder", "hashed", "--cache-dir", str(out.parent / "cache"), *extra])  # fmt: skip
    return json.loads((out / "manifest.json").read_text())


def rejects_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def accounted(manifest: dict) -> bool:
    records = manifest["records"]
    return records["read"] == records["used"] + sum(records["rejected"].values())


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory) -> tuple[Path, Path]:
    return write_raw(SMALL_LOGS, tmp_path_factory.mktemp("raw"))


@pytest.fixture
def csv_inputs(tmp_path) -> tuple[Path, Path]:
    logs = tmp_path / "logs.csv"
    logs.write_bytes(b"\n".join(CSV_LINES) + b"\n")
    return logs, write_items(tmp_path / "items.parquet")


# --------------------------------------------------------------- 1: atomic outputs
KILL_DURING_BUILD = """
import os, sys
import data_prep.partitions as partitions
finished = partitions.BuildTask.run
def run(self):
    finished(self)  # shards of the new run are written, then the job is killed
    os._exit(9)
partitions.BuildTask.run = run
from data_prep.__main__ import main
main(sys.argv[1:])
"""


def test_case1_rerun_killed_midway_leaves_the_previous_folder_intact(small_logs, tmp_path):
    logs, items = small_logs
    out = tmp_path / "prepared"
    first = run_logs_cli(logs, items, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    killed = cli("-c", KILL_DURING_BUILD, "logs", "--interactions", str(logs), "--items",
                 str(items), "--out", str(out), "--max-history", "7")  # fmt: skip
    assert killed.returncode == 9, killed.stderr
    assert staging_folder(out).exists()  # the killed run's work, beside the folder
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing of the killed run is in the folder
    assert verify_folder(out, full=True)["checksum"] == first["checksum"]
    assert PreparedData(out).max_history == 50
    again = run_logs_cli(logs, items, out, "--max-history", "7")
    assert again["max_history"] == 7 and verify_folder(out, full=True) == again
    assert not staging_folder(out).exists()


def test_case1_half_written_or_tampered_folder_is_refused(small_logs, tmp_path, capsys):
    logs, items = small_logs
    out = tmp_path / "prepared"
    manifest = run_logs_cli(logs, items, out)
    shard = out / manifest["splits"]["train"][0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # what a killed writer leaves
    with pytest.raises(
        DataError, match=r"train/part-00000-00000\.parquet: \d+ bytes, the manifest"
    ):
        PreparedData(out)
    assert read_manifest(out) is None
    shard.write_bytes(data)
    mm = np.load(out / "item_mm.npy")
    np.save(out / "item_mm.npy", mm[::-1].copy())  # same size, other content
    PreparedData(out)  # sizes match: the cheap check passes...
    with pytest.raises(DataError, match=r"item_mm\.npy: sha256 differs"):
        PreparedData(out, verify="full")  # ...the full one does not
    checked = cli("-m", "data_prep", "verify", "--data", str(out))
    assert checked.returncode == 1 and "item_mm.npy: sha256 differs" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_case1_default_job_rebuilds_instead_of_skipping_a_damaged_folder(tmp_path):
    out = tmp_path / "default"
    write_raw(SMALL_LOGS, out / "raw")
    config = logs_config(out, SMALL_LOGS)
    run_logs(config, extra_protocol={"generator": SMALL_LOGS.as_dict()})
    assert is_up_to_date(out, config, SMALL_LOGS)
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / manifest["splits"]["test"][0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")  # one byte, same size
    assert not is_up_to_date(out, config, SMALL_LOGS)
    run_logs(config, extra_protocol={"generator": SMALL_LOGS.as_dict()})  # a rerun in place
    assert is_up_to_date(out, config, SMALL_LOGS)
    assert (out / "raw" / "interactions.parquet").exists()  # the inputs beside it survive


def test_case1_rerun_drops_outputs_it_no_longer_produces(csv_inputs, tmp_path):
    out = tmp_path / "out"
    run_logs_cli(*csv_inputs, out)
    assert (out / "valid").is_dir()
    (out / "notes.txt").write_text("mine")
    manifest = run_logs_cli(*csv_inputs, out, "--valid-days", "0")
    assert "valid" not in manifest["splits"] and not (out / "valid").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not ours: left alone


def test_case1_out_may_be_the_current_folder(csv_inputs, tmp_path, monkeypatch):
    out = tmp_path / "here"
    out.mkdir()
    monkeypatch.chdir(out)
    run_logs_cli(*csv_inputs, Path("."))
    assert verify_folder(out, full=True) and not staging_folder(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "items.parquet", "logs.csv"]


def test_case1_an_edited_manifest_is_refused_even_without_a_checksum_table(tmp_path):
    root = write_prepared(tmp_path)  # hand-written: no checksum table, a plain checksum
    PreparedData(root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["counts"]["train"] += 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json: checksum mismatch"):
        PreparedData(root)


def test_case1_reader_refuses_a_shard_with_ids_outside_the_tables(tmp_path):
    data = PreparedData(write_prepared(tmp_path, num_items=30))
    path = data.split_files("train")[0]
    table = pq.read_table(path)
    items = table.column("item").to_numpy().copy()
    items[3] = 10**6
    pq.write_table(table.set_column(1, "item", pa.array(items)), path)
    reader = ShardReader([path], 8, vocab_sizes=data.vocab_sizes)
    with pytest.raises(DataError, match=r"part-00000\.parquet: row group 0: item id 1000000"):
        list(reader.iter_batches())


# --------------------------------------------------------------- 2: timestamps
def test_case2_a_row_far_in_the_future_is_rejected_not_used(csv_inputs, tmp_path):
    logs, items = csv_inputs
    lines = [*CSV_LINES, b"u1,c,32503680000,1,r99", b"u2,a,9223372036854775807,1,r98",
             b"u2,c,-9223372036854775808,1,r97"]  # fmt: skip
    logs.write_bytes(b"\n".join(lines) + b"\n")
    manifest = run_logs_cli(logs, items, tmp_path / "out")
    assert manifest["counts"] == {"train": 5, "valid": 1, "test": 3}  # as without those rows
    assert manifest["records"]["rejected"]["timestamp_out_of_range"] == 3
    found = {(r["line"], r["reason"]) for r in rejects_of(tmp_path / "out")}
    assert {(18, "timestamp_out_of_range"), (20, "timestamp_out_of_range")} <= found
    assert manifest["limits"]["min_timestamp"] == 0
    # The window is a setting: with a later bound the row is used (and takes the test day).
    wide = run_logs_cli(logs, items, tmp_path / "wide", "--max-timestamp", "40000000000")
    assert wide["records"]["rejected"]["timestamp_out_of_range"] == 2
    assert wide["counts"]["valid"] == 0 and wide["counts"]["test"] == 1


def test_case2_float_timestamps_beyond_int64_never_wrap(tmp_path):
    items = write_items(tmp_path / "items.parquet")
    rows = {
        "user_id": ["u1", "u1", "u1", "u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "b", "c", "a", "d", "a", "b", "c"],
        "timestamp": [100.0, 200.0, 2.0**63, 1e300, 172900.0, 150.0, 300.0, 86500.0],
    }
    pq.write_table(pa.table(rows), tmp_path / "logs.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        manifest = run_logs_cli(tmp_path / "logs.parquet", items, tmp_path / "out")
    assert manifest["records"]["rejected"] == {"timestamp_out_of_range": 2}
    assert {r["line"] for r in rejects_of(tmp_path / "out")} == {3, 4}


def test_case2_amazon_future_review_is_rejected(tmp_path):
    reviews = [*REVIEWS, b'{"reviewerID": "A", "asin": "i5", "unixReviewTime": 99999999999}']
    manifest = run_amazon_cli(
        write_gz(tmp_path / "r.json.gz", reviews), write_gz(tmp_path / "m.json.gz", META),
        tmp_path / "out",
    )  # fmt: skip
    assert manifest["records"]["rejected"]["timestamp_out_of_range"] == 1
    assert manifest["counts"] == {"train": 6, "test": 6}


# --------------------------------------------------------------- 3: long ids
def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_case3_one_very_long_id_is_rejected_and_memory_stays_bounded(tmp_path):
    reviews = [
        b'{"reviewerID": "U%d", "asin": "i%d", "unixReviewTime": %d}' % (u, i, 100 + i)
        for u in range(150)
        for i in ((1, 2, 3) if u % 2 else (2, 3, 4))
    ]
    reviews.append(b'{"reviewerID": "%s", "asin": "i1", "unixReviewTime": 5}' % (b"x" * 1_000_000))
    reviews.append(b'{"reviewerID": "A", "asin": "%s", "unixReviewTime": 5}' % (b"y" * 65_536))
    meta = [b"{'asin': 'i%d', 'title': 't%d'}" % (i, i) for i in (1, 2, 3, 4, 5)]
    paths = write_gz(tmp_path / "r.json.gz", reviews), write_gz(tmp_path / "m.json.gz", meta)
    # Fixed-width ids sized by the longest one would take 450 x 4 MB here.
    peak = _peak_mb(lambda: run_amazon_cli(*paths, tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["records"]["rejected"] == {"id_too_long": 2, "item_without_events": 1}
    assert peak < 100, f"peak {peak:.0f} MB"
    table = pa.table(
        {
            "user_id": [f"u{i % 40}" for i in range(400)] + ["z" * 1_000_000],
            "item_id": ["a", "b", "c", "d"] * 100 + ["a"],
            "timestamp": [i * 1000 for i in range(400)] + [5],
        }
    )
    pq.write_table(table, tmp_path / "logs.parquet")
    items = write_items(tmp_path / "items.parquet")
    peak = _peak_mb(lambda: run_logs_cli(tmp_path / "logs.parquet", items, tmp_path / "logs"))
    manifest = json.loads((tmp_path / "logs" / "manifest.json").read_text())
    assert manifest["records"]["rejected"] == {"id_too_long": 1}
    assert peak < 150, f"peak {peak:.0f} MB"


# ---------------------------------------------------- 4, 5, 7: checkpoints and artifacts
@pytest.fixture
def process_group(tmp_path):
    with one_rank_process_group(tmp_path):
        yield


def _model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def _save(checkpointer: Checkpointer, step: int) -> torch.Tensor:
    model, optimizer = _model_and_optimizer(step)
    checkpointer.save(step, model, optimizer, {"step": step})
    return model.weight.detach().clone()


def _flip(path: Path, offset: int | None = None, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(start + size, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _distcp(path: Path) -> Path:
    return max(path.glob("*.distcp"), key=lambda p: p.stat().st_size)


def test_case4_a_flipped_checkpoint_is_never_loaded(process_group, tmp_path, caplog):
    root = tmp_path / "checkpoints"
    checkpointer = Checkpointer(root)
    first = _save(checkpointer, 1)
    _save(checkpointer, 2)
    _flip(_distcp(root / "step-00000002"))
    with caplog.at_level(logging.WARNING, logger="pipeline.checkpoint"):
        latest = Checkpointer(root).latest()
    assert latest == root / "step-00000001"
    assert "step-00000002 is unusable" in caplog.text and "sha256 differs" in caplog.text
    assert "previous good checkpoint" in caplog.text
    model, optimizer = _model_and_optimizer(9)
    assert Checkpointer(root).load(latest, model, optimizer) == {"step": 1}
    torch.testing.assert_close(model.weight.detach(), first)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        Checkpointer(root).load(root / "step-00000002", model, optimizer)


def test_case7_resume_with_an_unusable_latest_falls_back_and_prunes_nothing_good(
    process_group, tmp_path
):
    root = tmp_path / "checkpoints"
    _save(Checkpointer(root), 1)
    _save(Checkpointer(root), 2)
    (root / "step-00000002" / "progress.json").unlink()  # what used to mean "start at 0"
    resumed = Checkpointer(root)
    assert resumed.latest() == root / "step-00000001"
    _save(resumed, 3)
    assert (root / "step-00000001").is_dir()  # still the only other good one: kept
    assert (root / "latest").read_text() == "step-00000003"
    _save(resumed, 4)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000003", "step-00000004"]
    for path in root.glob("step-*"):
        _flip(_distcp(path))
    with pytest.raises(CheckpointError, match="no usable checkpoint, refusing to start again"):
        Checkpointer(root).latest()


def test_case4_a_flipped_artifact_is_refused(tmp_path):
    path = _artifact(tmp_path)
    _, info = export.load_artifact(path)
    assert info["payload_sha256"] and info["max_history"] == 8
    with zipfile.ZipFile(path) as archive:
        tensor = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    with path.open("rb") as f:  # the member's bytes start after its local header
        f.seek(tensor.header_offset)
        name_length, extra_length = struct.unpack("<HH", f.read(30)[26:30])
    _flip(path, tensor.header_offset + 30 + name_length + extra_length + 8, 64)
    torch.jit.load(str(path))  # torch itself loads it, and would score wrongly
    with pytest.raises(export.ArtifactError, match=r"scorer\.pt: .*(Bad CRC|differs)"):
        export.load_artifact(path)
    requests = _requests(tmp_path, [[2, 3]])
    code = score_requests.main(
        ["--artifact", str(path), "--requests", str(requests), "--out", str(tmp_path / "s.pq")]
    )
    assert code == 1 and not (tmp_path / "s.pq").exists()
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(export.ArtifactError, match="damaged or truncated"):
        export.load_artifact(path)


def _artifact(tmp_path: Path) -> Path:
    from tests.test_serving import random_model

    data = PreparedData(write_prepared(tmp_path / "data", num_items=40))
    model = random_model("dta", data.feature_spec(), seed=3)
    return export.export_model(model, data, tmp_path / "scorer.pt")


class _Payload:
    """Unpickling it creates a file: what a crafted `.metadata` could do (or worse)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_case5_a_crafted_checkpoint_metadata_is_never_unpickled(process_group, tmp_path):
    root = tmp_path / "run" / "checkpoints"
    _save(Checkpointer(root), 1)
    marker = tmp_path / "pwned"
    (root / "step-00000001" / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata"):
        Checkpointer(root).latest()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"model": "ta", "model_config": {},
        "data": {"path": str(write_prepared(tmp_path / "data"))}}))  # fmt: skip
    assert export.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "s.pt")]) == 1
    assert not marker.exists()


def test_case5_paths_from_the_pointer_and_the_manifest_stay_inside(process_group, tmp_path):
    root = tmp_path / "checkpoints"
    _save(Checkpointer(root), 1)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "step-00000001", elsewhere / "step-00000009")
    (root / "latest").write_text("../elsewhere/step-00000009")
    assert Checkpointer(root).latest() == root / "step-00000001"
    data = write_prepared(tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    for bad in ("/etc/hostname", "../data2/x.parquet"):
        edited = manifest | {"splits": {**manifest["splits"], "train": [bad]}}
        (data / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(DataError, match="leads outside the folder"):
            PreparedData(data)
    edited = manifest | {"item_embeddings": {**manifest["item_embeddings"], "path": "/dev/zero"}}
    (data / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(DataError, match="leads outside the folder"):
        PreparedData(data)


# --------------------------------------------------------------- 6: bad records
def test_case6_bad_amazon_records_become_rejects(tmp_path):
    bad = [
        b'{"reviewerID": "C", "asin": "i2", "unixReviewTime": NaN}',
        b'{"reviewerID": "C", "asin": "i2", "unixReviewTime": Infinity}',
        b'{"reviewerID": "C", "asin": "i2", "unixReviewTime": -Infinity}',
        b'{"reviewerID": "C", "asin": "i2", "unixReviewTime": 1180591620717411303424}',  # 2**70
        b'{"reviewerID": "C", "asin": "i2", "unixReviewTime": 1e300}',
        b'{"reviewerID": "C", "asin": "i2", "unixReviewTime": 100.5}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the interpreter's recursion limit
        b'{"reviewerID": "C", "asin": "i2", "x": ' + b"[" * 40 + b"]" * 40 + b"}",
        b'{"reviewerID": ["C"], "asin": "i2", "unixReviewTime": 5}',
    ]
    meta = [*META, b"{'asin': 'i10', 'x': " + b"[" * 300 + b"]" * 300 + b"}"]
    manifest = run_amazon_cli(
        write_gz(tmp_path / "r.json.gz", [*REVIEWS, *bad]), write_gz(tmp_path / "m.json.gz", meta),
        tmp_path / "out",
    )  # fmt: skip
    rejected = manifest["records"]["rejected"]
    # the fixture's two of each file; NaN, +-Infinity, 100.5 and a list as id
    assert rejected["malformed"] == 2 + 2 + 5
    assert rejected["timestamp_out_of_range"] == 2  # 2**70, 1e300
    assert rejected["too_deep"] == 3  # two reviews, one metadata line
    assert accounted(manifest)
    lines = {r["line"]: r["reason"] for r in rejects_of(tmp_path / "out") if r["line"] > 17}
    assert lines == {18: "malformed", 19: "malformed", 20: "malformed", 21: "timestamp_out_of_range",
                     22: "timestamp_out_of_range", 23: "malformed", 24: "too_deep", 25: "too_deep",
                     26: "malformed"}  # fmt: skip
    with pytest.raises(BadRecordError, match=r"^r\.json\.gz:10: malformed"):
        run_amazon_cli(tmp_path / "r.json.gz", write_gz(tmp_path / "ok.json.gz", META[:6]),
                       tmp_path / "strict", "--strict")  # fmt: skip


def test_case6_bad_log_rows_become_rejects(tmp_path):
    items = write_items(tmp_path / "items.parquet")
    lines = [*CSV_LINES, b"u1,a,99999999999999999999999,1,r20", b"u1,a,soon,1,r21",
             b"u1,b,300", b"u1,b,300,1,r22,extra", b"u1,c,1.5e3,1,r23"]  # fmt: skip
    (tmp_path / "logs.csv").write_bytes(b"\n".join(lines) + b"\n")
    manifest = run_logs_cli(tmp_path / "logs.csv", items, tmp_path / "out")
    found = {r["line"]: r["reason"] for r in rejects_of(tmp_path / "out") if r["line"] >= 18}
    assert found == {18: "timestamp_out_of_range", 19: "malformed", 20: "malformed",
                     21: "malformed", 22: "malformed"}  # fmt: skip
    assert accounted(manifest)
    table = pa.table(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u2"],
            "item_id": ["a", "b", "c", "d", "a", "b", "c"],
            "timestamp": ["100", "200", "99999999999999999999999", "172900", "150", "abc", "86500"],
        }
    )
    pq.write_table(table, tmp_path / "logs.parquet")
    manifest = run_logs_cli(tmp_path / "logs.parquet", items, tmp_path / "pq")
    assert manifest["records"]["rejected"]["timestamp_out_of_range"] == 1
    assert manifest["records"]["rejected"]["malformed"] == 1 and accounted(manifest)
    pq.write_table(table.set_column(2, "timestamp", pa.array([[1]] * 7)), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad\.parquet: column 'timestamp'"):
        run_logs_cli(tmp_path / "bad.parquet", items, tmp_path / "bad")


def test_case6_a_truncated_gzip_is_one_clear_error(tmp_path):
    reviews = write_gz(tmp_path / "reviews.json.gz", REVIEWS * 50)
    reviews.write_bytes(reviews.read_bytes()[:-40])
    meta = write_gz(tmp_path / "meta.json.gz", META)
    out = tmp_path / "out"
    proc = cli("-m", "data_prep", "amazon", "--reviews", str(reviews), "--meta", str(meta),
               "--out", str(out), "--encoder", "hashed", "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "reviews.json.gz: cannot be read past line" in proc.stderr and "truncated" in proc.stderr
    assert not out.exists() and not staging_folder(out).exists()


# --------------------------------------------------------------- 8: score_requests
def _requests(tmp_path: Path, candidates: list, **columns) -> Path:
    n = len(candidates)
    table = pa.table(
        {
            "request_id": columns.get("request_id", pa.array([f"r{i}" for i in range(n)])),
            "user": columns.get("user", pa.array([3] * n, pa.int64())),
            "hist_items": columns.get("hist_items", pa.array([[2, 5]] * n, pa.list_(pa.int64()))),
            "candidates": pa.array(candidates, pa.list_(pa.int64())),
        }
    )
    path = tmp_path / "requests.parquet"
    pq.write_table(table, path)
    return path


def _score(artifact: Path, requests: Path, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    out = tmp_path / "scores.parquet"
    code = score_requests.main(
        ["--artifact", str(artifact), "--requests", str(requests), "--out", str(out)]
    )
    assert code == 0
    rejects = [json.loads(line) for line in (tmp_path / "scores.rejects.jsonl").open()]
    return pq.read_table(out).to_pylist(), rejects


def test_case8_every_request_is_scored_or_rejected_with_its_reason(tmp_path):
    artifact = _artifact(tmp_path)
    candidates = [[2, 3], None, [], [4, None], [0, 5], [6], [7], [8], [9], [39, 40]]
    hist = [[2]] * 10
    hist[5], hist[6], hist[7] = None, [3] * 9, [0]
    users = [3] * 10
    users[8] = None
    requests = _requests(
        tmp_path, candidates,
        hist_items=pa.array(hist, pa.list_(pa.int64())), user=pa.array(users, pa.int64()),
    )  # fmt: skip
    scores, rejects = _score(artifact, requests, tmp_path)
    assert {r["request_id"] for r in scores} == {"r0"}
    assert {r["request_id"]: r["reason"] for r in rejects} == {
        "r1": "missing_candidates", "r2": "no_candidates", "r3": "null_id", "r4": "padding_id",
        "r5": "missing_history", "r6": "history_too_long", "r7": "padding_id",
        "r8": "missing_user", "r9": "id_out_of_range",
    }  # fmt: skip
    assert len({r["request_id"] for r in scores}) + len(rejects) == 10
    floats = _requests(tmp_path, [[2, 3], [4]], user=pa.array([3.7, 4.0]))
    scores, rejects = _score(artifact, floats, tmp_path)
    assert scores == [] and [r["reason"] for r in rejects] == ["bad_type", "bad_type"]
    assert "user is double" in rejects[0]["detail"]
    text = _requests(tmp_path, [[2]], hist_items=pa.array(["2,5"]))
    scores, rejects = _score(artifact, text, tmp_path)
    assert scores == [] and rejects[0]["reason"] == "bad_type"
    float_lists = _requests(tmp_path, [[2]], hist_items=pa.array([[2.9]]))
    assert _score(artifact, float_lists, tmp_path)[1][0]["reason"] == "bad_type"


# --------------------------------------------------------------- 9: odds and ends
def test_case9_bom_and_cr_line_ends_are_read(tmp_path):
    lines = [b"\xef\xbb\xbf" + REVIEWS[0], *REVIEWS[1:]]
    meta = write_gz(tmp_path / "m.json.gz", META)
    plain = run_amazon_cli(write_gz(tmp_path / "a.json.gz", REVIEWS), meta, tmp_path / "plain")
    with gzip.open(tmp_path / "bom.json.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    assert (
        run_amazon_cli(tmp_path / "bom.json.gz", meta, tmp_path / "bom")["records"]
        == (plain["records"])
    )
    with gzip.open(tmp_path / "cr.json.gz", "wb") as f:
        f.write(b"\r".join(REVIEWS) + b"\r")
    cr = run_amazon_cli(tmp_path / "cr.json.gz", meta, tmp_path / "cr")
    assert cr["records"] == plain["records"] and cr["counts"] == plain["counts"]
    logs = tmp_path / "logs.csv"
    logs.write_bytes(b"\xef\xbb\xbf" + b"\r".join(CSV_LINES) + b"\r")
    manifest = run_logs_cli(logs, write_items(tmp_path / "items.parquet"), tmp_path / "csv")
    assert manifest["counts"] == {"train": 5, "valid": 1, "test": 3}


def test_case9_empty_inputs_are_a_clear_error(tmp_path):
    meta = write_gz(tmp_path / "m.json.gz", META)
    empty = write_gz(tmp_path / "empty.json.gz", [])
    with pytest.raises(InputError, match=r"no training samples from empty\.json\.gz"):
        run_amazon_cli(empty, meta, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty.csv").write_bytes(b"")
    items = write_items(tmp_path / "items.parquet")
    with pytest.raises(InputError, match=r"empty\.csv: no CSV header"):
        run_logs_cli(tmp_path / "empty.csv", items, tmp_path / "csv")
    (tmp_path / "header.csv").write_bytes(CSV_LINES[0] + b"\n")
    with pytest.raises(InputError, match="no training samples"):
        run_logs_cli(tmp_path / "header.csv", items, tmp_path / "csv")


def test_case9_reject_lines_count_quoted_newlines_and_headers(tmp_path):
    lines = [CSV_LINES[0], b'"u\n1",a,100,1,r1', *CSV_LINES[1:]]  # a value over two lines
    (tmp_path / "logs.csv").write_bytes(b"\n".join(lines) + b"\n")
    items_csv = tmp_path / "items.csv"
    items_csv.write_bytes(
        b'item_id,title,category\na,"usb\ncable",x\nb,hdmi,x\n,no id,y\nc,camera,y\nd,,\nb,dup,x\n'
    )
    out = tmp_path / "out"
    run_logs_cli(tmp_path / "logs.csv", items_csv, out, "--encoder", "hashed",
                 "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    found = {(r["file"], r["line"], r["reason"]) for r in rejects_of(out)}
    assert ("items.csv", 5, "missing_field") in found  # line 5: the quoted title spans 2-3
    assert ("items.csv", 8, "duplicate_item") in found
    assert ("logs.csv", 13, "unknown_item") in found  # was 11 before the two-line row
    assert ("logs.csv", 19, "not_utf8") in found


@pytest.mark.parametrize(
    "args",
    [
        ["--partitions", "0"],
        ["--workers", "-1"],
        ["--valid-frac", "1.5"],
        ["--valid-frac", "nan"],
        ["--num-buckets", "1"],
        ["--max-history", "0"],
        ["--batch-rows", "0"],
        ["--max-id-length", "0"],
        ["--min-timestamp", "10", "--max-timestamp", "5"],
    ],
)
def test_case9_bad_arguments_are_usage_errors(csv_inputs, tmp_path, capsys, args):
    logs, items = csv_inputs
    with pytest.raises(SystemExit) as exit_info:
        run_logs_cli(logs, items, tmp_path / "out", *args)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_case9_amazon_valid_frac_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prep(["amazon", "--reviews", "r", "--meta", "m", "--out", str(tmp_path), "--valid-frac", "1.5"])  # fmt: skip
    assert "not between 0 and 1" in capsys.readouterr().err


def test_every_error_of_the_prep_cli_names_its_input(tmp_path):
    proc = cli("-m", "data_prep", "logs", "--interactions", str(tmp_path / "none*.csv"),
               "--items", "x", "--out", str(tmp_path / "o"))  # fmt: skip
    assert proc.returncode == 1 and "no interaction file matches" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_integrity_error_names_the_file(tmp_path):
    with pytest.raises(IntegrityError, match="manifest.json: no manifest"):
        verify_folder(tmp_path)


@pytest.mark.slow
def test_case7_the_trainer_resumes_from_the_previous_good_checkpoint(tmp_path):
    from tests.test_train import _train

    data = write_prepared(tmp_path / "data", samples_per_split={"train": 320, "test": 64})
    args = ["--model", "ta", "--checkpoint-every", "5", "--epochs", "1"]  # 10 steps
    _train(data, tmp_path / "run", *args, "--max-steps", "10")
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000005", "step-00000010"]
    _flip(_distcp(root / "step-00000010"))
    resumed = _train(data, tmp_path / "run", *args, "--epochs", "2", "--resume")
    log = resumed.stdout + resumed.stderr
    assert "step-00000010 is unusable" in log and "resumed from" in log and "at step 5" in log
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 20
    for path in root.glob("step-*"):
        _flip(_distcp(path))
    failed = _train(data, tmp_path / "run", *args, "--resume", check=False)
    assert failed.returncode != 0 and "no usable checkpoint" in failed.stderr


def test_a_damaged_embedding_cache_is_encoded_again(tmp_path, capsys):
    from data_prep.embed import embed_titles
    from data_prep.encoders import make_encoder

    encoder = make_encoder("hashed", dim=16)
    titles = np.array(["usb cable", "camera", ""])
    first = embed_titles(titles, encoder, tmp_path)
    (cached,) = tmp_path.glob("*.npy")
    assert np.array_equal(embed_titles(titles, encoder, tmp_path), first)
    assert "cache hit" in capsys.readouterr().out
    np.save(cached, np.ones_like(first))  # same shape, wrong content
    assert np.array_equal(embed_titles(titles, encoder, tmp_path), first)
    assert "ignoring the cache" in capsys.readouterr().out
    cached.write_bytes(b"truncated")
    assert np.array_equal(embed_titles(titles, encoder, tmp_path), first)
