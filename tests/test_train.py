"""The training entry point end to end: metrics.json, resume, restarts, TorchX."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.checkpoint import best_or_latest_checkpoint
from tests.fixtures import gloo_group, one_rank_process_group, write_prepared

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPLITS = {"train": 640, "valid": 96, "test": 160}
COMMON = ["--epochs", "2", "--batch-size", "32", "--eval-batch-size", "64", "--seed", "7"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_prepared(tmp_path_factory.mktemp("prepared"), samples_per_split=SPLITS, seed=1)
    plant_item_effect(root, seed=2)
    return root


def plant_item_effect(root: Path, seed: int) -> None:
    """Replace the fixture's coin-flip labels by clicks drawn with a per-item rate (uniform
    in 0.05..0.95), so a model that learns anything beats chance on the test split."""
    rng = np.random.default_rng(seed)
    manifest = json.loads((root / "manifest.json").read_text())
    rate = rng.uniform(0.05, 0.95, size=manifest["vocab_sizes"]["item"])
    for names in manifest["splits"].values():
        for name in names:
            table = pq.read_table(root / name)
            items = table.column("item").to_numpy()
            labels = (rng.random(items.shape[0]) < rate[items]).astype(np.float32)
            table = table.set_column(
                table.schema.get_field_index("label"), "label", pa.array(labels)
            )
            pq.write_table(table, root / name, row_group_size=16)  # the fixture's row groups


def label_entropy(root: Path, split: str) -> float:
    """Log loss of predicting the split's own positive rate for every sample (nats)."""
    labels = pq.read_table(root / split, columns=["label"]).column("label").to_numpy()
    p = float(labels.mean())
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def _run(cmd: list[str], timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run `cmd` in its own session; on timeout kill the whole group (torchrun's workers
    included, which would otherwise wait forever for their dead rendezvous store)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{cmd} timed out after {timeout} s:\n{stderr[-5000:]}") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}"
        )
    return result


def _train(data: Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.train", "--data", str(data), "--output-dir", str(out)]
    return _run([*cmd, *COMMON, *extra], check=check)


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_single_process_run_writes_metrics(data: Path, tmp_path: Path):
    """DMF learns the planted item effect: measured at these settings (seeds 1, 2, 3, 7),
    test AUC 0.709-0.726 (the true rates score 0.749), GAUC 0.661-0.724 (true rates 0.745),
    logloss 0.644-0.670 against 0.688 for the split's base rate (true rates 0.599)."""
    proc = _train(data, tmp_path, "--model", "dmf", "--eval-every", "10")
    metrics = _metrics(tmp_path)
    test = metrics["test"]
    assert metrics["model"] == "dmf"
    assert 0.64 < test["auc"] < 0.80, test["auc"]  # well above chance, not above the truth
    assert 0.58 < test["gauc"] < 0.82, test["gauc"]
    assert 0.55 < test["logloss"] < label_entropy(data, "test"), test["logloss"]
    assert test["samples"] == SPLITS["test"]
    assert metrics["train_samples_per_s"] > 0
    assert set(test["by_activity"]) == {"short", "long"}
    assert metrics["data"]["manifest_checksum"]
    steps = 2 * SPLITS["train"] // 32
    assert metrics["steps"] == steps
    assert [h["step"] for h in metrics["valid_history"]] == list(range(10, steps + 1, 10))
    assert max(h["auc"] for h in metrics["valid_history"]) > 0.7
    assert metrics["config"]["batch_size"] == 32 and metrics["config"]["seed"] == 7
    assert "AUC" in proc.stdout and "dmf" in proc.stdout


def test_a_world_of_one_needs_no_free_port(tmp_path: Path):
    """A plain `python -m pipeline.train` (no torchrun) makes its world of one with an
    in-memory store: it starts even when the port it would have chosen is taken by another
    process (a TCP store there failed with EADDRINUSE, seen in CI)."""
    script = """
import os, socket
import torch, torch.distributed as dist
from pipeline import distributed
taken = socket.socket(); taken.bind(("127.0.0.1", 0)); taken.listen()
distributed._free_port = lambda: taken.getsockname()[1]  # the port another process holds
for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    os.environ.pop(key, None)
env = distributed.init_distributed("cpu")
x = torch.ones(3)
dist.all_reduce(x)
print(env.world_size, env.rank, x.tolist())
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[-2] == "1 0 [1.0, 1.0, 1.0]"


def test_evals_per_epoch_sets_the_validation_interval(data: Path, tmp_path: Path):
    """--evals-per-epoch 4 on 20 steps an epoch validates every 5 steps, and the run's
    recorded config says so (the preset setting that validates alike on any data size)."""
    _train(data, tmp_path, "--model", "dnn", "--evals-per-epoch", "4", "--no-restore-best")
    metrics = _metrics(tmp_path)
    steps = 2 * SPLITS["train"] // 32
    assert [h["step"] for h in metrics["valid_history"]] == list(range(5, steps + 1, 5))
    assert metrics["config"]["eval_every"] == 5 and metrics["config"]["evals_per_epoch"] == 4


@pytest.mark.slow
def test_plateau_reduces_every_lr_and_resumes_exactly(data: Path, tmp_path: Path):
    """--lr-plateau-factor 0.5: each validation without a better AUC halves the learning
    rates (recorded as lr_scale), the run differs from the constant-rate one, and a run
    killed after some plateaus and resumed ends with the uninterrupted run's metrics
    (the scale and the embedding optimizer's rate come back from the checkpoint)."""
    args = ["--model", "dnn", "--eval-every", "2", "--lr", "0.01", "--embedding-optimizer",
            "adagrad", "--checkpoint-every", "2", "--no-restore-best"]  # fmt: skip
    _train(data, tmp_path / "flat", *args)
    _train(data, tmp_path / "straight", *args, "--lr-plateau-factor", "0.5")
    history = _metrics(tmp_path / "straight")["valid_history"]
    best, plateaus = -1.0, 0
    for record in history:
        if record["auc"] > best:
            best = record["auc"]
        else:
            plateaus += 1
        assert record["lr_scale"] == pytest.approx(max(0.5**plateaus, 1e-6 / 0.01))
    assert history[-1]["lr_scale"] < 1, "the fixture's run should plateau at least once"
    flat = _metrics(tmp_path / "flat")["test"]["auc"]
    assert _metrics(tmp_path / "straight")["test"]["auc"] != flat
    crashed = _train(data, tmp_path / "crash", *args, "--lr-plateau-factor", "0.5",
                     "--fail-at-step", "31", check=False)  # fmt: skip
    assert crashed.returncode != 0
    _train(data, tmp_path / "crash", *args, "--lr-plateau-factor", "0.5", "--resume")
    resumed = _metrics(tmp_path / "crash")
    assert [h["lr_scale"] for h in resumed["valid_history"]] == [h["lr_scale"] for h in history]
    for key in ("auc", "gauc", "logloss"):
        assert resumed["test"][key] == pytest.approx(
            _metrics(tmp_path / "straight")["test"][key], abs=1e-6
        )


@pytest.mark.slow
def test_resume_after_a_crash_ends_with_the_uninterrupted_metrics(data: Path, tmp_path: Path):
    args = ["--model", "dmf", "--checkpoint-every", "7", "--lr-schedule", "cosine"]
    _train(data, tmp_path / "straight", *args)
    crashed = _train(data, tmp_path / "crash", *args, "--fail-at-step", "12", check=False)
    assert crashed.returncode != 0, "fault injection should kill the run"
    assert not (tmp_path / "crash" / "metrics.json").exists()
    _train(data, tmp_path / "crash", *args, "--resume")
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "crash")
    for key in ("auc", "gauc", "logloss"):
        assert resumed["test"][key] == pytest.approx(straight["test"][key], abs=1e-6)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_restarts_a_killed_worker_and_matches_the_uninterrupted_run(
    data: Path, tmp_path: Path
):
    def torchrun(out: Path, *extra: str) -> None:
        cmd = [
            str(BIN / "torchrun"),
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            "localhost:0",
            "-m",
            "pipeline.train",
            "--data",
            str(data),
            "--output-dir",
            str(out),
        ]
        _run(
            [*cmd, *COMMON, "--model", "dta", "--checkpoint-every", "5", "--resume", *extra],
            timeout=400,
        )

    torchrun(tmp_path / "straight")
    torchrun(tmp_path / "killed", "--fail-at-step", "8")
    assert (tmp_path / "killed" / ".failed-at-8").exists(), "the worker was killed once"
    straight, killed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "killed")
    for key in ("auc", "gauc", "logloss"):
        assert killed["test"][key] == pytest.approx(straight["test"][key], abs=1e-6)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchx_component_trains_on_two_workers(data: Path, tmp_path: Path):
    cmd = [
        str(BIN / "torchx"),
        "run",
        "launch/train.py:train",
        "--",
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path),
        *COMMON,
        "--model",
        "ta",
    ]
    proc = _run(cmd, timeout=400)
    metrics = _metrics(tmp_path)
    assert metrics["world_size"] == 2 and metrics["model"] == "ta"
    # Quiet: torchx's own lines, the start-up line, the progress lines and the table; no
    # library warnings (the known ones are filtered by name at start-up).
    output = proc.stdout + proc.stderr
    assert "Warning" not in output and "WARNING" not in output, output
    assert len(output.splitlines()) < 40, output
    assert metrics["test"]["samples"] == SPLITS["test"]
    # --batch-size is global: 2 workers x 16 rows take the steps one process of 32 takes.
    assert metrics["steps"] == 2 * SPLITS["train"] // 32


@pytest.mark.slow
def test_popularity_baseline(data: Path, tmp_path: Path):
    _train(data, tmp_path, "--model", "popularity")
    assert _metrics(tmp_path)["test"]["samples"] == SPLITS["test"]


def test_unknown_model_setting_is_rejected(data: Path, tmp_path: Path):
    proc = _train(data, tmp_path, "--model", "ta", "--model-arg", "alpha=0.3", check=False)
    assert proc.returncode != 0
    assert "has no settings ['alpha']" in proc.stderr


def test_unknown_key_in_a_config_file_fails_the_entry_point(data: Path, tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("model: ta\nlearning_rate: 0.01\n")
    proc = _train(data, tmp_path, "--config", str(path), check=False)
    assert proc.returncode == 2
    assert "learning_rate" in proc.stderr and str(path) in proc.stderr


@pytest.mark.slow
def test_default_data_ranks_dmf_over_ta_over_popularity(tmp_path: Path):
    """The embedded dataset plants what DMF exploits (topic-driven multimodal vectors,
    drifting interests, ID-only item quality): DMF > TA > item popularity in test AUC."""
    data = ROOT / "data" / "default"
    _run([sys.executable, "-m", "data_prep", "default", "--out", str(data)])
    auc = {}
    for model in ("dmf", "ta", "popularity"):
        out = tmp_path / model
        _run(
            [
                sys.executable,
                "-m",
                "pipeline.train",
                "--data",
                str(data),
                "--output-dir",
                str(out),
                "--model",
                model,
                "--epochs",
                "1",
                "--seed",
                "0",
                "--batch-size",  # the single-process batch this ranking was measured with
                "256",
            ],
            timeout=600,
        )
        auc[model] = _metrics(out)["test"]["auc"]
    assert auc["dmf"] > auc["ta"] + 0.01 > auc["popularity"] + 0.02, auc


@pytest.mark.slow
def test_every_model_trains_through_the_entry_point(data: Path, tmp_path: Path):
    """Each zoo model, chosen by name, trains and evaluates via pipeline.train (one
    process for all of them, to pay the imports once)."""
    from models.zoo import MODELS

    script = (
        "import sys, json\n"
        "from pipeline.train import parse_args, train\n"
        "for name in sys.argv[2:]:\n"
        "    args = ['--model', name, '--data', sys.argv[1], '--output-dir', sys.argv[1] + '/../' + name,\n"
        "            '--max-steps', '3', '--batch-size', '64', '--model-arg', 'embedding_dim=8']\n"
        "    if name == 'make':\n"
        "        args += ['--model-arg', 'pretrain_epochs=1']\n"
        "    train(parse_args(args))\n"
    )
    work = tmp_path / "data"
    write_prepared(work, samples_per_split=SPLITS, categories=True)
    _run([sys.executable, "-c", script, str(work), *sorted(MODELS)], timeout=600)
    for name in MODELS:
        metrics = _metrics(tmp_path / name)
        assert metrics["model"] == name and metrics["steps"] == 3
        assert metrics["test"]["samples"] == SPLITS["test"]


# ----------------------------------------------------------- the recipe settings (issue 11)
@pytest.mark.parametrize("use_user", [True, False])
def test_embedding_l2_adds_exactly_the_penalty_of_the_looked_up_rows(tmp_path: Path, use_user):
    """loss(lambda) - loss(0) = lambda * mean over the batch of each sample's sum of squared
    norms of the rows it looks up, computed here from the tables directly."""
    import torch

    from models.ctr import CTRTask
    from models.zoo import build_model, make_config
    from pipeline.data import PreparedData

    root = write_prepared(tmp_path / "data", categories=True, seed=3)
    data = PreparedData(root)
    config = make_config("dmf", {"embedding_dim": 8, "use_user_embedding": use_user})
    torch.manual_seed(0)
    model = build_model("dmf", data.feature_spec(), config)
    model.eval()  # no dropout: the same logits in both calls
    batch = next(iter(data.reader("train", 32).iter_batches()))
    lam = 0.037
    with torch.no_grad():
        plain, _ = CTRTask(model)(batch)
        penalised, _ = CTRTask(model, embedding_l2=lam)(batch)
    tables = model.sparse_arch.embedding_collection.embeddings
    features = {"item": "t_item", "hist_item": "t_item", "category": "t_category",
                "hist_category": "t_category"}  # fmt: skip
    if use_user:
        features["user"] = "t_user"
    kjt = batch.sparse_features
    total = sum(
        float(tables[table].weight.detach()[kjt[name].values()].pow(2).sum())
        for name, table in features.items()
    )
    expected = lam * total / batch.labels.shape[0]
    assert float(penalised - plain) == pytest.approx(expected, rel=1e-5)
    assert expected > 0


@pytest.mark.slow
def test_restore_best_gives_the_test_metrics_of_a_run_stopped_at_best_step(
    data: Path, tmp_path: Path
):
    # 4 epochs at a high learning rate overfit the 640 rows: validation peaks mid-run.
    args = ["--model", "dmf", "--eval-every", "5", "--model-arg", "dropout=0.3",
            "--embedding-l2", "0.01", "--weight-decay", "0.01", "--epochs", "4", "--lr", "0.01"]  # fmt: skip
    _train(data, tmp_path / "full", *args)
    full = _metrics(tmp_path / "full")
    best = full["best_step"]
    assert best < full["steps"], "the settings must make the best step an earlier one"
    assert full["test_step"] == best and full["test_from"] == "best_valid_step"
    assert full["best_valid_auc"] == max(h["auc"] for h in full["valid_history"])
    _train(data, tmp_path / "stopped", *args, "--max-steps", str(best))
    stopped = _metrics(tmp_path / "stopped")
    assert stopped["steps"] == best
    # On disk, best/ holds the tested weights, also when the best is the last step.
    for run in ("full", "stopped"):
        assert best_or_latest_checkpoint(tmp_path / run).name == f"step-{best:08d}", run
    for key in ("auc", "gauc", "logloss"):
        assert full["test"][key] == pytest.approx(stopped["test"][key], abs=1e-9)
    # Without restore_best the test metrics are the last step's.
    _train(data, tmp_path / "last", *args, "--no-restore-best")
    last = _metrics(tmp_path / "last")
    assert last["test_from"] == "last_step" and last["test_step"] == last["steps"]
    assert last["test"]["auc"] != full["test"]["auc"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["auto", "adam_sparse"])
def test_the_best_step_survives_a_crash_and_a_resume(data: Path, tmp_path: Path, optimizer):
    """Fused Adagrad and the replicated sparse Adam (its optimizer state initialised with
    sparse zeros before the checkpoint is loaded in place)."""
    args = ["--model", "dmf", "--eval-every", "5", "--checkpoint-every", "7",
            "--model-arg", "dropout=0.3", "--embedding-l2", "0.01",
            "--embedding-optimizer", optimizer, "--epochs", "4", "--lr", "0.01"]  # fmt: skip
    _train(data, tmp_path / "straight", *args)
    crashed = _train(data, tmp_path / "crash", *args, "--fail-at-step", "26", check=False)
    assert crashed.returncode != 0
    best_dir = tmp_path / "crash" / "checkpoints" / "best"
    assert any(p.is_dir() for p in best_dir.iterdir()), "a best checkpoint was kept"
    _train(data, tmp_path / "crash", *args, "--resume")
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "crash")
    assert resumed["best_step"] == straight["best_step"] < straight["steps"]
    for key in ("auc", "gauc", "logloss"):
        assert resumed["test"][key] == pytest.approx(straight["test"][key], abs=1e-6)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_restore_best_on_two_ranks(data: Path, tmp_path: Path):
    def torchrun(out: Path, *extra: str) -> dict:
        cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", "localhost:0", "-m", "pipeline.train", "--data", str(data),
               "--output-dir", str(out), *COMMON, "--model", "ta", "--eval-every", "5",
               "--model-arg", "dropout=0.3", "--embedding-l2", "0.01", "--epochs", "4",
               "--lr", "0.01", *extra]  # fmt: skip
        _run(cmd, timeout=400)
        return _metrics(out)

    full = torchrun(tmp_path / "full")
    assert full["world_size"] == 2 and full["best_step"] < full["steps"]
    stopped = torchrun(tmp_path / "stopped", "--max-steps", str(full["best_step"]))
    for key in ("auc", "gauc", "logloss"):
        assert full["test"][key] == pytest.approx(stopped["test"][key], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam_dense", "adam_sparse"])
def test_adam_dense_trains_in_one_process(data: Path, tmp_path: Path, optimizer: str):
    """Adam for the embeddings on CPU: unsharded replicated tables, torch Adam (dense
    gradients) or SparseAdam (sparse gradients)."""
    _train(data, tmp_path, "--model", "dmf", "--eval-every", "10", "--embedding-optimizer",
           optimizer, "--embedding-lr", "0.01", "--model-arg", "use_user_embedding=false")  # fmt: skip
    metrics = _metrics(tmp_path)
    assert metrics["embedding_optimizer"] == optimizer
    history = [h["auc"] for h in metrics["valid_history"]]
    assert history[-1] > history[0] + 0.05, history  # it learns the planted item effect
    assert metrics["test"]["auc"] > 0.6, metrics["test"]


def _adam_dense_worker(rank: int, init: str, root: str, out: str, optimizer: str) -> None:
    """Each rank: the DMP model with `optimizer` (adam_dense or adam_sparse) over 2 gloo
    ranks, and an unsharded reference trained with torch Adam (SparseAdam on sparse
    tables) on the mean loss of both ranks' batches (what DDP's averaged gradient is the
    gradient of); both take the same steps."""
    import copy

    import torch
    import torch.distributed as dist

    with gloo_group(rank, 2, init):
        from models.ctr import CTRTask
        from models.zoo import build_model, make_config
        from pipeline.data import PreparedData
        from pipeline.distributed import DistEnv
        from pipeline.sharding import ShardingSettings, shard_model

        data = PreparedData(root)
        config = make_config("ta", {"embedding_dim": 8, "hidden_dim": 8, "num_heads": 2,
                                    "mlp_dims": [16], "use_user_embedding": False})  # fmt: skip
        torch.manual_seed(0)
        task = CTRTask(build_model("ta", data.feature_spec(), config), embedding_l2=0.01)
        reference = copy.deepcopy(task)
        env = DistEnv(rank, 2, rank, 2, torch.device("cpu"))
        dmp, combined, *_ = shard_model(
            task, env, ShardingSettings(embedding_optimizer=optimizer, embedding_lr=0.01),
            dense_optimizer=lambda params: torch.optim.Adam(params, lr=0.01),
            dense_lr=0.01, batch_size=16,
        )  # fmt: skip
        tables = list(reference.model.sparse_arch.parameters())
        dense = [p for p in reference.parameters() if all(p is not t for t in tables)]
        if optimizer == "adam_sparse":
            for module in reference.model.sparse_arch.modules():
                if isinstance(module, torch.nn.Embedding):
                    module.sparse = True
            ref_opts = [torch.optim.SparseAdam(tables, lr=0.01), torch.optim.Adam(dense, lr=0.01)]
        else:
            ref_opts = [torch.optim.Adam(tables + dense, lr=0.01)]
        batches = [next(iter(data.reader("train", 16, rank=r, world_size=2).iter_batches()))
                   for r in range(2)]  # fmt: skip
        losses = []
        for _ in range(6):
            combined.zero_grad()
            loss, _ = dmp(batches[rank])
            loss.backward()
            combined.step()
            for opt in ref_opts:
                opt.zero_grad()
            ref_loss = (reference(batches[0])[0] + reference(batches[1])[0]) / 2
            ref_loss.backward()
            for opt in ref_opts:
                opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append([float(total) / 2, float(ref_loss)])
        sharded = {k: v.detach() for k, v in dmp.state_dict().items()}
        diffs = {
            k: float((sharded[k] - v.detach()).abs().max())
            for k, v in reference.state_dict().items()
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps({"losses": losses, "diffs": diffs}))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(240)
@pytest.mark.parametrize("optimizer", ["adam_dense", "adam_sparse"])
def test_adam_on_two_ranks_equals_the_unsharded_model(tmp_path: Path, optimizer: str):
    import torch.multiprocessing as mp

    root = write_prepared(tmp_path / "data", seed=4)
    ctx = mp.start_processes(
        _adam_dense_worker,
        args=(f"file://{tmp_path / 'rendezvous'}", str(root), str(tmp_path), optimizer),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    while not ctx.join(timeout=5):
        pass
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        losses = np.asarray(result["losses"])
        np.testing.assert_allclose(losses[:, 0], losses[:, 1], rtol=1e-5)  # same steps
        assert losses[-1, 0] < losses[0, 0] - 0.01, losses  # it trains
        worst = max(result["diffs"].values())
        assert worst < 1e-5, {k: v for k, v in result["diffs"].items() if v >= 1e-5}
        assert any("t_item" in k for k in result["diffs"]), "the tables are compared"


def test_embedding_weight_decay_moves_every_row_and_only_with_adam_dense(tmp_path: Path):
    """adam_dense with embedding_weight_decay adds wd x row to every row's gradient at every
    step (FuxiCTR's whole-table L2): after one step a row no sample touched has taken Adam's
    first step on that gradient alone (w - lr x sign(w)); without it the row stays put."""
    import torch

    from models.ctr import CTRTask
    from models.zoo import build_model, make_config
    from pipeline.data import PreparedData
    from pipeline.distributed import DistEnv
    from pipeline.sharding import ShardingSettings, shard_model

    data = PreparedData(write_prepared(tmp_path / "data", seed=4))
    config = make_config("dnn", {"embedding_dim": 8, "mlp_dims": [16],
                                 "use_user_embedding": False})  # fmt: skip
    batch = next(iter(data.reader("train", 16).iter_batches()))
    touched = torch.cat(
        [batch.sparse_features[name].values() for name in ("item", "hist_item")]
    ).unique()
    with one_rank_process_group(tmp_path):
        after = {}
        for wd in (0.0, 0.1):
            torch.manual_seed(0)
            task = CTRTask(build_model("dnn", data.feature_spec(), config))
            table = task.model.sparse_arch.embedding_collection.embeddings["t_item"].weight
            before = table.detach().clone()
            dmp, combined, *_ = shard_model(
                task, DistEnv(0, 1, 0, 1, torch.device("cpu")),
                ShardingSettings("adam_dense", 0.01, embedding_weight_decay=wd),
                dense_optimizer=lambda params: torch.optim.Adam(params, lr=0.01),
                dense_lr=0.01, batch_size=16,
            )  # fmt: skip
            combined.zero_grad()
            dmp(batch)[0].backward()
            combined.step()
            after[wd] = table.detach().clone()
        untouched = torch.ones(before.shape[0], dtype=torch.bool)
        untouched[touched] = False
        assert untouched.sum() > 0 and (~untouched).sum() > 0
        torch.testing.assert_close(after[0.0][untouched], before[untouched], rtol=0, atol=0)
        expected = before[untouched] - 0.01 * torch.sign(before[untouched])
        torch.testing.assert_close(after[0.1][untouched], expected, rtol=1e-4, atol=1e-6)
        assert not torch.equal(after[0.0][touched], before[touched])  # the batch's rows train
        for name in ("adam_sparse", "adagrad"):
            task = CTRTask(build_model("dnn", data.feature_spec(), config))
            with pytest.raises(ValueError, match="needs embedding optimizer 'adam_dense'"):
                shard_model(
                    task, DistEnv(0, 1, 0, 1, torch.device("cpu")),
                    ShardingSettings(name, 0.01, embedding_weight_decay=0.1),
                    dense_optimizer=lambda params: torch.optim.Adam(params, lr=0.01),
                    dense_lr=0.01, batch_size=16,
                )  # fmt: skip
