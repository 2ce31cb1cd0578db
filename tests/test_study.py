"""experiments.study: the report and plots on fake metrics.json files (no training), and the
run plan (which runs, with which trainer flags, selected on validation only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import report as study_report
from experiments import study
from experiments.worker import run_status
from pipeline.train import parse_args as train_args

SEEDS = 2


def _metrics(model: str, seed: int, auc: float, out: Path, steps: int = 100) -> dict:
    rng = np.random.default_rng(seed)

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
    name = "dmf" if model == "dmf_gate" else model
    argv = ["--model", name, "--seed", str(seed), "--output-dir", str(out)]
    return {
        "model": model,
        "test": {
            **block(a, 1000),
            "by_activity": {"short": block(a - 0.01, 850), "long": block(a + 0.02, 150)},
            "samples_per_s": 5000.0,
        },
        "valid_history": [
            {
                "step": s,
                "epoch": 0,
                "auc": a - 0.01 - 0.02 * abs(s - 60) / 100,
                "gauc": a,
                "logloss": 0.6,
            }
            for s in (20, 40, 60, 80, 100)
        ][: steps // 20],
        "train_samples_per_s": 6000.0 + 100 * seed,
        "steps": steps,
        "config": json.loads(json.dumps(study_report_config(argv))),
        "data": {"manifest_checksum": "abc"},
    }


def study_report_config(argv: list[str]) -> dict:
    import dataclasses

    return dataclasses.asdict(train_args(argv))


def _write(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "study_run.json").write_text(json.dumps({"wall_s": 70.0, "load_before": 2.0}))


@pytest.fixture
def fake_runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    base = {
        **{k: v[0] - 0.05 for k, v in study_report.PAPER_AMAZON.items()},
        "ta_early": 0.77,
        "ta_late": 0.765,
        "dta_non_invasive": 0.76,
        "dmf_gate": 0.775,
    }
    for model, auc in base.items():
        if model == "dmf":
            continue
        for seed in range(SEEDS):
            folder = runs / "main" / model / f"seed{seed}"
            _write(folder, _metrics(model, seed, auc, folder))
    for a in study.ALPHAS:
        for seed in range(SEEDS):
            folder = runs / "alpha" / study.alpha_name(a) / f"seed{seed}"
            _write(folder, _metrics("dmf", seed, 0.77 - abs(a - 0.4) / 20, folder))
    for model in study.TUNE_MODELS:
        folder = runs / "tune" / model / "seed0"
        _write(folder, _metrics(model, 0, 0.76, folder))
    return runs


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
                      "samples": 100, "chance_top_is_most_similar": 0.18},
    }  # fmt: skip


@pytest.mark.slow
def test_report_and_plots_from_fake_metrics(fake_runs: Path, tmp_path: Path):
    results = study_report.collect(fake_runs)
    assert set(results["alpha"]) == set(study.ALPHAS)
    assert len(results["runs"]["ta"]) == SEEDS and "dmf" not in results["runs"]
    results.update(
        case=_case(),
        steps_per_epoch=100,
        timing={"total_s": 3725.0, "phases": {"training": 3600.0}},
        evidence=["a fact with a number 0.65"],
        discussion="Hand-written discussion.",
        settings={"batch size": ("128", "paper")},
    )
    out = tmp_path / "docs"
    path = study_report.write_report(results, out)
    text = path.read_text()
    for expected in (
        "Table II",
        "Table IV",
        "Fig. 5",
        "Fig. 6",
        "Fig. 7",
        "Training throughput",
        "Epoch selection",
        "1h 02m 05s",
        "Hand-written discussion.",
        "a fact with",
    ):
        assert expected in text, expected
    # Every Table II model and the extra row, with the paper's numbers next to ours.
    for key in [*study_report.TABLE2, "dmf_gate", *study_report.TABLE4]:
        assert f"| {study_report.LABELS[key]} |" in text, key
    assert "0.8251" in text and "+4.75%" in text
    # alpha selected on the validation AUC (peak of the fake valid curve: 0.4).
    assert "0.4 (selected)" in text
    assert "Teak Display Cabinet / with" in text  # table cells escape '|'
    for name in ("alpha", "activity", "attention", "tuning"):
        png = out / f"amazon-electronics-{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
    summary = json.loads((out / "amazon-electronics.json").read_text())
    assert summary["selection"]["alpha"] == 0.4
    assert len(summary["models"]["dmf"]["auc"]) == SEEDS


def test_selection_uses_validation_only(fake_runs: Path):
    results = study_report.collect(fake_runs)
    # Make alpha 1.0 the best on TEST: the selection must not move.
    for m in results["alpha"][1.0]:
        m["test"]["auc"] = 0.99
    alpha, means = study_report.select_alpha(results["alpha"])
    assert alpha == 0.4 and means[0.4] == max(means.values())
    step, valid = study_report.select_steps(results["tune"]["ta"])
    assert step == 60 and valid == max(r["auc"] for r in results["tune"]["ta"]["valid_history"])


def test_plan_covers_the_paper_and_parses(tmp_path: Path):
    config = study.parse_args(["--runs-dir", str(tmp_path), "--data-dir", "data/x"])
    assert (config.seeds, config.sweep_seeds, config.workers) == (5, 3, 2)
    steps = {m: 250 for m in study.TUNE_MODELS}
    first = study.phase_a_runs(config, steps, 100, range(3))
    keys = {r.key for r in first}
    for model in [*study.TABLE2_MODELS, *study.ABLATION_MODELS]:
        assert all(f"main/{model}/seed{s}" in keys for s in range(3))
    assert sum(r.key.startswith("alpha/") for r in first) == 11 * 3
    rest = study.phase_b_runs(config, steps, 100, 0.3, range(5))
    assert {r.key for r in rest} >= {"alpha/a0.3/seed3", "alpha/a0.3/seed4", "main/dmf_gate/seed0"}
    assert "alpha/a0.3/seed0" not in {r.key for r in rest}  # already a sweep run
    for run in [*first, *rest, *study.tune_runs(config, 100)]:
        parsed = train_args(run.argv)  # every plan entry is a valid trainer command line
        assert parsed.batch_size * config.workers == study.GLOBAL_BATCH
        assert parsed.eval_every and parsed.max_steps
    gate = next(r for r in rest if r.key == "main/dmf_gate/seed1")
    assert train_args(gate.argv).model_args["activity_gate"] is True
    ta0 = next(r for r in first if r.key == "main/ta/seed0")
    assert train_args(ta0.argv).checkpoint_every == 250  # checkpoint at the end: case study
    make = next(r for r in first if r.key == "main/make/seed0")
    assert train_args(make.argv).model_args["pretrain_epochs"] == 10
    quick = study.parse_args(["--quick"])
    assert (quick.seeds, quick.runs_dir, quick.out) == (1, "runs/study-quick", "docs/results/quick")


def test_finished_runs_are_skipped_only_with_the_same_config(fake_runs: Path):
    folder = fake_runs / "main" / "ta" / "seed0"
    argv = ["--model", "ta", "--seed", "0", "--output-dir", str(folder)]
    assert run_status(folder, argv, "abc") == "done"
    assert run_status(folder, argv, "other-data") == "stale"
    assert run_status(folder, [*argv, "--lr", "0.01"], "abc") == "stale"
    assert run_status(fake_runs / "main" / "ta" / "seed9", argv, "abc") == "todo"
