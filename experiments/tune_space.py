"""The tuner's search spaces, as data: one space of shared training settings per model
family (ID-only, multimodal) and each model's own knobs (docs/tuning.md).

A space maps a parameter name (as Optuna stores it) to a `Param`: its distribution and
where its value goes, a TrainConfig setting ("trainer") or a model setting
("model_args"). A parameter with `when` is drawn only when another parameter took one
of the listed values (the embedding learning rate's range depends on the optimizer), so
the stored name says which branch it is.

    suggest(trial, "din") -> {"lr": ..., "embedding_optimizer": ..., "model_args": {...}}

`settings_of(model, params)` turns a finished trial's stored params back into the same
settings (the trials table and the best entry are built from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Model families: the shared settings are searched per family.
FAMILIES: dict[str, tuple[str, ...]] = {
    "id": ("ta", "din", "sasrec", "dnn"),
    "multimodal": (
        "dta",
        "dta_non_invasive",
        "ta_early",
        "ta_late",
        "dmf",
        "bfs_mf",
        "simtier",
        "make",
        "dmae",
    ),
}


@dataclass(frozen=True)
class Param:
    """kind: "float" (low..high, log scale or a step), "int" (low..high, step) or
    "categorical" (choices). target: "trainer" (a TrainConfig setting) or "model_args".
    setting: the setting's name (default: the parameter's). decode: choice -> value for
    choices Optuna cannot store as such (lists). when: (parameter, values) it depends on."""

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    target: str = "trainer"
    setting: str | None = None
    decode: dict[str, Any] = field(default_factory=dict)
    when: tuple[str, tuple[Any, ...]] | None = None

    def describe(self) -> str:
        """The range in words, for the report."""
        if self.kind == "categorical":
            text = ", ".join(str(c) for c in self.choices)
        else:
            scale = "log" if self.log else (f"step {self.step:g}" if self.step else "uniform")
            text = f"{self.low:g} .. {self.high:g} ({scale})"
        if self.when:
            text += f"  [if {self.when[0]} in {list(self.when[1])}]"
        return text


def Float(low: float, high: float, *, log: bool = False, step: float | None = None, **kw) -> Param:
    return Param("float", low, high, log=log, step=step, **kw)


def Int(low: int, high: int, *, step: int = 1, **kw) -> Param:
    return Param("int", low, high, step=step, **kw)


def Choice(*choices: Any, **kw) -> Param:
    return Param("categorical", choices=tuple(choices), **kw)


ADAGRAD_LIKE = ("adagrad", "rowwise_adagrad")
ADAM_LIKE = ("adam", "adam_dense", "adam_sparse")
# The embedding optimizers a search compares, by device: fbgemm's CPU kernels have no
# fused Adam, so on CPU Adam is one of the replicated-table ones (pipeline/sharding.py).
EMBEDDING_OPTIMIZERS = {
    "cpu": ("adagrad", "rowwise_adagrad", "adam_dense", "adam_sparse"),
    "cuda": ("adam", "adagrad", "rowwise_adagrad"),
}


_MLP = {"80-40": [80, 40], "256-128": [256, 128], "1024-512-256": [1024, 512, 256]}


def shared_space(device: str = "cpu") -> dict[str, Param]:
    """The shared training settings every model searches (its family's copy)."""
    return {
        "lr": Float(1e-4, 3e-3, log=True),
        "embedding_optimizer": Choice(*EMBEDDING_OPTIMIZERS[device]),
        "embedding_lr_adagrad": Float(
            5e-3, 0.2, log=True, setting="embedding_lr", when=("embedding_optimizer", ADAGRAD_LIKE)
        ),
        "embedding_lr_adam": Float(
            1e-4, 3e-3, log=True, setting="embedding_lr", when=("embedding_optimizer", ADAM_LIKE)
        ),
        "embedding_l2": Float(1e-7, 1e-1, log=True),
        # L2 on every row every step: only adam_dense updates every row (pipeline/sharding.py).
        "embedding_weight_decay": Float(
            1e-4, 5e-2, log=True, when=("embedding_optimizer", ("adam_dense",))
        ),
        "weight_decay": Float(1e-6, 1e-1, log=True),
        "dropout": Float(0.0, 0.5, step=0.1, target="model_args"),
        "use_user_embedding": Choice(True, False, target="model_args"),
        "batch_size": Choice(128, 256, 512, 1024),
        # Capacity: the paper's Amazon sizes (32, 80-40) against the outside library's
        # (64, 1024-512-256), which its DNN and DIN are quoted with.
        "embedding_dim": Choice(32, 64, target="model_args"),
        "mlp_dims": Choice(*_MLP, target="model_args", decode=_MLP),
    }


# One space per family. Today both families search the same dimensions and ranges (the
# recipe question is the same for both); they are separate data so that one family's
# space can change without touching the other's, and the report states each.
FAMILY_SPACES: dict[str, Any] = {"id": shared_space, "multimodal": shared_space}

_DIMS = {
    "64-32": [64, 32],
    "80-40": [80, 40],
    "128-64": [128, 64],
    "256-128": [256, 128],
    "512-256": [512, 256],  # FuxiCTR's published Amazon DIN
}

# Each model's own knobs (model settings), searched on top of its family's space.
MODEL_SPACES: dict[str, dict[str, Param]] = {
    "din": {
        "attention_dims": Choice(*_DIMS, target="model_args", decode=_DIMS),
        "activation": Choice("prelu", "dice", target="model_args"),
        "attention_dropout": Float(0.0, 0.3, step=0.1, target="model_args"),
        "attention_softmax": Choice(False, True, target="model_args"),
    },
    "sasrec": {"num_layers": Int(1, 3, target="model_args")},
    "dnn": {"pooling": Choice("mean", "sum", target="model_args")},
    "dmf": {
        "alpha": Float(0.0, 1.0, step=0.1, target="model_args"),
        "histogram_bins": Choice(10, 20, 35, 50, target="model_args"),
        "histogram_edges": Choice("uniform", "range", "quantile", target="model_args"),
    },
    "simtier": {
        "histogram_bins": Choice(10, 20, 35, 50, target="model_args"),
        "histogram_edges": Choice("uniform", "range", "quantile", target="model_args"),
    },
    "make": {"pretrain_epochs": Choice(1, 3, 10, target="model_args")},
    "dmae": {
        "num_similarity_buckets": Choice(10, 20, 35, target="model_args"),
        "window": Int(1, 4, target="model_args"),
        "lambda_dec": Float(1e-3, 1.0, log=True, target="model_args"),
    },
}


def family_of(model: str) -> str:
    for family, models in FAMILIES.items():
        if model in models:
            return family
    raise KeyError(f"model {model!r} is in no family of experiments/tune_space.py")


def space_for(model: str, device: str = "cpu") -> dict[str, Param]:
    """The whole space one model searches: its family's shared settings + its knobs."""
    return {**FAMILY_SPACES[family_of(model)](device), **MODEL_SPACES.get(model, {})}


def _active(param: Param, params: dict[str, Any]) -> bool:
    return param.when is None or params.get(param.when[0]) in param.when[1]


def suggest(trial: Any, model: str, device: str = "cpu") -> dict[str, Any]:
    """Draw one point of `model`'s space from an Optuna trial; returns the settings
    (TrainConfig keys, with a `model_args` dict)."""
    params: dict[str, Any] = {}
    for name, p in space_for(model, device).items():
        if not _active(p, params):
            continue
        if p.kind == "float":
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1))
        else:
            params[name] = trial.suggest_categorical(name, list(p.choices))
    return settings_of(model, params, device)


def settings_of(model: str, params: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """A trial's stored params -> the TrainConfig settings they stand for."""
    settings: dict[str, Any] = {"model_args": {}}
    for name, p in space_for(model, device).items():
        if name not in params:
            continue
        value = p.decode.get(params[name], params[name]) if p.decode else params[name]
        if p.kind == "float" and p.step:  # 0.30000000000000004 -> 0.3
            value = round(value, 6)
        key = p.setting or name
        if p.target == "model_args":
            settings["model_args"][key] = value
        else:
            settings[key] = value
    if settings.get("embedding_optimizer", "adam_dense") != "adam_dense":
        # The other optimizers refuse a whole-table weight decay (the amazon preset sets one).
        settings["embedding_weight_decay"] = 0.0
    return settings


def describe_space(model: str, device: str = "cpu") -> list[dict[str, str]]:
    """Rows for the report: parameter, where it goes, its range."""
    family = family_of(model)
    rows = []
    for name, p in space_for(model, device).items():
        origin = f"{family} family" if name not in MODEL_SPACES.get(model, {}) else model
        rows.append(
            {
                "parameter": name,
                "setting": (
                    f"model_args.{p.setting or name}"
                    if p.target == "model_args"
                    else p.setting or name
                ),
                "range": p.describe(),
                "space": origin,
            }
        )
    return rows
