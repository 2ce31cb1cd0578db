"""Every registered model: forward, backward, masking and empty histories, on reader batches.

Batches come from a prepared-data folder (tests/fixtures.py) through `PreparedData.reader`,
so the models are tested on exactly what the trainer feeds them.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.batch import Batch
from models.ctr import CTRModel, OverArch
from models.features import FeatureSpec
from models.interest import InterestArch, InterestInputs, request_inputs
from models.make import make_pretrain_model, transfer_pretrained
from models.zoo import MODELS, build_model, make_config
from pipeline.data import PreparedData, table_to_batch
from tests.fixtures import assert_same_outputs_and_gradients, outputs_and_gradients, write_prepared

SMALL = {"embedding_dim": 8, "hidden_dim": 8, "num_heads": 2, "mlp_dims": [16]}
# Every registered model, plus the variants selected by a model argument.
VARIANTS = [(name, {}) for name in sorted(MODELS)] + [
    ("dmf", {"activity_gate": True}),
    ("din", {"activation": "dice"}),
    ("sasrec", {"num_layers": 1}),
    ("dmf", {"histogram_edges": "quantile"}),
    ("simtier", {"histogram_edges": "range"}),
    ("din", {"attention_dropout": 0.1}),
    ("din", {"attention_softmax": True}),
    ("ta", {"dropout": 0.2}),
    ("dnn", {"pooling": "sum"}),
    ("dmae", {"mifu": False, "time_encoding": "position", "encoding_combine": "sum"}),
    ("dmae", {"iddu": False, "window_causal": True, "sincos_frequencies": "transformer"}),
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
    expected |= {"sasrec", "din", "bfs_mf", "simtier", "make", "ta_late", "dnn", "dmae"}
    assert set(MODELS) == expected
    spec = FeatureSpec(num_users=5, num_items=9, num_categories=0, bucket_boundaries=(0.0, 0.5))
    for name, (config_cls, _) in MODELS.items():
        config = make_config(name)
        assert type(config) is config_cls
        interest = build_model(name, spec, config).over_arch.interest
        assert isinstance(interest, InterestArch), name
        assert interest.out_dim > 0


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=IDS)
def test_fx_trace_of_the_model_equals_eager(
    name: str, args: dict, data: PreparedData, batch: Batch
) -> None:
    """TrainPipelineSparseDist rewrites the model with torchrec's fx tracer, the modules
    without a sharded child as leaves (for CTRModel under DMP: `over_arch`, since
    `sparse_arch` holds the sharded EmbeddingCollection); the traced graph must compute
    what the eager model does (as torchrec's DLRM tests check)."""
    from torchrec.distributed.train_pipeline.tracing import Tracer

    model = small_model(name, args, spec_of(data)).eval()
    graph = Tracer(leaf_modules=["over_arch"]).trace(model)
    traced = torch.fx.GraphModule(model, graph)
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    assert "over_arch" in called  # one leaf: all data-dependent code stays inside it
    assert not any(str(target).startswith("over_arch.") for target in called)
    with torch.no_grad():
        torch.testing.assert_close(traced(batch), model(batch))


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=IDS)
def test_interest_arch_scripts_and_matches_eager(name: str, args: dict, data: PreparedData) -> None:
    """The serving artifact scripts every interest arch; scripted == eager, both forms."""
    spec = spec_of(data)
    interest = small_model(name, args, spec, seed=4).over_arch.interest.double().eval()
    scripted = torch.jit.script(interest)
    x = random_request(OverArch.item_dim(SMALL["embedding_dim"], spec), length=5, batch=3, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(scripted(request_inputs(*x)), interest(request_inputs(*x)))
        state = interest.encode(x[0])
        torch.testing.assert_close(
            scripted.attend(scripted.encode(x[0]), *x), interest.attend(state, *x)
        )


def random_request(
    dim: int, length: int, batch: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One user's history (L, D), B queries (B, D), sims (B, L) in [-1, 1], buckets (B, L),
    float64."""
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(length, dim, generator=g, dtype=torch.float64)
    query = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    sims = torch.rand(batch, length, generator=g, dtype=torch.float64) * 2 - 1
    buckets = torch.randint(0, 3, (batch, length), generator=g)
    return history, query, sims, buckets


@settings(max_examples=6, deadline=None)
@given(length=st.integers(0, 9), batch=st.integers(1, 5), seed=st.integers(0, 2**16))
@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=IDS)
def test_cached_serving_form_equals_forward_and_gradients(
    name: str, args: dict, length: int, batch: int, seed: int
) -> None:
    """Each arch's per-user cache (`encode` + `attend`) against its training forward on the
    history repeated per candidate: outputs and the gradients of history, queries and every
    parameter, float64, any history length including 0."""
    spec = FeatureSpec(num_users=5, num_items=9, num_categories=0, bucket_boundaries=(-0.2, 0.3))
    interest = small_model(name, args, spec, seed=seed).over_arch.interest.double().eval()
    with torch.no_grad():
        for p in interest.parameters():
            p.normal_(std=0.5, generator=torch.Generator().manual_seed(seed))
    dim = OverArch.item_dim(SMALL["embedding_dim"], spec)
    history, query, sims, buckets = random_request(dim, length, batch, seed)
    results = {}
    for form in ("cached", "forward"):
        interest.zero_grad()
        h, q = history.clone().requires_grad_(True), query.clone().requires_grad_(True)
        if form == "cached":
            out = interest.attend(interest.encode(h), h, q, sims, buckets)
        else:
            out = interest(request_inputs(h, q, sims, buckets))
        weight = torch.randn(
            out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype
        )
        if out.requires_grad:  # DNN on an empty history depends on nothing trainable
            (out * weight).sum().backward()
        grads = {"history": h.grad, "query": q.grad}
        grads |= {k: p.grad for k, p in interest.named_parameters() if p.grad is not None}
        results[form] = (out.detach(), grads)
    torch.testing.assert_close(results["cached"][0], results["forward"][0], rtol=1e-9, atol=1e-10)
    for key, want in results["forward"][1].items():
        got = results["cached"][1].get(key)
        if got is None:  # unused by the cached form: the forward's gradient must be zero
            assert want is None or not want.abs().any(), key
            continue
        torch.testing.assert_close(
            got, torch.zeros_like(got) if want is None else want, rtol=1e-8, atol=1e-10, msg=key
        )


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=IDS)
def test_forward_backward_reaches_tables_and_interest(
    name: str, args: dict, data: PreparedData, batch: Batch
) -> None:
    model = small_model(name, args, spec_of(data))
    logits = model(batch)
    assert logits.shape == (batch.batch_size,)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    auxiliary = model.over_arch.interest.pop_auxiliary_loss()  # DMAE's decoder, as CTRTask adds
    assert (auxiliary is not None) == (name == "dmae" and args.get("iddu", True)), name
    (loss if auxiliary is None else loss + auxiliary).backward()

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
    times, modality_sims = x.times, x.modality_sims
    if times is not None:
        times = torch.where(pad, torch.rand_like(times) * 1e8, times)
    if modality_sims is not None:
        noise = torch.rand_like(modality_sims) * 2 - 1
        modality_sims = torch.where(pad.unsqueeze(-1), noise, modality_sims)
    return InterestInputs(
        target=x.target,
        history=torch.where(pad.unsqueeze(-1), torch.randn_like(x.history) * 5, x.history),
        mask=x.mask,
        sims=torch.where(pad, torch.rand_like(x.sims) * 2 - 1, x.sims),
        buckets=torch.where(pad, torch.randint_like(x.buckets, num_buckets), x.buckets),
        lengths=x.lengths,
        times=times,
        modality_sims=modality_sims,
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


def test_dnn_sum_pooling_keeps_the_history_length() -> None:
    """pooling="sum" is the mean times the number of real behaviours (padding excluded);
    an unknown pooling is refused."""
    from models.dnn import MeanPoolInterest

    history = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    x = InterestInputs(
        torch.zeros(3, 2),
        history,
        mask,
        torch.zeros(3, 4),
        torch.zeros(3, 4, dtype=torch.long),
        mask.sum(1),
    )
    mean, total = MeanPoolInterest(2, "mean")(x), MeanPoolInterest(2, "sum")(x)
    torch.testing.assert_close(total, mean * mask.sum(1, keepdim=True))
    torch.testing.assert_close(total[0], history[0, :3].sum(0))
    with pytest.raises(ValueError, match="pooling"):
        MeanPoolInterest(2, "max")


def test_din_softmax_weighs_the_real_behaviours_to_one() -> None:
    """attention_softmax: the weights of a sample's real behaviours are a softmax of the
    activation unit's scores (summing to 1, padding 0), so the interest is their convex
    combination; an empty history gives zeros; without it the weights are the raw scores."""
    from models.din import DINInterest

    g = torch.Generator().manual_seed(1)
    history = torch.randn(3, 4, 6, generator=g)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    x = InterestInputs(
        torch.randn(3, 6, generator=g), history, mask,
        torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.long), mask.sum(1),
    )  # fmt: skip
    torch.manual_seed(0)
    plain = DINInterest(6, hidden_dim=6, attention_dims=[8]).eval()
    torch.manual_seed(0)
    normed = DINInterest(6, hidden_dim=6, attention_dims=[8], softmax=True).eval()
    q = x.target.unsqueeze(1).expand_as(history)
    features = torch.cat([q, history, q * history, q - history], dim=-1)
    with torch.no_grad():
        scores = normed.activation_unit(features.flatten(0, 1)).view(3, 4)  # (B, L)
        got, raw = normed(x), plain(x)
    want0 = (scores[0, :3].softmax(0).unsqueeze(-1) * history[0, :3]).sum(0)
    torch.testing.assert_close(got[0], want0)
    torch.testing.assert_close(got[1], history[1, 0])  # one behaviour: weight 1
    torch.testing.assert_close(got[2], torch.zeros(6))  # empty history
    torch.testing.assert_close(raw[0], (scores[0, :3].unsqueeze(-1) * history[0, :3]).sum(0))


def test_unknown_model_arg_is_an_error() -> None:
    with pytest.raises(ValueError, match="no settings"):
        make_config("din", {"alpha": 0.3})


def test_model_table_counts_ta_exactly() -> None:
    from scripts.model_table import Setting, measure

    setting = Setting("tiny", 10, 20, 0, history=7, num_buckets=4, preset="amazon-paper")
    row = measure("ta", setting)
    d = d_h = 32  # amazon-paper preset, no categories
    heads, length, head_in = 4, 7, d_h + d + d
    # the training form: q, Wk folded into q, Wv after pooling (never K or V per position)
    projections = 3 * (2 * d * d_h)
    attention = 2 * (2 * heads * length * d)  # scores and pooling, each head over d
    head = 2 * (head_in * 80 + 80 * 40 + 40 * 1)
    assert row["flops"] == projections + attention + head
    assert row["embedding"] == (10 + 20) * 32


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(0, 9),
    batch=st.integers(1, 5),
    dim=st.integers(1, 6),
    hidden=st.sampled_from([None, 5]),
    activation=st.sampled_from(["prelu", "dice"]),
    softmax=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_din_forward_equals_the_plain_reference_and_gradients(
    length: int,
    batch: int,
    dim: int,
    hidden: int | None,
    activation: str,
    softmax: bool,
    seed: int,
) -> None:
    """DIN's `forward` (the activation unit's first layer factorised: no (B, L, 4D)
    concatenation) equals `forward_reference` (the concatenated input), outputs and the
    gradients of target, history and every parameter, float64, random masks with an empty
    history, L = 0."""
    from models.din import DINInterest

    torch.manual_seed(seed)
    arch = DINInterest(dim, hidden or dim, [4, 3], activation, 0.0, softmax).double()
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "target": torch.randn(batch, dim, generator=g, dtype=torch.float64),
        "history": torch.randn(batch, length, dim, generator=g, dtype=torch.float64),
    }
    mask = torch.rand(batch, length, generator=g) < 0.6
    mask[0] = False
    zeros = torch.zeros(batch, length, dtype=torch.float64)

    def call(form: Any) -> Any:
        return lambda x: form(InterestInputs(x["target"], x["history"], mask, zeros,
                                             zeros.long(), mask.sum(-1)))  # fmt: skip

    got = outputs_and_gradients(arch, call(arch.forward), inputs, seed)
    want = outputs_and_gradients(arch, call(arch.forward_reference), inputs, seed)
    assert (got[0][0] == 0).all()  # the empty history
    assert_same_outputs_and_gradients(got, want)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(0, 9),
    batch=st.integers(1, 5),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sasrec_block_equals_the_plain_reference_and_gradients(
    length: int, batch: int, heads: int, head_dim: int, causal: bool, seed: int
) -> None:
    """SASRec's block (torch's fused scaled_dot_product_attention) equals its
    `forward_reference` (scores, masked softmax): outputs and the gradients of the input and
    every parameter, float64, rows with nothing allowed (an empty history: zeros), L = 0,
    causal masks and arbitrary ones."""
    from models.sasrec import CausalSelfAttentionBlock

    torch.manual_seed(seed)
    block = CausalSelfAttentionBlock(heads * head_dim, heads).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads * head_dim, generator=g, dtype=torch.float64)
    allowed = torch.rand(batch, length, length, generator=g) < 0.5
    if causal:
        lengths = torch.randint(0, length + 1, (batch,), generator=g)
        slots = torch.arange(length)
        allowed = (slots[:, None] >= slots[None, :]) & (slots < lengths[:, None])[:, None, :]
    if length:
        allowed[0] = False  # nothing allowed anywhere in one sample
    got, want = (
        outputs_and_gradients(block, lambda v, f=form: f(v["x"], allowed), {"x": x}, seed)
        for form in (block.forward, block.forward_reference)
    )
    assert_same_outputs_and_gradients(got, want)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(1, 9),
    batch=st.integers(1, 5),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    layers=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_sasrec_last_block_at_the_last_position_equals_every_position(
    length: int, batch: int, heads: int, head_dim: int, layers: int, seed: int
) -> None:
    """SASRec's interest with its last block run at the last valid position only (`forward`,
    `CausalSelfAttentionBlock.forward_at`) equals every block run at every position
    (`forward_reference`): outputs and the gradients of the history and every parameter,
    float64, empty histories (zeros), full ones, 0 to 3 blocks."""
    from models.interest import InterestInputs
    from models.sasrec import SASRecInterest

    torch.manual_seed(seed)
    arch = SASRecInterest(3, heads * head_dim, heads, layers, max_positions=4).double()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    lengths[0] = 0  # an empty history
    if batch > 1:
        lengths[1] = length  # a full one
    mask = torch.arange(length) < lengths[:, None]
    history = torch.randn(batch, length, 3, generator=g, dtype=torch.float64)
    zeros = torch.zeros(batch, length, dtype=torch.float64)

    def call(form):
        def run(v):
            x = InterestInputs(v["query"], v["history"], mask, zeros, zeros.long(), lengths)
            return form(x)

        return run

    inputs = {"query": torch.randn(batch, 3, generator=g, dtype=torch.float64), "history": history}
    got, want = (
        outputs_and_gradients(arch, call(form), inputs, seed)
        for form in (arch.forward, arch.forward_reference)
    )
    assert (got[0][0] == 0).all()
    assert_same_outputs_and_gradients(got, want)


def test_sasrec_of_an_empty_batch_of_histories_is_zero() -> None:
    """L = 0 (no behaviour in any sample): zeros of the interest's width."""
    from models.interest import InterestInputs
    from models.sasrec import SASRecInterest

    arch = SASRecInterest(3, 4, 2, 2, max_positions=4)
    empty = torch.zeros(2, 0)
    x = InterestInputs(torch.randn(2, 3), torch.zeros(2, 0, 3), empty.bool(), empty,
                       empty.long(), torch.zeros(2, dtype=torch.long))  # fmt: skip
    assert torch.equal(arch(x), torch.zeros(2, 4))
