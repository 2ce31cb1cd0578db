"""The report's figures (PNG, matplotlib Agg): Fig. 5 (alpha sweep), Fig. 6 (activity
groups), Fig. 7 (attention case study) and the epoch-selection curves. Every label that
names a setting (the activity split, the vectors, the seed) is passed in by the report,
which reads it from the runs' configs and the data manifest."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from experiments.paper import PAPER_ALPHA, PAPER_SHORT_MAX, PAPER_SHORT_SHARE
from experiments.runs import (
    activity_gains,
    mean_std,
    short_share,
    test_mean,
    test_values,
    valid_auc_of_test_step,
)


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
    dataset: str = "Amazon Electronics",
) -> None:
    """Fig. 5: test AUC (and validation AUC) against alpha, mean ± std over seeds."""
    plt = _plt()
    alphas = sorted(alpha_runs)
    test = [test_values([m for m in alpha_runs[a] if m["seed"] in seeds], "auc") for a in alphas]
    valid = [
        np.asarray([valid_auc_of_test_step(m) for m in alpha_runs[a] if m["seed"] in seeds])
        for a in alphas
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for series, label, marker in ((test, "test AUC", "o"), (valid, "validation AUC", "s")):
        means = [mean_std(v)[0] for v in series]
        stds = [np.nan_to_num(mean_std(v)[1]) for v in series]
        ax.errorbar(alphas, means, yerr=stds, marker=marker, capsize=3, label=label)
    if dta_runs:
        ax.axhline(test_mean(dta_runs), color="grey", ls=":", label="DTA (test)")
    if selected is not None:
        ax.axvline(selected, color="k", ls="--", lw=0.8, label=f"selected on valid: α={selected:g}")
    ax.axvline(
        PAPER_ALPHA, color="tab:red", ls=":", lw=0.8, label=f"paper's Amazon peak α={PAPER_ALPHA:g}"
    )
    ax.set_xlabel("α (0: modality-centric r_mc only, 1: modality-enriched r_me only)")
    ax.set_ylabel("AUC")
    ax.set_title(f"DMF α sweep on {dataset} ({len(seeds)} seed{'s' * (len(seeds) != 1)})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_activity(
    dmf: list[dict[str, Any]],
    dta: list[dict[str, Any]],
    path: Path,
    gate: list[dict[str, Any]] | None = None,
    short_max: int | None = None,
) -> None:
    """Fig. 6: (a) share of test samples with L <= short_max / > short_max (the runs'
    short_history_max), (b) GAUC gain over DTA."""
    plt = _plt()
    groups = (
        [f"L ≤ {short_max}", f"L > {short_max}"] if short_max is not None else ["short", "long"]
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.6))
    share = short_share(dmf or dta)
    ax1.bar(groups, [100 * share, 100 * (1 - share)], color=["tab:blue", "tab:orange"])
    if short_max == PAPER_SHORT_MAX:  # the paper's share is for its own split
        ax1.scatter(
            groups,
            [100 * PAPER_SHORT_SHARE, 100 * (1 - PAPER_SHORT_SHARE)],
            marker="_",
            s=400,
            color="k",
            label="paper (Amazon users)",
        )
        ax1.legend(fontsize=7)
    ax1.set_ylabel("% of test samples")
    ax1.set_title("(a) activity groups")
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
    ax2.set_xticks(range(2), groups)
    ax2.set_ylabel("GAUC gain over DTA (points × 100)")
    ax2.set_title("(b) GAUC gain, paired by seed")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention(case: dict[str, Any], path: Path, vectors: str = "multimodal vectors") -> None:
    """Fig. 7: sigmoid-normalised attention of TA and DTA over one user's history (right),
    next to each history item's multimodal similarity to the target (left); `vectors`
    names the item vectors (from the data manifest)."""
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
    ax1.set_xlabel(f"cosine similarity to the target\n({vectors})", fontsize=8)
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
