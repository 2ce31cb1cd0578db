"""Core data-prep modules: vocab, histories, similarity buckets, writer, manifest, rejects."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import vocab as vocab_module
from data_prep.history import clicked_windows, sequence_windows, sort_order
from data_prep.integrity import IntegrityError, checksum_files, safe_path
from data_prep.manifest import checksum, read_manifest, verify_folder, write_manifest
from data_prep.ragged import range_indices
from data_prep.rejects import (
    AccountingError,
    BadRecordError,
    RejectLog,
    check_records,
    merge_records,
)
from data_prep.samples import Samples
from data_prep.similarity import (
    SimilarityHistogram,
    bucketize,
    history_similarities,
    normalize_rows,
)
from data_prep.vocab import OOV, Vocab
from data_prep.writer import ShardWriter


def test_vocab_sorted_stable_and_oov(tmp_path):
    a = Vocab(["b", "a", "c", "a"])
    b = Vocab(["c", "b", "a"])
    assert len(a) == 5
    assert a.encode(["a", "b", "c", "zz"]).tolist() == [2, 3, 4, OOV]
    assert np.array_equal(a.encode(["c", "a"]), b.encode(["c", "a"]))
    a.save(tmp_path / "v.parquet")
    loaded = Vocab.load(tmp_path / "v.parquet")
    assert loaded.raw_ids.tolist() == ["a", "b", "c"]
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column("index").to_pylist() == [2, 3, 4]
    assert Vocab([]).encode(["x"]).tolist() == [OOV]


@pytest.mark.parametrize("degenerate", [False, True])
def test_vocab_hash_index_encodes_as_the_binary_search(monkeypatch, degenerate):
    # The hash index (the scatter tasks' item lookups) gives the binary search's indices,
    # known and unknown ids alike; with a hash of two values nearly every id shares its
    # hash with others, so the fallback to the binary search is what answers.
    if degenerate:
        real = vocab_module.id_hashes
        monkeypatch.setattr(vocab_module, "id_hashes", lambda raw: real(raw) % np.uint64(2))
    rng = np.random.default_rng(0)
    ids = [f"i{x}" for x in rng.integers(0, 10**4, 5000)] + ["", "é", "日本", "a\x00b", "zz"]
    plain = Vocab(ids)
    hashed = Vocab.of_sorted(plain.raw_ids, vocab_module.hash_index(plain.raw_ids))
    queries = np.array(
        [f"i{x}" for x in rng.integers(0, 2 * 10**4, 20000)] + ["", "é", "日本x", "a\x00b", "a"]
    )
    expected = plain.encode(queries)
    assert (expected != OOV).sum() > 1000 and (expected == OOV).sum() > 1000
    assert np.array_equal(hashed.encode(queries), expected)
    assert np.array_equal(hashed.encode(queries.astype("<U40")), expected)  # any width
    assert hashed.encode(np.array([], dtype=str)).tolist() == []


def test_range_indices():
    assert range_indices(np.array([5, 0, 2]), np.array([2, 0, 3])).tolist() == [5, 6, 2, 3, 4]


def test_clicked_history_strictly_earlier_and_truncated():
    # user 0: clicks at t=1 (item 10), t=2 (item 11), same-time t=3 events (items 12, 13), t=4
    user = np.array([0, 0, 0, 0, 0, 1, 1])
    ts = np.array([1, 2, 3, 3, 4, 1, 2])
    item = np.array([10, 11, 12, 13, 14, 20, 21])
    click = np.array([1, 1, 1, 0, 1, 1, 0])
    offsets, hist = clicked_windows(user, ts, click, max_history=2).gather(
        item, np.arange(len(user))
    )
    rows = [hist[offsets[i] : offsets[i + 1]].tolist() for i in range(len(user))]
    assert rows == [[], [10], [10, 11], [10, 11], [11, 12], [], [20]]


def test_sequence_history_truncated():
    user = np.array([0, 0, 0, 0, 1, 1])
    item = np.array([1, 2, 3, 4, 5, 6])
    offsets, hist = sequence_windows(user, max_history=2).gather(item, np.array([3, 0, 5, 2]))
    rows = [hist[offsets[i] : offsets[i + 1]].tolist() for i in range(4)]
    assert rows == [[2, 3], [], [5], [1, 2]]


def test_sort_order_keeps_file_order_on_ties():
    user = np.array([1, 0, 0, 0])
    ts = np.array([5, 9, 3, 3])
    assert sort_order(user, ts).tolist() == [2, 3, 1, 0]


def test_history_similarities_are_dot_products():
    mm, bad = normalize_rows(np.array([[0, 0], [0, 0], [1, 0], [1, 1], [0, 0], [np.nan, 1]]))
    assert bad.tolist() == [True, True, False, False, True, True]
    sims = history_similarities(mm, np.array([2, 3]), np.array([0, 2, 3]), np.array([3, 4, 2]))
    assert np.allclose(sims, [np.sqrt(0.5), 0.0, np.sqrt(0.5)])


def test_history_similarities_are_float64_dot_products_rounded_once():
    """The stored value is the float64 dot product rounded to float32, not a float32 sum
    (whose last bits follow the CPU's SIMD path): the same bits on every machine."""
    rng = np.random.default_rng(3)
    mm, _ = normalize_rows(rng.normal(size=(50, 384)))
    target = rng.integers(0, 50, size=400)
    hist = rng.integers(0, 50, size=400)
    sims = history_similarities(mm, target, np.arange(401), hist)
    exact = np.einsum("ij,ij->i", mm[target].astype(np.float64), mm[hist].astype(np.float64))
    assert sims.dtype == np.float32
    assert np.array_equal(sims, exact.astype(np.float32))
    float32_sums = np.einsum("ij,ij->i", mm[target], mm[hist])
    assert not np.array_equal(float32_sums, sims)  # the test tells the two apart


def test_equal_frequency_boundaries():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-0.3, 0.9, size=200_000).astype(np.float32)
    histogram = SimilarityHistogram()
    for part in np.array_split(sims, 3):  # merged across partitions
        h = SimilarityHistogram()
        h.add(part)
        histogram.merge(h)
    boundaries = histogram.equal_frequency_boundaries(35)
    assert boundaries.dtype == np.float32 and len(boundaries) == 34
    assert np.all(np.diff(boundaries) > 0)
    counts = np.bincount(bucketize(sims, boundaries), minlength=35)
    assert counts.min() > 0.97 * len(sims) / 35 and counts.max() < 1.03 * len(sims) / 35


def test_boundaries_strictly_increasing_with_ties():
    histogram = SimilarityHistogram()
    histogram.add(np.r_[np.ones(900), np.linspace(-1, 0, 100)])
    boundaries = histogram.equal_frequency_boundaries(10)
    assert np.all(np.diff(boundaries) > 0)


def _samples(users: list[int]) -> Samples:
    n = len(users)
    return Samples(
        user=np.array(users),
        item=np.arange(n) + 2,
        label=np.ones(n, dtype=np.float32),
        ts=np.arange(n),
        hist_offsets=np.arange(n + 1),
        hist_items=np.full(n, 2),
        hist_sims=np.full(n, 0.5, dtype=np.float32),
    )


def test_writer_row_groups_and_shards(tmp_path):
    writer = ShardWriter(tmp_path, "train", row_group_size=4, max_shard_rows=6)
    writer.write(_samples([2, 2, 3]))
    writer.write(_samples([4, 4, 4, 5]))  # shard 0 closes after this block (7 rows)
    writer.write(_samples([6, 6]))
    paths = writer.close()
    assert paths == ["train/part-00000-00000.parquet", "train/part-00000-00001.parquet"]
    first = pq.ParquetFile(tmp_path / paths[0])
    assert [first.metadata.row_group(i).num_rows for i in range(first.num_row_groups)] == [4, 3]
    assert pq.read_table(tmp_path / paths[1]).column("user").to_pylist() == [6, 6]
    assert (
        pq.read_table(tmp_path / paths[0]).schema.field("hist_sims").type.value_type.bit_width == 32
    )


def test_manifest_checksum_and_read(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"abcd")
    files = checksum_files(tmp_path, ["x.npy"])
    body = {"schema_version": 1, "splits": {}, "item_embeddings": {"path": "x.npy"}}
    written = write_manifest(tmp_path, body | {"files": files})
    assert written["checksum"] == checksum(written)
    assert read_manifest(tmp_path) == written == verify_folder(tmp_path, full=True)
    (tmp_path / "x.npy").write_bytes(b"abce")  # same size: only the sha256 tells
    assert read_manifest(tmp_path) == written
    assert read_manifest(tmp_path, full=True) is None
    with pytest.raises(IntegrityError, match=r"x\.npy: sha256 differs"):
        verify_folder(tmp_path, full=True)
    (tmp_path / "x.npy").write_bytes(b"abc")
    with pytest.raises(IntegrityError, match=r"x\.npy: 3 bytes, the manifest says 4"):
        verify_folder(tmp_path)
    (tmp_path / "x.npy").unlink()
    with pytest.raises(IntegrityError, match=r"x\.npy: missing"):
        verify_folder(tmp_path)
    tampered = json.loads((tmp_path / "manifest.json").read_text()) | {"schema_version": 2}
    (tmp_path / "manifest.json").write_text(json.dumps(tampered))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        verify_folder(tmp_path)
    write_manifest(tmp_path, body)  # no checksum table: written by an older data_prep
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../outside.npy", "a/../../b", "", "C:/x", "a\\..\\b", 7]
)
def test_paths_from_a_manifest_stay_inside_the_folder(tmp_path, name):
    with pytest.raises(IntegrityError):
        safe_path(tmp_path, name)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(IntegrityError, match="outside"):
        safe_path(tmp_path, "link/x")
    assert safe_path(tmp_path, "train/part-0.parquet") == tmp_path / "train" / "part-0.parquet"


def test_reject_log_counts_and_invariant(tmp_path):
    with RejectLog(tmp_path / "rejects.jsonl") as log:
        log.add_read(3)
        log.reject("f.csv", 2, "malformed", "a,b")
        log.add_used(2)
    other = RejectLog(None)
    other.add_read(1)
    other.repair("g.csv", 1, "bad_vector", "x")
    other.add_used(1)
    records = merge_records([log.as_manifest(), other.as_manifest()])
    assert records == {
        "read": 4,
        "used": 3,
        "rejected": {"malformed": 1},
        "repaired": {"bad_vector": 1},
    }
    check_records(records)
    with pytest.raises(AccountingError):
        check_records(records | {"read": 5})
    entry = json.loads((tmp_path / "rejects.jsonl").read_text())
    assert entry == {"file": "f.csv", "line": 2, "reason": "malformed", "excerpt": "a,b"}


def test_strict_reject_names_file_line_and_reason():
    log = RejectLog(None, strict=True)
    with pytest.raises(BadRecordError, match=r"f\.json\.gz:7: missing_field"):
        log.reject("f.json.gz", 7, "missing_field", "{}")
