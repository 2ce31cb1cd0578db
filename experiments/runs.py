"""The study's finished runs and the statistics over them: reads the run folders'
metrics.json files, selects on the validation split, aggregates over seeds. Pure
functions of the run folders, tested on fake metrics (tests/test_study.py).

Run folder layout (RUNS = runs/study/<dataset> or runs/study-quick/<dataset>):
    RUNS/main/<model>/seed<k>/metrics.json       Table II / IV models, dmf_gate
    RUNS/alpha/a<alpha>/seed<k>/metrics.json     DMF alpha sweep (the main DMF row is the
                                                 selected alpha)
Each run folder also holds config.json (the TrainConfig asked for) and study_run.json
(wall time, load, threads of the worker that ran it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


# ------------------------------------------------------------------------ collecting
def _seed_runs(folder: Path) -> list[dict[str, Any]]:
    """metrics.json of folder/seed*/, sorted by seed, with `seed` and study extras added."""
    runs = []
    for path in sorted(folder.glob("seed*/metrics.json")):
        if ".stale" in path.parent.name:  # set aside by the worker (another config)
            continue
        metrics = json.loads(path.read_text())
        metrics["seed"] = int(metrics.get("config", {}).get("seed", path.parent.name[4:]))
        metrics["run_key"] = path.parent.relative_to(folder.parent.parent).as_posix()
        extra = path.parent / "study_run.json"
        if extra.is_file():
            metrics["study_run"] = json.loads(extra.read_text())
        runs.append(metrics)
    return sorted(runs, key=lambda m: m["seed"])


def collect(runs_dir: Path) -> dict[str, Any]:
    """Every finished run under runs_dir: {"runs": {model: [...]}, "alpha": {a: [...]}}."""
    runs_dir = Path(runs_dir)
    main = {d.name: _seed_runs(d) for d in sorted((runs_dir / "main").glob("*")) if d.is_dir()}
    alpha = {
        round(float(d.name[1:]), 4): _seed_runs(d)
        for d in sorted((runs_dir / "alpha").glob("a*"))
        if d.is_dir() and ".stale" not in d.name
    }
    return {
        "runs": {k: v for k, v in main.items() if v},
        "alpha": {k: v for k, v in alpha.items() if v},
    }


# ------------------------------------------------------------------------- selection
def valid_auc_of_test_step(metrics: dict[str, Any]) -> float:
    """Validation AUC of the weights the run's test metrics are of: the best validation
    step's when the run restored it (`test_from: best_valid_step`), else the last
    validation's (the trainer evaluates `valid` at the end when --eval-every is set)."""
    if metrics.get("test_from") == "best_valid_step" and metrics.get("best_valid_auc") is not None:
        return float(metrics["best_valid_auc"])
    history = metrics.get("valid_history") or []
    return float(history[-1]["auc"]) if history else float("nan")


def common_seeds(groups: dict[Any, list[dict[str, Any]]], limit: int | None = None) -> list[int]:
    seeds = None
    for runs in groups.values():
        s = {m["seed"] for m in runs}
        seeds = s if seeds is None else seeds & s
    chosen = sorted(seeds or [])
    return chosen[:limit] if limit else chosen


def select_alpha(
    alpha_runs: dict[float, list[dict[str, Any]]], seeds: list[int] | None = None
) -> tuple[float, dict[float, float]]:
    """The alpha with the best mean final VALIDATION AUC over `seeds` (default: the seeds
    every alpha has); ties go to the smaller alpha. Returns (alpha, {alpha: mean valid})."""
    seeds = seeds if seeds is not None else common_seeds(alpha_runs)
    means = {}
    for a, runs in alpha_runs.items():
        values = [valid_auc_of_test_step(m) for m in runs if m["seed"] in seeds]
        values = [v for v in values if not math.isnan(v)]
        if values:
            means[a] = float(np.mean(values))
    if not means:
        raise ValueError("no alpha run has a validation AUC")
    best = max(sorted(means), key=lambda a: means[a])
    return best, means


# ------------------------------------------------------------------------ statistics
def test_values(runs: list[dict[str, Any]], key: str, group: str | None = None) -> np.ndarray:
    out = []
    for m in runs:
        test = m["test"] if group is None else m["test"]["by_activity"][group]
        value = test[key]  # null in metrics.json: not defined (popularity's log loss)
        out.append(float("nan") if value is None else float(value))
    return np.asarray(out, dtype=np.float64)


def mean_std(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    std = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    return float(np.mean(values)), std


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or b.size < 2:
        return float("nan")
    from scipy import stats

    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_mean(runs: list[dict[str, Any]], key: str = "auc") -> float:
    return mean_std(test_values(runs, key))[0] if runs else float("nan")


def throughput(runs: list[dict[str, Any]]) -> float:
    v = [m.get("train_samples_per_s", float("nan")) for m in runs]
    return float(np.mean(v)) if v else float("nan")


def activity_gains(
    dmf: list[dict[str, Any]], dta: list[dict[str, Any]]
) -> dict[str, tuple[float, float, int]]:
    """GAUC(DMF) - GAUC(DTA) per activity group, paired by seed: {group: (mean, std, n)}."""
    by_seed = {m["seed"]: m for m in dta}
    out = {}
    for group in ("short", "long"):
        diffs = [
            float(m["test"]["by_activity"][group]["gauc"])
            - float(by_seed[m["seed"]]["test"]["by_activity"][group]["gauc"])
            for m in dmf
            if m["seed"] in by_seed
        ]
        mean, std = mean_std(np.asarray(diffs))
        out[group] = (mean, std, len(diffs))
    return out


def short_share(runs: list[dict[str, Any]]) -> float:
    """Share of test samples in the short-history group (L <= the runs' short_history_max;
    the same for every run on the same data)."""
    test = runs[0]["test"]["by_activity"]
    short, long = test["short"]["samples"], test["long"]["samples"]
    return short / max(short + long, 1)
