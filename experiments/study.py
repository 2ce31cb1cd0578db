"""The paper's Amazon experiments (Section V) in one command:

    python -m experiments.study [--quick] [--seeds N] [--out docs/results] [--data-dir data/amazon]
                             [--workers 2] [--raw-dir ../shared/data/amazon-electronics-2014]

1. prepares the data from the raw Amazon 2014 files with `python -m data_prep amazon`
   (skipped when DATA_DIR/manifest.json is intact and was built from the same files and
   settings);
2. full mode: one epoch-selection run per model (seed 0, validation AUC every quarter
   epoch, early stopping) picks each model's training length on the VALIDATION split;
3. trains and evaluates every model of Table II and Table IV, the DMF alpha sweep (0 to 1
   by 0.1) and the activity-gated DMF, each a real `pipeline.train` run under torchrun with
   --workers processes (several runs per torchrun job, `experiments.worker`); DMF's
   alpha for the main table is chosen by mean validation AUC of the sweep;
4. loads the TA and DTA checkpoints into unsharded models for the attention case study;
5. writes OUT/amazon-electronics.md and its PNG figures (`experiments.report`).

Runs live in runs/study/<phase>/<name>/seed<k>/ (runs/study-quick with --quick); a run
whose metrics.json exists with the same trainer config and data is skipped, so an
interrupted study continues where it stopped. Test metrics are never used to choose
anything.

--quick: one seed, a fixed --quick-steps steps per run (a subset of the training samples,
the full validation and test splits), MAKE pre-trained for 1 epoch, no epoch selection;
about 15-20 minutes on 2 cores, for CI-sized checks. Writes to OUT/quick/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE2_MODELS = ["sasrec", "din", "ta", "bfs_mf", "simtier", "make", "dta"]  # + dmf (sweep)
ABLATION_MODELS = ["ta_early", "ta_late", "dta_non_invasive"]  # + dta
TUNE_MODELS = [*TABLE2_MODELS, "dmf", *ABLATION_MODELS]
ALPHAS = [round(0.1 * i, 1) for i in range(11)]
CASE_MODELS = ("ta", "dta")
GLOBAL_BATCH = 128  # paper, Sec. V-D
PAPER_ALPHA = 0.3  # the paper's best alpha on Amazon; used while tuning DMF's epochs
REVIEWS, META = "reviews_Electronics_5.json.gz", "meta_Electronics.json.gz"


@dataclass
class StudyConfig:
    quick: bool = False
    seeds: int = 5
    sweep_seeds: int = 3
    out: str = "docs/results"
    data_dir: str = "data/amazon"
    raw_dir: str = "../shared/data/amazon-electronics-2014"
    runs_dir: str = "runs/study"
    workers: int = 2
    lr: float = 1e-3
    tune_epochs: int = 2
    tune_evals_per_epoch: int = 4
    tune_patience: int = 2
    quick_steps: int = 600
    make_pretrain_epochs: int = 10
    valid_frac: float = 0.1
    report_only: bool = False
    device: str = "cpu"


def parse_args(argv: list[str] | None = None) -> StudyConfig:
    p = argparse.ArgumentParser(
        prog="python -m experiments.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI-sized check (see above)")
    p.add_argument("--seeds", type=int, help="seeds per model (default 5; --quick: 1)")
    p.add_argument(
        "--sweep-seeds",
        type=int,
        help="seeds per alpha of the DMF sweep (default min(3, seeds)); the selected alpha "
        "then gets the remaining seeds",
    )
    p.add_argument(
        "--out", help="report folder (default docs/results; --quick: docs/results/quick)"
    )
    p.add_argument("--data-dir", default=StudyConfig.data_dir)
    p.add_argument(
        "--raw-dir", default=StudyConfig.raw_dir, help="raw Amazon 2014 files (read only)"
    )
    p.add_argument("--runs-dir", help="run folders (default runs/study; --quick: runs/study-quick)")
    p.add_argument("--workers", type=int, default=StudyConfig.workers, help="torchrun processes")
    p.add_argument("--lr", type=float, default=StudyConfig.lr, help="dense Adam learning rate")
    p.add_argument("--tune-epochs", type=int, default=StudyConfig.tune_epochs)
    p.add_argument("--tune-evals-per-epoch", type=int, default=StudyConfig.tune_evals_per_epoch)
    p.add_argument("--tune-patience", type=int, default=StudyConfig.tune_patience)
    p.add_argument("--quick-steps", type=int, default=StudyConfig.quick_steps)
    p.add_argument("--make-pretrain-epochs", type=int, help="MAKE stage 1 (default 10; --quick: 1)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report and plots")
    a = p.parse_args(argv)
    quick = a.quick
    seeds = a.seeds or (1 if quick else 5)
    config = StudyConfig(
        quick=quick,
        seeds=seeds,
        sweep_seeds=min(a.sweep_seeds or (1 if quick else 3), seeds),
        out=a.out or ("docs/results/quick" if quick else "docs/results"),
        data_dir=a.data_dir,
        raw_dir=a.raw_dir,
        runs_dir=a.runs_dir or ("runs/study-quick" if quick else "runs/study"),
        workers=a.workers,
        lr=a.lr,
        tune_epochs=a.tune_epochs,
        tune_evals_per_epoch=a.tune_evals_per_epoch,
        tune_patience=a.tune_patience,
        quick_steps=a.quick_steps,
        make_pretrain_epochs=a.make_pretrain_epochs
        if a.make_pretrain_epochs is not None
        else (1 if quick else 10),
        report_only=a.report_only,
    )
    if GLOBAL_BATCH % config.workers:
        p.error(f"--workers must divide the global batch {GLOBAL_BATCH}")
    return config


def say(message: str) -> None:
    print(f"{dt.datetime.now():%H:%M:%S} [study] {message}", flush=True)


# ----------------------------------------------------------------------- study state
class State:
    """runs_dir/study_state.json: wall time of every invocation and its phases (so the
    report gives the wall time of the whole study across interruptions)."""

    def __init__(self, runs_dir: Path, argv: list[str]) -> None:
        self.path = runs_dir / "study_state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("invocations", [])
        self.current = {
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "argv": argv,
            "wall_s": 0.0,
            "phases": {},
        }
        self.data["invocations"].append(self.current)
        self.start = time.perf_counter()

    def phase(self, name: str, seconds: float) -> None:
        self.current["phases"][name] = self.current["phases"].get(name, 0.0) + seconds
        self.save()

    def save(self) -> None:
        self.current["wall_s"] = time.perf_counter() - self.start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2))

    def timing(self) -> dict[str, Any]:
        self.save()
        phases: dict[str, float] = {}
        for inv in self.data["invocations"]:
            for k, v in inv["phases"].items():
                phases[k] = phases.get(k, 0.0) + v
        total = sum(inv["wall_s"] for inv in self.data["invocations"])
        return {
            "total_s": total,
            "phases": phases,
            "invocations": len(self.data["invocations"]),
        }


# ------------------------------------------------------------------------------ data
def prep_command(config: StudyConfig) -> list[str]:
    raw = Path(config.raw_dir)
    return [
        sys.executable, "-m", "data_prep", "amazon",
        "--reviews", str(raw / REVIEWS),
        "--meta", str(raw / META),
        "--out", config.data_dir,
        "--valid-frac", str(config.valid_frac),
    ]  # fmt: skip


def data_is_current(config: StudyConfig) -> tuple[bool, str]:
    """Whether DATA_DIR holds an intact amazon folder built from these raw files with the
    study's settings (valid fraction, seed 0, history 50, 35 buckets, MiniLM titles)."""
    from data_prep.manifest import file_sha256, read_manifest

    manifest = read_manifest(Path(config.data_dir))
    if manifest is None:
        return False, "no intact manifest.json"
    if manifest.get("job") != "amazon":
        return False, f"built by job {manifest.get('job')!r}"
    for name in (REVIEWS, META):
        recorded = manifest.get("inputs", {}).get(name, {}).get("sha256")
        if recorded != file_sha256(Path(config.raw_dir) / name):
            return False, f"{name} changed"
    protocol = manifest.get("protocol", {})
    expected = {"valid_frac": config.valid_frac, "seed": 0, "max_history": 50}
    for key, value in expected.items():
        if protocol.get(key) != value:
            return False, f"protocol {key}={protocol.get(key)!r}, want {value!r}"
    if manifest.get("buckets", {}).get("num_buckets") != 35:
        return False, "not 35 buckets"
    if not str(manifest.get("item_embeddings", {}).get("source", "")).startswith("title:minilm"):
        return False, "item vectors are not MiniLM title embeddings"
    return True, "up to date"


def prepare(config: StudyConfig) -> None:
    current, reason = data_is_current(config)
    if current:
        say(f"data: {config.data_dir} is up to date; preparation skipped")
        return
    cmd = prep_command(config)
    say(f"data: {reason}; running {shlex.join(cmd)}")
    subprocess.run(cmd, cwd=ROOT, check=True)
    current, reason = data_is_current(config)
    if not current:
        raise RuntimeError(f"data prep finished but {config.data_dir} is not current: {reason}")


def steps_per_epoch(data: Any, workers: int) -> int:
    """Training steps per epoch, as the trainer's ShardReader counts them."""
    rows = int(data.manifest["counts"]["train"])
    per_rank = math.ceil(rows / workers)
    return math.ceil(per_rank / (GLOBAL_BATCH // workers))


# ----------------------------------------------------------------------------- plans
@dataclass
class Run:
    key: str
    out: Path
    argv: list[str]
    model: str

    def spec(self) -> dict[str, Any]:
        return {"key": self.key, "out": str(self.out), "argv": self.argv}


def trainer_argv(
    config: StudyConfig,
    model: str,
    seed: int,
    out: Path,
    *,
    max_steps: int,
    spe: int,
    eval_every: int,
    model_args: dict[str, Any] | None = None,
    checkpoint: bool = False,
    patience: int | None = None,
) -> list[str]:
    argv = [
        "--model", model,
        "--data", config.data_dir,
        "--preset", "amazon",
        "--batch-size", str(GLOBAL_BATCH // config.workers),
        "--lr", str(config.lr),
        "--seed", str(seed),
        "--output-dir", str(out),
        "--epochs", str(max(1, math.ceil(max_steps / spe))),
        "--max-steps", str(max_steps),
        "--eval-every", str(eval_every),
        "--device", config.device,
    ]  # fmt: skip
    if patience:
        argv += ["--early-stopping-patience", str(patience)]
    if checkpoint:
        argv += ["--checkpoint-every", str(max_steps)]
    args = dict(model_args or {})
    if model == "make":
        args.setdefault("pretrain_epochs", config.make_pretrain_epochs)
    for key, value in args.items():
        argv += ["--model-arg", f"{key}={json.dumps(value)}"]
    return argv


def tune_runs(config: StudyConfig, spe: int) -> list[Run]:
    runs_dir = Path(config.runs_dir)
    steps = spe * config.tune_epochs
    every = max(1, spe // config.tune_evals_per_epoch)
    out = []
    for model in TUNE_MODELS:
        folder = runs_dir / "tune" / model / "seed0"
        args = {"alpha": PAPER_ALPHA} if model == "dmf" else {}
        argv = trainer_argv(
            config, model, 0, folder, max_steps=steps, spe=spe, eval_every=every,
            model_args=args, patience=config.tune_patience,
        )  # fmt: skip
        out.append(Run(f"tune/{model}/seed0", folder, argv, model))
    return out


def _final(
    config: StudyConfig,
    phase: str,
    name: str,
    model: str,
    seed: int,
    steps: int,
    spe: int,
    **model_args: Any,
) -> Run:
    folder = Path(config.runs_dir) / phase / name / f"seed{seed}"
    argv = trainer_argv(
        config, model, seed, folder, max_steps=steps, spe=spe, eval_every=steps,
        model_args=model_args, checkpoint=model in CASE_MODELS and seed == 0,
    )  # fmt: skip
    return Run(f"{phase}/{name}/seed{seed}", folder, argv, model)


def alpha_name(alpha: float) -> str:
    return f"a{alpha:.1f}"


def gate_alpha(alpha: float) -> float:
    """The gate's initial a(median length); the logit needs 0 < a < 1."""
    return min(max(alpha, 0.05), 0.95)


def phase_a_runs(config: StudyConfig, steps: dict[str, int], spe: int, seeds: range) -> list[Run]:
    """Table II/IV models and the alpha sweep, seed-major (every model gets seed 0 first)."""
    out = []
    for seed in seeds:
        for model in [*TABLE2_MODELS, *ABLATION_MODELS]:
            out.append(_final(config, "main", model, model, seed, steps[model], spe))
        if seed < config.sweep_seeds:
            for a in ALPHAS:
                out.append(
                    _final(config, "alpha", alpha_name(a), "dmf", seed, steps["dmf"], spe, alpha=a)
                )
    return out


def phase_b_runs(
    config: StudyConfig, steps: dict[str, int], spe: int, alpha: float, seeds: range
) -> list[Run]:
    """The selected alpha's remaining seeds and the activity-gated DMF."""
    out = []
    for seed in seeds:
        if seed >= config.sweep_seeds:
            name = alpha_name(alpha)
            out.append(_final(config, "alpha", name, "dmf", seed, steps["dmf"], spe, alpha=alpha))
        out.append(
            _final(config, "main", "dmf_gate", "dmf", seed, steps["dmf"], spe,
                   alpha=gate_alpha(alpha), activity_gate=True)
        )  # fmt: skip
    return out


def launch(config: StudyConfig, runs: list[Run], name: str, checksum: str) -> int:
    """One torchrun job over `runs` (finished ones are skipped by the worker)."""
    from experiments.worker import run_status

    todo = [r for r in runs if run_status(r.out, r.argv, checksum) != "done"]
    if not todo:
        say(f"{name}: all {len(runs)} runs done")
        return 0
    plan = Path(config.runs_dir) / "plans" / f"{name}.json"
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text(
        json.dumps(
            {
                "runs": [r.spec() for r in todo],
                "manifest_checksum": checksum,
                "device": config.device,
            },
            indent=1,
        )
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(config.workers), "-m", "experiments.worker", str(plan),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    say(f"{name}: {len(todo)} of {len(runs)} runs to do; {shlex.join(cmd)}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode:
        say(f"{name}: torchrun exited with {proc.returncode} (failed runs keep error.rank*.txt)")
    return proc.returncode


def estimate_seconds(
    config: StudyConfig, runs: list[Run], tune: dict[str, Any], checksum: str
) -> float:
    """Rough wall time of the runs still to do, from the tuning runs' throughput."""
    from experiments.worker import run_status

    total = 0.0
    for r in runs:
        if run_status(r.out, r.argv, checksum) == "done":
            continue
        steps = int(r.argv[r.argv.index("--max-steps") + 1])
        rate = tune.get(r.model, {}).get("train_samples_per_s") or 4000.0
        total += steps * GLOBAL_BATCH / rate + 20.0
        if r.model == "make":
            total += 15.0 * config.make_pretrain_epochs
    return total


# -------------------------------------------------------------------------- evidence
def data_evidence(data: Any) -> dict[str, Any]:
    """Facts about the prepared data that the report uses to explain differences."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.metrics import auc

    def split(name: str) -> pa.Table:
        return pa.concat_tables([pq.read_table(p) for p in data.split_files(name)])

    train = split("train").select(["item", "label", "hist_items"])
    test = split("test")
    num_items = data.vocab_sizes["item"]
    counts = np.zeros(num_items, dtype=np.int64)
    items, labels = train.column("item").to_numpy(), train.column("label").to_numpy()
    np.add.at(counts, items[labels > 0.5], 1)
    t_items, t_labels = test.column("item").to_numpy(), test.column("label").to_numpy()
    sims = test.column("hist_sims").to_pylist()
    lengths = np.asarray([len(s) for s in sims])
    last10 = np.asarray([np.mean(s[-10:]) if s else 0.0 for s in sims])
    maxsim = np.asarray([np.max(s) if s else 0.0 for s in sims])
    pos = t_labels > 0.5
    neg_counts = counts[t_items[~pos]]
    return {
        "users": data.vocab_sizes["user"] - 2,
        "items": num_items - 2,
        "counts": dict(data.manifest["counts"]),
        "test_short_share": float(np.mean(lengths <= 10)),
        "mean_history_test": float(np.mean(lengths)),
        "auc_popularity": auc(np.log1p(counts[t_items]), t_labels),
        "auc_mean_sim_last10": auc(last10, t_labels),
        "auc_max_sim": auc(maxsim, t_labels),
        "test_pos_target_lt5": float(np.mean(counts[t_items[pos]] < 5)),
        "test_neg_target_lt5": float(np.mean(neg_counts < 5)),
        "item_source": data.manifest["item_embeddings"].get("source", "?"),
        "item_dim": data.manifest["item_embeddings"].get("dim"),
        "checksum": data.checksum,
    }


def evidence_lines(ev: dict[str, Any], results: dict[str, Any]) -> list[str]:
    from experiments.report import _mean

    runs = results.get("runs", {})
    lines = [
        f"Data scale: {ev['users']:,} users, {ev['items']:,} items, "
        f"{ev['counts'].get('train', 0):,} training samples (after carving {ev['counts'].get('valid', 0):,} "
        "validation samples) — a random user sample of Electronics, 5-core filtered; the paper's "
        "set has 192k users, 63k items, 1.7M samples. Fewer samples per item means noisier ID "
        "embeddings and a smaller set over which the bucket tables and histograms are learned.",
        f"Multimodal signal: titles only, embedded by all-MiniLM-L6-v2 ({ev['item_dim']}-d, "
        f"`{ev['item_source']}`); no images (the paper fuses visual and textual vectors). "
        f"Similarity alone ranks the test pairs with AUC {ev['auc_mean_sim_last10']:.4f} "
        f"(mean similarity to the last 10 history items) and {ev['auc_max_sim']:.4f} (max "
        "similarity), which bounds how much the similarity-based arches can add.",
        f"Popularity: the test negative is a uniformly random item the user never reviewed, "
        f"so item popularity alone (log(1 + training positives) of the target) gives test AUC "
        f"{ev['auc_popularity']:.4f}; {100 * ev['test_neg_target_lt5']:.1f}% of negative "
        f"targets but {100 * ev['test_pos_target_lt5']:.1f}% of positive targets have fewer "
        "than 5 training positives. Much of what every model learns is this popularity "
        "contrast, carried by the target's ID embedding, which all models share.",
        f"Activity: {100 * ev['test_short_share']:.1f}% of test samples have L ≤ 10 (paper: "
        f"84.75% of Amazon users); mean history length {ev['mean_history_test']:.1f}.",
    ]
    id_only = [k for k in ("sasrec", "din", "ta", "bfs_mf") if runs.get(k)]
    if id_only:
        spread = ", ".join(f"{k} {_mean(runs[k]):.4f}" for k in id_only)
        line = (
            f"The ID-only models do no better than popularity: test AUC {spread} against "
            f"{ev['auc_popularity']:.4f} for popularity alone (no categories in this data; "
            "the paper's ID baselines reach 0.78, plausibly with the item categories of the "
            "DIN-style Amazon setup)."
        )
        pop = ((results.get("case") or {}).get("aggregate") or {}).get("popularity")
        if pop:
            line += (
                f" TA's (seed 0) test logits have a Spearman correlation of "
                f"{pop['ta']['spearman_logit_popularity']:.2f} with the target's popularity "
                f"(DTA: {pop['dta']['spearman_logit_popularity']:.2f}): TA is, in effect, a "
                "popularity ranker here, so the small differences among ID-only models "
                "(the paper's SASRec < TA < DIN) are not measurable on this data."
            )
        lines.append(line)
    alpha = results.get("alpha") or {}
    if runs.get("ta") and runs.get("dta") and runs.get("dta_non_invasive") and 0.0 in alpha:
        a0 = [m for m in alpha[0.0] if m["seed"] in (results.get("alpha_seeds") or [])]
        lines.append(
            "What the content signal does here: DTA_non-invasive (bucket term on the keys only, "
            f"so the similarity can only re-weight ID values) scores {_mean(runs['dta_non_invasive']):.4f}, "
            f"no better than TA ({_mean(runs['ta']):.4f}), while DTA (keys and values) scores "
            f"{_mean(runs['dta']):.4f}; DMF with α = 0 (no attention over the history at all, only "
            f"the similarity histogram) scores {_mean(a0):.4f}. The gain comes from feeding the "
            "target-history similarity distribution to the head (what SIMTIER's histogram does "
            "directly), not from better attention re-weighting, so the arches that pass the "
            "histogram straight to the head (SIMTIER, MAKE) lead, and DMF's α barely matters "
            "except at α = 1 (no histogram)."
        )
    tune = results.get("tune") or {}
    if tune:
        lines.append(
            "Training length: every model's validation AUC was followed every quarter epoch "
            "(figure above); the final runs stop at each model's best validation step. No "
            "learning-rate, embedding-size or regularisation search was done (budget: about 3 "
            "hours on 2 CPU cores for ~100 runs), so models whose best settings differ from the "
            "shared ones are at a disadvantage; the paper does not report its tuning."
        )
    return lines


# ------------------------------------------------------------------------------ main
def settings_table(
    config: StudyConfig, data: Any, spe: int, selection: dict[str, Any]
) -> dict[str, tuple[str, str]]:
    from models.zoo import make_config

    dmf, sasrec, din = make_config("dmf"), make_config("sasrec"), make_config("din")
    simtier, make = make_config("simtier"), make_config("make")
    steps = selection.get("steps") or {}
    if config.quick:
        length = (
            f"{config.quick_steps} steps for every model ({config.quick_steps * GLOBAL_BATCH:,} "
            f"samples, {config.quick_steps / spe:.2f} epoch)",
            "--quick: fixed, not selected",
        )
    else:
        per_model = ", ".join(f"{m} {s[0]} ({s[0] / spe:.2f} ep)" for m, s in sorted(steps.items()))
        length = (
            per_model or "–",
            f"best validation AUC of a seed-0 run of up to "
            f"{config.tune_epochs} epochs, evaluated every 1/{config.tune_evals_per_epoch} "
            f"epoch, early-stopping patience {config.tune_patience}",
        )
    alpha = selection.get("alpha")
    return {
        "data": (
            f"`{config.data_dir}` ({data.manifest['counts']})",
            f"`{shlex.join(prep_command(config)[1:])}`",
        ),
        "protocol": (
            "DIN-style next-item: reviews 2..T-1 train, T test, one random unreviewed "
            "negative per positive; 10% of users' latest training pair -> valid",
            "paper Sec. V-A / data_prep amazon",
        ),
        "item vectors": (
            f"{data.manifest['item_embeddings'].get('dim')}-d, "
            f"{data.manifest['item_embeddings'].get('source')}",
            "titles only (no images in this data)",
        ),
        "history / buckets": (
            f"last {data.max_history} behaviours; {data.num_buckets} "
            "equal-frequency similarity buckets from training similarities",
            "data_prep defaults (paper gives M=35 for industry only)",
        ),
        "ID embeddings, heads, hidden, MLP": (
            "32, 4, 32, 80x40x1",
            "paper Sec. V-D (`--preset amazon`)",
        ),
        "batch size": (
            f"{GLOBAL_BATCH} global = {GLOBAL_BATCH // config.workers} per rank x "
            f"{config.workers} ranks",
            "paper (128)",
        ),
        "dense optimizer": (
            f"Adam, lr {config.lr:g}, constant",
            "paper: Adam; lr not given, Adam's default, not tuned",
        ),
        "embedding optimizer": (
            "fused Adagrad, lr 0.05",
            "trainer default on CPU (fbgemm's CPU kernels have no fused Adam)",
        ),
        "training length": length,
        "steps per epoch": (f"{spe:,}", "training samples / global batch"),
        "DMF alpha (main table)": (
            f"{alpha:g}" if alpha is not None else "–",
            "best mean validation AUC of the sweep",
        ),
        "DMF histogram": (
            f"{dmf.histogram_bins} bins, MLP {dmf.histogram_hidden}",
            "model default (paper gives none)",
        ),
        "activity gate": (
            "a(n) = sigmoid(w log(1+n) + b), a(8) initialised at the selected "
            "alpha (clipped to [0.05, 0.95])",
            "the paper's proposal, Sec. V-E4",
        ),
        "SASRec": (f"{sasrec.num_layers} layers", "model default (SASRec paper)"),
        "DIN": (
            f"attention MLP {din.attention_dims}, {din.activation}",
            "model default (DIN paper)",
        ),
        "SIMTIER": (f"{simtier.histogram_bins} bins", "model default"),
        "MAKE": (
            f"stage-1 pre-training {config.make_pretrain_epochs} epochs, mm MLP "
            f"{make.mm_hidden} -> {make.mm_dim}",
            "paper: 10 epochs" + (" (--quick: 1)" if config.quick else ""),
        ),
        "seeds": (
            f"{config.seeds} per model (0..{config.seeds - 1}); alpha sweep "
            f"{config.sweep_seeds} per alpha",
            "paper: 5 runs",
        ),
        "workers": (
            f"{config.workers} torchrun processes x 1 thread (OMP_NUM_THREADS=1), gloo, CPU",
            "2-core machine",
        ),
        "metrics": (
            "test AUC, GAUC (uniform over users with both labels), logloss; "
            "activity split at L <= 10",
            "paper Sec. V-B, Fig. 6",
        ),
    }


def study_command(state: State, argv: list[str]) -> str:
    """The command line that ran the study (the latest invocation that trained)."""
    training = [i["argv"] for i in state.data["invocations"] if "--report-only" not in i["argv"]]
    return ("python -m experiments.study " + shlex.join(training[-1] if training else argv)).strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_args(argv)
    os.chdir(ROOT)
    runs_dir = Path(config.runs_dir)
    state = State(runs_dir, argv)
    say(f"config: {dataclasses.asdict(config)}")

    t = time.perf_counter()
    if not config.report_only:
        prepare(config)
    state.phase("prepare", time.perf_counter() - t)

    from experiments.report import collect, select_alpha, select_steps, write_report
    from pipeline.data import PreparedData

    data = PreparedData(config.data_dir)
    checksum = data.checksum
    spe = steps_per_epoch(data, config.workers)
    seeds = range(config.seeds)
    say(f"data {config.data_dir}: {data.manifest['counts']}, {spe} steps per epoch")

    # -- training length per model, on the validation split
    selection: dict[str, Any] = {}
    tune = tune_runs(config, spe) if not config.quick else []
    if config.quick:
        steps = {m: config.quick_steps for m in TUNE_MODELS}
    else:
        t = time.perf_counter()
        if not config.report_only:
            launch(config, tune, "tune", checksum)
        state.phase("epoch selection", time.perf_counter() - t)
        tuned = collect(runs_dir)["tune"]
        selection["steps"] = {}
        steps = {}
        for model in TUNE_MODELS:
            if model in tuned:
                steps[model], valid = select_steps(tuned[model])
                selection["steps"][model] = (steps[model], valid)
            else:
                steps[model] = spe
                say(f"no tuning result for {model}; using one epoch")
        say(f"selected steps: {steps}")
        (runs_dir / "selection.json").write_text(json.dumps(selection, indent=2))
        phase_a = phase_a_runs(config, steps, spe, seeds)
        say(
            f"estimated time of the remaining phase-A runs: "
            f"{estimate_seconds(config, phase_a, tuned, checksum) / 60:.0f} min (+ gate and extra DMF seeds)"
        )

    # -- phase A: Table II/IV models and the alpha sweep, in two passes so every model
    #    has the sweep seeds before any model gets more
    t = time.perf_counter()
    first = range(min(config.sweep_seeds, config.seeds))
    rest = range(config.sweep_seeds, config.seeds)
    if not config.report_only:
        launch(config, phase_a_runs(config, steps, spe, first), "phase-a", checksum)
    state.phase("training", time.perf_counter() - t)

    results = collect(runs_dir)
    alpha_seeds = list(first)
    if results["alpha"]:
        alpha, alpha_valid = select_alpha(results["alpha"], alpha_seeds)
    else:
        alpha, alpha_valid = PAPER_ALPHA, {}
    selection.update(alpha=alpha, alpha_valid=alpha_valid)
    (runs_dir / "selection.json").write_text(json.dumps(selection, indent=2, default=str))
    say(f"selected alpha on validation: {alpha:g} ({alpha_valid})")

    t = time.perf_counter()
    if not config.report_only:
        launch(config, phase_b_runs(config, steps, spe, alpha, first), "phase-b", checksum)
        if rest:
            more = phase_a_runs(config, steps, spe, rest) + phase_b_runs(
                config, steps, spe, alpha, rest
            )
            launch(config, more, "phase-c", checksum)
    state.phase("training", time.perf_counter() - t)

    # -- case study, evidence, report
    t = time.perf_counter()
    results = collect(runs_dir)
    results["runs"]["dmf"] = results["alpha"].get(alpha, [])
    case = None
    case_runs = [runs_dir / "main" / m / "seed0" for m in CASE_MODELS]
    case_cache = runs_dir / "case_study.json"
    if all(
        (r / "metrics.json").is_file() and (r / "checkpoints" / "latest").is_file()
        for r in case_runs
    ):
        stamp = [json.loads((r / "metrics.json").read_text())["test"]["auc"] for r in case_runs]
        if case_cache.is_file() and json.loads(case_cache.read_text()).get("stamp") == stamp:
            case = json.loads(case_cache.read_text())["case"]
        else:
            from experiments.case_study import run_case_study

            say("case study: TA and DTA seed 0 checkpoints -> unsharded models")
            case = dataclasses.asdict(
                run_case_study(case_runs[0], case_runs[1], Path(config.raw_dir) / META)
            )
            case["models"] = "TA and DTA, seed 0"
            case_cache.write_text(json.dumps({"stamp": stamp, "case": case}, indent=1))
    ev = data_evidence(data)
    discussion_file = Path(config.out) / "amazon-electronics.discussion.md"
    results.update(
        selection=selection,
        alpha_seeds=alpha_seeds,
        settings=settings_table(config, data, spe, selection),
        data={
            "users": f"{ev['users']:,}",
            "items": f"{ev['items']:,}",
            "samples": " / ".join(f"{v:,} {k}" for k, v in ev["counts"].items()),
            "manifest checksum": f"`{checksum[:16]}…`",
        },
        case=case,
        command=study_command(state, argv),
        command_note=(
            f"This report was rebuilt by `python -m experiments.study {shlex.join(argv)}`."
            if config.report_only
            else None
        ),
        quick=config.quick,
        steps_per_epoch=spe,
        discussion=discussion_file.read_text() if discussion_file.is_file() else None,
    )
    if config.quick:
        results["tune"] = {}
    results["evidence"] = evidence_lines(ev, results)
    state.phase("report", time.perf_counter() - t)
    timing = state.timing()
    timing["note"] = (
        f"Summed over {timing['invocations']} invocation(s) of the command (the study resumes "
        "where it stopped; `--report-only` invocations only rebuild this report); the "
        "'prepare' phase is near zero when the prepared folder was already current."
    )
    results["timing"] = timing
    path = write_report(results, Path(config.out))
    state.save()
    say(f"report: {path} (study wall time so far {timing['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
