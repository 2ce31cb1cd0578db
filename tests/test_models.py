"""Every registered model: forward, backward, masking and empty histories, on reader batches.

Batches come from a prepared-data folder (tests/fixtures.py) through `PreparedData.reader`,
so the models are tested on exactly what the trainer feeds them.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models.baselines import make_pretrain_model, transfer_pretrained
from models.ctr import CTRModel
from models.features import Batch, FeatureSpec
from models.interest import InterestInputs
from models.zoo import MODELS, build_model, make_config
from pipeline.data import PreparedData, table_to_batch
from tests.fixtures import write_prepared

SMALL = {"embedding_dim": 8, "hidden_dim": 8, "num_heads": 2, "mlp_dims": [16]}
# Every registered model, plus the variants selected by a model argument.
VARIANTS = [(name, {}) for name in sorted(MODELS)] + [
    ("dmf", {"activity_gate": True}),
    ("din", {"activation": "dice"}),
    ("sasrec", {"num_layers": 1}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in args.items()) for name, args in VARIANTS]


def spec_of(data: PreparedData) -> FeatureSpec:
    return data.feature_spec()


@pytest.fixture(scope="module", params=[False, True], ids=["ids", "categories"])
def data(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("prepared")
    return PreparedData(write_prepared(root, categories=request.param, seed=3))


@pytest.fixture(scope="module")
def batch(data: PreparedData) -> Batch:
    return next(iter(data.reader("train", 32)))


def small_model(name: str, args: dict, spec: FeatureSpec, seed: int = 0) -> CTRModel:
    torch.manual_seed(seed)
    return build_model(name, spec, make_config(name, {**SMALL, **args}))


def test_registry_has_every_baseline() -> None:
    expected = {"ta", "dta", "dta_non_invasive", "ta_early", "dmf"}
    expected |= {"sasrec", "din", "bfs_mf", "simtier", "make", "ta_late"}
    assert expected <= set(MODELS)
    for config_cls, _ in MODELS.values():
        assert config_cls.__doc__


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=IDS)
def test_forward_backward_reaches_tables_and_interest(
    name: str, args: dict, data: PreparedData, batch: Batch
) -> None:
    model = small_model(name, args, spec_of(data))
    logits = model(batch)
    assert logits.shape == (batch.batch_size,)
    assert torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()

    tables = model.sparse_arch.embedding_collection.embeddings
    for table in tables.values():
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    assert set(tables) == {"t_user", "t_item"} | ({"t_category"} if data.has_categories else set())
    for pname, param in model.over_arch.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"


def _perturb_padding(x: InterestInputs, num_buckets: int) -> InterestInputs:
    """The same inputs with random values in every padded slot."""
    pad = ~x.mask
    return InterestInputs(
        target=x.target,
        history=torch.where(pad.unsqueeze(-1), torch.randn_like(x.history) * 5, x.history),
        mask=x.mask,
        sims=torch.where(pad, torch.rand_like(x.sims) * 2 - 1, x.sims),
        buckets=torch.where(pad, torch.randint_like(x.buckets, num_buckets), x.buckets),
        lengths=x.lengths,
    )


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=IDS)
def test_padding_never_changes_the_interest(
    name: str, args: dict, data: PreparedData, batch: Batch
) -> None:
    spec = spec_of(data)
    model = small_model(name, args, spec).eval()
    with torch.no_grad():
        embeddings = model.sparse_arch(batch.sparse_features)
        x = model.over_arch.interest_inputs(embeddings, batch.hist_sims)
        assert (~x.mask).any() and x.mask.any(dim=1).any()
        want = model.over_arch.interest(x)
        got = model.over_arch.interest(_perturb_padding(x, spec.num_buckets))
    assert want.shape == (batch.batch_size, model.over_arch.interest.out_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def empty_history_batch(data: PreparedData, rows: int = 12) -> Batch:
    """A batch whose every sample has no history."""
    table = pq.read_table(data.split_files("train")[0]).slice(0, rows)
    for column, kind in [("hist_items", pa.int64()), ("hist_sims", pa.float32())] + (
        [("hist_categories", pa.int64())] if data.has_categories else []
    ):
        empty = pa.array([[] for _ in range(rows)], pa.list_(kind))
        table = table.set_column(table.schema.get_field_index(column), column, empty)
    return table_to_batch(table, data.has_categories)


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=IDS)
def test_all_empty_histories_give_finite_outputs_and_gradients(
    name: str, args: dict, data: PreparedData
) -> None:
    batch = empty_history_batch(data)
    assert int(batch.history_lengths().sum()) == 0
    model = small_model(name, args, spec_of(data))
    logits = model(batch)
    assert logits.shape == (batch.batch_size,) and torch.isfinite(logits).all()
    logits.sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), pname


def test_target_agnostic_sasrec_ignores_the_target(data: PreparedData, batch: Batch) -> None:
    model = small_model("sasrec", {}, spec_of(data)).eval()
    with torch.no_grad():
        x = model.over_arch.interest_inputs(
            model.sparse_arch(batch.sparse_features), batch.hist_sims
        )
        other = InterestInputs(
            torch.randn_like(x.target), x.history, x.mask, x.sims.flip(0), x.buckets, x.lengths
        )
        torch.testing.assert_close(model.over_arch.interest(other), model.over_arch.interest(x))


def test_make_pretrain_then_transfer(data: PreparedData) -> None:
    spec = spec_of(data)
    config = make_config("make", {**SMALL, "pretrain_epochs": 2})
    torch.manual_seed(0)
    pretrain = make_pretrain_model(spec, config)
    optimizer = torch.optim.Adam(pretrain.parameters(), lr=1e-2)
    reader = data.reader("train", 32, shuffle=True)
    for epoch in range(config.pretrain_epochs):
        for batch in reader.iter_batches(epoch):
            logits = pretrain(batch)
            assert logits.shape == (batch.batch_size,)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
            optimizer.zero_grad()
            loss.backward()
            assert all(p.grad is not None for p in pretrain.multimodal.parameters())
            optimizer.step()

    model = build_model("make", spec, config, embedding_device=torch.device("meta"))
    transfer_pretrained(pretrain, model)
    got = model.over_arch.interest.multimodal.state_dict()
    for key, value in pretrain.multimodal.state_dict().items():
        torch.testing.assert_close(got[key], value)
    with pytest.raises(TypeError):
        transfer_pretrained(pretrain, build_model("ta", spec, make_config("ta", SMALL)))


def test_unknown_model_arg_is_an_error() -> None:
    with pytest.raises(ValueError, match="no settings"):
        make_config("din", {"alpha": 0.3})


def test_dlrm_with_dta_example_trains() -> None:
    from examples.dlrm_with_dta import example_batch, make_example_model

    torch.manual_seed(0)
    model = make_example_model()
    inputs, labels = example_batch(batch_size=6)
    logits = model(*inputs)
    assert logits.shape == (6,)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    for pname in ("dta.w_k.weight", "dta.bucket_key.weight", "dta.bucket_value.weight"):
        assert model.get_parameter(pname).grad.abs().sum() > 0, pname
    history_table = model.history_embeddings.embeddings["t_item"].weight
    assert history_table.grad.abs().sum() > 0
    for param in model.dlrm.parameters():
        assert param.grad is not None


def test_model_table_counts_ta_exactly() -> None:
    from scripts.model_table import Setting, measure

    setting = Setting("tiny", 10, 20, 0, history=7, num_buckets=4, preset="amazon")
    row = measure("ta", setting)
    d = d_h = 32  # amazon preset, no categories
    length, head_in = 7, d_h + d + d
    projections = 2 * (2 * length * d * d_h) + 2 * d * d_h  # K, V, q
    attention = 2 * (2 * length * d_h)  # scores and weighted sum
    head = 2 * (head_in * 80 + 80 * 40 + 40 * 1)
    assert row["flops"] == projections + attention + head
    assert row["embedding"] == (10 + 20) * 32
