"""DMAE (models/dmae.py): forward/backward on reader batches with one and two modalities,
masks and empty histories, the window attention and the decoder's target against plain
references, the decoder loss through the training wrapper, serving and scripting, and a
2-rank sharded run equal to the unsharded one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp

from models.batch import Batch
from models.ctr import CTRModel, CTRTask
from models.dmae import (
    DMAEInterest,
    similarity_time_histogram,
    time_bucket,
    window_attention,
)
from models.features import FeatureSpec
from models.interest import InterestInputs, request_inputs
from models.zoo import build_model, make_config
from pipeline.data import PreparedData, table_to_batch
from tests.fixtures import gloo_group, write_prepared

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "embedding_dim": 8,
    "hidden_dim": 8,
    "num_heads": 2,
    "mlp_dims": [16],
    "interest_dim": 8,
    "mieu_hidden": [8],
    "decoder_hidden": [8],
    "attention_dims": [8],
    "window": 1,
    "histogram_sim_bins": 4,
    "histogram_time_bins": 3,
}
TWO = ("image", "text")


def small_model(spec: FeatureSpec, seed: int = 0, **overrides: object) -> CTRModel:
    torch.manual_seed(seed)
    return build_model("dmae", spec, make_config("dmae", {**SMALL, **overrides}))


@pytest.fixture(scope="module", params=["one", "two"])
def data(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """One modality (the item vector, as on Amazon) or two; times in both; categories."""
    modalities = TWO if request.param == "two" else ()
    root = tmp_path_factory.mktemp(f"prepared-{request.param}")
    return PreparedData(
        write_prepared(root, categories=True, seed=5, modalities=modalities, times=True)
    )


@pytest.fixture(scope="module")
def batch(data: PreparedData) -> Batch:
    return next(iter(data.reader("train", 32)))


def inputs_of(model: CTRModel, batch: Batch) -> InterestInputs:
    embeddings = model.sparse_arch(batch.sparse_features)
    return model.over_arch.interest_inputs(
        embeddings, batch.hist_sims, batch.hist_times, batch.hist_modality_sims
    )


# ------------------------------------------------------------ training on reader batches
def test_the_batch_carries_times_and_modalities(data: PreparedData, batch: Batch) -> None:
    spec = data.feature_spec()
    model = small_model(spec)
    x = inputs_of(model, batch)
    assert x.times is not None and x.times.shape == x.mask.shape
    assert x.times[~x.mask].abs().sum() == 0 and (x.times[x.mask] > 0).all()
    if spec.modalities:
        assert x.modality_sims.shape == (*x.mask.shape, 2)
    else:
        assert x.modality_sims is None
    interest = model.over_arch.interest
    assert interest.num_modalities == spec.num_modalities
    assert interest.out_dim == SMALL["hidden_dim"] + spec.num_modalities * SMALL["interest_dim"]


def test_forward_backward_through_the_training_wrapper(data: PreparedData, batch: Batch) -> None:
    """CTRTask's loss is BCE + the decoder's term; every parameter (the decoders' too) and
    every table gets a finite, non-zero gradient."""
    model = small_model(data.feature_spec())
    task = CTRTask(model)
    loss, (detached, logits, labels) = task(batch)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert task.last_auxiliary is not None and task.last_auxiliary > 0
    torch.testing.assert_close(detached, bce + task.last_auxiliary)
    assert model.over_arch.interest.pop_auxiliary_loss() is None  # taken by the wrapper
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"no gradient reaches {name}"
    decoders = [n for n, _ in model.named_parameters() if ".decoders." in n]
    assert len(decoders) == 4 * data.feature_spec().num_modalities  # 2 layers each


def _perturb_padding(x: InterestInputs) -> InterestInputs:
    pad = ~x.mask
    sims = x.modality_sims
    if sims is not None:
        sims = torch.where(pad.unsqueeze(-1), torch.rand_like(sims) * 2 - 1, sims)
    return x._replace(
        history=torch.where(pad.unsqueeze(-1), torch.randn_like(x.history) * 5, x.history),
        sims=torch.where(pad, torch.rand_like(x.sims) * 2 - 1, x.sims),
        times=torch.where(pad, torch.rand_like(x.times) * 1e9, x.times),
        modality_sims=sims,
    )


@pytest.mark.parametrize("args", [{}, {"time_encoding": "position"}, {"window_causal": True}])
def test_padding_changes_neither_the_interest_nor_the_decoder_loss(
    data: PreparedData, batch: Batch, args: dict
) -> None:
    model = small_model(data.feature_spec(), **args).train()
    interest = model.over_arch.interest
    with torch.no_grad():
        x = inputs_of(model, batch)
        assert (~x.mask).any() and (x.lengths == 0).any()
        want = interest(x)
        want_loss = interest.pop_auxiliary_loss()
        got = interest(_perturb_padding(x))
        got_loss = interest.pop_auxiliary_loss()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_loss, want_loss)


def test_the_interest_reads_each_modality_and_the_times(data: PreparedData, batch: Batch) -> None:
    model = small_model(data.feature_spec()).eval()
    interest = model.over_arch.interest
    with torch.no_grad():
        x = inputs_of(model, batch)
        base = interest(x)
        later = interest(x._replace(times=x.times * 37.0))
        assert not torch.allclose(later, base)
        sims = interest.modality_similarities(x)
        for k in range(sims.shape[-1]):
            changed = sims.clone()
            changed[..., k] = -changed[..., k]
            if x.modality_sims is None:
                out = interest(x._replace(sims=changed[..., 0]))
            else:
                out = interest(x._replace(modality_sims=changed))
            moved = (out - base).abs().sum(0)
            d_h, d_i = SMALL["hidden_dim"], SMALL["interest_dim"]
            # modality k's interest moves (and DIN's does not: it reads no similarity)
            assert moved[d_h + k * d_i : d_h + (k + 1) * d_i].sum() > 0
            assert moved[:d_h].sum() == 0


def _empty_table(data: PreparedData, rows: int, keep: int = 0) -> pa.Table:
    """`rows` training rows with a history, every history but the first `keep` rows' emptied."""
    table = pq.read_table(data.split_files("train")[0])
    table = table.filter(pc.greater(pc.list_value_length(table.column("hist_items")), 0))
    table = table.slice(0, rows)
    for column in [c for c in table.column_names if c.startswith("hist_")]:
        values = table.column(column).to_pylist()
        values = [v if i < keep else [] for i, v in enumerate(values)]
        kind = table.schema.field(column).type
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, pa.array(values, kind))
    return table


def test_all_empty_histories_give_finite_outputs_and_a_zero_decoder_loss(
    data: PreparedData,
) -> None:
    batch = table_to_batch(_empty_table(data, 12), True, data.history_extras)
    assert int(batch.history_lengths().sum()) == 0
    model = small_model(data.feature_spec())
    task = CTRTask(model)
    loss, (_, logits, _) = task(batch)
    assert torch.isfinite(logits).all() and task.last_auxiliary == 0
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name  # the decoders take part (DDP needs it)
        assert torch.isfinite(param.grad).all(), name


def test_users_without_history_weigh_nothing_in_the_decoder_loss(data: PreparedData) -> None:
    """The decoder loss of a batch with some empty histories = that of its other rows."""
    table = _empty_table(data, 20, keep=12)
    model = small_model(data.feature_spec(), seed=2)
    interest = model.over_arch.interest
    losses = []
    for rows in (table, table.slice(0, 12)):
        batch = table_to_batch(rows, True, data.history_extras)
        model(batch)
        losses.append(interest.pop_auxiliary_loss())
    assert int(table_to_batch(table.slice(0, 12), True).history_lengths().min()) > 0
    torch.testing.assert_close(losses[0], losses[1])


# ------------------------------------------------------------------ plain references
def _plain_window_attention(q, k, v, mask, window, causal):
    """Loops: position j attends to valid positions k with j - window <= k <= j + window."""
    b_, h_, length, _ = q.shape
    out = torch.zeros_like(q)
    for b in range(b_):
        for h in range(h_):
            for j in range(length):
                allowed = [
                    i
                    for i in range(length)
                    if mask[b, i] and j - window <= i and (i <= j if causal else i <= j + window)
                ]
                if not allowed:
                    continue
                scores = torch.stack([q[b, h, j] @ k[b, h, i] for i in allowed])
                weights = torch.softmax(scores / math.sqrt(q.shape[-1]), dim=0)
                out[b, h, j] = sum(w * v[b, h, i] for w, i in zip(weights, allowed))
    return out


@pytest.mark.parametrize("window", [0, 1, 2, 9])
@pytest.mark.parametrize("causal", [False, True])
def test_window_attention_equals_the_plain_reference(window: int, causal: bool) -> None:
    g = torch.Generator().manual_seed(window * 2 + causal)
    q, k, v = (torch.randn(4, 2, 7, 3, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(4, 7, generator=g) < 0.7
    mask[0] = False  # an empty history
    mask[1] = torch.arange(7) < 4  # a prefix, as the reader pads
    got = window_attention(q, k, v, mask, window, causal)
    torch.testing.assert_close(got, _plain_window_attention(q, k, v, mask, window, causal))
    assert not got[0].any()


def test_a_window_wider_than_the_history_is_full_attention() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / 2.0
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    full = torch.einsum("bhij,bhjd->bhid", torch.softmax(scores, -1), v)
    torch.testing.assert_close(window_attention(q, k, v, mask, 5, False), full)


def _numpy_histogram(sims, times, mask, sim_bins, time_bins, unit):
    sims, times, mask = (np.asarray(a, dtype=np.float64) for a in (sims, times, mask))
    out = np.zeros((sims.shape[0], sim_bins, time_bins))
    for b in range(sims.shape[0]):
        for j in np.flatnonzero(mask[b]):
            r = (sims[b, j] + 1) / 2
            a = min(int(np.floor(r * sim_bins)), sim_bins - 1)
            t = min(int(np.floor(np.log2(1 + times[b, j] / unit))), time_bins - 1)
            out[b, a, t] += 1
        out[b] /= max(mask[b].sum(), 1)
    return out.reshape(sims.shape[0], -1)


def test_the_histogram_target_equals_numpy() -> None:
    rng = np.random.default_rng(4)
    sims = rng.uniform(-1, 1, size=(6, 9))
    sims[0, :4] = [-1.0, 1.0, 0.0, 0.5]  # edges: r = 0, 1, 0.5, 0.75
    times = rng.exponential(5 * 86_400, size=(6, 9))
    times[0, :3] = [0.0, 86_400.0, 1e12]
    mask = rng.random((6, 9)) < 0.8
    mask[2] = False
    for sim_bins, time_bins in [(4, 3), (10, 8), (1, 1)]:
        got, n = similarity_time_histogram(
            torch.tensor(sims),
            torch.tensor(times),
            torch.tensor(mask),
            sim_bins,
            time_bins,
            86_400.0,
        )
        want = _numpy_histogram(sims, times, mask, sim_bins, time_bins, 86_400.0)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
        assert n.tolist() == mask.sum(1).tolist()
        assert np.allclose(got.sum(1).numpy(), (mask.sum(1) > 0).astype(float))
    assert time_bucket(torch.tensor([86_400.0 * 3 - 1, 86_400.0 * 3]), 86_400.0, 9).tolist() == [
        1,
        2,
    ]


def test_the_decoder_loss_is_lambda_times_the_kl_to_the_target(
    data: PreparedData, batch: Batch
) -> None:
    model = small_model(data.feature_spec(), seed=3, lambda_dec=0.7)
    interest = model.over_arch.interest
    with torch.no_grad():
        x = inputs_of(model, batch)
        interest(x)
        got = interest.pop_auxiliary_loss()
        outputs = interest.modality_interests(x)
        sims = interest.modality_similarities(x).numpy()
        kls = []
        for m, decoder in enumerate(interest.decoders):
            q = torch.softmax(decoder(outputs[m]).double(), -1).numpy()
            p = _numpy_histogram(sims[:, :, m], x.times.numpy(), x.mask.numpy(), 4, 3, 86_400.0)
            kl = np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0).sum(1)
            kls.append(kl[x.lengths.numpy() > 0].mean())
    np.testing.assert_allclose(float(got), 0.7 * np.mean(kls), rtol=1e-5)


def test_the_decoder_runs_in_training_only(data: PreparedData, batch: Batch) -> None:
    spec = data.feature_spec()
    model = small_model(spec)
    interest = model.over_arch.interest
    with torch.no_grad():
        x = inputs_of(model, batch)
        interest.eval()
        interest(x)
        assert interest.pop_auxiliary_loss() is None
        interest.train()
        scripted = torch.jit.script(interest)
        scripted(x)  # scripted (serving) code never decodes, even in training mode
        assert interest.pop_auxiliary_loss() is None
    for args in ({"iddu": False}, {"lambda_dec": 0.0}):
        off = small_model(spec, **args).over_arch.interest
        assert len(off.decoders) == 0
        off(x)
        assert off.pop_auxiliary_loss() is None
    without_mifu = small_model(spec, mifu=False).over_arch.interest
    assert len(without_mifu.fusions) == 0 and without_mifu.out_dim == interest.out_dim


def test_mieu_encodes_the_scaled_similarity() -> None:
    """r = (c + 1) / 2, the bucket of r^ = w r + b weighted by r^, and sin/cos of r."""
    arch = DMAEInterest(4, 4, interest_dim=4, num_heads=1, num_similarity_buckets=5, encoding_dim=4)
    encoder = arch.encoders[0]
    with torch.no_grad():
        encoder.scale.fill_(0.5)
        encoder.shift.fill_(0.25)
        c = torch.tensor([[-1.0, 0.0, 1.0]])
        r = (c + 1) / 2
        r_hat = 0.5 * r + 0.25  # 0.25, 0.5, 0.75 -> buckets 1, 2, 3 of 5
        code = encoder.encode_similarity(c)
        table = encoder.buckets.weight
        torch.testing.assert_close(code[0, :, :4], r_hat[0, :, None] * table[[1, 2, 3]])
        frequencies = math.pi * torch.tensor([1.0, 2.0])
        angles = r[0, :, None] * frequencies
        torch.testing.assert_close(code[0, :, 4:], torch.cat([angles.sin(), angles.cos()], -1))


# ------------------------------------------------------------------------- serving
def _request(x: InterestInputs, row: int) -> tuple:
    """Row `row` of a batch as one user's request with that row's target as candidate."""
    n = int(x.lengths[row])
    history, times = x.history[row, :n], x.times[row, :n]
    sims = x.sims[row : row + 1, :n]
    modality_sims = None if x.modality_sims is None else x.modality_sims[row : row + 1, :n]
    empty = torch.zeros(0, dtype=torch.long)
    return history, x.target[row : row + 1], sims, empty, times, modality_sims


def test_serving_form_equals_training_forward_and_scripts(data: PreparedData, batch: Batch) -> None:
    """Per-candidate serving (the training forward over `request_inputs`, what the scorer
    runs for DMAE), eager and scripted, equals the training forward of the batch's rows,
    empty histories included."""
    model = small_model(data.feature_spec(), seed=6).eval()
    interest = model.over_arch.interest
    scripted = torch.jit.script(interest)
    with torch.no_grad():
        x = inputs_of(model, batch)
        want = interest(x)
        for row in range(x.target.shape[0]):
            request = request_inputs(*_request(x, row))
            torch.testing.assert_close(interest(request), want[row : row + 1], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(scripted(request), want[row : row + 1], atol=1e-6, rtol=1e-5)


def served_and_training_ctr(
    scorer, model: CTRModel, data: PreparedData, hist, times, user: int, cands
) -> tuple[torch.Tensor, torch.Tensor]:
    """(served CTRs, sigmoid(CTRModel(batch))) of one request, the batch built by the
    reader's `table_to_batch` from the scorer's own similarities (so both sides read the
    same numbers): hist_sims, hist_sims_<name> of each modality, hist_ts_delta."""
    hist_t, cands_t = torch.tensor(hist, dtype=torch.long), torch.tensor(cands, dtype=torch.long)
    times_t = torch.tensor(times, dtype=torch.float32)
    state = scorer.encode_user(hist_t, torch.tensor(user), times_t)
    got = scorer.score(state, cands_t)
    b = len(cands)
    categories = scorer.tables()["item_category"].numpy()  # (I,), empty without categories
    if not len(categories):
        categories = np.zeros(max(max(hist, default=0), max(cands)) + 1, np.int64)
    columns = {
        "user": pa.array([user] * b, pa.int64()),
        "item": pa.array(cands, pa.int64()),
        "label": pa.array(np.zeros(b, np.float32)),
        "hist_items": pa.array([list(hist)] * b, pa.list_(pa.int64())),
        "hist_sims": pa.array(scorer.similarities(state, cands_t).numpy().tolist(),
                              pa.list_(pa.float32())),
        "hist_ts_delta": pa.array([list(times)] * b, pa.list_(pa.int64())),
        "category": pa.array(categories[list(cands)].astype(np.int64)),
        "hist_categories": pa.array([categories[list(hist)].astype(np.int64).tolist()] * b,
                                    pa.list_(pa.int64())),
    }  # fmt: skip
    if data.modalities:
        modal = scorer.modality_similarities(state, cands_t).numpy()  # (B, L, K)
        for k, name in enumerate(data.modalities):
            columns[f"hist_sims_{name}"] = pa.array(modal[:, :, k].tolist(), pa.list_(pa.float32()))
    batch = table_to_batch(pa.table(columns), data.has_categories, data.history_extras)
    with torch.no_grad():
        return got, torch.sigmoid(model(batch))


REQUESTS = [(0, 3), (1, 5), (5, 4), (8, 7)]  # (history length, candidates)


def test_scorer_serves_dmae_as_the_training_forward(data: PreparedData) -> None:
    """The common scorer serves DMAE (per candidate; the user's inputs cached) with the
    times as a request input and the per-modality similarities from its own tables, eager
    and scripted, as the training forward scores the same rows (1e-5), empty history
    included; without times it refuses with the reason."""
    from models.scorer import scorer_from_model

    model = small_model(data.feature_spec(), seed=8).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    cats = np.zeros(data.vocab_sizes["item"], np.int64)
    scorer = scorer_from_model(model, data.item_mm, cats, chunk=3, modality_mm=data.modality_mm)
    assert scorer.per_candidate and scorer.needs_times
    assert scorer.needs_modality_sims == bool(data.modalities)
    assert scorer.tables()["item_mm_modalities"].shape[0] == (2 if data.modalities else 0)
    scripted = torch.jit.script(scorer)
    rng = np.random.default_rng(4)
    for length, count in REQUESTS:
        hist = rng.integers(2, data.vocab_sizes["item"], size=length).tolist()
        times = np.sort(rng.integers(0, 40 * 86400, size=length))[::-1].tolist()
        cands = rng.integers(0, data.vocab_sizes["item"], size=count).tolist()
        for s in (scorer, scripted):
            got, want = served_and_training_ctr(s, model, data, hist, times, 11, cands)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="hist_times"):
        scorer.encode_user(torch.tensor([3, 4]), torch.tensor(1))
    if data.modalities:
        with pytest.raises(ValueError, match="modality_mm"):
            scorer_from_model(model, data.item_mm, cats)


def test_served_modality_similarities_are_the_data_cosines(data: PreparedData) -> None:
    """The scorer's per-modality similarities from the padded stacked tables equal each
    modality's own cosines (what data prep writes into hist_sims_<name>)."""
    if not data.modalities:
        pytest.skip("one modality: DMAE reads the item vector's similarities")
    from models.scorer import scorer_from_model

    model = small_model(data.feature_spec(), seed=8).eval()
    cats = np.zeros(data.vocab_sizes["item"], np.int64)
    scorer = scorer_from_model(model, data.item_mm, cats, modality_mm=data.modality_mm)
    hist, cands = torch.tensor([4, 7, 9]), torch.tensor([2, 5])
    state = scorer.encode_user(hist, torch.tensor(3), torch.zeros(3))
    got = scorer.modality_similarities(state, cands)
    for k, table in enumerate(data.modality_mm.values()):
        want = torch.from_numpy(np.asarray(table)[cands] @ np.asarray(table)[hist].T)
        torch.testing.assert_close(got[:, :, k], want.float(), atol=1e-6, rtol=0)


# ------------------------------------------------------------- trainer and sharding
@pytest.mark.slow
def test_dmae_trains_through_the_entry_point_on_two_modalities(tmp_path: Path) -> None:
    root = write_prepared(tmp_path / "data", categories=True, modalities=TWO, times=True)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline.train", "--model", "dmae", "--data", str(root)]
    command += ["--output-dir", str(out), "--max-steps", "4", "--batch-size", "32"]
    command += ["--model-arg", "embedding_dim=8", "--model-arg", "lambda_dec=0.5"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "dmae" and metrics["steps"] == 4
    assert 0.0 <= metrics["test"]["auc"] <= 1.0


WORLD = 2


def _worker(rank: int, init: str, root: str, out: str) -> None:
    with gloo_group(rank, WORLD, init):
        from pipeline.distributed import DistEnv
        from pipeline.sharding import ShardingSettings, shard_model
        from tests.test_sharded_equivalence import copy_weights

        data = PreparedData(root)
        spec = data.feature_spec()
        env = DistEnv(rank, WORLD, rank, WORLD, torch.device("cpu"))
        batch = next(iter(data.reader("train", 24, rank=rank, world_size=WORLD)))
        config = make_config("dmae", SMALL)
        torch.manual_seed(0)
        reference = CTRTask(build_model("dmae", spec, config))
        task = CTRTask(build_model("dmae", spec, config, embedding_device=torch.device("meta")))
        dmp, *_ = shard_model(
            task,
            env,
            ShardingSettings(embedding_optimizer="sgd", sharding_type="row_wise"),
            dense_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
            dense_lr=0.1,
            batch_size=24,
        )
        copy_weights(reference.state_dict(), dmp.state_dict())
        with torch.no_grad():
            loss, (_, sharded, _) = dmp(batch)
            ref_loss, (_, unsharded, _) = reference(batch)
        result = {
            "sharded": sharded.tolist(),
            "reference": unsharded.tolist(),
            "loss": [float(loss), float(ref_loss)],
            "auxiliary": [float(task.last_auxiliary), float(reference.last_auxiliary)],
            "plan": str(dmp.plan),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_rank_sharded_dmae_equals_unsharded(tmp_path: Path) -> None:
    """Two modalities and times, row-wise sharded tables over 2 gloo ranks: the same logits
    and the same loss (BCE + decoder term) as the unsharded model on each rank's batch."""
    root = write_prepared(tmp_path / "data", categories=True, seed=4, modalities=TWO, times=True)
    ctx = mp.start_processes(
        _worker,
        args=(f"file://{tmp_path / 'rendezvous'}", str(root), str(tmp_path)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 200
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.terminate()
            pytest.fail("2-rank gloo workers did not finish in time")
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "row_wise" in result["plan"]
        sharded, reference = torch.tensor(result["sharded"]), torch.tensor(result["reference"])
        assert sharded.numel() > 0
        torch.testing.assert_close(sharded, reference, rtol=1e-5, atol=1e-6)
        assert result["auxiliary"][0] > 0
        np.testing.assert_allclose(result["loss"][0], result["loss"][1], rtol=1e-5)
        np.testing.assert_allclose(result["auxiliary"][0], result["auxiliary"][1], rtol=1e-5)


def test_bench_dmae_serving_runs_and_reports_the_ratio_to_dmf(tmp_path: Path) -> None:
    """pipeline/bench_dmae.py (serving part, eager) on a tiny two-modality dataset."""
    from pipeline import bench_dmae

    root = write_prepared(tmp_path / "data", categories=True, seed=5, modalities=TWO, times=True)
    np.save(root / "item_category.npy", np.random.default_rng(0).integers(2, 5, size=30))
    out = tmp_path / "bench.json"
    argv = ["--data", str(root), "--train-steps", "0", "--requests", "4", "--candidates", "6",
            "--rounds", "1", "--formats", "eager", "--json", str(out)]  # fmt: skip
    assert bench_dmae.main(argv) == 0
    rows = {(r["model"], r["format"]): r for r in json.loads(out.read_text())["serving"]}
    assert set(rows) == {("dmf", "eager"), ("dmae", "eager")}
    assert rows[("dmf", "eager")]["x_dmf"] == 1.0 and rows[("dmae", "eager")]["p50_ms"] > 0
