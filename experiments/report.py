"""Report and plots of `experiments.study`: reads the runs' metrics.json files, writes the
markdown report and the PNG figures. Pure functions of the run folders and a few dicts, so
they are tested on fake metrics (tests/test_study.py) without training anything.

Run folder layout (RUNS = runs/study or runs/study-quick):
    RUNS/tune/<model>/seed0/metrics.json         epoch selection runs (validation curves)
    RUNS/main/<model>/seed<k>/metrics.json       Table II / IV models, dmf_gate
    RUNS/alpha/a<alpha>/seed<k>/metrics.json     DMF alpha sweep (the main DMF row is the
                                                 selected alpha)
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

# Paper, Table II (Amazon: AUC mean, std; GAUC equals AUC there, one group per user).
PAPER_AMAZON = {
    "sasrec": (0.7776, 0.00292),
    "din": (0.7806, 0.00118),
    "ta": (0.7798, 0.00129),
    "bfs_mf": (0.7823, 0.00050),
    "simtier": (0.8090, 0.00233),
    "make": (0.8145, 0.00264),
    "dta": (0.8214, 0.00184),
    "dmf": (0.8251, 0.00105),
}
# Paper, Table IV (industrial data only: AUC, GAUC).
PAPER_ABLATION = {
    "ta_early": (0.6644, 0.6159),
    "ta_late": (0.6615, 0.6145),
    "dta_non_invasive": (0.6624, 0.6129),
    "dta": (0.6645, 0.6158),
}
TABLE2 = ["sasrec", "din", "ta", "bfs_mf", "simtier", "make", "dta", "dmf"]
TABLE4 = ["ta_early", "ta_late", "dta_non_invasive", "dta"]
EXTRA = ["dmf_gate"]
LABELS = {
    "sasrec": "SASRec",
    "din": "DIN",
    "ta": "TA",
    "bfs_mf": "BFS_MF",
    "simtier": "SIMTIER",
    "make": "MAKE",
    "dta": "DTA",
    "dmf": "DMF",
    "dmf_gate": "DMF + activity gate (extra)",
    "ta_early": "TA_early",
    "ta_late": "TA_late",
    "dta_non_invasive": "DTA_non-invasive",
}
PAPER_SHORT_SHARE = 0.8475  # Sec. V-E4: share of Amazon users with L <= 10
REPORT_NAME = "amazon-electronics"


# ------------------------------------------------------------------------ collecting
def _seed_runs(folder: Path) -> list[dict[str, Any]]:
    """metrics.json of folder/seed*/, sorted by seed, with `seed` and study extras added."""
    runs = []
    for path in sorted(folder.glob("seed*/metrics.json")):
        metrics = json.loads(path.read_text())
        metrics["seed"] = int(metrics.get("config", {}).get("seed", path.parent.name[4:]))
        extra = path.parent / "study_run.json"
        if extra.is_file():
            metrics["study_run"] = json.loads(extra.read_text())
        runs.append(metrics)
    return sorted(runs, key=lambda m: m["seed"])


def collect(runs_dir: Path) -> dict[str, Any]:
    """Every finished run under runs_dir: {"runs": {model: [...]}, "alpha": {a: [...]},
    "tune": {model: metrics}}."""
    runs_dir = Path(runs_dir)
    main = {d.name: _seed_runs(d) for d in sorted((runs_dir / "main").glob("*")) if d.is_dir()}
    alpha = {
        round(float(d.name[1:]), 4): _seed_runs(d)
        for d in sorted((runs_dir / "alpha").glob("a*"))
        if d.is_dir() and ".stale" not in d.name
    }
    tune = {}
    for d in sorted((runs_dir / "tune").glob("*")):
        found = _seed_runs(d) if d.is_dir() else []
        if found:
            tune[d.name] = found[0]
    return {
        "runs": {k: v for k, v in main.items() if v},
        "alpha": {k: v for k, v in alpha.items() if v},
        "tune": tune,
    }


# ------------------------------------------------------------------------- selection
def final_valid_auc(metrics: dict[str, Any]) -> float:
    """Validation AUC at the end of the run (the trainer evaluates `valid` at the end when
    --eval-every is set)."""
    history = metrics.get("valid_history") or []
    return float(history[-1]["auc"]) if history else float("nan")


def select_steps(tune_metrics: dict[str, Any]) -> tuple[int, float]:
    """(step, valid AUC) of the best validation AUC of a tuning run."""
    history = tune_metrics.get("valid_history") or []
    if not history:
        raise ValueError("tuning run has no validation history")
    best = max(history, key=lambda r: r["auc"])
    return int(best["step"]), float(best["auc"])


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
        values = [final_valid_auc(m) for m in runs if m["seed"] in seeds]
        values = [v for v in values if not math.isnan(v)]
        if values:
            means[a] = float(np.mean(values))
    if not means:
        raise ValueError("no alpha run has a validation AUC")
    best = max(sorted(means), key=lambda a: means[a])
    return best, means


# ------------------------------------------------------------------------ statistics
def _values(runs: list[dict[str, Any]], key: str, group: str | None = None) -> np.ndarray:
    out = []
    for m in runs:
        test = m["test"] if group is None else m["test"]["by_activity"][group]
        out.append(float(test[key]))
    return np.asarray(out, dtype=np.float64)


def mean_std(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    std = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    return float(np.mean(values)), std


def fmt_ms(values: np.ndarray, digits: int = 4) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_delta(delta: float) -> str:
    """The paper's Δ: difference of AUCs in points, written as a percentage."""
    return "–" if math.isnan(delta) else f"{100 * delta:+.2f}%"


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or b.size < 2:
        return float("nan")
    from scipy import stats

    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _mean(runs: list[dict[str, Any]], key: str = "auc") -> float:
    return mean_std(_values(runs, key))[0] if runs else float("nan")


def _throughput(runs: list[dict[str, Any]]) -> float:
    v = [m.get("train_samples_per_s", float("nan")) for m in runs]
    return float(np.mean(v)) if v else float("nan")


# ------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alpha(
    alpha_runs: dict[float, list[dict[str, Any]]],
    seeds: list[int],
    selected: float | None,
    path: Path,
    dta_runs: list[dict[str, Any]] | None = None,
) -> None:
    """Fig. 5: test AUC (and validation AUC) against alpha, mean ± std over seeds."""
    plt = _plt()
    alphas = sorted(alpha_runs)
    test = [_values([m for m in alpha_runs[a] if m["seed"] in seeds], "auc") for a in alphas]
    valid = [
        np.asarray([final_valid_auc(m) for m in alpha_runs[a] if m["seed"] in seeds])
        for a in alphas
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for series, label, marker in ((test, "test AUC", "o"), (valid, "validation AUC", "s")):
        means = [mean_std(v)[0] for v in series]
        stds = [np.nan_to_num(mean_std(v)[1]) for v in series]
        ax.errorbar(alphas, means, yerr=stds, marker=marker, capsize=3, label=label)
    if dta_runs:
        ax.axhline(_mean(dta_runs), color="grey", ls=":", label="DTA (test)")
    if selected is not None:
        ax.axvline(selected, color="k", ls="--", lw=0.8, label=f"selected on valid: α={selected:g}")
    ax.axvline(0.3, color="tab:red", ls=":", lw=0.8, label="paper's Amazon peak α=0.3")
    ax.set_xlabel("α (0: modality-centric r_mc only, 1: modality-enriched r_me only)")
    ax.set_ylabel("AUC")
    ax.set_title(f"DMF α sweep on Amazon Electronics ({len(seeds)} seed{'s' * (len(seeds) != 1)})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    """Share of test samples with history length <= 10 (the same for every run)."""
    test = runs[0]["test"]["by_activity"]
    short, long = test["short"]["samples"], test["long"]["samples"]
    return short / max(short + long, 1)


def plot_activity(
    dmf: list[dict[str, Any]],
    dta: list[dict[str, Any]],
    path: Path,
    gate: list[dict[str, Any]] | None = None,
) -> None:
    """Fig. 6: (a) share of test samples with L <= 10 / > 10, (b) GAUC gain over DTA."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.6))
    share = short_share(dmf or dta)
    ax1.bar(
        ["L ≤ 10", "L > 10"], [100 * share, 100 * (1 - share)], color=["tab:blue", "tab:orange"]
    )
    ax1.scatter(
        ["L ≤ 10", "L > 10"],
        [100 * PAPER_SHORT_SHARE, 100 * (1 - PAPER_SHORT_SHARE)],
        marker="_",
        s=400,
        color="k",
        label="paper (Amazon users)",
    )
    ax1.set_ylabel("% of test samples")
    ax1.set_title("(a) activity groups")
    ax1.legend(fontsize=7)
    series = [("DMF − DTA", dmf, "tab:green")]
    if gate:
        series.append(("DMF+gate − DTA", gate, "tab:purple"))
    width = 0.8 / len(series)
    for i, (label, runs, color) in enumerate(series):
        gains = activity_gains(runs, dta)
        xs = np.arange(2) + (i - (len(series) - 1) / 2) * width
        means = [100 * gains[g][0] for g in ("short", "long")]
        stds = [100 * np.nan_to_num(gains[g][1]) for g in ("short", "long")]
        ax2.bar(xs, means, width, yerr=stds, capsize=3, label=label, color=color)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(range(2), ["L ≤ 10", "L > 10"])
    ax2.set_ylabel("GAUC gain over DTA (points × 100)")
    ax2.set_title("(b) GAUC gain, paired by seed")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention(case: dict[str, Any], path: Path) -> None:
    """Fig. 7: sigmoid-normalised attention of TA and DTA over one user's history (right),
    next to each history item's multimodal similarity to the target (left)."""
    plt = _plt()
    n = len(case["history"])
    labels = [
        f"{textwrap.shorten(t, 44, placeholder='…')}\n[{c} train pos.]"
        for t, c in zip(case["titles"], case["counts"])
    ]
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(10.5, 0.55 * n + 2.2), sharey=True, width_ratios=[1, 2]
    )
    ys = np.arange(n)
    ax1.barh(ys, case["sims"], 0.6, color="tab:blue")
    for y, s in enumerate(case["sims"]):
        ax1.text(max(s, 0), y, f" {s:.3f}", va="center", fontsize=7)
    ax1.set_xlim(min(0.0, min(case["sims"])), 1.15)
    ax1.set_xlabel("cosine similarity to the target\n(MiniLM title vectors)", fontsize=8)
    ax1.set_yticks(ys, labels, fontsize=7)
    ax1.invert_yaxis()  # oldest behaviour on top
    for y in ys:
        ax2.plot([case["ta"][y], case["dta"][y]], [y, y], color="lightgray", lw=1, zorder=1)
    ax2.scatter(case["ta"], ys, color="tab:gray", label="TA", zorder=2)
    ax2.scatter(case["dta"], ys, color="tab:green", label="DTA", zorder=2)
    for y, (a, b) in enumerate(zip(case["ta"], case["dta"])):
        ax2.annotate(
            f"{a:.3f}",
            (a, y),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=6,
            color="tab:gray",
        )
        ax2.annotate(
            f"{b:.3f}",
            (b, y),
            textcoords="offset points",
            xytext=(0, -10),
            ha="center",
            fontsize=6,
            color="tab:green",
        )
    values = [*case["ta"], *case["dta"]]
    pad = max(0.02, 0.15 * (max(values) - min(values)))
    ax2.set_xlim(min(values) - pad, max(values) + pad)
    ax2.set_xlabel("attention weight: mean over heads of sigmoid(scaled score)", fontsize=8)
    ax2.grid(axis="x", alpha=0.3)
    ax2.legend(fontsize=8, loc="best")
    target = textwrap.shorten(case["target_title"], 110, placeholder="…")
    heading = textwrap.fill(
        f"User {case['user']}, target: {target} [{case['target_count']} train pos.]", 110
    )
    fig.suptitle(
        f"{heading}\np(click): TA {case['ta_prob']:.3f}, DTA {case['dta_prob']:.3f}", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tuning(tune: dict[str, dict[str, Any]], steps_per_epoch: int | None, path: Path) -> None:
    """Validation AUC during the epoch-selection runs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>pPX*"
    for i, (name, m) in enumerate(sorted(tune.items())):
        history = m.get("valid_history") or []
        if not history:
            continue
        scale = steps_per_epoch or 1
        xs = [r["step"] / scale for r in history]
        ax.plot(
            xs,
            [r["auc"] for r in history],
            marker=markers[i % len(markers)],
            markersize=4,
            color=colors[(2 * i) % 20 + (i // 10)],
            label=LABELS.get(name, name),
        )
    ax.set_xlabel("epochs" if steps_per_epoch else "steps")
    ax.set_ylabel("validation AUC")
    ax.set_title("Epoch selection runs (seed 0), validation split only")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def _claim(name: str, paper: str, a: np.ndarray, b: np.ndarray, expect: str = ">") -> dict:
    """One of the paper's claims, 'a > b' (or '≈'), tested on our seeds."""
    delta = float(np.mean(a) - np.mean(b)) if a.size and b.size else float("nan")
    p = welch_p(a, b)
    if math.isnan(delta):
        verdict = "not run"
    elif expect == "≈":
        verdict = "holds (|Δ| < 0.1 pt)" if abs(delta) < 0.001 else "does not hold"
    elif math.isnan(p):
        verdict = ("holds" if delta > 0 else "reversed") + " (one seed, no test)"
    elif delta > 0:
        verdict = "holds" + (" (p < 0.05)" if p < 0.05 else " (same sign, not significant)")
    else:
        verdict = "reversed" + (" (p < 0.05)" if p < 0.05 else " (not significant)")
    return {"claim": name, "paper": paper, "delta": delta, "p": p, "verdict": verdict}


def claims(results: dict[str, Any]) -> list[dict]:
    runs = results["runs"]

    def auc(key: str) -> np.ndarray:
        return _values(runs.get(key, []), "auc")

    def best_of(keys: list[str]) -> np.ndarray:
        present = [k for k in keys if runs.get(k)]
        if not present:
            return np.asarray([])
        return auc(max(present, key=lambda k: _mean(runs[k])))

    out = [
        _claim(
            "DIN > SASRec (target-aware > target-agnostic)", "+0.30%", auc("din"), auc("sasrec")
        ),
        _claim("TA > SASRec", "+0.22%", auc("ta"), auc("sasrec")),
        _claim("BFS_MF > TA (multimodal > ID-only)", "+0.25%", auc("bfs_mf"), auc("ta")),
        _claim("SIMTIER > TA", "+2.92%", auc("simtier"), auc("ta")),
        _claim("MAKE > TA", "+3.47%", auc("make"), auc("ta")),
        _claim(
            "DTA > best of BFS_MF/SIMTIER/MAKE",
            "+0.69%",
            auc("dta"),
            best_of(["bfs_mf", "simtier", "make"]),
        ),
        _claim("DTA > TA", "+4.16%", auc("dta"), auc("ta")),
        _claim("DMF > DTA", "+0.37%", auc("dmf"), auc("dta")),
        _claim("TA_early ≈ DTA (industrial)", "-0.01%", auc("ta_early"), auc("dta"), "≈"),
        _claim(
            "DTA > DTA_non-invasive (industrial)", "+0.21%", auc("dta"), auc("dta_non_invasive")
        ),
        _claim("DTA > TA_late (industrial)", "+0.30%", auc("dta"), auc("ta_late")),
    ]
    alpha = results.get("alpha") or {}
    seeds = results.get("alpha_seeds") or common_seeds(alpha)
    if alpha and 0.0 in alpha:
        test = {a: _values([m for m in r if m["seed"] in seeds], "auc") for a, r in alpha.items()}
        others = np.concatenate([v for a, v in test.items() if a != 0.0]) if len(test) > 1 else []
        worst = min(test, key=lambda a: np.mean(test[a]))
        peak = max(test, key=lambda a: np.mean(test[a]))
        out.append(
            {
                "claim": "α = 0 (r_mc only) is the worst α",
                "paper": "worst at 0",
                "delta": float(np.mean(test[0.0]) - np.mean(others))
                if len(others)
                else float("nan"),
                "p": float("nan"),
                "verdict": "holds" if worst == 0.0 else f"does not hold (worst: α={worst:g})",
            }
        )
        out.append(
            {
                "claim": "test AUC peaks at α = 0.3",
                "paper": "peak 0.3",
                "delta": float("nan"),
                "p": float("nan"),
                "verdict": "holds" if abs(peak - 0.3) < 1e-9 else f"peak at α={peak:g}",
            }
        )
    if runs.get("dmf") and runs.get("dta"):
        gains = activity_gains(runs["dmf"], runs["dta"])
        diff = gains["short"][0] - gains["long"][0]
        out.append(
            {
                "claim": "DMF's GAUC gain over DTA larger for L ≤ 10 than L > 10",
                "paper": "yes (Fig. 6b)",
                "delta": diff,
                "p": float("nan"),
                "verdict": "holds" if diff > 0 else "does not hold",
            }
        )
    return out


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _model_row(key: str, runs: dict[str, list], base: dict[str, float]) -> list[str]:
    r = runs.get(key, [])
    auc = _values(r, "auc")
    mean = mean_std(auc)[0]
    paper = PAPER_AMAZON.get(key)
    valid = np.asarray([final_valid_auc(m) for m in r])
    return [
        LABELS.get(key, key),
        fmt_ms(auc),
        *[fmt_delta(mean - base[b]) if b in base else "–" for b in ("sasrec", "ta")],
        fmt_ms(_values(r, "gauc")),
        fmt_ms(_values(r, "logloss")),
        fmt_ms(valid),
        f"{paper[0]:.4f}" if paper else "–",
        fmt_delta(paper[0] - PAPER_AMAZON["sasrec"][0]) if paper else "–",
        str(len(r)),
    ]


def _fmt_s(seconds: float) -> str:
    if not seconds or math.isnan(seconds):
        return "–"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def write_report(results: dict[str, Any], out_dir: Path, name: str = REPORT_NAME) -> Path:
    """Write OUT/<name>.md and its PNGs; returns the markdown path.

    results: collect(...) plus optional keys: selection {"steps": {model: (step, valid)},
    "alpha": a, "alpha_valid": {a: v}}, alpha_seeds, settings {name: (value, source)},
    timing {"total_s", "phases": {...}}, data {...}, case (CaseStudy as dict), evidence
    [lines], command, quick (bool), steps_per_epoch, discussion (markdown text).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = dict(results.get("runs", {}))
    alpha_runs = results.get("alpha", {})
    selection = results.get("selection", {})
    alpha_seeds = results.get("alpha_seeds") or common_seeds(alpha_runs)
    selected_alpha = selection.get("alpha")
    if selected_alpha is None and alpha_runs:
        selected_alpha, means = select_alpha(alpha_runs, alpha_seeds)
        selection = {**selection, "alpha": selected_alpha, "alpha_valid": means}
    if selected_alpha is not None and "dmf" not in runs:
        key = min(alpha_runs, key=lambda a: abs(a - selected_alpha))
        runs["dmf"] = alpha_runs[key]
    results = {**results, "runs": runs, "alpha_seeds": alpha_seeds}
    figures: dict[str, str] = {}
    lines: list[str] = []
    add = lines.append

    title = "Amazon Electronics: DMF and the paper's baselines (Section V)"
    add(f"# {title}\n")
    if results.get("quick"):
        add(
            "> **QUICK MODE** — a CI-sized check of the study pipeline (few steps, one seed). "
            "These numbers are not the study's results; see `../amazon-electronics.md`.\n"
        )
    add(
        "Generated by `experiments.study` (do not edit by hand; hand-written notes go in "
        f"`{name}.discussion.md`, included below).\n"
    )
    if results.get("command"):
        note = f" {results['command_note']}" if results.get("command_note") else ""
        add(f"Command: `{results['command']}`.{note}\n")
    timing = results.get("timing") or {}
    if timing:
        phases = ", ".join(f"{k} {_fmt_s(v)}" for k, v in timing.get("phases", {}).items())
        add(
            f"**Wall time of the whole study: {_fmt_s(timing.get('total_s', float('nan')))}**"
            + (f" ({phases})." if phases else ".")
            + "\n"
        )
        if timing.get("note"):
            add(timing["note"] + "\n")
    data = results.get("data") or {}
    if data:
        add("Data: " + ", ".join(f"{k}: {v}" for k, v in data.items()) + "\n")

    settings = results.get("settings") or {}
    if settings:
        add("## Settings\n")
        add(
            _table(
                ["setting", "value", "where it comes from"],
                [[k, f"{v[0]}", v[1]] for k, v in settings.items()],
                "lll",
            )
        )
        add("")

    base = {k: _mean(runs[k]) for k in ("sasrec", "ta") if runs.get(k)}
    header = [
        "model",
        "test AUC (mean ± std)",
        "Δ_AUC vs SASRec",
        "Δ_AUC vs TA",
        "test GAUC",
        "test logloss",
        "valid AUC",
        "paper AUC",
        "paper Δ_AUC",
        "seeds",
    ]
    add("## Table II: overall performance (test split)\n")
    add(
        "Δ_AUC as in the paper: the difference of mean AUCs in points (0.0030 = +0.30%). "
        "GAUC here is the mean per-user AUC over test users with both labels (one positive "
        "and one sampled negative each), so it is not identical to AUC as in the paper's "
        "Amazon column.\n"
    )
    rows = [_model_row(k, runs, base) for k in [*TABLE2, *EXTRA] if runs.get(k)]
    add(_table(header, rows))
    if selected_alpha is not None:
        add(
            f"\nDMF uses α = {selected_alpha:g}, chosen by mean validation AUC over the sweep "
            "seeds (Fig. 5 below)."
        )
    add("")

    add("### The paper's claims on our runs\n")
    add(
        "Welch t-test over seeds (two-sided p); Δ is ours (mean AUC of the left minus the "
        "right model, test split).\n"
    )
    add(
        _table(
            ["claim", "paper", "ours Δ", "p", "verdict"],
            [
                [
                    c["claim"],
                    c["paper"],
                    fmt_delta(c["delta"])
                    if "α" not in c["claim"] or not math.isnan(c["delta"])
                    else "–",
                    _fmt_p(c["p"]),
                    c["verdict"],
                ]
                for c in claims(results)
            ],
            "lllrl",
        )
    )
    add("")
    ours = [k for k in TABLE2 if runs.get(k)]
    if len(ours) >= 3:
        from scipy import stats

        order = sorted(ours, key=lambda k: -_mean(runs[k]))
        tau = stats.kendalltau([_mean(runs[k]) for k in ours], [PAPER_AMAZON[k][0] for k in ours])
        add(
            "Ranking by mean test AUC — ours: "
            + " > ".join(LABELS[k] for k in order)
            + "; paper: "
            + " > ".join(LABELS[k] for k in sorted(ours, key=lambda k: -PAPER_AMAZON[k][0]))
            + f". Kendall τ = {tau.statistic:.2f}.\n"
        )

    add("## Table IV: side-information fusion ablation (test split)\n")
    add(
        "The paper reports this ablation on its industrial data only; its Δ (vs DTA) is "
        "shown for the direction.\n"
    )
    dta_mean = _mean(runs["dta"]) if runs.get("dta") else float("nan")
    dta_g = _mean(runs["dta"], "gauc") if runs.get("dta") else float("nan")
    rows = []
    for k in TABLE4:
        r = runs.get(k, [])
        if not r:
            continue
        pa, pg = PAPER_ABLATION[k]
        rows.append(
            [
                LABELS[k],
                fmt_ms(_values(r, "auc")),
                fmt_delta(_mean(r) - dta_mean),
                fmt_ms(_values(r, "gauc")),
                fmt_delta(_mean(r, "gauc") - dta_g),
                fmt_delta(pa - PAPER_ABLATION["dta"][0]),
                fmt_delta(pg - PAPER_ABLATION["dta"][1]),
                str(len(r)),
            ]
        )
    add(
        _table(
            [
                "model",
                "test AUC",
                "Δ_AUC vs DTA",
                "test GAUC",
                "Δ_GAUC vs DTA",
                "paper Δ_AUC (industry)",
                "paper Δ_GAUC (industry)",
                "seeds",
            ],
            rows,
        )
    )
    add("")

    if alpha_runs:
        add("## Fig. 5: sensitivity to α\n")
        path = out_dir / f"{name}-alpha.png"
        plot_alpha(alpha_runs, alpha_seeds, selected_alpha, path, runs.get("dta"))
        figures["alpha"] = path.name
        add(f"![alpha sweep]({path.name})\n")
        valid_means = selection.get("alpha_valid") or select_alpha(alpha_runs, alpha_seeds)[1]
        rows = []
        for a in sorted(alpha_runs):
            r = [m for m in alpha_runs[a] if m["seed"] in alpha_seeds]
            rows.append(
                [
                    f"{a:g}"
                    + (
                        " (selected)"
                        if selected_alpha is not None and abs(a - selected_alpha) < 1e-9
                        else ""
                    ),
                    f"{valid_means.get(a, float('nan')):.4f}",
                    fmt_ms(_values(r, "auc")),
                    fmt_ms(_values(r, "gauc")),
                    fmt_ms(_values(r, "logloss")),
                    str(len(r)),
                ]
            )
        add(
            f"Seeds {alpha_seeds} for every α (selection on validation, test shown for the "
            "figure only).\n"
        )
        add(_table(["α", "mean valid AUC", "test AUC", "test GAUC", "test logloss", "seeds"], rows))
        add("")

    if runs.get("dmf") and runs.get("dta"):
        add("## Fig. 6: activity groups (history length L ≤ 10 vs > 10)\n")
        path = out_dir / f"{name}-activity.png"
        plot_activity(runs["dmf"], runs["dta"], path, runs.get("dmf_gate"))
        figures["activity"] = path.name
        add(f"![activity]({path.name})\n")
        share = short_share(runs["dmf"])
        add(
            f"Test samples with L ≤ 10: {100 * share:.2f}% (paper's Amazon users: "
            f"{100 * PAPER_SHORT_SHARE:.2f}%).\n"
        )
        rows = []
        for key in ("dta", "dmf", "dmf_gate"):
            if not runs.get(key):
                continue
            row = [LABELS[key]]
            for g in ("short", "long"):
                row.append(fmt_ms(_values(runs[key], "gauc", g)))
            rows.append(row)
        for key in ("dmf", "dmf_gate"):
            if runs.get(key):
                gains = activity_gains(runs[key], runs["dta"])
                rows.append(
                    [f"{LABELS[key]} − DTA (paired by seed)"]
                    + [
                        f"{100 * gains[g][0]:+.2f} ± {100 * np.nan_to_num(gains[g][1]):.2f} pt"
                        for g in ("short", "long")
                    ]
                )
        add(_table(["model", "test GAUC, L ≤ 10", "test GAUC, L > 10"], rows))
        add("")

    case = results.get("case")
    add("## Fig. 7: attention case study\n")
    if case:
        path = out_dir / f"{name}-attention.png"
        plot_attention(case, path)
        figures["attention"] = path.name
        add(f"![attention]({path.name})\n")
        add(
            f"Models: {case.get('models', 'TA and DTA, seed 0')}, loaded from their DCP "
            "checkpoints into unsharded single-process models; weights are the mean over heads "
            "of sigmoid(scaled score) from `over_arch.interest.attention.scores` on the user's "
            f"test sample. User chosen by rule: {case['rule']}.\n"
        )
        rows = [
            [
                str(i + 1),
                textwrap.shorten(t, 70, placeholder="…").replace("|", "/"),
                str(c),
                f"{s:.4f}",
                f"{a:.4f}",
                f"{b:.4f}",
            ]
            for i, (t, c, s, a, b) in enumerate(
                zip(case["titles"], case["counts"], case["sims"], case["ta"], case["dta"])
            )
        ]
        add(
            f"Target: **{case['target_title']}** ({case['target_count']} training positives); "
            f"p(click) TA {case['ta_prob']:.3f}, DTA {case['dta_prob']:.3f}.\n"
        )
        add(
            _table(
                [
                    "#",
                    "history item (oldest first)",
                    "train pos.",
                    "similarity to target",
                    "TA weight",
                    "DTA weight",
                ],
                rows,
                "llrrrr",
            )
        )
        agg = case.get("aggregate") or {}
        if agg:
            add(
                f"\nOver all {agg['samples']:,} test positives with ≥ 2 history items: the "
                "top-weighted item is the most similar one to the target in "
                f"{100 * agg['ta']['top_is_most_similar']:.1f}% of cases for TA and "
                f"{100 * agg['dta']['top_is_most_similar']:.1f}% for DTA (chance: "
                f"{100 * agg['chance_top_is_most_similar']:.1f}%); mean Spearman correlation "
                f"of weight and similarity: TA {agg['ta']['spearman_weight_similarity']:+.3f}, "
                f"DTA {agg['dta']['spearman_weight_similarity']:+.3f}."
            )
        pop = agg.get("popularity")
        if pop:
            add(
                "\nPopularity (the paper's flame icons): over all test samples, the Spearman "
                "correlation of the model's logit with log(1 + training positives) of the target "
                f"is {pop['ta']['spearman_logit_popularity']:.3f} for TA and "
                f"{pop['dta']['spearman_logit_popularity']:.3f} for DTA; popularity alone has "
                f"test AUC {pop['ta']['auc_popularity']:.4f} (TA {pop['ta']['auc_model']:.4f}, "
                f"DTA {pop['dta']['auc_model']:.4f})."
            )
        add("")
    else:
        add("Not available (no TA/DTA checkpoints).\n")

    add("## Training throughput\n")
    add(
        "Training samples/s over all workers (metrics.json `train_samples_per_s`): mean and "
        "best over seeds, and the wall time of each run (training, validation and test "
        "evaluation, MAKE's pre-training included). Other engineers' jobs shared the 2 cores "
        "during parts of the study, so the mean mixes loaded and idle periods; the best seed is "
        "the closest to an idle machine, and the 1-minute load average at the start of each run "
        "(2.0 = both cores busy with the study alone) says how loaded it was.\n"
    )
    rows = []
    for k in [*TABLE2, *EXTRA, *[t for t in TABLE4 if t != "dta"]]:
        r = runs.get(k, [])
        if not r:
            continue
        walls = [m["study_run"]["wall_s"] for m in r if "study_run" in m]
        loads = [m["study_run"].get("load_before", float("nan")) for m in r if "study_run" in m]
        rows.append(
            [
                LABELS.get(k, k),
                f"{_throughput(r):,.0f}",
                f"{max(m.get('train_samples_per_s', 0.0) for m in r):,.0f}",
                f"{np.mean(walls):.0f}" if walls else "–",
                f"{np.nanmean(loads):.1f}" if loads else "–",
                str(r[0].get("steps", "–")),
            ]
        )
    add(
        _table(
            [
                "model",
                "train samples/s (mean)",
                "(best seed)",
                "wall s / run",
                "load avg at start",
                "steps",
            ],
            rows,
        )
    )
    add("")

    tune = results.get("tune") or {}
    if tune:
        add("## Epoch selection (validation split only)\n")
        path = out_dir / f"{name}-tuning.png"
        plot_tuning(tune, results.get("steps_per_epoch"), path)
        figures["tuning"] = path.name
        add(f"![tuning]({path.name})\n")
        steps = selection.get("steps") or {}
        spe = results.get("steps_per_epoch")
        rows = []
        for k in sorted(tune):
            step, val = steps.get(k) or select_steps(tune[k])
            rows.append(
                [
                    LABELS.get(k, k),
                    str(step),
                    f"{step / spe:.2f}" if spe else "–",
                    f"{val:.4f}",
                    str(len(tune[k].get("valid_history") or [])),
                ]
            )
        add(_table(["model", "selected steps", "epochs", "best valid AUC", "evaluations"], rows))
        add("")

    evidence = results.get("evidence") or []
    discussion = results.get("discussion")
    if evidence or discussion:
        add("## Where our results differ from the paper, and why\n")
        for line in evidence:
            add(f"- {line}")
        add("")
        if discussion:
            add(discussion.strip() + "\n")

    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out_dir / f"{name}.json").write_text(
        json.dumps(_summary(results, selection), indent=2, default=float) + "\n"
    )
    return out_dir / f"{name}.md"


def _summary(results: dict[str, Any], selection: dict[str, Any]) -> dict[str, Any]:
    """Machine-readable digest next to the report."""
    out: dict[str, Any] = {"selection": {k: v for k, v in selection.items()}, "models": {}}
    for k, r in results["runs"].items():
        out["models"][k] = {
            "seeds": [m["seed"] for m in r],
            "auc": _values(r, "auc").tolist(),
            "gauc": _values(r, "gauc").tolist(),
            "logloss": _values(r, "logloss").tolist(),
            "valid_auc": [final_valid_auc(m) for m in r],
            "train_samples_per_s": _throughput(r),
        }
    out["alpha"] = {
        str(a): {
            "seeds": [m["seed"] for m in r],
            "auc": _values(r, "auc").tolist(),
            "valid_auc": [final_valid_auc(m) for m in r],
        }
        for a, r in results.get("alpha", {}).items()
    }
    out["timing"] = results.get("timing")
    if "alpha_valid" in out["selection"]:
        out["selection"]["alpha_valid"] = {
            str(k): v for k, v in out["selection"]["alpha_valid"].items()
        }
    return out
