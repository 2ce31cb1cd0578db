"""The feature schema (models/schema.py, docs/feature-schema.md): the file format, the logs
job reading the columns it names (rejects accounted), the reader's pooled KJT and dense
tensor, the EmbeddingBagCollection in the sharding plan, and the planted-signal data on
which the features raise AUC (the test fails when a feature is dropped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_prep.logs_job import LogsConfig, run_logs
from data_prep.protocols import Protocol
from data_prep.synthetic import SyntheticConfig, write_raw
from models.schema import DEFAULT_SCHEMA, SchemaError, load_schema, schema_from_dict
from pipeline.data import PreparedData, table_to_batch


def prepare(
    root: Path, generator: SyntheticConfig, row_group_size: int = 65_536, max_history: int = 20
) -> Path:
    write_raw(generator, root / "raw")
    config = LogsConfig(
        interactions=str(root / "raw" / "interactions.parquet"),
        items=str(root / "raw" / "items.parquet"),
        out=root / "prep",
        protocol=Protocol(name="temporal", max_history=max_history),
        schema=load_schema(root / "raw" / "schema.json"),
        users=root / "raw" / "users.parquet",
        row_group_size=row_group_size,
    )
    run_logs(config)
    return root / "prep"


SMALL = SyntheticConfig(users=200, items=150, days=4, styles=0, dim=16, features=True)
# Planted signal strong enough to be measured in one short epoch: many items and users with
# few impressions each, so neither the item ID (price) nor the user ID (segment) learns
# what the features carry.
PLANTED = SyntheticConfig(
    users=1500, items=2000, days=6, requests_per_day=1.0, styles=0, dim=16, features=True,
    w_price=2.0, w_segment=4.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(tmp_path_factory.mktemp("small"), SMALL, row_group_size=100)


# ----------------------------------------------------------------------- the format
def test_a_schema_file_reads_back_from_its_manifest_form(tmp_path: Path):
    path = tmp_path / "schema.yaml"
    path.write_text(
        "features:\n"
        "  - {name: device, kind: sparse, source: event, hash_buckets: 100, dim: 4, table: t_ctx}\n"
        "  - {name: page, kind: sparse, source: event, hash_buckets: 100, dim: 4, table: t_ctx}\n"
        "  - {name: brand, kind: sequence, source: item, vocab: auto}\n"
        "  - {name: tags, kind: sparse, source: user, vocab: [a, b, c], multi_valued: true,"
        " separator: '|', pooling: mean}\n"
        "  - {name: price, kind: dense, source: item, transform: log1p, fill: 0}\n"
    )
    schema = load_schema(path)
    assert [f.name for f in schema.pooled] == ["device", "page", "tags"]
    assert list(schema.pooled_tables()) == ["t_ctx", "t_tags"]  # device and page share one
    assert [f.name for f in schema.extra_sequence] == ["brand"]
    assert schema_from_dict(schema.as_dict()) == schema
    assert not DEFAULT_SCHEMA.extended and [f.name for f in DEFAULT_SCHEMA.features] == [
        "user",
        "item",
        "category",
    ]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "d", "kind": "sparse", "vocab": "auto"}, "event column"),
        ({"name": "d", "kind": "sparse", "hash_buckets": 4, "colour": 1}, "unknown keys"),
        ({"name": "d", "kind": "sparse"}, "exactly one of vocab"),
        ({"name": "d", "kind": "sequence", "hash_buckets": 4}, "item attribute"),
        ({"name": "hist_x", "kind": "dense"}, "reserved"),
        (
            {
                "name": "d",
                "kind": "sparse",
                "source": "item",
                "hash_buckets": 4,
                "multi_valued": True,
            },
            "user-table",
        ),  # fmt: skip
    ],
)
def test_a_bad_schema_is_refused_naming_file_and_feature(tmp_path: Path, entry, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"features": [entry]}))
    with pytest.raises(SchemaError, match=message) as error:
        load_schema(path)
    assert str(path) in str(error.value) and repr(entry["name"]) in str(error.value)


def test_tables_shared_by_features_must_agree(tmp_path: Path):
    features = [
        {"name": "a", "kind": "sparse", "hash_buckets": 10, "table": "t"},
        {"name": "b", "kind": "sparse", "hash_buckets": 10, "table": "t", "dim": 4},
    ]
    with pytest.raises(SchemaError, match="shares table 't' with 'a'"):
        schema_from_dict({"features": features})


# ------------------------------------------------------------------------ data prep
def test_the_logs_job_writes_the_schema_columns_and_manifest(small: Path):
    data = PreparedData(small, verify="full")
    manifest = data.manifest
    assert [f["name"] for f in manifest["features"]["features"]][3:] == [
        "segment", "age", "brand", "price", "device", "hour",
    ]  # fmt: skip
    sizes = manifest["vocab_sizes"]
    assert sizes["segment"] == SMALL.segments + 2 and sizes["brand"] == 66 and sizes["device"] == 5
    assert "features/item_price.npy" in manifest["files"]
    table = pq.read_table(data.split_files("train")[0])
    users = pq.read_table(small.parent / "raw" / "users.parquet").to_pydict()
    vocab = pq.read_table(small / "vocab" / "user.parquet").to_pydict()
    segments = pq.read_table(small / "vocab" / "segment.parquet").to_pydict()
    segment_of = dict(zip(users["user_id"], users["segment"]))
    index_of = dict(zip(segments["raw_id"], segments["index"]))
    raw_user = dict(zip(vocab["index"], vocab["raw_id"]))
    for user, segment in zip(table.column("user").to_pylist(), table.column("segment").to_pylist()):
        assert index_of[segment_of[raw_user[user]]] == segment
    assert table.column("price").type == pa.float32()
    assert np.all(np.isfinite(table.column("price").to_numpy()))


def test_bad_feature_values_are_rejected_and_accounted(tmp_path: Path):
    raw = tmp_path / "raw"
    write_raw(SMALL, raw)
    items = pq.read_table(raw / "items.parquet")
    price = items.column("price").to_numpy().copy()
    price[[3, 7]] = [np.nan, -5.0]  # not a number; log1p of a negative price
    items = items.set_column(items.schema.get_field_index("price"), "price", pa.array(price))
    pq.write_table(items, raw / "items.parquet")
    users = pq.read_table(raw / "users.parquet")
    age = [str(a) for a in users.column("age").to_pylist()]
    age[5] = "old"  # not a number
    users = users.set_column(users.schema.get_field_index("age"), "age", pa.array(age))
    pq.write_table(users, raw / "users.parquet")
    config = LogsConfig(
        interactions=str(raw / "interactions.parquet"),
        items=str(raw / "items.parquet"),
        out=tmp_path / "prep",
        protocol=Protocol(name="temporal", max_history=20),
        schema=load_schema(raw / "schema.json"),
        users=raw / "users.parquet",
    )
    records = run_logs(config)["records"]
    assert records["read"] == records["used"] + sum(records["rejected"].values())
    assert records["rejected"]["bad_feature_value"] >= 2  # the NaN price and the "old" age
    assert records["rejected"]["feature_out_of_range"] == 1  # the negative price
    lines = [json.loads(x) for x in (tmp_path / "prep" / "rejects.jsonl").read_text().splitlines()]
    by_reason = {(r["file"], r["reason"]) for r in lines}
    assert ("items.parquet", "feature_out_of_range") in by_reason
    assert ("users.parquet", "bad_feature_value") in by_reason
    assert any("'feature': 'age'" in r["excerpt"] for r in lines)


# --------------------------------------------------------------------------- reader
def test_the_reader_builds_a_pooled_kjt_and_a_dense_tensor(small: Path):
    data = PreparedData(small)
    files = data.split_files("train")
    whole = table_to_batch(
        pa.concat_tables(pq.read_table(f) for f in files), True, data.history_extras
    )
    # batches of 64 over row groups of 100 rows: some batches are cut by row-group edges
    batches = list(data.reader("train", 64))
    assert batches[0].pooled_features.keys() == ["segment", "brand", "device"]
    assert batches[0].dense_features.shape == (64, 3)
    assert torch.equal(torch.cat([b.users() for b in batches]), whole.users())
    for key in ["segment", "brand", "device"]:  # each key's ids, batch after batch
        ids = torch.cat([b.pooled_features[key].values() for b in batches])
        assert torch.equal(ids, whole.pooled_features[key].values())
    assert torch.equal(torch.cat([b.dense_features for b in batches]), whole.dense_features)


# ------------------------------------------------------------------ model and plan
def test_pooled_features_are_on_an_embedding_bag_collection_in_the_plan(small: Path):
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from pipeline.config import TrainConfig
    from pipeline.plan import build_task, plan_offline
    from pipeline.planner_inputs import PlannerInputs

    data = PreparedData(small)
    sizes = data.vocab_sizes
    task, _ = build_task(
        TrainConfig(model="dta"), sizes["user"], sizes["item"], sizes["category"],
        tuple(data.manifest["buckets"]["boundaries"]), torch.device("cpu"), data.schema,
    )  # fmt: skip
    assert isinstance(task.model.pooled_arch.ebc, EmbeddingBagCollection)
    inputs = PlannerInputs(world_size=2, local_world_size=2, compute_device="cpu", batch_size=64)
    plan, _ = plan_offline(task, inputs)
    modules = plan.plan
    bags = modules["model.pooled_arch.ebc"]
    assert set(bags) == {"t_segment", "t_brand", "t_device"}
    assert {"t_user", "t_item", "t_category"} <= set(
        modules["model.sparse_arch.embedding_collection"]
    )


def _auc(data: PreparedData, drop: list[str]) -> tuple[float, float]:
    """Test AUC of a DNN trained one epoch without the `drop` features: on every sample,
    and on the samples with at most 2 history items (whose history tells little of the
    user's tastes: there the profile has to)."""
    from sklearn.metrics import roc_auc_score

    from models.ctr import CTRTask
    from models.zoo import build_model, make_config

    torch.manual_seed(0)
    if drop:
        data.drop_features(*drop)
    model = build_model("dnn", data.feature_spec(), make_config("dnn", {"embedding_dim": 8}))
    task = CTRTask(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in data.reader("train", 512, shuffle=True):  # one epoch: the IDs underfit
        loss, _ = task(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        batches = list(data.reader("test", 4096))
        scores = torch.cat([model(b) for b in batches]).numpy()
    labels = torch.cat([b.labels for b in batches]).numpy()
    short = torch.cat([b.history_lengths() <= 2 for b in batches]).numpy()
    return float(roc_auc_score(labels, scores)), float(roc_auc_score(labels[short], scores[short]))


def test_the_planted_features_raise_auc(tmp_path: Path):
    root = prepare(tmp_path, PLANTED)
    full = _auc(PreparedData(root), [])
    without_segment = _auc(PreparedData(root), ["segment"])
    without_price = _auc(PreparedData(root), ["price"])
    print(
        f"AUC (all, history <= 2): all features {full}, without segment {without_segment}, "
        f"without price {without_price}"
    )
    assert full[0] > without_price[0] + 0.03
    # the profile's gain is smaller (the clicked history also tells the user's topics)
    assert full[0] > without_segment[0] + 0.004


# ------------------------------------------------------------------------- serving
@pytest.mark.parametrize("name", ["dta", "din"])
def test_the_scorer_serves_the_schema_features_as_the_model_trains_them(small: Path, name):
    """User features encoded once per request, the context set in the state, item features
    per candidate: the same CTRs as the training forward."""
    from models.scorer import scorer_from_model
    from models.zoo import build_model, make_config
    from pipeline.export import item_categories

    torch.manual_seed(0)
    data = PreparedData(small)
    model = build_model(name, data.feature_spec(), make_config(name, {"embedding_dim": 8})).eval()
    scorer = scorer_from_model(model, data.item_mm, item_categories(data),
                               feature_tables=data.feature_tables())  # fmt: skip
    batch = next(iter(data.reader("test", 32)))
    with torch.no_grad():
        expected = torch.sigmoid(model(batch))
        offsets = batch.sparse_features["hist_item"].offsets()
        history = batch.sparse_features["hist_item"].values()
        got = []
        for row in range(batch.batch_size):
            state = scorer.encode_user(history[offsets[row] : offsets[row + 1]], batch.users()[row])
            state["context"] = batch.pooled_features["device"].values()[row : row + 1]
            state["context_dense"] = batch.dense_features[row, 2:]  # hour
            candidate = batch.sparse_features["item"].values()[row : row + 1]
            got.append(scorer.score(state, candidate))
    assert torch.allclose(torch.cat(got), expected, atol=1e-5)
    scripted = torch.jit.script(scorer)  # the torchscript artifact's form
    state = scripted.encode_user(history[: offsets[1]], batch.users()[0])
    state["context"] = batch.pooled_features["device"].values()[:1]
    state["context_dense"] = batch.dense_features[0, 2:]
    assert torch.allclose(
        scripted.score(state, candidate[:0] + batch.sparse_features["item"].values()[:1]),
        expected[:1],
        atol=1e-5,
    )


def test_dlrm_with_dta_example_trains_on_the_reader(small: Path):
    """examples/dlrm_with_dta.py: torchrec's DLRM (EBC over the pooled KJT, dense arch,
    interaction) + DTA over the item history, on the project's batches."""
    from examples.dlrm_with_dta import make_model

    torch.manual_seed(0)
    data = PreparedData(small)
    model = make_model(data)
    batch = next(iter(data.reader("train", 32)))
    logits = model(batch)
    assert logits.shape == (32,)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    for name in ("dta.w_k.weight", "dta.bucket_key.weight", "dta.bucket_value.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.items.embeddings["t_item"].weight.grad.abs().sum() > 0
    bags = model.dlrm.sparse_arch.embedding_bag_collection.embedding_bags
    assert set(bags) == {"t_segment", "t_brand", "t_device"}
    for param in model.dlrm.parameters():
        assert param.grad is not None


def test_the_batch_scoring_job_takes_the_context_columns(small: Path):
    """score_requests: the context columns set the state; a bad one is rejected."""
    from models.scorer import scorer_from_model
    from models.zoo import build_model, make_config
    from pipeline.export import context_columns, item_categories
    from pipeline.score_requests import score_table

    torch.manual_seed(0)
    data = PreparedData(small)
    model = build_model("dta", data.feature_spec(), make_config("dta", {"embedding_dim": 8}))
    scorer = scorer_from_model(model.eval(), data.item_mm, item_categories(data),
                               feature_tables=data.feature_tables())  # fmt: skip
    batch = next(iter(data.reader("test", 3)))
    offsets = batch.sparse_features["hist_item"].offsets().tolist()
    history = batch.sparse_features["hist_item"].values().tolist()
    requests = pa.table(
        {
            "request_id": ["a", "b", "c", "bad"],
            "user": batch.users().tolist() + [int(batch.users()[0])],
            "hist_items": [history[offsets[i] : offsets[i + 1]] for i in range(3)] + [[]],
            "candidates": [[int(c)] for c in batch.sparse_features["item"].values()] + [[2]],
            "device": batch.pooled_features["device"].values().tolist() + [99],  # out of table
            "hour": batch.dense_features[:, 2].tolist() + [1.0],
        }
    )
    context = context_columns(data.schema)
    assert context == {"sparse": [["device", 5]], "dense": ["hour"]}
    rejects: list = []
    scores = score_table(scorer, requests, rejects, context=context)
    assert [r["reason"] for r in rejects] == ["bad_context"] and rejects[0]["request_id"] == "bad"
    with torch.no_grad():
        expected = torch.sigmoid(model(batch))
    assert torch.allclose(torch.tensor(scores.column("score").to_pylist()), expected, atol=1e-5)


def test_multi_valued_user_and_sequence_item_features_train_and_serve(tmp_path: Path):
    """A multi-valued user feature (mean-pooled strings cut at '|') and an item attribute
    joined to the history (kind sequence) through data prep, the model and the scorer."""
    from models.scorer import scorer_from_model
    from models.zoo import build_model, make_config
    from pipeline.export import item_categories

    raw = tmp_path / "raw"
    write_raw(SMALL, raw)
    users = pq.read_table(raw / "users.parquet")
    tags = ["|".join(f"t{(i * k) % 7}" for k in range(i % 4)) for i in range(users.num_rows)]
    pq.write_table(users.append_column("tags", pa.array(tags)), raw / "users.parquet")
    schema = json.loads((raw / "schema.json").read_text())
    schema["features"] += [
        {"name": "tags", "kind": "sparse", "source": "user", "vocab": "auto",
         "multi_valued": True, "separator": "|", "pooling": "mean", "dim": 4},
        {"name": "maker", "kind": "sequence", "source": "item", "column": "brand",
         "vocab": "auto"},
    ]  # fmt: skip
    (raw / "schema.json").write_text(json.dumps(schema))
    config = LogsConfig(
        interactions=str(raw / "interactions.parquet"),
        items=str(raw / "items.parquet"),
        out=tmp_path / "prep",
        protocol=Protocol(name="temporal", max_history=20),
        schema=load_schema(raw / "schema.json"),
        users=raw / "users.parquet",
    )
    run_logs(config)
    data = PreparedData(tmp_path / "prep")
    batch = next(iter(data.reader("test", 16)))
    assert batch.sparse_features.keys()[-2:] == ["maker", "hist_maker"]
    lengths = batch.pooled_features["tags"].lengths()
    assert 2 <= lengths.max() <= 3 and lengths.min() == 0  # 0..3 tags a user
    torch.manual_seed(0)
    model = build_model("dta", data.feature_spec(), make_config("dta", {"embedding_dim": 8}))
    model.eval()
    scorer = scorer_from_model(model, data.item_mm, item_categories(data),
                               feature_tables=data.feature_tables())  # fmt: skip
    offsets = batch.sparse_features["hist_item"].offsets()
    history = batch.sparse_features["hist_item"].values()
    with torch.no_grad():
        expected = torch.sigmoid(model(batch))
        got = []
        for row in range(batch.batch_size):
            state = scorer.encode_user(history[offsets[row] : offsets[row + 1]], batch.users()[row])
            state["context"] = batch.pooled_features["device"].values()[row : row + 1]
            state["context_dense"] = batch.dense_features[row, 2:]
            got.append(scorer.score(state, batch.sparse_features["item"].values()[row : row + 1]))
    assert torch.allclose(torch.cat(got), expected, atol=1e-5)
