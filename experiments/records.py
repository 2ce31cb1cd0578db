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
from collections.abc import Callable
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


def _changed(src: Path, dst: Path) -> bool:
    return not (dst.is_file() and src.read_bytes() == dst.read_bytes())


def _absent(src: Path, dst: Path) -> bool:
    return not dst.exists()


def _copy_files(
    src_dir: Path, dst_dir: Path, names: tuple[str, ...], when: Callable[[Path, Path], bool]
) -> list[Path]:
    """Copy each of `names` present in src_dir to dst_dir where `when(src, dst)`; returns
    the files written."""
    written = []
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        if src.is_file() and when(src, dst):
            _copy_atomic(src, dst)
            written.append(dst)
    return written


def record_run(run_dir: Path, records_run_dir: Path) -> list[Path]:
    """Copy a finished run's files (RUN_FILES present in run_dir; nothing when it has no
    metrics.json) into its record folder; returns the files written."""
    run_dir, records_run_dir = Path(run_dir), Path(records_run_dir)
    if not (run_dir / "metrics.json").is_file():
        return []
    return _copy_files(run_dir, records_run_dir, RUN_FILES, _changed)


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
    return written + _copy_files(runs_dir, records_dir, STUDY_FILES, _changed)


def restore_records(records_dir: Path, runs_dir: Path) -> list[Path]:
    """Copy the records into runs_dir where runs_dir lacks them: a run's files only into a
    run folder with no metrics.json (a folder holding one is left as it is), the study's
    files only where absent. Returns the files written."""
    records_dir, runs_dir = Path(records_dir), Path(runs_dir)
    written = []
    for metrics in sorted(records_dir.glob("*/*/seed*/metrics.json")):
        target = runs_dir / metrics.parent.relative_to(records_dir)
        if not (target / "metrics.json").is_file():
            written += _copy_files(metrics.parent, target, RUN_FILES, lambda src, dst: True)
    return written + _copy_files(records_dir, runs_dir, STUDY_FILES, _absent)
