"""The study's records: the small JSON files of its finished runs, kept in the repository.

A study on 2 cores takes days; its run folders (runs/study/<category>/, ignored by git:
checkpoints, logs) live on one machine and are lost with it. The records are what the
report is built from and what tells the study a run is done, copied out of the run
folders as each run finishes and copied back into a fresh checkout's run folders before
the study plans its work, so an interrupted study continues on another machine where the
last one stopped (`git add docs/results/runs` keeps them).

Layout: RECORDS/<phase>/<name>/seed<k>/{config.json, study_run.json, metrics.json} for each
finished run (the run folder's files, byte for byte), and RECORDS/{study_state.json,
selection.json, case_study.json} for the study as a whole. A record never replaces a file
the run folder already has: the run folder is the newer of the two, and the worker's own
checks (experiments.worker.run_status) decide whether that run is done or set aside.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

RUN_FILES = ("config.json", "study_run.json", "metrics.json")  # metrics.json last: it marks
# a record (and a restored run folder) complete
STUDY_FILES = ("study_state.json", "selection.json", "case_study.json")


def _copy_atomic(src: Path, dst: Path) -> None:
    """dst becomes a copy of src, never half-written (a temporary file renamed over it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


def record_run(run_dir: Path, records_run_dir: Path) -> list[Path]:
    """Copy a finished run's files (RUN_FILES present in run_dir; nothing when it has no
    metrics.json) into its record folder; returns the files written."""
    run_dir, records_run_dir = Path(run_dir), Path(records_run_dir)
    if not (run_dir / "metrics.json").is_file():
        return []
    written = []
    for name in RUN_FILES:
        src, dst = run_dir / name, records_run_dir / name
        if src.is_file() and not _same(src, dst):
            _copy_atomic(src, dst)
            written.append(dst)
    return written


def record_study(runs_dir: Path, records_dir: Path) -> list[Path]:
    """Copy every finished run's files and the study's own files (STUDY_FILES) from runs_dir
    into records_dir; runs set aside by the worker (`*.stale-*` folders) are left out.
    Returns the files written."""
    runs_dir, records_dir = Path(runs_dir), Path(records_dir)
    written = []
    for metrics in sorted(runs_dir.glob("*/*/seed*/metrics.json")):
        run_dir = metrics.parent
        if ".stale" in run_dir.name or ".stale" in run_dir.parent.name:
            continue
        written += record_run(run_dir, records_dir / run_dir.relative_to(runs_dir))
    for name in STUDY_FILES:
        src, dst = runs_dir / name, records_dir / name
        if src.is_file() and not _same(src, dst):
            _copy_atomic(src, dst)
            written.append(dst)
    return written


def restore_records(records_dir: Path, runs_dir: Path) -> list[Path]:
    """Copy the records into runs_dir where runs_dir lacks them: a run's files only into a
    run folder with no metrics.json (a folder holding one is left as it is), the study's
    files only where absent. Returns the files written."""
    records_dir, runs_dir = Path(records_dir), Path(runs_dir)
    written = []
    for metrics in sorted(records_dir.glob("*/*/seed*/metrics.json")):
        target = runs_dir / metrics.parent.relative_to(records_dir)
        if (target / "metrics.json").is_file():
            continue
        for name in RUN_FILES:
            src = metrics.parent / name
            if src.is_file():
                _copy_atomic(src, target / name)
                written.append(target / name)
    for name in STUDY_FILES:
        src, dst = records_dir / name, runs_dir / name
        if src.is_file() and not dst.exists():
            _copy_atomic(src, dst)
            written.append(dst)
    return written
