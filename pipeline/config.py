"""Every trainer setting, defined once: `TrainConfig`, its presets and the CLI made from it.

A run's settings are resolved in layers, each overriding only the keys it names:

    TrainConfig defaults  <  PRESETS[preset]  <  PRESETS[preset]["models"][model]
                          <  --config FILE  <  flags typed on the command line

The preset is chosen by `--preset`, else by the file's `preset` key, else "default". A
preset may hold per-model entries under its `models` key (settings tuned for one model,
e.g. by `python -m experiments.tune`); the entry of the run's model (chosen by `--model`,
else the file's `model`, else the default) applies over the preset's shared settings.
`model_args` merges key by key across layers (a layer's `hidden_dim` replaces only
`hidden_dim`); every other setting is replaced whole. A flag the user did not type
never overrides anything: the parser has no defaults of its own.

Batch sizes are global: `batch_size` and `eval_batch_size` count the samples of one step
over all ranks; each rank reads `batch_size / world_size` (see `per_rank`), so a config
means the same run on 1 or 8 workers.

API (used by `pipeline.train` and by jobs that drive the trainer, such as the study):
`resolve(argv) -> TrainConfig`, `load_config_file(path) -> dict`, `save_config(config, path)`,
`TrainConfig.to_dict()` / `TrainConfig.from_dict(d)`, `preset_layers(preset, model)` (the
preset's shared settings and its entry for the model, as layers for `merge`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.zoo import MODELS
from pipeline.sharding import EMBEDDING_OPTIMIZER_NAMES, SHARDING_TYPES


class ConfigError(ValueError):
    """A setting that cannot be used: names the setting and where it came from."""


# Settings bundles. Each names only what it changes from the TrainConfig defaults;
# model_args entries merge into the default model_args key by key. A bundle's optional
# `models` key holds per-model entries ({model name: settings}), applied over the bundle
# for that model only (see `preset_layers`); `models` is not a setting itself.
PRESETS: dict[str, dict[str, Any]] = {
    # The TrainConfig defaults: sized for the embedded synthetic dataset (about two
    # minutes on 2 CPU workers).
    "default": {},
    # The Amazon recipe chosen on the validation split (docs/tuning.md, "The recipe"):
    # FuxiCTR's published DNN settings for Amazon Electronics (ID embeddings 64, MLP
    # 1024x512x256, Adam 5e-4 for the dense part and the tables, L2 0.005 on every table
    # row every step, global batch 1024, no user-ID embedding), trained up to 20 epochs,
    # validated every half epoch, stopped after 2 epochs without a better validation AUC,
    # the best step's weights restored for the test metrics. Per-model entries hold each
    # model's own settings where validation chose other than the model's default.
    "amazon": {
        "batch_size": 1024,
        "lr": 5e-4,
        "embedding_optimizer": "adam_dense",
        "embedding_lr": 5e-4,
        "embedding_weight_decay": 0.005,
        "epochs": 20,
        "evals_per_epoch": 2,
        "early_stopping_patience": 4,
        "restore_best": True,
        "model_args": {
            "embedding_dim": 64,
            "hidden_dim": 64,
            "num_heads": 4,
            "mlp_dims": [1024, 512, 256],
            "use_user_embedding": False,
        },
        # The DNN: sum pooling (mean collapses under the whole-table decay) and a lighter
        # decay, 0.001 (valid AUC 0.7809 against 0.7779 at 0.005; on Toys 0.005 collapses).
        "models": {"dnn": {"embedding_weight_decay": 0.001, "model_args": {"pooling": "sum"}}},
    },
    # The paper's Amazon Electronics settings (Sec. V-D): ID embeddings 32-d, 4 heads,
    # hidden 32, MLP 80x40x1, global batch 128, Adam.
    "amazon-paper": {
        "batch_size": 128,
        "lr": 1e-3,
        "model_args": {"embedding_dim": 32, "hidden_dim": 32, "num_heads": 4, "mlp_dims": [80, 40]},
    },
    # The paper's industrial settings: hidden 128, MLP 128x64x1, global batch 1024; M = 35
    # buckets and history 100 are data-prep settings (`--num-buckets 35 --max-history 100`).
    "industrial": {
        "batch_size": 1024,
        "lr": 1e-3,
        "epochs": 1,
        "model_args": {
            "embedding_dim": 32,
            "hidden_dim": 128,
            "num_heads": 4,
            "mlp_dims": [128, 64],
        },
    },
}

MODEL_CHOICES = (*sorted(MODELS), "popularity")
EMBEDDING_OPTIMIZER_CHOICES = ("auto", *EMBEDDING_OPTIMIZER_NAMES)
DEVICE_CHOICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("constant", "cosine", "linear")


def setting(default: Any = dataclasses.MISSING, *, help: str, **meta: Any) -> Any:
    """A TrainConfig field with its help text (and optionally `choices`, `flag`, `metavar`)."""
    metadata = {"help": help, **meta}
    if isinstance(default, (dict, list)):
        value = default
        return field(default_factory=lambda: json.loads(json.dumps(value)), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every trainer setting (`python -m pipeline.train --help` lists them with their help)."""

    model: str = setting("dmf", help="model of the zoo (docs/models.md), or the popularity baseline", choices=MODEL_CHOICES)  # fmt: skip
    data: str | None = setting(
        None,
        help="prepared data folder (none: the embedded dataset data/default, built if missing)",
        metavar="DIR",
    )
    output_dir: str = setting(
        "runs/latest", help="metrics.json, TensorBoard tb/ and checkpoints/ go here", metavar="DIR"
    )
    preset: str = setting(
        "default",
        help="settings bundle applied over the defaults, then its entry for the model if it "
        "has one (see PRESETS in pipeline/config.py)",
        choices=tuple(PRESETS),
    )
    epochs: int = setting(2, help="passes over the training split")
    max_steps: int | None = setting(None, help="stop after this many steps (over all epochs)")
    seed: int = setting(0, help="seeds model init, data order (by seed and epoch) and sampling")
    batch_size: int = setting(
        512, help="GLOBAL training batch (all ranks); each rank reads batch_size / world_size"
    )
    eval_batch_size: int = setting(
        2048,
        help="GLOBAL evaluation batch (all ranks); each rank reads eval_batch_size / world_size",
    )
    reader_workers: int = setting(
        0,
        help="DataLoader worker processes per rank reading batches ahead of the step "
        "(0: read in the training process; the batches are the same for any number)",
    )
    lr: float = setting(2e-3, help="dense (Adam) learning rate", metavar="LR")
    lr_schedule: str = setting(
        "constant", help="dense learning-rate schedule after the warmup", choices=LR_SCHEDULES
    )
    warmup_steps: int = setting(0, help="linear learning-rate warmup steps")
    lr_plateau_factor: float | None = setting(
        None,
        help="on a validation without a better AUC, multiply every learning rate (dense and "
        "embedding) by this, down to 1e-6 (reduce on plateau; FuxiCTR's default is 0.1)",
        metavar="F",
    )
    grad_clip: float | None = setting(
        None, help="clip the dense gradient norm to this", metavar="NORM"
    )
    weight_decay: float = setting(
        0.0,
        help="decoupled (AdamW) weight decay of the dense weight matrices (biases, norms and "
        "embedding tables excluded; embeddings: see embedding_l2)",
        metavar="WD",
    )
    embedding_optimizer: str = setting(
        "auto",
        help="embedding optimizer: fused TorchRec (sharded tables) adam (GPU only), adagrad, "
        "rowwise_adagrad, sgd; or Adam on CPU, where fbgemm has no fused Adam: adam_dense "
        "(unsharded replicated tables, dense gradients, torch Adam) or adam_sparse (the same "
        "with sparse gradients, torch SparseAdam: only touched rows); auto = adam on GPU, "
        "adagrad on CPU",
        choices=EMBEDDING_OPTIMIZER_CHOICES,
    )
    embedding_lr: float | None = setting(
        None,
        help="embedding learning rate (none: lr for the Adam ones, 0.05 for the others)",
        metavar="LR",
    )
    embedding_l2: float = setting(
        0.0,
        help="L2 penalty on the embedding rows a batch looks up: this x the batch mean of "
        "each sample's sum of squared row norms (user row only when the head uses it), "
        "added to the loss",
        metavar="LAMBDA",
    )
    embedding_weight_decay: float = setting(
        0.0,
        help="L2 on every row of the embedding tables at every step (adam_dense only): torch "
        "Adam's coupled weight_decay, the gradient of WD/2 x the whole tables' squared norm, "
        "as FuxiCTR's embedding_regularizer",
        metavar="WD",
    )
    sharding_type: str = setting(
        "auto",
        help="force one sharding type for every table, or let the planner choose",
        choices=SHARDING_TYPES,
    )
    eval_every: int | None = setting(
        None, help="evaluate on the valid split every N steps (never on test)"
    )
    evals_per_epoch: int | None = setting(
        None,
        help="with eval_every unset: evaluate on the valid split N times an epoch (eval_every = "
        "steps per epoch // N, so a preset validates alike on any dataset size)",
        metavar="N",
    )
    checkpoint_every: int | None = setting(None, help="checkpoint every N steps and at the end")
    resume: bool = setting(False, help="continue from OUTPUT_DIR/checkpoints' latest if present")
    early_stopping_patience: int | None = setting(
        None, help="stop after N evaluations without a better validation AUC"
    )
    restore_best: bool = setting(
        True,
        help="when validation runs (a valid split and eval_every): keep the weights of the "
        "best validation step (OUTPUT_DIR/checkpoints/best) and evaluate the test split "
        "with them; metrics.json records best_step",
    )
    evaluate_test: bool = setting(
        True,
        help="evaluate the test split at the end; off (tuning) the test split is never read "
        "and metrics.json holds validation figures only",
    )
    amp: bool = setting(False, help="bf16 autocast of the dense part (GPU only)")
    device: str = setting(
        "auto",
        help="auto = cuda:LOCAL_RANK with NCCL when CUDA is available, else cpu with gloo",
        choices=DEVICE_CHOICES,
    )
    short_history_max: int = setting(
        10, help="the short/long activity split of the metrics (paper: 10)"
    )
    fail_at_step: int | None = setting(
        None, help="testing: the last rank exits at this step, once (exercises --resume)"
    )
    drop_features: str = setting(
        "",
        help="comma-separated features of the data's schema (docs/feature-schema.md) the "
        "model leaves out (an ablation; the data keeps them)",
        metavar="NAMES",
    )
    model_args: dict[str, Any] = setting(
        {"embedding_dim": 16, "hidden_dim": 32, "num_heads": 4, "mlp_dims": [80, 40]},
        help="model setting, repeatable, JSON values: alpha=0.3, activity_gate=true, "
        "mlp_dims=[128,64]; unknown keys are an error",
        flag="model-arg",
        metavar="KEY=VALUE",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name}: {value!r} is not one of {list(choices)}")
        if self.lr_plateau_factor is not None and not 0 < self.lr_plateau_factor < 1:
            raise ConfigError(f"lr_plateau_factor: must be in (0, 1), got {self.lr_plateau_factor}")

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready (`from_dict(to_dict())` gives an equal config)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from `values` (missing keys: the defaults; model_args replaced whole).
        Unknown keys and values of the wrong type are a ConfigError naming `source`."""
        return cls(**check_settings(values, source))

    def per_rank_batch_size(self, world_size: int) -> int:
        return per_rank(self.batch_size, world_size, "batch_size")

    def per_rank_eval_batch_size(self, world_size: int) -> int:
        return per_rank(self.eval_batch_size, world_size, "eval_batch_size")

    def with_eval_every(self, steps_per_epoch: int) -> TrainConfig:
        """This config with evals_per_epoch resolved into eval_every (steps per epoch // N)
        when eval_every is unset: what the trainer runs and records in metrics.json."""
        if not self.evals_per_epoch or self.eval_every:
            return self
        every = max(1, steps_per_epoch // self.evals_per_epoch)
        return dataclasses.replace(self, eval_every=every)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def per_rank(global_batch: int, world_size: int, name: str = "batch_size") -> int:
    """The per-rank part of a global batch; a ConfigError unless world_size divides it."""
    if global_batch <= 0:
        raise ConfigError(f"{name} must be positive, got {global_batch}")
    if global_batch % world_size:
        raise ConfigError(
            f"{name} {global_batch} is the global batch (all ranks together) and the world "
            f"size {world_size} does not divide it; use a multiple of {world_size}"
        )
    return global_batch // world_size


# --------------------------------------------------------------------------- checking
def _base_type(name: str) -> tuple[type, bool]:
    """(the field's type, whether None is allowed)."""
    hint = _HINTS[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return typing.get_origin(hint) or hint, False


def _check_value(name: str, value: Any, source: str) -> Any:
    kind, optional = _base_type(name)
    where = f"{source}: {name}"
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must be a {kind.__name__}, not null")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        value = dict(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    choices = FIELDS[name].metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
    return value


def check_settings(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` with every key a TrainConfig setting and every value of its type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        hint = [k.replace("-", "_") for k in unknown if k.replace("-", "_") in FIELDS]
        raise ConfigError(
            f"{source}: unknown setting(s) {unknown}"
            + (f" (did you mean {hint}?)" if hint else "")
            + f"; known: {sorted(FIELDS)}"
        )
    return {k: _check_value(k, v, source) for k, v in values.items()}


# ------------------------------------------------------------------------------ files
def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings a YAML (.yaml, .yml) or JSON file names, checked (unknown key: error)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    elif path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
    else:
        raise ConfigError(f"{path}: config files end in .yaml, .yml or .json")
    return check_settings(values if values is not None else {}, str(path))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write every setting of `config` as JSON (a `--config FILE` for the same run)."""
    Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


# -------------------------------------------------------------------------------- CLI
def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _optional(kind: type) -> Any:
    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its errors
    return convert


def _default_text(name: str) -> str:
    def show(value: Any) -> str:
        return "none" if value is None else json.dumps(value)

    text = f"default: {show(TrainConfig().to_dict()[name])}"
    overrides = [
        f"{preset} {show(values[name])}"
        for preset, values in PRESETS.items()
        if name in values and name != "model_args"
    ]
    return f"{text}; preset {', '.join(overrides)}" if overrides else text


def build_parser() -> argparse.ArgumentParser:
    """The trainer's CLI, one flag per TrainConfig field; no flag has a default (a flag
    the user did not type is absent from the parsed namespace)."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of settings (TrainConfig field names); flags override it",
    )
    for name, f in FIELDS.items():
        flag = "--" + f.metadata.get("flag", name.replace("_", "-"))
        kind, optional = _base_type(name)
        help_text = f"{f.metadata['help']} ({_default_text(name)})".replace("%", "%%")
        if kind is not dict and optional:
            help_text += "; 'none' unsets it"
        kwargs: dict[str, Any] = {"help": help_text, "dest": name}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(action="append", type=_model_arg, metavar=f.metadata.get("metavar"))
        else:
            kwargs["type"] = _optional(kind) if optional else kind
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            else:
                kwargs["metavar"] = f.metadata.get("metavar", "N" if kind is int else "X")
        p.add_argument(flag, **kwargs)
    return p


def preset_layers(preset: str, model: str) -> list[dict[str, Any]]:
    """The layers a preset contributes for `model`: its shared settings, then its entry
    for the model (empty when it has none)."""
    if preset not in PRESETS:
        raise ConfigError(f"preset: {preset!r} is not one of {list(PRESETS)}")
    values = PRESETS[preset]
    shared = {k: v for k, v in values.items() if k != "models"}
    return [shared, dict(values.get("models", {}).get(model, {}))]


def check_presets() -> None:
    """Every preset, and every preset entry for a model, is a valid set of settings whose
    model_args that model accepts (a ConfigError/ValueError naming it otherwise)."""
    from models.zoo import make_config

    for name, values in PRESETS.items():
        check_settings({k: v for k, v in values.items() if k != "models"}, f"preset {name}")
        for model, entry in values.get("models", {}).items():
            source = f"preset {name}, models.{model}"
            if model not in MODEL_CHOICES:
                raise ConfigError(f"{source}: unknown model; choose from {list(MODEL_CHOICES)}")
            check_settings(entry, source)
            layers = [TrainConfig().to_dict(), *preset_layers(name, model), {"model": model}]
            config = TrainConfig.from_dict(merge(*layers), source)
            if model != "popularity":
                make_config(model, config.model_args)


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers override earlier ones key by key; model_args merges by its keys. A
    preset's `models` key (its per-model entries, not a setting) is left out: use
    `preset_layers` to apply the entry of a model."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "models":
                continue
            if key == "model_args":
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def resolve(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig a command line describes: defaults < preset < the preset's entry
    for the model < --config FILE < flags.

    Errors (unknown keys, bad values, a batch the world size does not divide when run
    under torchrun) exit with a usage message, like any argparse error.
    """
    parser = build_parser()
    typed = vars(parser.parse_args(argv))
    try:
        path = typed.pop("config", None)
        if "model_args" in typed:
            typed["model_args"] = dict(typed["model_args"])
        flags = check_settings(typed, "command line")
        from_file = load_config_file(path) if path else {}
        preset = flags.get("preset", from_file.get("preset", TrainConfig.preset))
        shared = preset_layers(preset, "")[0]
        model = flags.get("model", from_file.get("model", shared.get("model", TrainConfig.model)))
        layers = [TrainConfig().to_dict(), *preset_layers(preset, model), from_file, flags]
        config = TrainConfig.from_dict({**merge(*layers), "preset": preset}, "merged settings")
        if "WORLD_SIZE" in os.environ:  # under torchrun: fail before any work
            world_size = int(os.environ["WORLD_SIZE"])
            config.per_rank_batch_size(world_size)
            config.per_rank_eval_batch_size(world_size)
        if config.model != "popularity":
            from models.zoo import make_config

            make_config(config.model, config.model_args)
    except ValueError as e:  # ConfigError, and make_config's unknown model settings
        parser.error(str(e))
    return config
