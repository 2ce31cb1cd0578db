"""The tuner (experiments.tune): spaces as data, the tuning folder, pruning, resuming from
its journal storage after being killed, and that no trial reads the test split."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from experiments.tune import open_storage
from experiments.tune_data import kept_users, tuning_folder
from experiments.tune_space import FAMILIES, MODEL_SPACES, settings_of, space_for, suggest
from tests.fixtures import write_prepared

ROOT = Path(__file__).resolve().parents[1]
MODEL = "dnn"  # the cheapest model of the zoo: the search machinery is what is tested
GOOD = {
    "lr": 3e-3, "embedding_optimizer": "adagrad", "embedding_lr_adagrad": 0.2,
    "embedding_l2": 1e-7, "weight_decay": 1e-6, "dropout": 0.0,
    "use_user_embedding": False, "batch_size": 128, "embedding_dim": 32, "mlp_dims": "80-40",
    "pooling": "mean",
}  # fmt: skip
# Deliberately bad: tiny learning rates and the heaviest embedding penalty of the space.
BAD = {
    **GOOD, "lr": 1e-4, "embedding_lr_adagrad": 5e-3, "embedding_l2": 0.1, "dropout": 0.5,
}  # fmt: skip


# ------------------------------------------------------------------------- the space
def test_every_zoo_model_has_a_family_and_a_space():
    from models.zoo import MODELS, make_config

    members = [m for models in FAMILIES.values() for m in models]
    assert len(members) == len(set(members)), "a model in two families"
    assert set(MODELS) <= set(members), set(MODELS) - set(members)
    for model in MODELS:
        trial = optuna.trial.FixedTrial(
            {name: p.low if p.kind != "categorical" else p.choices[0]
             for name, p in space_for(model).items()}
        )  # fmt: skip
        settings = suggest(trial, model)
        make_config(model, settings["model_args"])  # the model accepts its knobs
        assert set(MODEL_SPACES.get(model, {})) <= set(trial.params)


def test_conditional_embedding_lr_and_decoded_choices():
    trial = optuna.trial.FixedTrial({**GOOD, "embedding_optimizer": "adam_dense",
                                     "embedding_lr_adam": 1e-3,
                                     "embedding_weight_decay": 0.005})  # fmt: skip
    settings = suggest(trial, MODEL)
    assert settings["embedding_optimizer"] == "adam_dense"
    assert settings["embedding_lr"] == 1e-3 and "embedding_lr_adagrad" not in trial.params
    assert settings["embedding_weight_decay"] == 0.005
    adagrad = settings_of(MODEL, {"embedding_optimizer": "adagrad", "embedding_lr_adagrad": 0.05})
    assert adagrad["embedding_weight_decay"] == 0.0  # not drawn: off, whatever the preset says
    assert settings["model_args"] == {
        "dropout": 0.0, "use_user_embedding": False, "embedding_dim": 32, "mlp_dims": [80, 40],
        "pooling": "mean",
    }  # fmt: skip
    din = settings_of("din", {"attention_dims": "256-128", "dropout": 0.30000000000000004})
    assert din["model_args"] == {"attention_dims": [256, 128], "dropout": 0.3}


# ------------------------------------------------------------------------ the data
def test_user_subsample_is_a_fixed_hash():
    users = np.arange(5000)
    mask = kept_users(users, 0.5, seed=3)
    assert np.array_equal(mask, kept_users(users, 0.5, seed=3))
    assert not np.array_equal(mask, kept_users(users, 0.5, seed=4))
    assert 0.45 < mask.mean() < 0.55
    assert not (kept_users(users, 0.25, seed=3) & ~mask).any(), "smaller fractions nest"


def test_tuning_folder_has_no_test_split_and_keeps_whole_users(tmp_path: Path):
    from pipeline.data import PreparedData

    source = write_prepared(
        tmp_path / "src", samples_per_split={"train": 400, "valid": 80, "test": 80}
    )
    folder, subset = tuning_folder(source, tmp_path / "tune", train_fraction=0.5, seed=0)
    data = PreparedData(folder)
    assert "test" not in data.manifest["splits"] and not data.has_split("test")
    assert subset["samples"]["train"] < 400 and subset["samples"]["valid"] > 0
    for split in ("train", "valid"):
        users = np.concatenate([b.users().numpy() for b in data.reader(split, 64).iter_batches()])
        assert kept_users(users, 0.5, seed=0).all()
        assert len(users) == subset["samples"][split]
    again, _ = tuning_folder(source, tmp_path / "tune", train_fraction=0.5, seed=0)
    assert again == folder  # reused
    full, record = tuning_folder(source, tmp_path / "tune", train_fraction=1.0)
    assert record["samples"] == {"train": 400, "valid": 80}
    assert "test" not in PreparedData(full).manifest["splits"]


# --------------------------------------------------------------------------- pruning
def test_median_pruner_prunes_a_trial_below_the_median():
    from experiments.tune import build_pruner

    study = optuna.create_study(direction="maximize", pruner=build_pruner("median", 1, 0))
    good = study.ask()
    for step, value in enumerate([0.70, 0.75], start=1):
        good.report(value, step)
    study.tell(good, 0.75)
    bad = study.ask()
    bad.report(0.52, 1)
    assert bad.should_prune()
    fine = study.ask()
    fine.report(0.71, 1)
    assert not fine.should_prune()


# ------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer tests' fixture (a planted per-item click rate), with more rows, and its
    test split DELETED: a trial that read it would fail."""
    from tests.test_train import plant_item_effect

    root = tmp_path_factory.mktemp("tune-src")
    write_prepared(root, samples_per_split={"train": 3000, "valid": 400, "test": 200}, seed=1)
    plant_item_effect(root, seed=2)
    for path in (root / "test").glob("*.parquet"):
        path.unlink()
    return root


def _tune(source: Path, work: Path, trials: int, *extra: str, wait: bool = True):
    cmd = [
        sys.executable, "-m", "experiments.tune", "--data", str(source), "--model", MODEL,
        "--trials", str(trials), "--storage", f"journal:{work / 'study.journal'}",
        "--out", str(work / "out"), "--subset-dir", str(work / "data"),
        "--train-fraction", "0.8", "--workers", "1", "--threads", "1", "--max-epochs", "2",
        "--evals-per-epoch", "2", "--patience", "2", "--startup-trials", "2",
        "--pruner-startup", "1", "--pruner-warmup", "0", "--preset", "default", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    if not wait:
        return proc
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the search timed out") from None
    assert proc.returncode == 0, out[-4000:]
    return out


def _trials(work: Path) -> list[dict]:
    return json.loads((work / "out" / "trials.json").read_text())["trials"]


def _trial_processes(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_search_prunes_writes_the_table_and_resumes_after_a_kill(source: Path, tmp_path: Path):
    enqueue = tmp_path / "enqueue.json"
    enqueue.write_text(json.dumps([GOOD, BAD]))
    _tune(source, tmp_path, 3, "--enqueue", str(enqueue))
    trials = _trials(tmp_path)
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert trials[0]["state"] == "COMPLETE" and trials[1]["state"] == "PRUNED", trials
    assert trials[1]["params"] == BAD and len(trials[1]["intermediate"]) == 1
    assert trials[2]["state"] in ("COMPLETE", "PRUNED")

    # No trial read the test split (deleted from the source), none reports test figures.
    for t in trials:
        metrics = json.loads(Path(t["user_attrs"]["output_dir"], "metrics.json").read_text())
        assert "test" not in metrics and metrics["config"]["evaluate_test"] is False
        assert metrics["best_valid_auc"] == pytest.approx(
            max(h["auc"] for h in metrics["valid_history"])
        )
    table = (tmp_path / "out" / "trials.md").read_text()
    assert "| 1 | PRUNED |" in table and "## Search space" in table

    # The best entry is a config file and a preset entry.
    from pipeline.config import PRESETS, check_presets, resolve

    best = json.loads((tmp_path / "out" / "best.json").read_text())
    config = resolve(["--config", str(tmp_path / "out" / "best.json")])
    assert config.model == MODEL and config.restore_best and config.early_stopping_patience == 2
    assert best["data"] == str(source)
    entry = json.loads((tmp_path / "out" / "best_entry.json").read_text())["models"][MODEL]
    saved = dict(PRESETS["default"])
    try:
        PRESETS["default"]["models"] = {MODEL: entry}
        check_presets()
        preset = resolve(["--preset", "default", "--model", MODEL])
        assert preset.lr == entry["lr"] and preset.batch_size == entry["batch_size"]
    finally:
        PRESETS["default"].clear()
        PRESETS["default"].update(saved)

    # More trials continue the same search.
    out = _tune(source, tmp_path, 4)
    assert "3/4 trials done" in out
    resumed = _trials(tmp_path)
    assert len(resumed) == 4
    for before, after in zip(trials, resumed):
        assert (before["params"], before["value"]) == (after["params"], after["value"])

    # Killed in the middle of trial 4: the trial process dies with the tuner, and the
    # next invocation fails the stale trial, retries its parameters and finishes.
    proc = _tune(source, tmp_path, 5, wait=False)
    log = tmp_path / "out" / "trial-0004" / "log.txt"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.is_file(), "trial 4 never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    marker = str(tmp_path / "out" / "trial-0004" / "trial.json")
    deadline = time.monotonic() + 30
    while _trial_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _trial_processes(marker), "the trial outlived the killed tuner"
    storage = open_storage(f"journal:{tmp_path / 'study.journal'}")
    stored = optuna.load_study(study_name=MODEL, storage=storage)
    assert stored.trials[4].state.name == "RUNNING"
    out = _tune(source, tmp_path, 5)
    assert "left running by a stopped search" in out
    final = _trials(tmp_path)
    assert final[4]["state"] == "FAIL"
    assert final[5]["user_attrs"]["retry_of"] == 4 and final[5]["params"] == final[4]["params"]
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in final) == 5


def test_the_default_storage_is_a_journal_kept_in_the_repository(tmp_path: Path):
    """A search outlives the machine it ran on: its default storage is Optuna's journal
    file under docs/results/tune (tracked), per data folder and model."""
    from experiments.tune import TuneConfig

    assert TuneConfig(data="data/amazon-toys", model="din").storage == (
        "journal:docs/results/tune/amazon-toys/din.journal"
    )
    path = tmp_path / "new" / "din.journal"
    assert isinstance(open_storage(f"journal:{path}"), optuna.storages.JournalStorage)
    assert path.parent.is_dir()
    assert open_storage("sqlite:///x.db") == "sqlite:///x.db"
