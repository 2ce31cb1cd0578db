"""Serving scorers against the training forward, the batch scoring job, the export CLI
and a tiny benchmark run (every artifact format of every model: test_export_formats.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed.checkpoint as dcp

from models.buckets import Bucketizer, bucketize
from models.ctr import CTRModel, CTRTask
from models.features import FeatureSpec
from models.scorer import CTRScorer, scorer_from_model, servable
from models.zoo import MODELS, build_model, make_config
from pipeline import bench_serving, export, score_requests
from pipeline.checkpoint import write_checksums
from pipeline.data import PreparedData, table_to_batch
from pipeline.export import export_model
from tests.fixtures import write_serving_data

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"embedding_dim": 8, "hidden_dim": 16, "num_heads": 4, "mlp_dims": [12]}


def random_model(name: str, spec: FeatureSpec, seed: int, **overrides: object) -> CTRModel:
    """A zoo model with all weights drawn N(0, 0.3) (trained-looking, not init-looking)."""
    torch.manual_seed(seed)
    model = build_model(name, spec, make_config(name, {**SMALL, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return PreparedData(write_serving_data(tmp_path_factory.mktemp("prepared")))


def spec_of(data: PreparedData, categories: bool) -> FeatureSpec:
    spec = data.feature_spec()
    return spec if categories else dataclasses.replace(spec, num_categories=0)


def training_ctr(
    model: CTRModel,
    scorer: CTRScorer,
    hist: np.ndarray,
    user: int,
    cands: np.ndarray,
    categories: np.ndarray | None,
) -> torch.Tensor:
    """sigmoid(CTRModel(batch)) for one request as B training rows, through table_to_batch.

    hist_sims are the scorer's similarities, so both sides bucketize the same numbers.
    """
    sims = scorer.similarities(
        scorer.encode_user(torch.tensor(hist), torch.tensor(user)), torch.tensor(cands)
    )
    b = len(cands)
    columns = {
        "user": pa.array([user] * b, pa.int64()),
        "item": pa.array(cands, pa.int64()),
        "label": pa.array(np.zeros(b, np.float32)),
        "hist_items": pa.array([hist.tolist()] * b, pa.list_(pa.int64())),
        "hist_sims": pa.array(sims.numpy().tolist(), pa.list_(pa.float32())),
    }
    if categories is not None:
        columns["category"] = pa.array(categories[cands], pa.int64())
        columns["hist_categories"] = pa.array([categories[hist].tolist()] * b, pa.list_(pa.int64()))
    batch = table_to_batch(pa.table(columns), has_categories=categories is not None)
    with torch.no_grad():
        return torch.sigmoid(model(batch))


# Every model of the zoo, from its per-user cache and per candidate (the training form),
# with and without categories, plus DMF's activity gate.
CASES = [
    *[
        (name, per_candidate, False, {})
        for name in sorted(MODELS)
        for per_candidate in (False, True)
    ],
    *[(name, False, True, {}) for name in ("dmf", "dta", "ta", "ta_early", "din", "sasrec")],
    ("dmf", False, False, {"activity_gate": True}),
]


def test_every_model_is_served() -> None:
    assert {case[0] for case in CASES} == set(MODELS)


@pytest.mark.parametrize(("name", "per_candidate", "categories", "overrides"), CASES)
def test_scorer_equals_training_forward(
    data: PreparedData, name: str, per_candidate: bool, categories: bool, overrides: dict
) -> None:
    model = random_model(name, spec_of(data, categories), seed=1, **overrides)
    assert servable(model.over_arch.interest)
    if getattr(model.over_arch.interest, "needs_times", False):
        pytest.skip(
            f"{name} takes the behaviour times with the request: checked against the training "
            "forward on data with times (tests/test_dmae.py::test_scorer_serves_dmae_*)"
        )
    cats = np.load(data.root / "item_category.npy") if categories else None
    scorer = scorer_from_model(model, data.item_mm, cats, per_candidate=per_candidate, chunk=4)
    rng = np.random.default_rng(7)
    num_items = data.vocab_sizes["item"]
    for length, count in [(0, 3), (1, 5), (6, 9), (8, 1), (30, 11)]:
        hist = rng.integers(2, num_items, size=length)
        cands = rng.integers(0, num_items, size=count)  # 0 and 1 (padding, OOV) too
        user = int(rng.integers(2, data.vocab_sizes["user"]))
        expected = training_ctr(model, scorer, hist, user, cands, cats)
        state = scorer.encode_user(torch.tensor(hist), torch.tensor(user))
        got = scorer.score(state, torch.tensor(cands))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_scorer_leaves_the_model_trainable(data: PreparedData) -> None:
    model = random_model("dmf", spec_of(data, False), seed=1).train()
    scorer_from_model(model, data.item_mm)
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "boundaries",
    [
        [-0.3, 0.0, 0.1, 0.5],
        [0.01, 0.01, 0.01002, 0.0101, 0.5],  # duplicates and boundaries 1e-5 apart
        np.sort(np.random.default_rng(0).normal(0, 0.05, 34)).tolist(),
        [-1.0, 1.0],
        [],
    ],
)
def test_serving_bucketize_equals_training(boundaries: list[float]) -> None:
    b = torch.tensor(boundaries, dtype=torch.float32)
    rng = np.random.default_rng(1)
    sims = [rng.uniform(-1.2, 1.2, 2000), rng.normal(0, 0.05, 2000), [-1.0, 0.0, 1.0]]
    if boundaries:
        exact = b.numpy()
        sims += [exact, np.nextafter(exact, -2), np.nextafter(exact, 2)]
    s = torch.tensor(np.concatenate(sims), dtype=torch.float32).reshape(1, -1)
    got = Bucketizer(b)(s)
    assert torch.equal(got, bucketize(s, b))
    assert np.array_equal(got.numpy(), np.searchsorted(b.numpy(), s.numpy(), side="right"))


def test_score_requests_job(data: PreparedData, tmp_path: Path) -> None:
    model = random_model("dta", spec_of(data, False), seed=3)
    artifact = export_model(model, data, tmp_path / "scorer.pt2")
    rng = np.random.default_rng(4)
    requests = pa.table(
        {
            "request_id": pa.array(["a", "b", "c", "d"]),
            "user": pa.array([3, 4, 5, 3], pa.int64()),
            "hist_items": pa.array([[2, 5, 9], [], [7] * 8, [30, 31]], pa.list_(pa.int64())),
            "candidates": pa.array(
                [rng.integers(2, 40, 6).tolist(), [2, 3], [], [39]], pa.list_(pa.int64())
            ),
        }
    )
    pq.write_table(requests, tmp_path / "requests.parquet", row_group_size=2)
    out = tmp_path / "scores.parquet"
    assert (
        score_requests.main(
            [
                "--artifact",
                str(artifact),
                "--requests",
                str(tmp_path / "requests.parquet"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    scores = pq.read_table(out).to_pylist()
    rejected = [json.loads(line) for line in (tmp_path / "scores.rejects.jsonl").open()]
    assert [(r["request_id"], r["reason"]) for r in rejected] == [("c", "no_candidates")]
    scorer = scorer_from_model(model, data.item_mm)
    expected = []
    for row in requests.to_pylist():
        if row["candidates"]:
            state = scorer.encode_user(
                torch.tensor(row["hist_items"], dtype=torch.long), torch.tensor(row["user"])
            )
            ctr = scorer.score(state, torch.tensor(row["candidates"])).tolist()
            expected += [(row["request_id"], c, s) for c, s in zip(row["candidates"], ctr)]
    assert [(r["request_id"], r["candidate"]) for r in scores] == [e[:2] for e in expected]
    np.testing.assert_allclose([r["score"] for r in scores], [e[2] for e in expected], atol=1e-6)


def test_bench_serving_tiny_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--candidates",
        "6",
        "--history",
        "5",
        "--hidden",
        "16",
        "--heads",
        "2",
        "--buckets",
        "5",
        "--items",
        "60",
        "--users",
        "10",
        "--threads",
        "1",
        "--requests",
        "2",
        "--warmup",
        "1",
        "--slow-every",
        "1",
        "--format",
        "eager",
        "--malloc",
        "default",
        "--json",
        str(out),
    ]
    assert bench_serving.main(argv) == 0
    result = json.loads(out.read_text())
    for key in ("config", "peak_gflops", "qps", "latency_ms", "flops", "ratios", "ratios_min"):
        assert key in result
    assert set(result["qps"]) == set(bench_serving.KEYS)
    assert set(result["ratios"]) >= {"dta_over_early_fusion", "dta_over_ta"}
    assert result["flops"]["early_fusion"] > result["flops"]["dta"] > 0


def test_export_cli_from_a_training_run_checkpoint(data: PreparedData, tmp_path: Path) -> None:
    """A run directory as pipeline.train writes it (metrics.json + DCP checkpoint of the
    CTRTask state under "model") -> `python -m pipeline.export` -> same CTRs."""
    model = random_model("dta_non_invasive", spec_of(data, True), seed=5)
    run = tmp_path / "run"
    step = run / "checkpoints/step-00000001"
    dcp.save({"model": CTRTask(model).state_dict()}, checkpoint_id=str(step))
    write_checksums(step)  # what the trainer writes beside every checkpoint
    (run / "checkpoints/latest").write_text(step.name)
    metrics = {
        "model": "dta_non_invasive",
        "model_config": SMALL,
        "data": {"path": str(data.root), "manifest_checksum": data.checksum},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert export.main(["--run", str(run)]) == 0  # pt2, RUN/scorer.pt2
    scorer, info = export.load_artifact(run / "scorer.pt2")
    assert info["model"] == "dta_non_invasive" and info["max_history"] == data.max_history
    assert info["format"] == "pt2" and info["table_dtype"] == "fp32"
    cats = np.load(data.root / "item_category.npy")
    hist, cands = np.array([4, 8, 15, 16, 23]), np.array([2, 3, 39, 17])
    state = scorer.encode_user(torch.tensor(hist), torch.tensor(6))
    expected = training_ctr(
        model, scorer_from_model(model, data.item_mm, cats), hist, 6, cands, cats
    )
    torch.testing.assert_close(
        scorer.score(state, torch.tensor(cands)), expected, atol=1e-5, rtol=0
    )


def test_score_requests_rejects_ids_outside_the_tables(data: PreparedData, tmp_path: Path) -> None:
    model = random_model("dta", spec_of(data, False), seed=3)
    scorer, _ = export.load_artifact(export_model(model, data, tmp_path / "scorer.pt2"))
    num_items = scorer.num_items
    requests = pa.table(
        {
            "request_id": pa.array(["ok", "bad"]),
            "user": pa.array([3, 4], pa.int64()),
            "hist_items": pa.array([[2], [3]], pa.list_(pa.int64())),
            "candidates": pa.array([[2, 3], [4, num_items]], pa.list_(pa.int64())),
        }
    )
    with pytest.raises(ValueError, match=rf"row 1 \(request_id 'bad'\): candidate id {num_items}"):
        score_requests.score_table(scorer, requests)
