"""Hyper-parameter search on the VALIDATION split, one model at a time (docs/tuning.md):

    python -m experiments.tune --data DIR --model NAME [--trials 30]
        [--storage journal:docs/results/tune/DATA/NAME.journal] [--train-fraction 1.0]
        [--workers 2]
        [--max-epochs 10] [--evals-per-epoch 2] [--patience 4] [--preset amazon] ...

Optuna drives it: a seeded TPE sampler (multivariate, grouped for the conditional
parameters; reseeded from --sampler-seed and the number of trials so far, so a resumed
search draws what an uninterrupted one would have), a pruner (median by default) fed
the validation AUC of every evaluation through the trainer's `on_eval` hook, and its
storage, so a killed search continues where it stopped. The default storage is Optuna's
journal (`JournalStorage` over `JournalFileBackend`: an append-only text log of every
trial, its parameters and intermediate values) at docs/results/tune/DATA/NAME.journal,
inside the repository, so a search continues from a fresh checkout on another machine
too (`git add` it; any Optuna storage URL, e.g. sqlite:///FILE, works instead): trials left RUNNING by
the dead process are marked FAIL and their parameters queued again, and a second
invocation with more --trials adds trials to the same search.

Every trial is a real `pipeline.train.train(config)` in its own process
(`python -m experiments.tune --run-trial SPEC`, under torchrun when --workers > 1), on the
tuning folder of the data (experiments/tune_data.py: no test split at all, optionally a
deterministic user subsample, --train-fraction) with `evaluate_test` off: no trial can
read the test split, and the metrics it writes hold no test figure. A trial trains up to
--max-epochs, evaluates the valid split every 1/--evals-per-epoch epoch, stops early after
--patience evaluations without a better AUC, and its value is its best validation AUC.

The space (experiments/tune_space.py): the family's shared training settings (dense and
embedding learning rates, embedding optimizer, embedding L2, weight decay, dropout, user
embedding on/off, batch size) and the model's own knobs. The budget is the same for
every model: --trials finished (complete or pruned) trials, the same schedule, pruner and
data. Outputs in --out (runs/tune/NAME):

    trials.md, trials.json   every trial: number, state, value, parameters, best step
    best.json                the best trial as a --config file (`python -m pipeline.train
                             --config best.json` trains it on the full data, early stopping
                             on validation, test metrics from the best validation step)
    best_entry.json          the same settings as a preset entry: paste it into
                             PRESETS[preset]["models"][NAME] (pipeline/config.py), and
                             `--preset amazon --model NAME` trains NAME with them
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.tune_data import tuning_folder
from experiments.tune_space import describe_space, family_of, settings_of, suggest

ROOT = Path(__file__).resolve().parents[1]
STUDY_KEYS = (  # what must match for a stored search to be continued
    "model", "preset", "base_config", "data_checksum", "train_fraction", "subset_seed",
    "workers", "max_epochs", "evals_per_epoch", "patience", "seed", "device", "pruner",
    "pruner_startup", "pruner_warmup", "startup_trials", "sampler_seed", "space",
)  # fmt: skip


@dataclass
class TuneConfig:
    data: str
    model: str
    trials: int = 30
    storage: str | None = None  # default journal:docs/results/tune/<data folder>/<model>.journal
    study_name: str | None = None  # default: the model
    out: str | None = None  # default runs/tune/<model>
    preset: str = "amazon"
    base_config: str | None = None  # a TrainConfig file layered over the preset
    train_fraction: float = 1.0
    subset_seed: int = 0
    subset_dir: str = "runs/tune/data"
    workers: int = 2
    threads: int | None = None  # per worker; default cores // workers
    # Up to 10 epochs, validated every half epoch, stopped after 2 epochs without a better
    # AUC: measured on Electronics, the outside recipe's DNN peaks on validation in its
    # 6th epoch (docs/results/tuning/amazon-electronics-dnn.md), so a 3-epoch cap cut the
    # ID models short.
    max_epochs: int = 10
    evals_per_epoch: int = 2
    patience: int = 4
    seed: int = 0  # the trainer's seed, the same for every trial
    sampler_seed: int = 0
    startup_trials: int = 8  # TPE's random start
    pruner: str = "median"
    pruner_startup: int = 5  # trials finished before pruning starts
    # Evaluations of a trial before it can be pruned: one epoch. Pruning after the first
    # quarter epoch (the first search) kept the fast starters, whose full-data test AUC
    # was below an untuned 3-epoch run (docs/results/tuning).
    pruner_warmup: int = 2
    enqueue: str | None = None  # JSON list of parameter dicts tried first
    device: str = "cpu"
    trial_timeout: float | None = None  # seconds

    def __post_init__(self) -> None:
        self.out = self.out or f"runs/tune/{self.model}"
        self.storage = (
            self.storage or f"journal:docs/results/tune/{Path(self.data).name}/{self.model}.journal"
        )
        self.study_name = self.study_name or self.model


def parse_args(argv: list[str] | None = None) -> TuneConfig | str:
    p = argparse.ArgumentParser(
        prog="python -m experiments.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-trial", metavar="SPEC", help=argparse.SUPPRESS)  # a trial's worker
    p.add_argument("--data", help="prepared data folder with a valid split")
    p.add_argument("--model", help="model of the zoo to tune")
    d = TuneConfig("", "")
    p.add_argument("--trials", type=int, default=d.trials, help="finished trials (budget)")
    p.add_argument(
        "--storage",
        help="journal:FILE (Optuna's journal file; default "
        "journal:docs/results/tune/DATA/NAME.journal, DATA the data folder's name) or an "
        "Optuna storage URL (sqlite:///FILE)",
    )
    p.add_argument("--study-name", help="study name in the storage (default: the model)")
    p.add_argument("--out", help="trials table and best settings (default runs/tune/NAME)")
    p.add_argument("--preset", default=d.preset, help="trainer preset under every trial")
    p.add_argument("--base-config", metavar="FILE", help="TrainConfig file over the preset")
    p.add_argument(
        "--train-fraction",
        type=float,
        default=d.train_fraction,
        help="keep this share of the users (train and valid rows), by a fixed hash of the id",
    )
    p.add_argument("--subset-seed", type=int, default=d.subset_seed)
    p.add_argument("--subset-dir", default=d.subset_dir, help="where tuning folders are built")
    p.add_argument("--workers", type=int, default=d.workers, help="processes per trial")
    p.add_argument("--threads", type=int, help="intra-op threads per worker (cores / workers)")
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--evals-per-epoch", type=int, default=d.evals_per_epoch)
    p.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience")
    p.add_argument("--seed", type=int, default=d.seed, help="the trainer's seed (every trial)")
    p.add_argument("--sampler-seed", type=int, default=d.sampler_seed)
    p.add_argument("--startup-trials", type=int, default=d.startup_trials, help="TPE random start")
    p.add_argument("--pruner", choices=("median", "halving", "none"), default=d.pruner)
    p.add_argument("--pruner-startup", type=int, default=d.pruner_startup)
    p.add_argument("--pruner-warmup", type=int, default=d.pruner_warmup)
    p.add_argument("--enqueue", metavar="FILE", help="JSON list of parameter dicts tried first")
    p.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    p.add_argument("--trial-timeout", type=float, help="seconds; a trial past it FAILs")
    a = p.parse_args(argv)
    if a.run_trial:
        return a.run_trial
    if not a.data or not a.model:
        p.error("--data and --model are required")
    try:
        family_of(a.model)
    except KeyError as e:
        p.error(str(e))
    if a.trials < 1 or a.workers < 1 or a.max_epochs < 1 or a.evals_per_epoch < 1:
        p.error("--trials, --workers, --max-epochs and --evals-per-epoch must be positive")
    values = {k: v for k, v in vars(a).items() if k != "run_trial"}
    return TuneConfig(**values)


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [tune] {message}", flush=True)


# ------------------------------------------------------------------------ the trials
def steps_per_epoch(rows: int, global_batch: int, workers: int) -> int:
    """The trainer's steps per epoch (pipeline.data.ShardReader.__len__)."""
    per_rank = global_batch // workers
    longest = math.ceil(rows / workers)
    return math.ceil(longest / per_rank) if longest else 0


def base_settings(tc: TuneConfig) -> dict[str, Any]:
    """The layers under every trial: defaults < the preset's shared settings < file."""
    from pipeline.config import TrainConfig, load_config_file, merge, preset_layers

    layers = [TrainConfig().to_dict(), preset_layers(tc.preset, tc.model)[0]]
    if tc.base_config:
        layers.append(load_config_file(tc.base_config))
    return merge(*layers)


def schedule(tc: TuneConfig, batch_size: int, train_rows: int) -> dict[str, Any]:
    """The training length settings of the budget for a batch size and a training split."""
    spe = steps_per_epoch(train_rows, batch_size, tc.workers)
    return {
        "epochs": tc.max_epochs,
        "max_steps": None,
        "eval_every": max(1, spe // tc.evals_per_epoch),
        "early_stopping_patience": tc.patience,
    }


def trial_config(
    tc: TuneConfig, data_dir: Path, train_rows: int, settings: dict[str, Any], out: Path
) -> Any:
    """The TrainConfig of one trial: base < the budget's fixed settings < the trial's."""
    from pipeline.config import TrainConfig, merge

    merged = merge(base_settings(tc), settings)
    fixed = {
        "model": tc.model,
        "preset": tc.preset,
        "data": str(data_dir),
        "output_dir": str(out),
        "seed": tc.seed,
        "device": tc.device,
        "restore_best": False,  # the value is the best validation AUC; no test to restore for
        "evaluate_test": False,  # no trial reads the test split
        "checkpoint_every": None,
        "resume": False,
        **schedule(tc, merged["batch_size"], train_rows),
    }
    return TrainConfig.from_dict(merge(merged, fixed), f"trial settings of {out}")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the trial process gets SIGTERM if the tuner dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def trial_command(tc: TuneConfig, spec: Path) -> list[str]:
    if tc.workers == 1:
        return [sys.executable, "-m", "experiments.tune", "--run-trial", str(spec)]
    torchrun = Path(sys.executable).parent / "torchrun"
    return [
        str(torchrun), "--nproc-per-node", str(tc.workers), "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "localhost:0", "-m", "experiments.tune", "--run-trial", str(spec),
    ]  # fmt: skip


def run_trial(tc: TuneConfig, trial: Any, config: Any) -> tuple[str, float | None, dict]:
    """Train one trial in its own process; returns (state, value, user attrs)."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    spec = out / "trial.json"
    spec.write_text(
        json.dumps(
            {
                "storage": tc.storage,
                "study_name": tc.study_name,
                "trial_id": trial._trial_id,
                "pruner": pruner_settings(tc),
                "eval_every": config.eval_every,
                "config": config.to_dict(),
            },
            indent=2,
        )
    )
    threads = tc.threads or max(1, (os.cpu_count() or 2) // tc.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # fmt: skip
        env.pop(key, None)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(
            trial_command(tc, spec), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            proc.wait(timeout=tc.trial_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    wall = time.perf_counter() - start
    attrs: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "output_dir": str(out),
        "rc": proc.returncode,
    }
    metrics_path = out / "metrics.json"
    if proc.returncode != 0 or not metrics_path.is_file():
        tail = (out / "log.txt").read_text(errors="replace").splitlines()[-5:]
        attrs["error"] = " | ".join(tail)[-500:]
        return "FAIL", None, attrs
    metrics = json.loads(metrics_path.read_text())
    if "test" in metrics:  # the trainer was told not to: fail loudly, never select on it
        raise RuntimeError(f"{metrics_path}: a trial evaluated the test split")
    spe = steps_per_epoch(_train_rows(config), config.batch_size, tc.workers)
    best_step = metrics.get("best_step")
    attrs.update(
        best_step=best_step,
        best_epochs=round(best_step / spe, 3) if best_step and spe else None,
        steps=metrics["steps"],
        evaluations=len(metrics.get("valid_history", [])),
        stopped_by=metrics.get("stopped_by"),
        train_samples_per_s=round(metrics.get("train_samples_per_s", 0.0)),
        eval_every=config.eval_every,
        steps_per_epoch=spe,
    )
    value = metrics.get("best_valid_auc")
    if metrics.get("stopped_by") == "on_eval":
        return "PRUNED", None, attrs
    if value is None or not math.isfinite(value):
        return "FAIL", None, attrs
    return "COMPLETE", float(value), attrs


def _train_rows(config: Any) -> int:
    manifest = json.loads((Path(config.data) / "manifest.json").read_text())
    return int(manifest["counts"]["train"])


def run_trial_worker(spec_path: str) -> int:
    """One trial's training process (every rank): pipeline.train.train with the pruning
    hook; rank 0 reports each validation AUC to the trial and asks the pruner."""
    import torch.distributed as dist

    from pipeline.config import TrainConfig
    from pipeline.train import train

    spec = json.loads(Path(spec_path).read_text())
    config = TrainConfig.from_dict(spec["config"], spec_path)
    trial = None
    if int(os.environ.get("RANK", "0")) == 0:
        import optuna

        study = optuna.load_study(
            study_name=spec["study_name"],
            storage=open_storage(spec["storage"]),
            pruner=build_pruner(**spec["pruner"]),
        )
        trial = optuna.Trial(study, spec["trial_id"])
    every = int(spec["eval_every"])

    def on_eval(step: int, metrics: dict[str, Any]) -> bool:
        if trial is None:
            return False
        trial.report(float(metrics["auc"]), math.ceil(step / every))
        return trial.should_prune()

    try:
        train(config, on_eval=on_eval)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------- the study
def pruner_settings(tc: TuneConfig) -> dict[str, Any]:
    return {"kind": tc.pruner, "startup": tc.pruner_startup, "warmup": tc.pruner_warmup}


def build_pruner(kind: str, startup: int, warmup: int) -> Any:
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup + 1))
    return optuna.pruners.NopPruner()


def make_sampler(tc: TuneConfig, trials_so_far: int) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=tc.sampler_seed + trials_so_far,
            n_startup_trials=tc.startup_trials,
            multivariate=True,
            group=True,
        )


def study_attrs(tc: TuneConfig, data_checksum: str) -> dict[str, Any]:
    space = describe_space(tc.model, tc.device)
    values = {
        **{k: getattr(tc, k) for k in STUDY_KEYS if hasattr(tc, k)},
        "data_checksum": data_checksum,
        "space": hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:16],
    }
    return {k: values[k] for k in STUDY_KEYS}


JOURNAL = "journal:"


def open_storage(url: str) -> Any:
    """`journal:FILE` -> Optuna's JournalStorage on that file (its folder created); any other
    URL is Optuna's (sqlite:///FILE: its folder created)."""
    if url.startswith(JOURNAL):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return url


def open_study(tc: TuneConfig, attrs: dict[str, Any]) -> Any:
    """The study in the storage (created on first use); its budget settings must match."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=tc.study_name,
        storage=open_storage(tc.storage),
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(tc, 0),
        pruner=build_pruner(**pruner_settings(tc)),
    )
    stored = study.user_attrs.get("budget")
    if stored is None:
        study.set_user_attr("budget", attrs)
    elif stored != attrs:
        diff = {k: (stored.get(k), attrs[k]) for k in attrs if stored.get(k) != attrs[k]}
        raise SystemExit(
            f"{tc.storage} study {tc.study_name!r} was run with other settings {diff} "
            "(stored, asked); use another --storage or --study-name"
        )
    return study


def recover(study: Any) -> int:
    """Trials a killed tuner left RUNNING: FAIL them and queue their parameters again."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return len(stale)


def finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def search(tc: TuneConfig) -> dict[str, Any]:
    """Run (or continue) the search until `tc.trials` trials have finished; write the
    outputs after every trial; returns the best entry."""
    from optuna.trial import TrialState

    from data_prep.manifest import load_manifest

    source = load_manifest(Path(tc.data))
    data_dir, subset = tuning_folder(
        Path(tc.data), Path(tc.subset_dir), tc.train_fraction, tc.subset_seed
    )
    train_rows = int(subset["samples"]["train"])
    study = open_study(tc, study_attrs(tc, source.get("checksum", "")))
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    if recovered := recover(study):
        say(f"{recovered} trial(s) left running by a stopped search: failed and queued again")
    if tc.enqueue:
        for params in json.loads(Path(tc.enqueue).read_text()):
            study.enqueue_trial(params, skip_if_exists=True)
    say(
        f"{tc.model}: {finished(study)}/{tc.trials} trials done; data {data_dir} "
        f"({subset['samples']} samples, train fraction {tc.train_fraction:g})"
    )
    failures = 0
    while finished(study) < tc.trials:
        study.sampler = make_sampler(tc, len(study.trials))
        trial = study.ask()
        settings = suggest(trial, tc.model, tc.device)
        config = trial_config(tc, data_dir, train_rows, settings, out / f"trial-{trial.number:04d}")
        say(f"trial {trial.number}: {json.dumps(trial.params, default=str)}")
        state, value, attrs = run_trial(tc, trial, config)
        for key, item in attrs.items():
            trial.set_user_attr(key, item)
        study.tell(trial, value, TrialState[state])
        shown = f"{value:.4f}" if value is not None else "-"
        say(f"trial {trial.number}: {state} valid AUC {shown} ({attrs['wall_s']:.0f} s)")
        failures = failures + 1 if state == "FAIL" else 0
        write_outputs(tc, study, subset)
        if failures >= 3:
            raise SystemExit(f"3 trials in a row failed; see {attrs['output_dir']}/log.txt")
    entry = write_outputs(tc, study, subset)
    try:
        best = study.best_trial
        say(f"best: trial {best.number}, valid AUC {best.value:.4f}; {out / 'best.json'}")
    except ValueError:
        say("no trial completed")
    return entry


# ---------------------------------------------------------------------------- output
def best_entry(tc: TuneConfig, trial: Any) -> dict[str, Any]:
    """The best trial's settings as a preset entry for the FULL data: the searched
    settings, the budget's training length (early stopping on validation, eval_every for
    the full training split) and restore_best (test metrics of the best validation step)."""
    from data_prep.manifest import load_manifest
    from pipeline.config import merge

    settings = settings_of(tc.model, trial.params, tc.device)
    batch = merge(base_settings(tc), settings)["batch_size"]
    rows = int(load_manifest(Path(tc.data))["counts"]["train"])
    entry = {k: v for k, v in settings.items() if k != "model_args"}
    entry.update(schedule(tc, batch, rows), restore_best=True)
    entry.pop("max_steps", None)
    entry["model_args"] = settings["model_args"]
    return entry


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_outputs(tc: TuneConfig, study: Any, subset: dict[str, Any]) -> dict[str, Any]:
    """trials.json, trials.md and (when a trial completed) best.json, best_entry.json."""
    out = Path(tc.out)
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "settings": settings_of(tc.model, t.params, tc.device),
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "user_attrs": t.user_attrs,
                "duration_s": t.duration.total_seconds() if t.duration else None,
            }
        )
    try:
        best = study.best_trial
    except ValueError:
        best = None
    entry = best_entry(tc, best) if best is not None else {}
    summary = {
        "model": tc.model,
        "family": family_of(tc.model),
        "budget": study.user_attrs.get("budget"),
        "subset": subset,
        "space": describe_space(tc.model, tc.device),
        "best_trial": best.number if best is not None else None,
        "best_valid_auc": best.value if best is not None else None,
        "best_entry": entry,
        "trials": trials,
    }
    (out / "trials.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if best is not None:
        config_file = {"preset": tc.preset, "model": tc.model, "data": tc.data, **entry}
        (out / "best.json").write_text(json.dumps(config_file, indent=2) + "\n")
        (out / "best_entry.json").write_text(
            json.dumps({"models": {tc.model: entry}}, indent=2) + "\n"
        )
    (out / "trials.md").write_text(trials_markdown(tc, summary))
    return entry


def trials_markdown(tc: TuneConfig, summary: dict[str, Any]) -> str:
    """The report's section for one model: budget, space, every trial, the best entry."""
    subset = summary["subset"]
    names = [r["parameter"] for r in summary["space"]]
    lines = [
        f"# Tuning {tc.model} ({summary['family']} family), validation split only",
        "",
        f"Command: `python -m experiments.tune --data {tc.data} --model {tc.model} "
        f"--trials {tc.trials} --train-fraction {tc.train_fraction:g} --workers {tc.workers} "
        f"--max-epochs {tc.max_epochs} --evals-per-epoch {tc.evals_per_epoch} "
        f"--patience {tc.patience} --preset {tc.preset}`",
        "",
        f"Budget (the same for every model): {tc.trials} finished trials (complete or "
        f"pruned); each trains up to {tc.max_epochs} epochs, validates every 1/"
        f"{tc.evals_per_epoch} epoch, stops after {tc.patience} evaluations without a better "
        f"AUC; value = best validation AUC; seed {tc.seed}; TPE (seed {tc.sampler_seed}, "
        f"{tc.startup_trials} random start trials), pruner {tc.pruner} (from trial "
        f"{tc.pruner_startup}, after {tc.pruner_warmup} evaluation(s)); {tc.workers} "
        f"worker(s). Data: {subset['samples']['train']:,} training and "
        f"{subset['samples']['valid']:,} validation samples, the users kept by train fraction "
        f"{tc.train_fraction:g} (of {subset['source_samples']['train']:,} and "
        f"{subset['source_samples']['valid']:,}); the tuning folder has no test split.",
        "",
        "## Search space",
        "",
        "| parameter | setting | range | space |",
        "| --- | --- | --- | --- |",
        *[
            f"| {r['parameter']} | {r['setting']} | {r['range']} | {r['space']} |"
            for r in summary["space"]
        ],  # fmt: skip
        "",
        "## Trials",
        "",
        "| # | state | valid AUC | best step (epochs) | evals | s | " + " | ".join(names) + " |",
        "| ---: | --- | ---: | ---: | ---: | ---: | " + " | ".join("---" for _ in names) + " |",
    ]
    for t in summary["trials"]:
        a = t["user_attrs"]
        where = f"{a.get('best_step')} ({a.get('best_epochs')})" if a.get("best_step") else ""
        cells = [
            str(t["number"]), t["state"], _cell(t["value"]), where,
            _cell(a.get("evaluations")), _cell(a.get("wall_s")),
            *[_cell(t["params"].get(n)) for n in names],
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Best entry", ""]
    if summary["best_entry"]:
        lines += [
            f"Trial {summary['best_trial']}, valid AUC {summary['best_valid_auc']:.4f}. As a "
            f"preset entry (`PRESETS['{tc.preset}']['models']['{tc.model}']`):",
            "",
            "```json",
            json.dumps(summary["best_entry"], indent=2),
            "```",
        ]
    else:
        lines.append("No trial completed yet.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parsed = parse_args(argv)
    if isinstance(parsed, str):
        return run_trial_worker(parsed)
    search(parsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
