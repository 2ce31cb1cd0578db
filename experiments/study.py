"""The paper's Amazon experiments (Section V) in one command, per Amazon category:

    python -m experiments.study [--dataset electronics|toys] [--quick] [--seeds N]
                                [--out docs/results] [--data-dir DIR] [--raw-dir DIR]
                                [--workers 1] [--parallel 2] [--train-config FILE]

1. prepares the data from the raw Amazon 2014 files of the category with `python -m
   data_prep amazon` (skipped when DATA_DIR/manifest.json is intact and was built from the
   same files and settings);
2. trains and evaluates every row of Table II (item popularity and DNN, the floors the
   paper does not report, the paper's models, and DMAE, the related seed paper's model,
   in its one-modality form on the titles with the behaviours' times) and of Table IV, the DMF alpha sweep
   (0 to 1 by 0.1) and the activity-gated DMF, each a real `pipeline.train.train(config)`
   call under torchrun with --workers processes (default 1), --parallel runs at a time
   (several runs per torchrun job, `experiments.worker`). Each run is what `python -m pipeline.train --preset amazon
   --model NAME --seed K` trains: the preset's length, chosen per run on the VALIDATION
   split (validation every half epoch, early stopping, the best step's weights restored
   for the test metrics). DMF's alpha for the main table is chosen by mean validation AUC
   of the sweep;
3. loads the TA and DTA weights (their best validation step) into unsharded models for
   the attention case study;
4. writes OUT/amazon-<category>.md and its PNG figures (`experiments.report`), every
   setting in it read from the configs the runs recorded.

Every run is a `pipeline.config.TrainConfig`: the trainer's defaults < the `amazon` preset
and its entry for the model (pipeline/config.py; docs/tuning.md) < the study's data and
device < --train-config FILE < --lr, then the run's model, seed, model settings and output
folder. Runs live in runs/study/<category>/<phase>/<name>/seed<k>/
(runs/study-quick/<category>/... with --quick), each with its config.json (`python -m
pipeline.train --config .../config.json` repeats it); a run is done when its metrics.json
records exactly the config asked for and the same data, so an interrupted study continues
where it stopped, and a run of another config is set aside and redone. Each finished run's
JSON files are also copied to --records-dir (docs/results/runs/<category>, tracked by git;
experiments/records.py) and copied back into a fresh checkout's run folders, so the study
continues from another machine too (checkpoints are not kept there: the case study's
result is). Test metrics are
never used to choose anything. Item popularity is deterministic: one seed.

--quick: one seed, a fixed --quick-steps steps per run (a subset of the training samples,
the full validation and test splits), MAKE pre-trained for 1 epoch; about 15-20 minutes on
2 cores, for CI-sized checks. Writes to OUT/quick/.
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

from experiments.paper import ALPHAS, BASELINES, LABELS, PAPER_ALPHA, RELATED, TABLE2, TABLE4
from experiments.records import record_study, restore_records
from pipeline.config import ConfigError, TrainConfig, load_config_file, merge, preset_layers

ROOT = Path(__file__).resolve().parents[1]
# + dmf (the selected alpha of the sweep)
TABLE2_MODELS = [*BASELINES, *(m for m in TABLE2 if m != "dmf"), *RELATED]
ABLATION_MODELS = [m for m in TABLE4 if m != "dta"]  # + dta
DETERMINISTIC = ("popularity",)  # no seed changes them: one run
UNTRAINED = ("popularity",)  # no training steps, no validation
# The order a seed's runs are trained in: the floors and the comparisons the claims rest on
# first (DMF at the paper's alpha right after DTA), the costliest (DMAE and SASRec, about
# 3x TA on CPU) last, so an interrupted study has them; then the ablations.
RUN_ORDER = ["popularity", "dnn", "ta", "dta", "din", "bfs_mf", "simtier", "make", "dmae", "sasrec"]
CASE_MODELS = ("ta", "dta")
CASE_SEED = 0  # the seed whose TA and DTA runs keep a checkpoint for the case study
PRESET = "amazon"  # the Amazon recipe chosen on validation (pipeline/config.py PRESETS)
LAST_K, RARE_BELOW = 10, 5  # data facts: similarity to the last K items; rare = < N positives


@dataclass(frozen=True)
class Dataset:
    """One Amazon 2014 category: its raw files (5-core reviews, metadata), where the study
    prepares it, and its report's name and title."""

    raw_dir: str
    reviews: str
    meta: str
    data_dir: str
    report: str
    title: str


DATASETS = {
    "electronics": Dataset(
        "../shared/data/amazon-electronics-2014",
        "reviews_Electronics_5.json.gz",
        "meta_Electronics.json.gz",
        "data/amazon",
        "amazon-electronics",
        "Amazon Electronics",
    ),
    "toys": Dataset(
        "../shared/data/amazon-toys-2014",
        "reviews_Toys_and_Games_5.json.gz",
        "meta_Toys_and_Games.json.gz",
        "data/amazon-toys",
        "amazon-toys",
        "Amazon Toys and Games",
    ),
}


@dataclass
class StudyConfig:
    """The study's own settings (the trainer's are in the base TrainConfig)."""

    dataset: str = "electronics"  # a key of DATASETS
    quick: bool = False
    seeds: int = 5
    sweep_seeds: int = 3
    out: str = "docs/results"
    data_dir: str = DATASETS["electronics"].data_dir
    raw_dir: str = DATASETS["electronics"].raw_dir
    runs_dir: str = "runs/study/electronics"
    records_dir: str | None = "docs/results/runs/electronics"  # None: keep no records
    workers: int = 1  # torchrun processes per run
    parallel: int = 2  # runs trained at once, each its own torchrun job
    train_config: str | None = None  # a TrainConfig file layered over the preset
    lr: float | None = None  # None: the preset's
    quick_steps: int = 600
    make_pretrain_epochs: int | None = None  # None: MAKE's own default
    valid_frac: float = 0.1
    report_only: bool = False
    device: str = "cpu"

    @property
    def files(self) -> Dataset:
        return DATASETS[self.dataset]


def base_config(config: StudyConfig, model: str = "") -> TrainConfig:
    """The TrainConfig the study's runs of `model` are made from: the trainer's defaults <
    the `amazon` preset and its entry for `model` < the study's data and device <
    --train-config FILE < --lr (what `python -m pipeline.train --preset amazon --model
    MODEL` resolves, with the study's data)."""
    layers = [
        TrainConfig().to_dict(),
        *preset_layers(PRESET, model),
        {"preset": PRESET, "data": config.data_dir, "device": config.device},
    ]
    if config.train_config:
        layers.append(load_config_file(config.train_config))
    if config.lr is not None:
        layers.append({"lr": config.lr})
    return TrainConfig.from_dict(merge(*layers), "study base config")


def parse_args(argv: list[str] | None = None) -> StudyConfig:
    p = argparse.ArgumentParser(
        prog="python -m experiments.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default=StudyConfig.dataset,
        help="Amazon 2014 category (its raw files, data folder, runs folder and report name)",
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
    p.add_argument("--data-dir", help="prepared data (default: the dataset's, e.g. data/amazon)")
    p.add_argument(
        "--raw-dir",
        help="raw Amazon 2014 files, read only (default: the dataset's folder in ../shared/data)",
    )
    p.add_argument(
        "--runs-dir",
        help="run folders (default runs/study/DATASET; --quick: runs/study-quick/DATASET)",
    )
    p.add_argument(
        "--records-dir",
        help="the finished runs' JSON files, kept in the repository so a study continues "
        "from a fresh checkout (experiments/records.py; default docs/results/runs/DATASET; "
        "--quick: none)",
    )
    p.add_argument(
        "--workers", type=int, default=StudyConfig.workers, help="torchrun processes per run"
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=StudyConfig.parallel,
        help="runs trained at once (torchrun jobs taking runs from one plan); on 2 cores two "
        "1-process runs train 1.36x the samples per second of one 2-process run",
    )
    p.add_argument(
        "--train-config",
        metavar="FILE",
        help="trainer settings (YAML/JSON of TrainConfig fields) over the amazon preset for "
        "every run, e.g. embedding_optimizer, lr, batch_size",
    )
    p.add_argument("--lr", type=float, help="dense Adam learning rate (default: the preset's)")
    p.add_argument("--device", default=StudyConfig.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick-steps", type=int, default=StudyConfig.quick_steps)
    p.add_argument(
        "--make-pretrain-epochs", type=int, help="MAKE stage 1 (default: MAKE's; --quick: 1)"
    )
    p.add_argument("--report-only", action="store_true", help="only rebuild the report and plots")
    a = p.parse_args(argv)
    quick = a.quick
    seeds = a.seeds or (1 if quick else 5)
    files = DATASETS[a.dataset]
    config = StudyConfig(
        dataset=a.dataset,
        quick=quick,
        seeds=seeds,
        sweep_seeds=min(a.sweep_seeds or (1 if quick else 3), seeds),
        out=a.out or ("docs/results/quick" if quick else "docs/results"),
        data_dir=a.data_dir or files.data_dir,
        raw_dir=a.raw_dir or files.raw_dir,
        runs_dir=a.runs_dir or f"{'runs/study-quick' if quick else 'runs/study'}/{a.dataset}",
        records_dir=a.records_dir or (None if quick else f"docs/results/runs/{a.dataset}"),
        workers=a.workers,
        parallel=a.parallel,
        train_config=a.train_config,
        lr=a.lr,
        device=a.device,
        quick_steps=a.quick_steps,
        make_pretrain_epochs=a.make_pretrain_epochs
        if a.make_pretrain_epochs is not None
        else (1 if quick else None),
        report_only=a.report_only,
    )
    try:
        batch_size = base_config(config).batch_size
        for model in [*TABLE2_MODELS, "dmf", *ABLATION_MODELS]:
            base = base_config(config, model)
            base.per_rank_batch_size(config.workers)  # the global batch splits over the workers
            base.per_rank_eval_batch_size(config.workers)
            if base.batch_size != batch_size:  # steps_per_epoch (spe) is computed once
                raise ConfigError(
                    f"the preset's entry for {model} changes batch_size; the study's steps "
                    "per epoch assume one batch size for every model"
                )
    except ConfigError as e:
        p.error(str(e))
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
def prep_args(config: StudyConfig) -> list[str]:
    """The `python -m data_prep` arguments that build the study's data."""
    raw = Path(config.raw_dir)
    return [
        "amazon",
        "--reviews", str(raw / config.files.reviews),
        "--meta", str(raw / config.files.meta),
        "--out", config.data_dir,
        "--valid-frac", str(config.valid_frac),
    ]  # fmt: skip


def prep_command(config: StudyConfig) -> list[str]:
    return [sys.executable, "-m", "data_prep", *prep_args(config)]


def data_is_current(config: StudyConfig) -> tuple[bool, str]:
    """Whether DATA_DIR holds an intact amazon folder built from these raw files with the
    settings `prep_args` gives (data_prep's own defaults for what the study leaves unset:
    read from its parser, not repeated here)."""
    from data_prep.__main__ import build_parser
    from data_prep.manifest import file_sha256, read_manifest

    manifest = read_manifest(Path(config.data_dir))
    if manifest is None:
        return False, "no intact manifest.json"
    if manifest.get("job") != "amazon":
        return False, f"built by job {manifest.get('job')!r}"
    for name in (config.files.reviews, config.files.meta):
        recorded = manifest.get("inputs", {}).get(name, {}).get("sha256")
        if recorded != file_sha256(Path(config.raw_dir) / name):
            return False, f"{name} changed"
    args = build_parser().parse_args(prep_args(config))
    protocol = manifest.get("protocol", {})
    expected = {"valid_frac": args.valid_frac, "seed": args.seed, "max_history": args.max_history}
    for key, value in expected.items():
        if protocol.get(key) != value:
            return False, f"protocol {key}={protocol.get(key)!r}, want {value!r}"
    if manifest.get("buckets", {}).get("num_buckets") != args.num_buckets:
        return False, f"not {args.num_buckets} buckets"
    if "history_times" not in manifest:  # DMAE reads them (data written before: zeros)
        return False, "no behaviour times (hist_ts_delta)"
    source = str(manifest.get("item_embeddings", {}).get("source", ""))
    if not source.startswith(f"title:{args.encoder}"):
        return False, f"item vectors are not {args.encoder} title embeddings"
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


def steps_per_epoch(data: Any, base: TrainConfig, workers: int) -> int:
    """Training steps per epoch: the length of the trainer's own reader for this batch."""
    reader = data.reader("train", base.per_rank_batch_size(workers), world_size=workers)
    return len(reader)


# ----------------------------------------------------------------------------- plans
@dataclass
class Run:
    """One trainer run of the study: its key (phase/name/seed<k>) and its full config."""

    key: str
    config: TrainConfig

    @property
    def out(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def model(self) -> str:
        return self.config.model

    def spec(self) -> dict[str, Any]:
        return {"key": self.key, "config": self.config.to_dict()}


def run_config(
    config: StudyConfig,
    model: str,
    seed: int,
    out: Path,
    *,
    spe: int,
    model_args: dict[str, Any] | None = None,
    checkpoint: bool = False,
) -> TrainConfig:
    """The model's base config (`base_config`) with what differs per run. Full mode keeps
    the preset's length (up to its epochs, validated every 1/evals_per_epoch epoch, early
    stopping, the best validation step restored): chosen per run on validation. --quick
    trains a fixed --quick-steps steps, validated once at the end (`checkpoint`: and saved
    there, for the case study)."""
    base = base_config(config, model)
    args = {**base.model_args, **(model_args or {})}
    if model == "make" and config.make_pretrain_epochs is not None:
        args.setdefault("pretrain_epochs", config.make_pretrain_epochs)
    changes: dict[str, Any] = {
        "model": model,
        "seed": seed,
        "output_dir": str(out),
        "model_args": args,
    }
    if config.quick:
        steps = config.quick_steps
        changes.update(epochs=max(1, math.ceil(steps / spe)), max_steps=steps, eval_every=steps)
        if checkpoint:
            changes["checkpoint_every"] = steps
    run = dataclasses.replace(base, **changes)
    # evals_per_epoch resolved as the trainer resolves and records it, so a finished run's
    # metrics.json matches the config asked for (popularity does not train: it records its
    # config unresolved)
    return run if model in UNTRAINED else run.with_eval_every(spe)


def _final(
    config: StudyConfig,
    phase: str,
    name: str,
    model: str,
    seed: int,
    spe: int,
    **model_args: Any,
) -> Run:
    folder = Path(config.runs_dir) / phase / name / f"seed{seed}"
    trainer = run_config(
        config, model, seed, folder, spe=spe, model_args=model_args,
        checkpoint=model in CASE_MODELS and seed == CASE_SEED,
    )  # fmt: skip
    return Run(f"{phase}/{name}/seed{seed}", trainer)


def alpha_name(alpha: float) -> str:
    return f"a{alpha:.1f}"


def gate_alpha(alpha: float) -> float:
    """The gate's initial a(median length); the logit needs 0 < a < 1."""
    return min(max(alpha, 0.05), 0.95)


def phase_a_runs(config: StudyConfig, spe: int, seeds: range) -> list[Run]:
    """Table II/IV models and the alpha sweep, seed-major (every model gets seed 0 first);
    within a seed in RUN_ORDER, DMF at the paper's alpha right after DTA, the rest of the
    sweep last."""
    out = []
    order = {m: i for i, m in enumerate(RUN_ORDER)}
    for seed in seeds:
        models = sorted([*TABLE2_MODELS, *ABLATION_MODELS], key=lambda m: order.get(m, 99))
        sweep = seed < config.sweep_seeds
        alphas = sorted(ALPHAS, key=lambda a: a != PAPER_ALPHA) if sweep else []
        for model in models:
            if seed and model in DETERMINISTIC:
                continue
            out.append(_final(config, "main", model, model, seed, spe))
            if model == "dta" and alphas:
                a = alphas.pop(0)
                out.append(_final(config, "alpha", alpha_name(a), "dmf", seed, spe, alpha=a))
        for a in alphas:
            out.append(_final(config, "alpha", alpha_name(a), "dmf", seed, spe, alpha=a))
    return out


def phase_b_runs(config: StudyConfig, spe: int, alpha: float, seeds: range) -> list[Run]:
    """The selected alpha's remaining seeds and the activity-gated DMF."""
    out = []
    for seed in seeds:
        if seed >= config.sweep_seeds:
            out.append(_final(config, "alpha", alpha_name(alpha), "dmf", seed, spe, alpha=alpha))
        out.append(
            _final(config, "main", "dmf_gate", "dmf", seed, spe,
                   alpha=gate_alpha(alpha), activity_gate=True)
        )  # fmt: skip
    return out


def launch(config: StudyConfig, runs: list[Run], name: str, checksum: str) -> int:
    """--parallel torchrun jobs of --workers processes over one plan of `runs`: each job
    takes the next run no job holds (experiments.worker claims it with a lock) and skips
    the finished ones, so the runs are trained once, in plan order, --parallel at a time."""
    from experiments.worker import run_status

    todo = [r for r in runs if run_status(r.out, r.config, checksum, config.workers) != "done"]
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
                "device": todo[0].config.device,
                "records_dir": config.records_dir,
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
    jobs = max(1, min(config.parallel, len(todo)))
    say(f"{name}: {len(todo)} of {len(runs)} runs to do, {jobs} at a time; {shlex.join(cmd)}")
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env) for _ in range(jobs)]
    codes = [proc.wait() for proc in procs]
    failed = max(codes, key=abs)
    if failed:
        say(f"{name}: torchrun exited with {codes} (failed runs keep error.rank*.txt)")
    return failed


# -------------------------------------------------------------------------- evidence
def data_evidence(data: Any, short_max: int) -> dict[str, Any]:
    """Facts about the prepared data that the report uses to explain differences; each
    threshold they use is recorded with them (`short_max`: the runs' short_history_max)."""
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
    last = np.asarray([np.mean(s[-LAST_K:]) if s else 0.0 for s in sims])
    maxsim = np.asarray([np.max(s) if s else 0.0 for s in sims])
    pos = t_labels > 0.5
    neg_counts = counts[t_items[~pos]]
    return {
        "users": data.vocab_sizes["user"] - 2,
        "items": num_items - 2,
        "counts": dict(data.manifest["counts"]),
        "short_max": short_max,
        "test_short_share": float(np.mean(lengths <= short_max)),
        "mean_history_test": float(np.mean(lengths)),
        "auc_popularity": auc(np.log1p(counts[t_items]), t_labels),
        "last_k": LAST_K,
        "auc_mean_sim_last": auc(last, t_labels),
        "auc_max_sim": auc(maxsim, t_labels),
        "rare_below": RARE_BELOW,
        "test_pos_rare": float(np.mean(counts[t_items[pos]] < RARE_BELOW)),
        "test_neg_rare": float(np.mean(neg_counts < RARE_BELOW)),
        "item_source": data.manifest["item_embeddings"].get("source", "?"),
        "item_dim": data.manifest["item_embeddings"].get("dim"),
        "checksum": data.checksum,
    }


# ------------------------------------------------------------------------------ main
def study_command(state: State, argv: list[str]) -> str:
    """The command line that ran the study (the latest invocation that trained)."""
    training = [i["argv"] for i in state.data["invocations"] if "--report-only" not in i["argv"]]
    return ("python -m experiments.study " + shlex.join(training[-1] if training else argv)).strip()


def case_study(runs_dir: Path, meta: Path) -> dict[str, Any] | None:
    """The attention case study of the CASE_SEED TA and DTA runs (cached by their test
    AUCs in runs_dir/case_study.json); None without their checkpoints (the best validation
    step's weights, or the last checkpoint of a run that kept no best); `meta`: the
    category's metadata file (item titles)."""
    from pipeline.checkpoint import best_or_latest_checkpoint

    case_runs = [runs_dir / "main" / m / f"seed{CASE_SEED}" for m in CASE_MODELS]
    if not all((r / "metrics.json").is_file() for r in case_runs):
        return None
    cache = runs_dir / "case_study.json"  # also restored from the records, without weights
    stamp = [json.loads((r / "metrics.json").read_text())["test"]["auc"] for r in case_runs]
    if cache.is_file() and json.loads(cache.read_text()).get("stamp") == stamp:
        return json.loads(cache.read_text())["case"]
    if not all(best_or_latest_checkpoint(r) for r in case_runs):
        return None
    from experiments.case_study import run_case_study

    models = " and ".join(LABELS[m] for m in CASE_MODELS)
    say(f"case study: {models} seed {CASE_SEED} checkpoints -> unsharded models")
    case = dataclasses.asdict(run_case_study(case_runs[0], case_runs[1], meta))
    case["models"] = f"{models}, seed {CASE_SEED}"
    cache.write_text(json.dumps({"stamp": stamp, "case": case}, indent=1))
    return case


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_args(argv)
    os.chdir(ROOT)
    runs_dir = Path(config.runs_dir)
    if config.records_dir:
        restored = restore_records(Path(config.records_dir), runs_dir)
        say(f"records: {len(restored)} files restored from {config.records_dir} into {runs_dir}")
    state = State(runs_dir, argv)
    say(f"config: {dataclasses.asdict(config)}")

    t = time.perf_counter()
    if not config.report_only:
        prepare(config)
    state.phase("prepare", time.perf_counter() - t)

    from experiments.report import write_report
    from experiments.runs import collect, select_alpha
    from pipeline.data import PreparedData

    base = base_config(config)
    say(f"base trainer config: {json.dumps(base.to_dict())}")
    data = PreparedData(config.data_dir)
    checksum = data.checksum
    spe = steps_per_epoch(data, base, config.workers)
    say(f"data {config.data_dir}: {data.manifest['counts']}, {spe} steps per epoch")
    selection: dict[str, Any] = {}

    # -- phase A: Table II/IV models and the alpha sweep, in two passes so every model
    #    has the sweep seeds before any model gets more
    t = time.perf_counter()
    first = range(min(config.sweep_seeds, config.seeds))
    rest = range(config.sweep_seeds, config.seeds)
    if not config.report_only:
        launch(config, phase_a_runs(config, spe, first), "phase-a", checksum)
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
        launch(config, phase_b_runs(config, spe, alpha, first), "phase-b", checksum)
        if rest:
            more = phase_a_runs(config, spe, rest) + phase_b_runs(config, spe, alpha, rest)
            launch(config, more, "phase-c", checksum)
    state.phase("training", time.perf_counter() - t)

    # -- case study, evidence, report
    t = time.perf_counter()
    results = collect(runs_dir)
    if results["alpha"].get(alpha):  # the main DMF row: the selected alpha's runs
        results["runs"]["dmf"] = results["alpha"][alpha]
    discussion_file = Path(config.out) / f"{config.files.report}.discussion.md"
    results.update(
        selection=selection,
        alpha_seeds=alpha_seeds,
        manifest=data.manifest,
        data_facts=data_evidence(data, base.short_history_max),
        case=case_study(runs_dir, Path(config.raw_dir) / config.files.meta),
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
    state.phase("report", time.perf_counter() - t)
    timing = state.timing()
    timing["note"] = (
        f"Summed over {timing['invocations']} invocation(s) of the command (the study resumes "
        "where it stopped; `--report-only` invocations only rebuild this report); the "
        "'prepare' phase is near zero when the prepared folder was already current."
    )
    results["timing"] = timing
    path = write_report(results, Path(config.out), config.files.report, config.files.title)
    state.save()
    if config.records_dir:
        written = record_study(runs_dir, Path(config.records_dir))
        say(f"records: {len(written)} files written to {config.records_dir} (git add it)")
    say(f"report: {path} (study wall time so far {timing['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
