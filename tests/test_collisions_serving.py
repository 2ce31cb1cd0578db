"""Serving a model trained with managed collisions (models/collisions.py): its exported
artifacts carry the id maps (models/id_map.py) and score raw ids as the model does: an
admitted id (one beyond the vocabulary included) with its own row, a never-admitted one
with the table's miss row; an artifact without managed collisions is as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.modules.mc_modules import _mch_remap
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from models.ctr import CTRModel
from models.id_map import INPUT_ID_SPACE, id_map_of, remap_bucketed_ids, spread_ids
from models.scorer import scorer_from_model
from pipeline import artifact, export, score_requests
from pipeline.data import PreparedData
from tests.fixtures import write_serving_data
from tests.test_collisions import NEW, ROOT, _new_id_stream, _train
from tests.test_export_formats import run_fresh
from tests.test_serving import random_model, spec_of, training_ctr

# Admitted users beyond the 40-user vocabulary: old ids + NEW (as tests/test_collisions.py).
OLD_USERS = [2, 3, 4, 5]
NEW_USERS = [u + NEW for u in OLD_USERS]
SEEN_ITEMS = [2, 3, 5, 7, 11, 13, 17, 19]  # admitted; the other items never were
NEVER_USER = 10**12  # never admitted: the user table's miss row


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return PreparedData(write_serving_data(tmp_path_factory.mktemp("prepared")))


def _admission_batch(users: list[int], items: list[int], cats: np.ndarray) -> KeyedJaggedTensor:
    """One id per row of every feature of the model's EmbeddingCollection."""
    n = len(users)
    item_cats = cats[items].tolist()
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item", "hist_item", "category", "hist_category"],
        values=torch.tensor(users + items + items + item_cats + item_cats, dtype=torch.int64),
        lengths=torch.ones(5 * n, dtype=torch.int32),
    )


def mc_model(data: PreparedData, name: str = "dmf") -> CTRModel:
    """A random model with managed collisions that has admitted OLD_USERS, NEW_USERS (beyond
    the vocabulary) and SEEN_ITEMS with their categories, in eval mode."""
    model = random_model(
        name, spec_of(data, True), seed=2, managed_collisions=True, mc_eviction_interval=1
    )
    cats = np.load(data.root / "item_category.npy")
    model.train()
    with torch.no_grad():
        for users in (OLD_USERS, OLD_USERS, NEW_USERS, NEW_USERS):
            model.sparse_arch(_admission_batch(users * 2, SEEN_ITEMS, cats))
    return model.eval()


def mc_requests() -> list[tuple[list[int], int, list[int]]]:
    """(history, raw user, candidates): admitted users old and new, a never-admitted one;
    admitted and never-admitted items; an empty history and a single candidate."""
    return [
        ([2, 3, 5], NEW_USERS[0], [7, 11, 4, 6]),  # 4, 6: items never admitted
        ([], NEW_USERS[1], [13]),
        ([17, 8, 19, 2], OLD_USERS[2], [3, 9, 5]),
        ([11, 13], NEVER_USER, [2, 7, 30]),
        ([11, 13], NEVER_USER + 1, [2, 7, 30]),  # another never-admitted id: the same row
    ]


def expected_ctrs(model: CTRModel, data: PreparedData, reqs: list) -> list[torch.Tensor]:
    """sigmoid(CTRModel(batch)) of each request: the model's own scores, its MCH modules
    mapping the raw ids."""
    cats = np.load(data.root / "item_category.npy")
    scorer = scorer_from_model(model, data.item_mm, cats)
    return [
        training_ctr(model, scorer, np.array(h, dtype=np.int64), u, np.array(c), cats)
        for h, u, c in reqs
    ]


def served_ctrs(scorer, reqs: list) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [
            scorer.score(scorer.encode_user(torch.tensor(h, dtype=torch.long), torch.tensor(u)),
                         torch.tensor(c))
            for h, u, c in reqs
        ]  # fmt: skip


@pytest.fixture(scope="module")
def mc(data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The model, its pt2 and torchscript artifacts, and the model's own scores."""
    tmp = tmp_path_factory.mktemp("mc-artifacts")
    model = mc_model(data)
    paths = {
        kind: export.export_model(model, data, tmp / f"dmf{export.SUFFIX[kind]}", kind=kind)
        for kind in ("pt2", "torchscript")
    }
    reqs = mc_requests()
    return {"model": model, "paths": paths, "requests": reqs, "expected": expected_ctrs(
        model, data, reqs)}  # fmt: skip


def test_the_model_admitted_new_ids(mc: dict) -> None:
    """The fixture's premise: new users (beyond the vocabulary) have rows of their own."""
    info = artifact.read_metadata(mc["paths"]["pt2"])
    maps = info["managed_collisions"]["id_maps"]
    assert info["managed_collisions"]["input_id_space"] == INPUT_ID_SPACE
    assert info["managed_collisions"]["id_spread"] == "fibonacci62"
    assert maps["user"]["admitted"] == len(OLD_USERS + NEW_USERS)
    assert maps["item"]["admitted"] == len(SEEN_ITEMS)
    scorer, _ = artifact.load_artifact(mc["paths"]["pt2"])
    assert maps["user"]["buckets"] == maps["item"]["buckets"] == 1  # one rank: one miss row
    assert scorer.tables["user_miss_rows"].tolist() == [info["num_users"] - 1]
    assert scorer.tables["item_miss_rows"].tolist() == [info["num_items"] - 1]
    assert all(u >= info["num_users"] for u in NEW_USERS)


@pytest.mark.parametrize("kind", ["pt2", "torchscript"])
def test_artifact_scores_raw_ids_as_the_model(mc: dict, kind: str) -> None:
    """(a) admitted raw ids, beyond the vocabulary included, score as the model's own
    forward; (b) never-admitted ids score with the miss row, as in the model."""
    scorer, info = artifact.load_artifact(mc["paths"][kind])
    got = served_ctrs(scorer, mc["requests"])
    for i, (g, e) in enumerate(zip(got, mc["expected"])):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0, msg=f"{kind} request {i}")
    # Two never-admitted users share the miss row; an admitted one has its own.
    torch.testing.assert_close(got[3], got[4], atol=0, rtol=0)
    same_request = served_ctrs(scorer, [(mc["requests"][3][0], NEW_USERS[0], [2, 7, 30])])[0]
    assert (same_request - got[3]).abs().max() > 1e-4


def test_eager_scorer_maps_ids_to_the_models_rows(mc: dict, data: PreparedData) -> None:
    """The scorer's rows are the MCH modules' own remapping (miss row included)."""
    model = mc["model"]
    scorer = scorer_from_model(model, data.item_mm, np.load(data.root / "item_category.npy"))
    modules = model.sparse_arch.embedding_collection._managed_collision_collection
    users = torch.tensor([*OLD_USERS, *NEW_USERS, NEVER_USER])
    items = torch.arange(40)
    for kind, ids, rows_with in (
        ("user", users, scorer.user_rows_with),
        ("item", items, scorer.item_rows_with),
    ):
        module = modules._managed_collision_modules[f"t_{kind}"]
        jt = JaggedTensor(values=ids, lengths=torch.ones_like(ids, dtype=torch.int32))
        theirs = module.remap(module.preprocess({kind: jt}))[kind].values()
        assert rows_with(scorer.tables(), ids).tolist() == theirs.tolist()
    assert scorer.user_rows_with(scorer.tables(), torch.tensor([NEVER_USER])).tolist() == [
        scorer.user_table.shape[0] - 1
    ]


def test_artifacts_load_with_torch_only(mc: dict) -> None:
    paths = {f"dmf/{kind}": str(path) for kind, path in mc["paths"].items()}
    result = run_fresh(paths, [list(r) for r in mc["requests"]], Path(mc["paths"]["pt2"]).parent)
    assert result["leaked"] == []
    for key in paths:
        for i, expected in enumerate(mc["expected"]):
            got = torch.tensor(result["results"][key]["scores"][i])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=f"{key} {i}")
    # docs/serving.md's plain-torch recipe: the id maps are tables, raw ids go in as they are
    plain = torch.tensor(result["results"]["plain_torch"])
    torch.testing.assert_close(plain, mc["expected"][0], atol=1e-5, rtol=0)


def _requests_table(reqs: list) -> pa.Table:
    return pa.table(
        {
            "request_id": pa.array(range(len(reqs)), pa.int64()),
            "user": pa.array([u for _, u, _ in reqs], pa.int64()),
            "hist_items": pa.array([h for h, _, _ in reqs], pa.list_(pa.int64())),
            "candidates": pa.array([c for _, _, c in reqs], pa.list_(pa.int64())),
        }
    )


def test_score_requests_takes_raw_ids(mc: dict, tmp_path: Path) -> None:
    """The batch job scores raw users of an artifact with managed collisions (beyond its
    user table), refuses users outside the raw id space and items outside item_mm."""
    reqs = mc["requests"] + [([2], INPUT_ID_SPACE, [3]), ([2], NEW_USERS[0], [40])]
    pq.write_table(_requests_table(reqs), tmp_path / "r.parquet")
    stats = score_requests.run(mc["paths"]["pt2"], tmp_path / "r.parquet", tmp_path / "s.parquet")
    assert stats["scored"] == len(mc["requests"]) and stats["rejected"] == {"id_out_of_range": 2}
    out = pq.read_table(tmp_path / "s.parquet")
    for i, expected in enumerate(mc["expected"]):
        rows = out.filter(pa.compute.equal(out.column("request_id"), i))
        got = torch.tensor(rows.column("score").to_numpy())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=str(i))
    rejects = (tmp_path / "s.rejects.jsonl").read_text()
    assert "input_id_space" in rejects and "multimodal table" in rejects


def test_an_artifact_without_managed_collisions_is_unchanged(
    data: PreparedData, tmp_path: Path
) -> None:
    """(c) no id maps (empty tables, no `managed_collisions` in serving.json), ids are
    rows: it scores as the training forward and refuses a user beyond its table."""
    model = random_model("dmf", spec_of(data, True), seed=2)
    path = export.export_model(model, data, tmp_path / "plain.pt2")
    scorer, info = artifact.load_artifact(path)
    assert "managed_collisions" not in info
    maps = [f"{kind}_{part}" for kind in ("user", "item") for part in ("raw_ids", "id_rows")]
    for name in [*maps, "user_miss_rows", "item_miss_rows"]:
        assert info["tables"][name]["shape"] == [0] and scorer.tables[name].numel() == 0
    reqs = [([2, 3, 5], 7, [7, 11, 4]), ([], 39, [13])]
    for got, expected in zip(served_ctrs(scorer, reqs), expected_ctrs(model, data, reqs)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    pq.write_table(_requests_table([*reqs, ([2], NEW_USERS[0], [3])]), tmp_path / "r.parquet")
    stats = score_requests.run(path, tmp_path / "r.parquet", tmp_path / "s.parquet")
    assert stats["scored"] == 2 and stats["rejected"] == {"id_out_of_range": 1}
    assert "out of vocabulary" in (tmp_path / "s.rejects.jsonl").read_text()


def test_a_map_split_in_buckets_maps_as_each_bucket_did(data: PreparedData) -> None:
    """A map trained on 2 ranks (2 buckets of the raw id space, each sorted in its own
    rows with its own miss row): one sorted map and a miss row per bucket give what
    torchrec's remap gives bucket by bucket."""
    model = mc_model(data)
    modules = model.sparse_arch.embedding_collection._managed_collision_collection
    module = modules._managed_collision_modules["t_user"]
    rows, half, width = 40, 20, INPUT_ID_SPACE // 2
    end = torch.iinfo(torch.int64).max
    buckets = [[4, 1023], [width + 3, width + 1000, width + 5000]]  # admitted, per bucket
    raw = torch.full((rows,), end)
    mapping = torch.arange(rows)
    for b, ids in enumerate(buckets):
        raw[b * half : b * half + len(ids)] = torch.tensor(ids)
        mapping[b * half : (b + 1) * half - 1] = b * half + torch.randperm(half - 1)
    with torch.no_grad():
        module._mch_sorted_raw_ids.copy_(raw)
        module._mch_remapped_ids_mapping.copy_(mapping)
    module._buckets = 2
    id_map = id_map_of(module, "t_user")
    assert id_map.miss_rows.tolist() == [half - 1, rows - 1] and id_map.bucket_width == width
    module.validate_state()  # what loading a state dict does: the whole buffer re-sorted
    assert not torch.equal(module._mch_sorted_raw_ids, raw)  # bucket 1's ids moved up
    for resorted, merged in zip(id_map_of(module, "t_user"), id_map):
        assert torch.equal(torch.as_tensor(resorted), torch.as_tensor(merged))  # the same map
    with torch.no_grad():
        module._mch_sorted_raw_ids.copy_(raw)
        module._mch_remapped_ids_mapping.copy_(mapping)
    queries = [[4, 1023, 5, 0, 2**40], [width + 3, width + 5000, width, width + 4, 2 * width - 1]]
    for b, ids in enumerate(queries):
        jt = JaggedTensor(values=torch.tensor(ids), lengths=torch.ones(len(ids), dtype=torch.int32))
        segment = slice(b * half, (b + 1) * half)
        theirs = _mch_remap({"user": jt}, raw[segment], mapping[segment], (b + 1) * half - 1)
        ours = remap_bucketed_ids(torch.tensor(ids), *id_map)
        assert ours.tolist() == theirs["user"].values().tolist()
    module._mch_sorted_raw_ids[2] = width + 7  # bucket 1's id in bucket 0's rows
    with pytest.raises(ValueError, match="t_user: an admitted id lies outside its bucket"):
        id_map_of(module, "t_user")


@pytest.mark.slow
def test_aoti_package_scores_raw_ids_as_the_model(
    mc: dict, data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AOTInductor package of the same model (a C++ compile per program)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    path = export.export_model(mc["model"], data, tmp_path / "dmf.aoti.pt2", kind="aoti")
    result = run_fresh({"dmf/aoti": str(path), "dmf/pt2": str(mc["paths"]["pt2"])},
                       [list(r) for r in mc["requests"]], tmp_path)  # fmt: skip
    assert result["leaked"] == []
    for i, expected in enumerate(mc["expected"]):
        got = torch.tensor(result["results"]["dmf/aoti"]["scores"][i])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=str(i))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "world", [1, pytest.param(2, marks=pytest.mark.multiprocess, id="2-ranks")], ids=str
)
def test_a_run_exports_and_evaluates_as_the_trainer(tmp_path: Path, world: int) -> None:
    """pipeline.train with managed collisions on a stream whose test users are all beyond
    the vocabulary, on 1 rank and on 2 (gloo: the maps in 2 buckets), then `pipeline.export
    --run R --evaluate test`: the artifact's test AUC and log loss are the trainer's (its
    own sharded forward, never-admitted users in their bucket's miss row), and its user map
    holds the new users."""
    data = _new_id_stream(tmp_path / "data")
    out = tmp_path / "mc"
    args = ["--data", str(data), "--batch-size", "16", "--model-arg", "embedding_dim=8",
            "--output-dir", str(out), "--max-steps", "20", "--checkpoint-every", "20",
            "--model-arg", "managed_collisions=true", "--model-arg", "mc_eviction_interval=2"]  # fmt: skip
    run = _train(args, world, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    cli = [sys.executable, "-m", "pipeline.export", "--run", str(out), "--evaluate", "test"]
    exported = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    served = json.loads(exported.stdout[exported.stdout.index("{") :])
    trained = json.loads((out / "metrics.json").read_text())["test"]
    assert served["rows"] == trained["samples"] == 80
    # The same scores to float rounding: the trainer scores with fbgemm's sharded kernels
    # and the shards' similarities, the artifact recomputes the similarities in float32
    # from its tables, so two near-tied rows may swap order. AUC is then off by one pair
    # of positive x negative rows (seen on one CPU: 1 of 1,596 pairs), and the log loss by
    # the float32 rounding of the probabilities (1.7e-6 there); a real difference (another
    # user row, another item) moves both by far more (1e-2 and up).
    labels = pq.read_table(data / "test").column("label").to_numpy()
    one_pair = 1.0 / (int(labels.sum()) * int((1 - labels).sum()))
    assert served["auc"] == pytest.approx(trained["auc"], abs=one_pair + 1e-9)
    assert served["logloss"] == pytest.approx(trained["logloss"], abs=1e-5)
    scorer, info = artifact.load_artifact(out / "scorer.pt2")
    new_users = spread_ids(torch.arange(NEW, NEW + 40))  # the maps hold spread ids
    assert int(torch.isin(scorer.tables["user_raw_ids"], new_users).sum()) > 0
    rows_per_bucket = info["num_users"] // world
    misses = [(b + 1) * rows_per_bucket - 1 for b in range(world)]
    assert scorer.tables["user_miss_rows"].tolist() == misses
