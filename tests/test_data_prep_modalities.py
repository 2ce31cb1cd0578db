"""Modality-aware data: per-modality item tables and similarities, history times, and the
reader that puts them in the batch (issue 17: DMAE's inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_prep.__main__ import main as prep
from data_prep.rejects import InputError
from data_prep.synthetic import SyntheticConfig, generate, write_raw
from models.features import HIST_ITEM
from pipeline.data import PreparedData, table_to_batch

SMALL = SyntheticConfig(users=200, items=300, days=6)
MODALITIES = ["--modality", "text=text_vector", "--modality", "image=image_vector"]


def _prep(raw: tuple[Path, Path], out: Path, *extra: str) -> dict:
    logs, items = raw
    prep(["logs", "--interactions", str(logs), "--items", str(items), "--out", str(out), *extra])
    return json.loads((out / "manifest.json").read_text())


def _rows(out: Path, manifest: dict, split: str) -> pa.Table:
    return pq.read_table([str(out / p) for p in manifest["splits"][split]])


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_raw(SMALL, tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def two(raw, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("two") / "prep"
    return out, _prep(raw, out, *MODALITIES, "--row-group-size", "64")


def test_styles_zero_is_the_one_modality_generator():
    """The image modality draws from its own generator: without it, the data of before."""
    logs_one, items_one = generate(SyntheticConfig(users=50, items=60, days=3, styles=0))
    logs_two, items_two = generate(SyntheticConfig(users=50, items=60, days=3))
    assert items_one.column_names == ["item_id", "title", "category", "mm_vector"]
    assert {"text_vector", "image_vector", "mm_vector"} <= set(items_two.column_names)
    for column in ("user_id", "item_id", "timestamp", "impression_id"):
        assert logs_one.column(column).equals(logs_two.column(column))  # only clicks differ
    text = np.array(items_two.column("text_vector").to_pylist())
    assert np.allclose(np.array(items_one.column("mm_vector").to_pylist()), text)
    image = np.array(items_two.column("image_vector").to_pylist())
    fused = np.array(items_two.column("mm_vector").to_pylist())
    assert np.allclose(fused @ fused[0], (text @ text[0] + image @ image[0]) / 2, atol=1e-5)


def test_modality_tables_and_similarities_are_aligned(two):
    out, manifest = two
    assert [m["name"] for m in manifest["modalities"]] == ["image", "text"]
    assert manifest["history_times"]["column"] == "hist_ts_delta"
    fused = np.load(out / "item_mm.npy")
    tables = {m["name"]: np.load(out / m["path"]) for m in manifest["modalities"]}
    assert tables["text"].shape[1] == SMALL.dim and tables["image"].shape[1] == SMALL.image_dim
    for name, table in tables.items():
        assert manifest["files"][f"item_mm_{name}.npy"]["sha256"]
        assert not table[:2].any() and np.allclose(np.linalg.norm(table[2:], axis=1), 1, atol=1e-5)
    test = _rows(out, manifest, "test")
    items = test.column("item").to_numpy()
    hist = test.column("hist_items").to_pylist()
    columns = {n: test.column(f"hist_sims_{n}").to_pylist() for n in tables}
    fused_sims = test.column("hist_sims").to_pylist()
    checked = 0
    for i in range(0, len(hist), 37):
        if not hist[i]:
            continue
        for name, table in tables.items():
            assert np.allclose(columns[name][i], table[hist[i]] @ table[items[i]], atol=1e-5)
        assert np.allclose(fused_sims[i], fused[hist[i]] @ fused[items[i]], atol=1e-5)
        checked += 1
    assert checked > 10


def test_history_times_are_target_minus_behaviour(two, raw):
    """hist_ts_delta = ts - the behaviour's timestamp, recomputed from the raw log."""
    out, manifest = two
    logs = pq.read_table(raw[0]).to_pydict()
    clicked = {
        (u, i, t)
        for u, i, t, c in zip(logs["user_id"], logs["item_id"], logs["timestamp"], logs["click"])
        if c == 1
    }
    user_raw = pq.read_table(out / "vocab" / "user.parquet").to_pydict()
    user_raw = dict(zip(user_raw["index"], user_raw["raw_id"]))
    item_raw = pq.read_table(out / "vocab" / "item.parquet").to_pydict()
    item_raw = dict(zip(item_raw["index"], item_raw["raw_id"]))
    train = _rows(out, manifest, "train").slice(0, 400).to_pylist()
    checked = 0
    for row in train:
        if not row["hist_items"]:
            continue
        assert len(row["hist_ts_delta"]) == len(row["hist_items"])
        for item, delta in zip(row["hist_items"], row["hist_ts_delta"]):
            assert delta > 0  # strictly earlier (temporal protocol)
            assert (user_raw[row["user"]], item_raw[item], row["ts"] - delta) in clicked
        checked += 1
    assert checked > 50


def test_one_vector_data_has_times_and_no_modalities(raw, tmp_path):
    manifest = _prep(raw, tmp_path / "one")
    assert "modalities" not in manifest and "history_times" in manifest
    assert not list((tmp_path / "one").glob("item_mm_*.npy"))
    columns = _rows(tmp_path / "one", manifest, "test").column_names
    assert "hist_ts_delta" in columns and not [c for c in columns if c.startswith("hist_sims_")]
    data = PreparedData(tmp_path / "one")
    assert data.modalities == () and data.feature_spec().num_modalities == 1
    batch = next(iter(data.reader("train", 64)))
    assert batch.hist_modality_sims is None
    assert batch.hist_times.shape == batch.hist_sims.shape


def test_modality_arguments_are_checked(raw, tmp_path):
    with pytest.raises(InputError, match="two or more"):
        _prep(raw, tmp_path / "a", "--modality", "text=text_vector")
    with pytest.raises(InputError, match="no modality column"):
        _prep(raw, tmp_path / "b", "--modality", "text=text_vector", "--modality", "x=nothing")
    with pytest.raises(InputError, match="lowercase"):
        _prep(raw, tmp_path / "c", "--modality", "Text=text_vector", "--modality", "i=image_vector")
    with pytest.raises(InputError, match="NAME=COLUMN"):
        _prep(raw, tmp_path / "d", "--modality", "text")


def test_fused_vector_built_from_the_modalities_when_absent(raw, tmp_path):
    items = pq.read_table(raw[1]).drop(["mm_vector"])
    path = tmp_path / "items.parquet"
    pq.write_table(items, path)
    manifest = _prep((raw[0], path), tmp_path / "out", *MODALITIES)
    out = tmp_path / "out"
    fused, text, image = (
        np.load(out / f) for f in ("item_mm.npy", "item_mm_text.npy", "item_mm_image.npy")
    )
    assert np.allclose(fused @ fused[5], (text @ text[5] + image @ image[5]) / 2, atol=1e-5)
    assert manifest["item_embeddings"]["source"].startswith("concat(")


def test_a_bad_modality_vector_is_a_zero_row_of_that_modality(raw, tmp_path):
    items = pq.read_table(raw[1])
    image = items.column("image_vector").to_pylist()
    image[3] = [float("nan")] * len(image[3])
    items = items.set_column(
        items.schema.get_field_index("image_vector"),
        "image_vector",
        pa.array(image, pa.list_(pa.float32())),
    )
    path = tmp_path / "items.parquet"
    pq.write_table(items, path)
    manifest = _prep((raw[0], path), tmp_path / "out", *MODALITIES)
    assert manifest["records"]["repaired"] == {"bad_vector_image": 1}
    table = np.load(tmp_path / "out" / "item_mm_image.npy")
    assert (np.linalg.norm(table, axis=1) == 0).sum() == 3  # padding, OOV and the bad one


@pytest.mark.parametrize("workers", [0, 2])
def test_reader_puts_times_and_modality_sims_in_the_batch(two, workers):
    """Batch.hist_times / hist_modality_sims are aligned with the history values, for any
    worker count and with batches cut by window edges (row groups of 64 rows)."""
    out, manifest = two
    data = PreparedData(out)
    assert data.modalities == ("image", "text")
    assert data.feature_spec().modalities == ("image", "text")
    rows = {}
    for row in _rows(out, manifest, "train").to_pylist():
        key = (row["user"], row["item"], row["ts"], tuple(row["hist_items"]))
        rows[key] = row
    reader = data.reader("train", 48, shuffle=True, seed=3, num_workers=workers)
    seen = 0
    for batch in reader.iter_batches(0):
        kjt = batch.sparse_features
        lengths = kjt[HIST_ITEM].lengths().tolist()
        assert batch.hist_modality_sims.shape == (sum(lengths), 2)
        hist = torch.split(kjt[HIST_ITEM].values(), lengths)
        times = torch.split(batch.hist_times, lengths)
        sims = torch.split(batch.hist_modality_sims, lengths)
        users, items = batch.users().tolist(), kjt["item"].values().tolist()
        for u, i, h, t, s in zip(users, items, hist, times, sims):
            candidates = [
                r for k, r in rows.items() if k[0] == u and k[1] == i and k[3] == tuple(h.tolist())
            ]
            # the same user, target and history can recur at another time
            matching = [
                r for r in candidates if [float(x) for x in r["hist_ts_delta"]] == t.tolist()
            ]
            assert matching, (t.tolist(), [r["hist_ts_delta"] for r in candidates])
            row = matching[0]
            assert np.allclose(s[:, 0].numpy(), row["hist_sims_image"])
            assert np.allclose(s[:, 1].numpy(), row["hist_sims_text"])
            seen += 1
        if seen > 300:
            break
    assert seen > 300


def test_table_to_batch_reads_the_extras(two):
    out, manifest = two
    data = PreparedData(out)
    table = _rows(out, manifest, "test").slice(0, 20)
    batch = table_to_batch(table, data.has_categories, data.history_extras)
    flat = pa.compute.list_flatten(table.column("hist_ts_delta")).to_numpy()
    assert batch.hist_times.tolist() == flat.astype(np.float32).tolist()
    assert batch.hist_modality_sims.shape == (len(flat), 2)
    assert table_to_batch(table, data.has_categories).hist_times is None
