"""Attention case study of the study (paper, Fig. 7): TA's and DTA's attention over one
real user's history, from the trained checkpoints.

The checkpoints are DCP folders written by a 2-rank DistributedModelParallel run; DCP
reshards on load, so they load into a plain, unsharded, single-process `CTRModel`. The keys
of the saved state are the trainer's `{"model": dmp.state_dict()}`, stored flattened as
`model.model.` + the CTRModel's own keys (DMP wraps CTRTask, which holds it as `.model`).

Attention weights are sigmoid-normalised as in the paper (softmax weights are not
comparable across models): w_l = mean over heads of sigmoid(e_hl), with e the scaled
scores of `DecoupledTargetAttention.scores`.
"""

from __future__ import annotations

import ast
import gzip
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed.checkpoint as dcp

from models.ctr import CTRModel
from models.zoo import build_model, make_config
from pipeline.checkpoint import best_or_latest_checkpoint
from pipeline.data import PreparedData, table_to_batch

# dmp.state_dict() keys are "model." + the CTRModel's keys (DMP drops its own wrapper
# prefix; CTRTask holds the CTRModel as `.model`); DCP flattens the nested {"model": ...}
# of the saved state, so the stored names read "model.model.<key>".
DMP_PREFIX = "model."


def load_unsharded(run_dir: Path, data: PreparedData | None = None) -> CTRModel:
    """The model of a finished `pipeline.train` run, restored from its checkpoint
    (`pipeline.checkpoint.best_or_latest_checkpoint`) into a plain single-process model (no process group needed)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = metrics["config"]
    data = data or PreparedData(config["data"])
    model = build_model(
        config["model"], data.feature_spec(), make_config(config["model"], config["model_args"])
    )
    latest = best_or_latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(
            f"{run_dir}: no checkpoint (train with --restore-best or --checkpoint-every)"
        )
    own = model.state_dict()
    state = {"model": {DMP_PREFIX + k: v for k, v in own.items()}}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(latest), no_dist=True)
    model.load_state_dict({k: state["model"][DMP_PREFIX + k] for k in own})
    model.eval()
    return model


@torch.no_grad()
def attention_weights(model: CTRModel, table: Any, has_categories: bool) -> dict[str, np.ndarray]:
    """Per-sample attention of a TA/DTA model over the rows of `table` (Parquet samples).

    Returns sigmoid (B, L) = mean_h sigmoid(e), softmax (B, L) = mean_h softmax(e) (masked),
    mask (B, L), sims (B, L), logits (B,).
    """
    batch = table_to_batch(table, has_categories)
    embeddings = model.sparse_arch(batch.sparse_features)
    x = model.over_arch.interest_inputs(embeddings, batch.hist_sims)
    attention = model.over_arch.interest.attention
    scores = attention.scores(x.target, x.history, x.buckets)  # (B, H, L)
    mask = x.mask[:, None, :]
    sigmoid = torch.sigmoid(scores).masked_fill(~mask, 0.0).mean(dim=1)
    softmax = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    softmax = torch.nan_to_num(softmax).mean(dim=1)
    logits = model(batch)
    return {
        "sigmoid": sigmoid.numpy(),
        "softmax": softmax.numpy(),
        "mask": x.mask.numpy(),
        "sims": x.sims.numpy(),
        "logits": logits.numpy(),
    }


def item_titles(data: PreparedData, meta_path: Path) -> dict[int, str]:
    """Item index -> title, from the prepared item vocabulary and the raw metadata file."""
    vocab = pq.read_table(data.root / "vocab" / "item.parquet").to_pydict()
    by_asin: dict[str, str] = {}
    with gzip.open(meta_path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                continue
            if isinstance(record, dict) and "asin" in record:
                by_asin.setdefault(str(record["asin"]), str(record.get("title", "")))
    return {i: by_asin.get(a, "?") for a, i in zip(vocab["raw_id"], vocab["index"])}


def training_counts(data: PreparedData, num_items: int) -> np.ndarray:
    """Positive training interactions per item (the paper's 'flame icons' of popularity)."""
    counts = np.zeros(num_items, dtype=np.int64)
    for path in data.split_files("train"):
        table = pq.read_table(path, columns=["item", "label"])
        items = table.column("item").to_numpy()[table.column("label").to_numpy() > 0.5]
        np.add.at(counts, items, 1)
    return counts


@torch.no_grad()
def popularity_alignment(
    model: CTRModel, table: Any, counts: np.ndarray, has_categories: bool
) -> dict[str, float]:
    """How much of a model's test ranking is item popularity: Spearman correlation of its
    logits with log(1 + training positives of the target), over every test sample, and the
    AUC of popularity alone next to the model's."""
    from scipy import stats

    from pipeline.metrics import auc

    logits = model(table_to_batch(table, has_categories)).numpy()
    popularity = np.log1p(counts[table.column("item").to_numpy()])
    labels = table.column("label").to_numpy()
    return {
        "spearman_logit_popularity": float(stats.spearmanr(logits, popularity).statistic),
        "auc_model": auc(logits, labels),
        "auc_popularity": auc(popularity, labels),
    }


@dataclass
class CaseStudy:
    user: int
    target: int
    label: float
    history: list[int]
    sims: list[float]
    ta: list[float]
    dta: list[float]
    ta_softmax: list[float]
    dta_softmax: list[float]
    ta_prob: float
    dta_prob: float
    titles: list[str]
    target_title: str
    counts: list[int]
    target_count: int
    rule: str
    aggregate: dict[str, Any]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def aggregate_stats(
    ta: dict[str, np.ndarray], dta: dict[str, np.ndarray], min_history: int = 2
) -> dict[str, Any]:
    """Over every test positive with at least `min_history` history items: how often the
    top-weighted history item is the most similar one, and the mean rank correlation
    between weight and similarity, per model."""
    out: dict[str, Any] = {}
    mask, sims = ta["mask"], ta["sims"]
    lengths = mask.sum(1)
    rows = np.flatnonzero(lengths >= min_history)
    chance = float(np.mean(1.0 / lengths[rows])) if rows.size else float("nan")
    for name, result in (("ta", ta), ("dta", dta)):
        top_hits, rhos = [], []
        for r in rows:
            n = lengths[r]
            w, c = result["sigmoid"][r, :n], sims[r, :n]
            top_hits.append(c[np.argmax(w)] >= c.max() - 1e-6)
            rhos.append(_spearman(w, c))
        out[name] = {
            "top_is_most_similar": float(np.mean(top_hits)) if top_hits else float("nan"),
            "spearman_weight_similarity": float(np.nanmean(rhos)) if rhos else float("nan"),
        }
    out["samples"] = int(rows.size)
    out["min_history"] = min_history
    out["chance_top_is_most_similar"] = chance
    return out


def run_case_study(
    ta_run: Path,
    dta_run: Path,
    meta_path: Path,
    min_len: int = 5,
    max_len: int = 12,
    min_similarity: float = 0.5,
) -> CaseStudy:
    """Pick one real user's test positive and compute both models' attention over it.

    Selection (stated in the report; it is an illustration, the aggregate numbers are the
    evidence): test positives with min_len..max_len history items whose most similar history
    item has similarity >= min_similarity; preferring those where that item gets DTA's highest weight
    but not TA's (the paper's Fig. 7 situation), the one where DTA puts the most sigmoid
    weight on it relative to TA.
    """
    ta_model, dta_model = load_unsharded(ta_run), load_unsharded(dta_run)
    config = json.loads((Path(ta_run) / "metrics.json").read_text())["config"]
    data = PreparedData(config["data"])
    tables = [pq.read_table(p) for p in data.split_files("test")]
    import pyarrow as pa

    everything = pa.concat_tables(tables)
    counts = training_counts(data, data.vocab_sizes["item"])
    popularity = {
        name: popularity_alignment(model, everything, counts, data.has_categories)
        for name, model in (("ta", ta_model), ("dta", dta_model))
    }
    table = everything.filter(pc.greater(everything.column("label"), 0.5))
    ta = attention_weights(ta_model, table, data.has_categories)
    dta = attention_weights(dta_model, table, data.has_categories)
    aggregate = {**aggregate_stats(ta, dta), "popularity": popularity}

    lengths = ta["mask"].sum(1)
    # (paper-like first: DTA's top item is the most similar one and TA's top is another)
    best, best_key = None, (False, -np.inf)
    for r in range(table.num_rows):
        n = lengths[r]
        if not min_len <= n <= max_len:
            continue
        c = ta["sims"][r, :n]
        j = int(np.argmax(c))
        if c[j] < min_similarity:
            continue
        contrast = bool(
            np.argmax(dta["sigmoid"][r, :n]) == j and np.argmax(ta["sigmoid"][r, :n]) != j
        )
        key = (contrast, float(dta["sigmoid"][r, j] - ta["sigmoid"][r, j]))
        if key > best_key:
            best, best_key = r, key
    n = int(lengths[best])
    row = table.slice(best, 1).to_pylist()[0]
    titles = item_titles(data, meta_path)
    history = [int(i) for i in row["hist_items"][:n]]
    return CaseStudy(
        user=int(row["user"]),
        target=int(row["item"]),
        label=float(row["label"]),
        history=history,
        sims=[float(s) for s in ta["sims"][best, :n]],
        ta=[float(w) for w in ta["sigmoid"][best, :n]],
        dta=[float(w) for w in dta["sigmoid"][best, :n]],
        ta_softmax=[float(w) for w in ta["softmax"][best, :n]],
        dta_softmax=[float(w) for w in dta["softmax"][best, :n]],
        ta_prob=float(1 / (1 + np.exp(-ta["logits"][best]))),
        dta_prob=float(1 / (1 + np.exp(-dta["logits"][best]))),
        titles=[titles.get(i, "?") for i in history],
        target_title=titles.get(int(row["item"]), "?"),
        counts=[int(counts[i]) for i in history],
        target_count=int(counts[int(row["item"])]),
        rule=(
            f"test positives with {min_len}-{max_len} history items whose most similar history "
            f"item has cosine >= {min_similarity:g}; preferring those where that item gets DTA's highest weight "
            "and not TA's, the one where DTA's weight on it exceeds TA's the most (an "
            "illustration chosen for contrast, not a random draw; "
            f"{'such a contrasting case exists' if best_key[0] else 'no contrasting case exists'})"
        ),
        aggregate=aggregate,
    )
