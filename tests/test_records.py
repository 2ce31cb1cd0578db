"""The study's records (experiments/records.py): what is copied out of the run folders into
the repository and back into a fresh checkout's run folders."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import study
from experiments.records import RUN_FILES, record_run, record_study, restore_records


def _finished_run(folder: Path, auc: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model": "ta"}))
    (folder / "study_run.json").write_text(json.dumps({"wall_s": 1.0}))
    (folder / "metrics.json").write_text(json.dumps({"test": {"auc": auc}}))
    (folder / "train.log").write_text("log lines")  # not a record
    (folder / "checkpoints").mkdir()  # nor are the weights


def test_record_study_keeps_finished_runs_and_study_files_only(tmp_path: Path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    _finished_run(runs / "main/ta/seed0", 0.7)
    _finished_run(runs / "alpha/a0.3/seed1", 0.8)
    _finished_run(runs / "main/ta/seed1.stale-20261201-101010", 0.1)  # set aside
    (runs / "main/dta/seed0").mkdir(parents=True)  # started, unfinished: no metrics.json
    (runs / "main/dta/seed0/config.json").write_text("{}")
    (runs / "study_state.json").write_text(json.dumps({"invocations": []}))
    (runs / "plans").mkdir()
    (runs / "plans/phase-a.json").write_text("{}")  # a plan is not a record

    written = record_study(runs, records)

    files = sorted(p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file())
    expected = [
        f"{run}/{name}" for run in ("alpha/a0.3/seed1", "main/ta/seed0") for name in RUN_FILES
    ]
    assert files == sorted([*expected, "study_state.json"])
    assert sorted(p.relative_to(records).as_posix() for p in written) == files
    assert (records / "main/ta/seed0/metrics.json").read_bytes() == (
        runs / "main/ta/seed0/metrics.json"
    ).read_bytes()
    assert record_study(runs, records) == []  # unchanged files are not written again


def test_restore_fills_a_fresh_checkout_and_never_replaces_a_run_folder(tmp_path: Path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    _finished_run(records / "main/ta/seed0", 0.7)
    _finished_run(records / "main/dta/seed0", 0.8)
    (records / "case_study.json").write_text(json.dumps({"stamp": [0.7, 0.8], "case": {}}))
    # this machine already holds a newer dta run: its files stay
    _finished_run(runs / "main/dta/seed0", 0.9)

    written = restore_records(records, runs)

    assert sorted(p.relative_to(runs).as_posix() for p in written) == sorted(
        [*(f"main/ta/seed0/{n}" for n in RUN_FILES), "case_study.json"]
    )
    assert json.loads((runs / "main/ta/seed0/metrics.json").read_text())["test"]["auc"] == 0.7
    assert json.loads((runs / "main/dta/seed0/metrics.json").read_text())["test"]["auc"] == 0.9
    assert not list(runs.rglob(".*.tmp-*"))  # no temporary file left behind


def test_record_run_ignores_a_run_without_metrics(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.json").write_text("{}")
    assert record_run(tmp_path / "run", tmp_path / "record") == []
    assert not (tmp_path / "record").exists()


def test_case_study_is_read_from_its_record_without_the_weights(tmp_path: Path):
    """A restored study has the case runs' metrics and the cached case study but no
    checkpoints: the cache is used as long as it is of those runs (same test AUCs)."""
    runs = tmp_path / "runs"
    for model, auc in zip(study.CASE_MODELS, (0.76, 0.80)):
        folder = runs / "main" / model / f"seed{study.CASE_SEED}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"test": {"auc": auc}}))
    case = {"top": ["an item"]}
    (runs / "case_study.json").write_text(json.dumps({"stamp": [0.76, 0.80], "case": case}))
    assert study.case_study(runs, tmp_path / "meta.json.gz") == case
    # a cache of other runs is not used, and without weights there is no case study
    (runs / "case_study.json").write_text(json.dumps({"stamp": [0.7, 0.8], "case": case}))
    assert study.case_study(runs, tmp_path / "meta.json.gz") is None


def test_the_study_keeps_records_by_default_but_not_in_quick_mode():
    assert study.parse_args([]).records_dir == "docs/results/runs/electronics"
    assert study.parse_args(["--dataset", "toys"]).records_dir == "docs/results/runs/toys"
    assert study.parse_args(["--quick"]).records_dir is None
