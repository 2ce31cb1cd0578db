"""The embedded default dataset: structure, determinism, idempotence, planted signal."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_prep.__main__ import main
from data_prep.default_job import build_default
from data_prep.similarity import SimilarityHistogram, bucketize


def _read(out, split):
    manifest = json.loads((out / "manifest.json").read_text())
    return pq.read_table([str(out / p) for p in manifest["splits"][split]])


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    order = np.argsort(np.r_[pos, neg], kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    assert build_default(out, seed=0) is not None
    return out


def test_manifest_follows_contract(default_dir):
    manifest = json.loads((default_dir / "manifest.json").read_text())
    assert manifest["job"] == "synthetic" and manifest["schema_version"] == 1
    assert set(manifest["counts"]) == {"train", "valid", "test"}
    assert 150_000 <= manifest["counts"]["train"] <= 250_000
    records = manifest["records"]
    assert records["read"] == records["used"] + sum(records["rejected"].values())
    assert len(manifest["buckets"]["boundaries"]) == manifest["buckets"]["num_buckets"] - 1
    mm = np.load(default_dir / "item_mm.npy")
    assert mm.shape == (manifest["vocab_sizes"]["item"], manifest["item_embeddings"]["dim"])
    assert not mm[:2].any() and np.allclose(np.linalg.norm(mm[2:], axis=1), 1, atol=1e-5)
    assert (default_dir / "raw" / "interactions.parquet").exists()


def test_samples_are_consistent(default_dir):
    manifest = json.loads((default_dir / "manifest.json").read_text())
    mm = np.load(default_dir / "item_mm.npy")
    train = _read(default_dir, "train")
    user = train.column("user").to_numpy()
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    assert len(starts) == len(np.unique(user))  # one contiguous run per user
    hist = train.column("hist_items").to_pylist()
    sims = train.column("hist_sims").to_pylist()
    items = train.column("item").to_numpy()
    for i in range(0, len(hist), 997):
        assert len(hist[i]) <= manifest["max_history"]
        assert np.allclose(sims[i], mm[hist[i]] @ mm[items[i]], atol=1e-5)
    flat = np.concatenate([np.asarray(s, dtype=np.float32) for s in sims])
    counts = np.bincount(
        bucketize(flat, np.asarray(manifest["buckets"]["boundaries"], np.float32)), minlength=35
    )
    assert counts.min() > 0.9 * len(flat) / 35  # equal frequency on train


def test_planted_signal(default_dir):
    test = _read(default_dir, "test")
    label = test.column("label").to_numpy()
    recent = np.array(
        [np.mean(s[-10:]) if s else 0.0 for s in test.column("hist_sims").to_pylist()]
    )
    assert _auc(label, recent) > 0.6
    train = _read(default_dir, "train")
    clicks = np.bincount(train.column("item").to_numpy(), weights=train.column("label").to_numpy())
    clicks = np.r_[clicks, np.zeros(1 + test.column("item").to_numpy().max())]
    assert 0.52 < _auc(label, clicks[test.column("item").to_numpy()]) < _auc(label, recent)


def test_idempotent_and_deterministic(default_dir, tmp_path, capsys):
    main(["default", "--out", str(default_dir)])
    assert "skipped" in capsys.readouterr().out
    assert build_default(tmp_path / "again", seed=0) is not None
    for split in ("train", "test"):
        assert _read(default_dir, split).equals(_read(tmp_path / "again", split))
    assert build_default(tmp_path / "other", seed=1) is not None
    assert not _read(default_dir, "test").equals(_read(tmp_path / "other", "test"))


def test_boundaries_come_from_training_similarities_only(default_dir):
    manifest = json.loads((default_dir / "manifest.json").read_text())

    def histogram(*splits: str) -> SimilarityHistogram:
        h = SimilarityHistogram()
        for split in splits:
            h.add(pc.list_flatten(_read(default_dir, split).column("hist_sims")).to_numpy())
        return h

    train_only = histogram("train").equal_frequency_boundaries(35).tolist()
    assert manifest["buckets"]["boundaries"] == train_only
    assert histogram("train", "valid", "test").equal_frequency_boundaries(35).tolist() != train_only
