"""experiments.study: the report and plots on fake metrics.json files (no training), the
run plan (which runs, with which trainer configs, selected on validation only), and when a
finished run counts as done."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import records as records_module
from experiments import report, runs, study
from experiments.paper import BASELINES, ID_ONLY, LABELS, PAPER_AMAZON, TABLE2, TABLE4
from experiments.records import restore_records
from experiments.worker import run_status
from models.zoo import make_config
from pipeline.config import PRESETS, TrainConfig
from pipeline.data import PreparedData
from tests.fixtures import write_prepared

SEEDS = 2
STEPS = 100
SPE = 100


def _study_config(tmp_path: Path) -> study.StudyConfig:
    return study.parse_args(["--runs-dir", str(tmp_path / "runs"), "--data-dir", "data/x"])


def _final_run(
    config: study.StudyConfig, phase: str, name: str, seed: int, **model_args
) -> study.Run:
    """The run the study plans for phase/name/seed<k>."""
    model = "dmf" if name == "dmf_gate" or phase == "alpha" else name
    return study._final(config, phase, name, model, seed, SPE, **model_args)


def _metrics(trainer: TrainConfig, label: str, auc: float, steps: int = STEPS) -> dict:
    """A metrics.json as the trainer writes it for `trainer` on CPU (fake test figures)."""
    auto = trainer.embedding_optimizer == "auto"
    embedding_optimizer = "adagrad" if auto else trainer.embedding_optimizer
    rng = np.random.default_rng(trainer.seed)

    def block(a: float, samples: int) -> dict:
        return {
            "auc": a,
            "gauc": a - 0.01,
            "gauc_users": samples // 2,
            "logloss": 0.6 - a / 10,
            "samples": samples,
            "positives": samples // 2,
        }

    a = auc + rng.normal(0, 0.002)
    if trainer.model == "popularity":  # what pipeline.popularity writes: no training, and
        # no log loss (its scores are not probabilities: NaN, written as null)
        test = {**block(a, 1000), "logloss": None, "ne": None}
        return {
            "model": "popularity",
            "test": {**test, "by_activity": {"short": block(a - 0.01, 850),
                     "long": block(a + 0.02, 150)}, "samples_per_s": 5000.0},
            "valid_history": [],
            "train_samples_per_s": 1e7,
            "steps": 0,
            "world_size": 2,
            "device": "cpu",
            "data": {"path": trainer.data, "manifest_checksum": "abc"},
            "config": json.loads(json.dumps(trainer.to_dict())),
        }  # fmt: skip
    history = [
        {
            "step": s,
            "epoch": 0,
            "auc": a - 0.01 - 0.02 * abs(s - 60) / 100,
            "gauc": a,
            "logloss": 0.6,
        }
        for s in (20, 40, 60, 80, 100)
    ][: steps // 20]
    best = max(history, key=lambda r: r["auc"])
    restored = trainer.restore_best and not trainer.max_steps  # a preset-length run
    return {
        "model": label,
        "test": {
            **block(a, 1000),
            "by_activity": {"short": block(a - 0.01, 850), "long": block(a + 0.02, 150)},
            "samples_per_s": 5000.0,
        },
        "valid_history": history,
        "best_step": best["step"],
        "best_valid_auc": best["auc"],
        "test_step": best["step"] if restored else steps,
        "test_from": "best_valid_step" if restored else "last_step",
        "train_samples_per_s": 6000.0 + 100 * trainer.seed,
        "steps": steps,
        "world_size": 2,
        "device": "cpu",
        "embedding_optimizer": embedding_optimizer,
        "data": {"path": trainer.data, "manifest_checksum": "abc"},
        "config": json.loads(json.dumps(trainer.to_dict())),
        "model_config": dataclasses.asdict(make_config(trainer.model, trainer.model_args)),
    }


def _write(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    record = {"wall_s": 70.0, "load_before": 2.0, "threads": 1, "backend": "gloo"}
    (folder / "study_run.json").write_text(json.dumps(record))


def _fake_runs(tmp_path: Path, change=None) -> Path:
    """A finished study's run folders; `change(key, TrainConfig) -> TrainConfig` alters
    the config a run recorded (as if the study had asked for it)."""
    config = _study_config(tmp_path)
    root = Path(config.runs_dir)
    change = change or (lambda key, trainer: trainer)
    base = {
        "popularity": 0.70,
        "dnn": 0.74,
        **{k: v[0] - 0.05 for k, v in PAPER_AMAZON.items()},
        "dmae": 0.78,
        "ta_early": 0.77,
        "ta_late": 0.765,
        "dta_non_invasive": 0.76,
        "dmf_gate": 0.775,
    }
    for model, auc in base.items():
        if model == "dmf":
            continue
        args = {"alpha": 0.4, "activity_gate": True} if model == "dmf_gate" else {}
        for seed in range(1 if model in study.DETERMINISTIC else SEEDS):
            run = _final_run(config, "main", model, seed, **args)
            _write(run.out, _metrics(change(f"main/{model}", run.config), model, auc))
    for a in study.ALPHAS:
        for seed in range(SEEDS):
            run = _final_run(config, "alpha", study.alpha_name(a), seed, alpha=a)
            auc = 0.77 - abs(a - 0.4) / 20
            _write(run.out, _metrics(change("alpha", run.config), "dmf", auc))
    return root


@pytest.fixture
def fake_runs(tmp_path: Path) -> Path:
    return _fake_runs(tmp_path)


def _case() -> dict:
    return {
        "user": 7, "target": 3, "label": 1.0, "history": [4, 5, 6],
        "sims": [0.9, 0.1, 0.4], "ta": [0.3, 0.5, 0.4], "dta": [0.7, 0.4, 0.5],
        "ta_softmax": [0.3, 0.4, 0.3], "dta_softmax": [0.5, 0.2, 0.3],
        "ta_prob": 0.6, "dta_prob": 0.7,
        "titles": ["Teak Display Cabinet | with a very long title " * 3, "Cotton Fabric", "Lamp"],
        "target_title": "Assembled teak cabinet", "counts": [3, 300, 20], "target_count": 9,
        "rule": "test rule", "models": "TA and DTA, seed 0",
        "aggregate": {"ta": {"top_is_most_similar": 0.2, "spearman_weight_similarity": 0.01},
                      "dta": {"top_is_most_similar": 0.5, "spearman_weight_similarity": 0.3},
                      "samples": 100, "chance_top_is_most_similar": 0.18, "min_history": 2},
    }  # fmt: skip


MANIFEST = {
    "created_by": "python -m data_prep amazon --out data/x --valid-frac 0.1",
    "counts": {"train": 10000, "valid": 500, "test": 2000},
    "vocab_sizes": {"user": 1002, "item": 502},
    "max_history": 50,
    "buckets": {"num_buckets": 35, "boundaries": []},
    "item_embeddings": {
        "dim": 384,
        "source": 'title:minilm:{"max_tokens": 32, "model": "sentence-transformers/all-MiniLM-L6-v2"}',
    },
    "protocol": {"name": "next-item", "seed": 0, "valid_frac": 0.1, "negatives_per_positive": 1},
}
FACTS = {
    "users": 1000,
    "items": 500,
    "counts": MANIFEST["counts"],
    "short_max": 10,
    "test_short_share": 0.85,
    "mean_history_test": 7.3,
    "auc_popularity": 0.7031,
    "last_k": 10,
    "auc_mean_sim_last": 0.65,
    "auc_max_sim": 0.6583,
    "rare_below": 5,
    "test_pos_rare": 0.16,
    "test_neg_rare": 0.26,
    "item_source": MANIFEST["item_embeddings"]["source"],
    "item_dim": 384,
    "checksum": "abc" * 8,
}


def _report(runs_dir: Path, out: Path, *names: str, **extra) -> str:
    results = runs.collect(runs_dir)
    results.update(
        case=_case(),
        steps_per_epoch=SPE,
        timing={"total_s": 3725.0, "phases": {"training": 3600.0}},
        discussion="Hand-written discussion.",
        manifest=MANIFEST,
        data_facts=FACTS,
        **extra,
    )
    return report.write_report(results, out, *names).read_text()


def _settings(text: str) -> dict[str, list[str]]:
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[2:]}


@pytest.mark.slow
def test_report_and_plots_from_fake_metrics(fake_runs: Path, tmp_path: Path):
    results = runs.collect(fake_runs)
    assert set(results["alpha"]) == set(study.ALPHAS)
    assert len(results["runs"]["ta"]) == SEEDS and "dmf" not in results["runs"]
    out = tmp_path / "docs"
    text = _report(fake_runs, out)
    for expected in (
        "Table II",
        "Table IV",
        "Fig. 5",
        "Fig. 6",
        "Fig. 7",
        "Training throughput",
        "Training recipe: the `amazon` preset",
        "Models with their own preset entry: DNN;",
        "| DMAE (related seed paper) |",
        "1h 02m 05s",
        "Hand-written discussion.",
        "Data scale: 1,000 users",
        "Over all 100 test positives with ≥ 2 history items",
        "(one positive and one sampled negative each)",
        "(2.0 = the study's 2 workers x 1 thread alone)",
    ):
        assert expected in text, expected
    assert "$" not in text and "\n\n\n" not in text  # every placeholder filled, no gaps
    # the ID-only verdict follows the numbers (popularity 0.7031 in the fake evidence)
    gains = [np.mean([m["test"]["auc"] for m in results["runs"][k]]) - 0.7031
             for k in ID_ONLY if results["runs"].get(k)]  # fmt: skip
    near = max(gains) < report.NEAR_POPULARITY
    assert ("do no better than popularity" in text) == near
    assert ("points of AUC above popularity alone" in text) == (not near)
    # Every Table II model and the extra row, with the paper's numbers next to ours.
    for key in [*BASELINES, *TABLE2, "dmf_gate", *TABLE4]:
        assert f"| {LABELS[key]} |" in text, key
    assert "0.8251" in text and "+4.75%" in text
    # alpha selected on the validation AUC (peak of the fake valid curve: 0.4).
    assert "0.4 (selected)" in text
    assert "Teak Display Cabinet / with" in text  # table cells escape '|'
    for name in ("alpha", "activity", "attention"):
        png = out / f"amazon-electronics-{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
    summary = json.loads((out / "amazon-electronics.json").read_text())
    assert summary["selection"]["alpha"] == 0.4
    assert len(summary["models"]["dmf"]["auc"]) == SEEDS

    # The settings are the ones the runs recorded: the amazon preset, the trainer's
    # resolved embedding optimizer, the data manifest.
    settings = _settings(text)
    assert settings["ID embeddings, heads, hidden, MLP"][:2] == [
        "64, 4, 64, 1024x512x256x1",
        "preset `amazon`",
    ]
    assert settings["batch size"][:2] == [
        "1024 global = 512 per rank x 2 ranks",
        "preset `amazon`",
    ]
    assert settings["dense optimizer"][0] == "Adam, lr 0.0005, constant"
    assert settings["embedding optimizer"][0] == (  # the DNN's preset entry decays less
        "adam_dense (replicated tables, a torch optimizer), lr 0.0005, L2 0.001 on every row "
        "every step (DNN); adam_dense (replicated tables, a torch optimizer), lr 0.0005, L2 "
        "0.005 on every row every step (the other runs)"
    )
    assert settings["history / buckets"][0].startswith("last 50 behaviours; 35 equal-frequency")
    assert settings["DMF alpha (main table)"][0] == "0.4"
    assert settings["activity gate"][0].endswith("initialised at α = 0.4")
    assert settings["MAKE"][0].startswith("stage-1 pre-training 10 epochs")
    assert settings["MAKE"][1] == "model default"
    assert settings["seeds"][0] == (
        "1 per model (0) (Item popularity); 2 per model (0..1) (the other runs); "
        "alpha sweep 2 per alpha"
    )
    assert settings["workers"][0] == "2 torchrun processes x 1 thread, gloo, cpu"
    assert settings["training length"][0].startswith(
        "best validation step per seed: bfs_mf 60 (0.60 ep) / 60 (0.60 ep), din 60"
    )
    assert settings["training length"][1] == (
        "chosen per run on validation: up to 20 epochs, validated 2 times an epoch, "
        "early-stopping patience 4 evaluations, the best validation step's weights restored "
        "for the test metrics"
    )
    assert settings["metrics"][0].endswith("activity split at L ≤ 10")


@pytest.mark.slow
def test_report_settings_follow_the_configs(tmp_path: Path):
    """Settings come from what the runs recorded, never from prose: other configs, another
    report."""

    def change(key: str, trainer: TrainConfig) -> TrainConfig:
        trainer = dataclasses.replace(trainer, lr=0.003, short_history_max=5)
        if key == "main/ta":
            trainer = dataclasses.replace(trainer, embedding_optimizer="sgd", embedding_lr=0.2)
        return trainer

    text = _report(
        _fake_runs(tmp_path, change), tmp_path / "docs", "amazon-toys", "Amazon Toys and Games"
    )
    assert text.startswith("# Amazon Toys and Games: DMF")  # another category's report
    assert (tmp_path / "docs" / "amazon-toys-alpha.png").is_file()
    settings = _settings(text)
    assert settings["dense optimizer"][:2] == [
        "Adam, lr 0.003, constant",
        "lr: study; lr_schedule: trainer default",
    ]
    emb = settings["embedding optimizer"][0]
    assert "; fused sgd, lr 0.2 (TA); adam_dense (replicated tables" in emb
    assert emb.endswith("(the other runs)")
    assert "`embedding_optimizer: sgd` on cpu (TA)" in settings["embedding optimizer"][1]
    assert settings["metrics"][0].endswith("activity split at L ≤ 5")
    assert "## Fig. 6: activity groups (history length L ≤ 5 vs > 5)" in text
    assert "0.001" not in settings["dense optimizer"][0]


def test_template_names_every_section():
    template = string.Template(report.TEMPLATE.read_text())
    assert set(template.get_identifiers()) == {"title", *report.SECTIONS}  # + the dataset


def test_selection_uses_validation_only(fake_runs: Path):
    results = runs.collect(fake_runs)
    # Make alpha 1.0 the best on TEST: the selection must not move.
    for m in results["alpha"][1.0]:
        m["test"]["auc"] = 0.99
    alpha, means = runs.select_alpha(results["alpha"])
    assert alpha == 0.4 and means[0.4] == max(means.values())
    # A run that restored its best step is judged by that step's validation AUC (what its
    # test figures are of), not by its last evaluation's.
    ta = results["runs"]["ta"][0]
    assert ta["test_from"] == "best_valid_step" and ta["best_step"] == 60
    assert runs.valid_auc_of_test_step(ta) == max(r["auc"] for r in ta["valid_history"])
    assert runs.valid_auc_of_test_step(ta) > ta["valid_history"][-1]["auc"]
    last = {**ta, "test_from": "last_step"}
    assert runs.valid_auc_of_test_step(last) == ta["valid_history"][-1]["auc"]


def test_plan_covers_the_paper_with_configs(tmp_path: Path):
    config = study.parse_args(["--runs-dir", str(tmp_path), "--data-dir", "data/x"])
    assert (config.seeds, config.sweep_seeds, config.workers, config.parallel) == (5, 3, 1, 2)
    base = study.base_config(config)
    assert (base.preset, base.data, base.device) == ("amazon", "data/x", "cpu")
    first = study.phase_a_runs(config, 100, range(3))
    keys = {r.key for r in first}
    for model in [*study.TABLE2_MODELS, *study.ABLATION_MODELS]:
        seeds = range(1) if model in study.DETERMINISTIC else range(3)
        assert all(f"main/{model}/seed{s}" in keys for s in seeds), model
    assert {"main/popularity/seed0", "main/dnn/seed2"} <= keys
    assert "main/popularity/seed1" not in keys  # deterministic: one run
    assert sum(r.key.startswith("alpha/") for r in first) == 11 * 3
    order = [r.key for r in first]  # cheap floors and the claims' models first, SASRec late
    assert order[:5] == ["main/popularity/seed0", "main/dnn/seed0", "main/ta/seed0",
                         "main/dta/seed0", "alpha/a0.3/seed0"]  # fmt: skip
    assert order.index("main/sasrec/seed0") > order.index("main/make/seed0")
    assert max(order.index(k) for k in order if k.endswith("seed0")) < order.index("main/dnn/seed1")
    rest = study.phase_b_runs(config, 100, 0.3, range(5))
    assert {r.key for r in rest} >= {"alpha/a0.3/seed3", "alpha/a0.3/seed4", "main/dmf_gate/seed0"}
    assert "alpha/a0.3/seed0" not in {r.key for r in rest}  # already a sweep run
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    for run in [*first, *rest]:
        # Every run is `--preset amazon --model NAME` (with its preset entry) with only the
        # per-run settings replaced: the preset's length, chosen on validation.
        assert TrainConfig.from_dict(run.config.to_dict()) == run.config
        own = study.base_config(config, run.model)
        same = {k for k in settings if getattr(run.config, k) == getattr(own, k)}
        per_run = {"model", "seed", "output_dir", "model_args", "eval_every"}
        assert settings - same <= per_run, run.key
        assert run.config.batch_size == PRESETS["amazon"]["batch_size"]  # GLOBAL, any world size
        assert (run.config.epochs, run.config.evals_per_epoch) == (20, 2)
        assert run.config.restore_best and run.config.early_stopping_patience == 4
        assert run.config.max_steps is None
        # evals_per_epoch resolved as the trainer records it (100 steps an epoch // 2)
        untrained = run.model in study.UNTRAINED
        assert run.config.eval_every == (None if untrained else 50), run.key
        assert run.out == tmp_path / run.key
        assert own.model_args.items() <= run.config.model_args.items()
    dnn = next(r for r in first if r.key == "main/dnn/seed0").config
    assert (dnn.embedding_weight_decay, dnn.model_args["pooling"]) == (0.001, "sum")  # its entry
    ta0 = next(r for r in first if r.key == "main/ta/seed0").config
    assert ta0.embedding_weight_decay == 0.005 and ta0.checkpoint_every is None  # best/ kept
    gate = next(r for r in rest if r.key == "main/dmf_gate/seed1")
    assert gate.config.model_args["activity_gate"] is True
    make = next(r for r in first if r.key == "main/make/seed0")
    assert "pretrain_epochs" not in make.config.model_args  # MAKE's own default
    quick = study.parse_args(["--quick"])
    assert (quick.seeds, quick.runs_dir, quick.out) == (
        1,
        "runs/study-quick/electronics",
        "docs/results/quick",
    )
    assert quick.make_pretrain_epochs == 1
    quick_runs = study.phase_a_runs(quick, 100, range(1))
    assert (
        next(r for r in quick_runs if r.model == "make").config.model_args["pretrain_epochs"] == 1
    )
    quick_ta = next(r for r in quick_runs if r.key == "main/ta/seed0").config
    assert (quick_ta.max_steps, quick_ta.eval_every, quick_ta.checkpoint_every) == (600,) * 3
    toys = study.parse_args(["--dataset", "toys"])
    assert (toys.raw_dir, toys.data_dir, toys.runs_dir) == (
        "../shared/data/amazon-toys-2014",
        "data/amazon-toys",
        "runs/study/toys",
    )
    assert study.prep_args(toys)[1:5] == [
        "--reviews",
        "../shared/data/amazon-toys-2014/reviews_Toys_and_Games_5.json.gz",
        "--meta",
        "../shared/data/amazon-toys-2014/meta_Toys_and_Games.json.gz",
    ]


def test_study_settings_layer_over_the_preset(tmp_path: Path):
    file = tmp_path / "train.json"
    file.write_text(json.dumps({"embedding_optimizer": "sgd", "lr": 0.01}))
    config = study.parse_args(["--train-config", str(file), "--lr", "0.02"])
    base = study.base_config(config)
    assert (base.embedding_optimizer, base.lr, base.batch_size) == ("sgd", 0.02, 1024)
    with pytest.raises(SystemExit):  # the global batch 1024 does not split over 3 workers
        study.parse_args(["--workers", "3"])


def test_finished_runs_are_skipped_only_with_the_same_config(fake_runs: Path):
    folder = fake_runs / "main" / "ta" / "seed0"
    asked = TrainConfig.from_dict(json.loads((folder / "metrics.json").read_text())["config"])
    assert run_status(folder, asked, "abc") == "done"
    assert run_status(folder, asked, "other-data") == "stale"
    assert run_status(folder, dataclasses.replace(asked, lr=0.01), "abc") == "stale"
    assert run_status(fake_runs / "main" / "ta" / "seed9", asked, "abc") == "todo"


def test_a_run_whose_recorded_config_differs_is_not_done(fake_runs: Path, tmp_path: Path):
    config = _study_config(tmp_path)
    plan = study.phase_a_runs(config, SPE, range(1))
    ta = next(r for r in plan if r.key == "main/ta/seed0")
    assert run_status(ta.out, ta.config, "abc") == "done"  # the fake run is this config
    path = ta.out / "metrics.json"
    metrics = json.loads(path.read_text())

    def status_with(**recorded) -> str:
        path.write_text(json.dumps({**metrics, "config": {**metrics["config"], **recorded}}))
        return run_status(ta.out, ta.config, "abc")

    assert status_with(embedding_lr=0.1) == "stale"
    assert status_with(batch_size=64) == "stale"  # a per-rank batch of the old trainer
    recorded_args = metrics["config"]["model_args"]
    other_width = {**recorded_args, "hidden_dim": recorded_args["hidden_dim"] + 16}
    assert status_with(model_args=other_width) == "stale"
    assert status_with(not_a_setting_any_more=1) == "done"  # a setting the trainer dropped
    del metrics["config"]["warmup_steps"]  # a setting the trainer gained: its default
    assert status_with() == "done"
    path.write_text(json.dumps({**metrics, "config": {}}))
    assert run_status(ta.out, ta.config, "abc") == "stale"
    path.write_text("{not json")
    assert run_status(ta.out, ta.config, "abc") == "stale"


def _torchrun_worker(plan: Path, timeout: int = 400) -> str:
    """`experiments.worker PLAN` under torchrun with 2 processes, as `study.launch` runs it,
    in its own session (killed as a group on timeout); returns its stdout."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "experiments.worker", str(plan),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.Popen(
        cmd, cwd=study.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"worker timed out after {timeout} s:\n{stderr[-5000:]}") from None
    assert proc.returncode == 0, f"worker failed:\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_worker_trains_configs_and_resumes_a_study(tmp_path: Path):
    """Real trainer runs: the worker trains the configs of a plan, each run's metrics.json
    records exactly its config (so it is done), a second job skips it, and a run whose
    config changed is set aside and redone."""
    data = write_prepared(
        tmp_path / "data", samples_per_split={"train": 256, "valid": 64, "test": 64}
    )
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"batch_size": 32, "eval_batch_size": 64}))
    config = study.parse_args(
        ["--quick", "--quick-steps", "6", "--train-config", str(small),
         "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data)]
    )  # fmt: skip
    base = study.base_config(config)
    spe = study.steps_per_epoch(PreparedData(data), base, config.workers)
    assert spe == 8  # 256 rows / global batch 32, as the trainer's reader counts
    # and one full-mode run (the preset's length through evals_per_epoch, here 1 epoch)
    one_epoch = tmp_path / "one_epoch.json"
    one_epoch.write_text(json.dumps({"batch_size": 32, "eval_batch_size": 64, "epochs": 1}))
    full = study.parse_args(
        ["--train-config", str(one_epoch), "--runs-dir", str(tmp_path / "runs"),
         "--data-dir", str(data)]
    )  # fmt: skip
    plan_runs = [
        study._final(config, "main", "ta", "ta", 0, spe),
        study._final(config, "alpha", "a0.3", "dmf", 0, spe, alpha=0.3),
        study._final(full, "main", "dnn", "dnn", 0, spe),
    ]

    def write_plan(runs: list[study.Run]) -> Path:
        path = tmp_path / "plan.json"
        spec = {"runs": [r.spec() for r in runs], "manifest_checksum": None, "device": "cpu"}
        path.write_text(json.dumps(spec))
        return path

    _torchrun_worker(write_plan(plan_runs))
    for run in plan_runs:
        assert run_status(run.out, run.config, PreparedData(data).checksum) == "done", run.key
        saved = json.loads((run.out / "config.json").read_text())
        assert TrainConfig.from_dict(saved) == run.config  # `pipeline.train --config` repeats it
        record = json.loads((run.out / "study_run.json").read_text())
        assert (record["world_size"], record["threads"], record["backend"]) == (2, 1, "gloo")
        steps = 6 if run.model != "dnn" else spe  # quick: 6 steps; full: the epoch
        assert json.loads((run.out / "metrics.json").read_text())["steps"] == steps
    changed = dataclasses.replace(plan_runs[1].config, lr=5e-3)
    again = [plan_runs[0], study.Run(plan_runs[1].key, changed), plan_runs[2]]
    stdout = _torchrun_worker(write_plan(again))
    assert "skip main/ta/seed0 (done)" in stdout
    assert "skip main/dnn/seed0 (done)" in stdout  # its recorded eval_every is the asked one
    assert (
        "alpha/a0.3/seed0: metrics.json of another config, data or world size; set aside" in stdout
    )
    out = Path(changed.output_dir)
    assert run_status(out, changed, None) == "done"
    assert list(out.parent.glob("seed0.stale-*/metrics.json"))  # kept, not deleted
    assert [m["config"]["lr"] for m in runs.collect(tmp_path / "runs")["alpha"][0.3]] == [5e-3]


@pytest.mark.timeout(600)
def test_parallel_jobs_train_each_run_once(tmp_path: Path, capfd: pytest.CaptureFixture):
    """`study.launch` with --parallel 2 --workers 1: two torchrun jobs share one plan, each
    run is trained by exactly one of them (the other skips it while it is held), every run
    ends done with world size 1, and a 2-rank record of the same config is not done for a
    1-rank study."""
    data = write_prepared(
        tmp_path / "data", samples_per_split={"train": 128, "valid": 32, "test": 32}
    )
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"batch_size": 32, "eval_batch_size": 32}))
    records = tmp_path / "records"
    config = study.parse_args(
        ["--quick", "--quick-steps", "3", "--train-config", str(small), "--workers", "1",
         "--parallel", "2", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data),
         "--records-dir", str(records)]
    )  # fmt: skip
    assert (config.workers, config.parallel) == (1, 2)
    checksum = PreparedData(data).checksum
    spe = study.steps_per_epoch(PreparedData(data), study.base_config(config), 1)
    plan_runs = [study._final(config, "main", m, m, 0, spe) for m in ("dnn", "ta", "din")]
    assert study.launch(config, plan_runs, "parallel", checksum) == 0
    out = capfd.readouterr().out
    for run in plan_runs:
        assert len(re.findall(rf"\[study\] run \d/3 {run.key}\n", out)) == 1, out  # once
        assert run_status(run.out, run.config, checksum, world_size=1) == "done"
        assert run_status(run.out, run.config, checksum, world_size=2) == "stale"
        record = json.loads((run.out / "study_run.json").read_text())
        assert record["world_size"] == 1
    assert "(another job trains it)" in out or "(done)" in out  # the second job's skips
    assert study.launch(config, plan_runs, "parallel", checksum) == 0
    assert "parallel: all 3 runs done" in capfd.readouterr().out
    # a fresh checkout: no run folders, only the records the workers kept; restored, every
    # run is done again without training
    for run in plan_runs:
        record = records / run.key
        assert (record / "metrics.json").read_bytes() == (run.out / "metrics.json").read_bytes()
    shutil.rmtree(tmp_path / "runs")
    restored = restore_records(records, tmp_path / "runs")
    assert len(restored) == 3 * len(records_module.RUN_FILES)
    assert study.launch(config, plan_runs, "parallel", checksum) == 0
    assert "parallel: all 3 runs done" in capfd.readouterr().out


def test_data_without_behaviour_times_is_prepared_again(tmp_path: Path):
    """The study's data must carry the behaviours' times (DMAE reads them; a folder written
    before them would give it zeros): an intact folder from the same files and settings is
    current only with `history_times` in its manifest."""
    from data_prep.__main__ import build_parser
    from data_prep.integrity import file_entry, file_sha256
    from data_prep.manifest import write_manifest

    raw, data = tmp_path / "raw", tmp_path / "data"
    raw.mkdir()
    data.mkdir()
    files = study.DATASETS["electronics"]
    for name in (files.reviews, files.meta):
        (raw / name).write_bytes(name.encode())
    config = study.parse_args(["--raw-dir", str(raw), "--data-dir", str(data)])
    args = build_parser().parse_args(study.prep_args(config))
    np.save(data / "item_mm.npy", np.zeros((2, 4), np.float32))
    manifest = {
        "job": "amazon",
        "inputs": {n: {"sha256": file_sha256(raw / n)} for n in (files.reviews, files.meta)},
        "protocol": {"valid_frac": args.valid_frac, "seed": args.seed,
                     "max_history": args.max_history},
        "buckets": {"num_buckets": args.num_buckets},
        "item_embeddings": {"path": "item_mm.npy", "source": f"title:{args.encoder}"},
        "files": {"item_mm.npy": file_entry(data / "item_mm.npy")},
    }  # fmt: skip
    write_manifest(data, {**manifest, "history_times": {"column": "hist_ts_delta"}})
    assert study.data_is_current(config) == (True, "up to date")
    write_manifest(data, manifest)
    assert study.data_is_current(config) == (False, "no behaviour times (hist_ts_delta)")


def test_an_unfinished_sweep_says_which_alphas_and_seeds_it_holds():
    """The report of a study still running names the sweep's finished runs, not the plan."""
    full = {a: [{"seed": s} for s in (0, 1, 2)] for a in study.ALPHAS}
    assert report._sweep_seeds_note(full, [0, 1, 2]).startswith("Seeds [0, 1, 2] for every α")
    partial = {0.3: [{"seed": 0}]}
    note = report._sweep_seeds_note(partial, [0, 1, 2])
    assert "unfinished" in note and "α 0.3: seeds [0]" in note
