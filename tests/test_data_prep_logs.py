"""The generic click-log job and the embed-items job on small handmade inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.__main__ import main
from data_prep.rejects import BadRecordError

DAY = 86_400
CSV_LINES = [
    b"user_id,item_id,timestamp,click,impression_id",
    b"u1,a,100,1,r1",  # day 0
    b"u1,b,100,0,r1",
    b"u1,c,200,1,r2",
    b"u1,d,86500,1,r3",  # day 1: valid
    b"u1,a,172900,0,r4",  # day 2: test
    b"u1,b,172900,1,r4",
    b"u2,c,300,1,r5",
    b"u2,a,150,1,r6",  # unsorted: handled by sorting
    b"u2,b,172950,1,r7",
    b"u2,zz,400,1,r8",  # 11 unknown_item
    b"u2,c,300,1,r9",  # 12 duplicate_event
    b"u3,a,500,1,r10",  # 13 too_few_events
    b",a,600,1,r11",  # 14 missing_field
    b"u4,a,later,1,r12",  # 15 malformed
    b"u4,a,700,2,r13",  # 16 malformed (click)
    b"u\xff,a,800,1,r14",  # 17 not_utf8
]


def write_items(path: Path, with_vectors: bool = True) -> Path:
    vectors = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 0.0]]  # d has a zero vector
    columns = {
        "item_id": ["a", "b", "c", "d"],
        "title": ["usb cable", "hdmi cable", "camera", ""],
        "category": ["x", "x", "y", None],
    }
    if with_vectors:
        columns["mm_vector"] = pa.array(vectors, pa.list_(pa.float32()))
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def inputs(tmp_path):
    logs = tmp_path / "logs.csv"
    logs.write_bytes(b"\n".join(CSV_LINES) + b"\n")
    return logs, write_items(tmp_path / "items.parquet")


def run_logs(logs: Path, items: Path, out: Path, *extra: str) -> dict:
    main(["logs", "--interactions", str(logs), "--items", str(items), "--out", str(out), *extra])
    return json.loads((out / "manifest.json").read_text())


def read(out: Path, manifest: dict, split: str) -> list[dict]:
    return pq.read_table([str(out / p) for p in manifest["splits"][split]]).to_pylist()


def test_temporal_protocol_and_rejects(inputs, tmp_path):
    out = tmp_path / "out"
    manifest = run_logs(*inputs, out)
    records = manifest["records"]
    assert records["rejected"] == {
        "unknown_item": 1,
        "duplicate_event": 1,
        "too_few_events": 1,
        "missing_field": 1,
        "malformed": 2,
        "not_utf8": 1,
    }
    assert records["repaired"] == {"bad_vector": 1}
    assert records["read"] == 16 + 4 and records["used"] == 9 + 4
    lines = {
        (e["line"], e["reason"])
        for e in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())
    }
    assert (
        (11, "unknown_item") in lines and (17, "not_utf8") in lines and (15, "malformed") in lines
    )
    assert manifest["counts"] == {"train": 5, "valid": 1, "test": 3}
    names = {i + 2: n for i, n in enumerate("abcd")}
    test = [
        (r["user"], names[r["item"]], r["label"], [names[h] for h in r["hist_items"]])
        for r in read(out, manifest, "test")
    ]
    # u1 (index 2) at day 2: clicks strictly earlier are a, c, d (b at t=100 was not clicked)
    assert test == [
        (2, "a", 0.0, ["a", "c", "d"]),
        (2, "b", 1.0, ["a", "c", "d"]),
        (3, "b", 1.0, ["a", "c"]),
    ]
    train = read(out, manifest, "train")
    assert [names[r["item"]] for r in train] == ["a", "b", "c", "a", "c"]
    assert train[1]["hist_items"] == []  # same second as the click on a: not history
    assert np.allclose(train[2]["hist_sims"], [0.0])  # cos(c, a)
    assert np.allclose(
        read(out, manifest, "test")[0]["hist_sims"], [1.0, 0.0, 0.0]
    )  # d: zero vector


def test_strict_names_file_line_and_problem(inputs, tmp_path):
    logs, items = inputs
    with pytest.raises(BadRecordError, match=r"^items\.parquet:4: bad_vector"):
        run_logs(logs, items, tmp_path / "s", "--strict")
    table = pq.read_table(items)
    vectors = pa.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], pa.list_(pa.float32()))
    pq.write_table(table.set_column(3, "mm_vector", vectors), tmp_path / "good.parquet")
    with pytest.raises(BadRecordError, match=r"^logs\.csv:14: missing_field"):
        run_logs(logs, tmp_path / "good.parquet", tmp_path / "s2", "--strict")


def test_next_item_protocol(inputs, tmp_path):
    with pytest.raises(ValueError, match="interacted with every item"):
        run_logs(*inputs, tmp_path / "full", "--protocol", "next-item")
    items = pq.read_table(inputs[1])
    extra = pa.table(
        {"item_id": ["e"], "title": ["tripod"], "category": ["y"], "mm_vector": [[0.6, 0.8]]}
    )
    pq.write_table(pa.concat_tables([items, extra.cast(items.schema)]), tmp_path / "more.parquet")
    manifest = run_logs(
        inputs[0], tmp_path / "more.parquet", tmp_path / "n", "--protocol", "next-item"
    )
    # u1: 6 events -> 4 training positives, u2: 3 events -> 1; one test positive each; all paired
    assert manifest["counts"] == {"train": 10, "test": 4}


def test_embed_items_then_logs(inputs, tmp_path):
    logs, _ = inputs
    titles_only = write_items(tmp_path / "titles.parquet", with_vectors=False)
    embedded = tmp_path / "embedded.parquet"
    main(["embed-items", "--items", str(titles_only), "--out", str(embedded), "--encoder", "hashed",
          "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    table = pq.read_table(embedded)
    assert (
        table.column("mm_vector").null_count == 1 and table.column("category").to_pylist()[0] == "x"
    )
    manifest = run_logs(logs, embedded, tmp_path / "e")
    assert manifest["item_embeddings"]["dim"] == 256
    direct = run_logs(
        logs,
        titles_only,
        tmp_path / "d",
        "--encoder",
        "hashed",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert direct["records"]["repaired"] == {"empty_title": 1}
    assert np.array_equal(
        np.load(tmp_path / "e" / "item_mm.npy"), np.load(tmp_path / "d" / "item_mm.npy")
    )


def _sorted_rows(out: Path, manifest: dict, split: str) -> pa.Table:
    table = pq.read_table([str(out / p) for p in manifest["splits"][split]])
    return table.sort_by([("user", "ascending"), ("ts", "ascending"), ("item", "ascending")])


@pytest.mark.parametrize("protocol", ["temporal", "next-item"])
def test_partitioning_does_not_change_the_data(tmp_path, protocol):
    from data_prep.synthetic import SyntheticConfig, write_raw

    logs, items = write_raw(SyntheticConfig(users=300, items=400, days=6), tmp_path / "raw")
    one = run_logs(logs, items, tmp_path / "one", "--protocol", protocol)
    many = run_logs(
        logs,
        items,
        tmp_path / "many",
        "--protocol",
        protocol,
        "--partitions",
        "5",
        "--block-events",
        "500",
    )
    assert len(many["splits"]["train"]) == 5
    for key in ("counts", "users_per_split", "vocab_sizes", "buckets", "records", "protocol"):
        assert one[key] == many[key], key
    for split in one["splits"]:
        assert _sorted_rows(tmp_path / "one", one, split).equals(
            _sorted_rows(tmp_path / "many", many, split)
        )
    assert not (tmp_path / "many" / "_work").exists()
