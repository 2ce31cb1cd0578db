"""What the study's runs used, read from their records: the report's Settings table, and
the `Context` (runs, selection, manifest) every report section reads.

Every value comes from the runs' metrics.json (`config`: the resolved TrainConfig,
`model_config`, the resolved `embedding_optimizer`, `world_size`, `device`), their
study_run.json (threads, backend) and the data manifest; where a setting came from (the
preset, the trainer's or the model's defaults, the study) is worked out against
`pipeline.config`'s own defaults and presets. When runs differ, each value is shown with
the runs that used it. The paper's side comes from `experiments.paper`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.paper import LABELS, PAPER_SETTINGS

# What the data_prep protocols are (their definitions, not settings; the settings come
# from the manifest's `protocol`).
PROTOCOLS = {
    "next-item": "DIN-style next-item: reviews 2..T-1 train, T test",
    "temporal": "temporal: the last days of the log are valid and test",
}


def show(value: Any) -> str:
    """A setting's value as the report writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def epochs_text(steps: int, spe: int | None) -> str:
    """Steps as a fraction of an epoch: '1/4 epoch', '2 epochs', '0.21 epoch'."""
    if not spe:
        return f"{steps} steps"
    ratio = steps / spe
    if ratio >= 1 and abs(ratio - round(ratio)) < 1e-9:
        return plural(round(ratio), "epoch")
    k = round(spe / steps) if steps else 0
    if k > 1 and spe // k == steps:
        return f"1/{k} epoch"
    return f"{ratio:.2f} epoch"


def seed_range(seeds: Iterable[int]) -> str:
    seeds = sorted(seeds)
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))


# ------------------------------------------------------------------------------ context
@dataclass
class Context:
    """What every section reads: the collected runs (with the main DMF row), the selection,
    the data manifest and facts, and where the figures go."""

    results: dict[str, Any]
    out_dir: Path
    name: str
    title: str = "Amazon Electronics"  # the dataset, as the report's title names it
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> dict[str, list[dict[str, Any]]]:
        return self.results["runs"]

    @property
    def alpha_runs(self) -> dict[float, list[dict[str, Any]]]:
        return self.results.get("alpha") or {}

    @property
    def alpha_seeds(self) -> list[int]:
        return self.results["alpha_seeds"]

    @property
    def selection(self) -> dict[str, Any]:
        return self.results.get("selection") or {}

    @property
    def selected_alpha(self) -> float | None:
        return self.selection.get("alpha")

    @property
    def manifest(self) -> dict[str, Any]:
        return self.results.get("manifest") or {}

    @property
    def facts(self) -> dict[str, Any]:
        return self.results.get("data_facts") or {}

    @property
    def spe(self) -> int | None:
        return self.results.get("steps_per_epoch")

    def figure(self, key: str) -> Path:
        path = self.out_dir / f"{self.name}-{key}.png"
        self.figures[key] = path.name
        return path

    def labelled_runs(self) -> list[tuple[str, dict[str, Any]]]:
        """Every trained run once, with the label the settings table names it by (item
        popularity trains nothing: it has no trainer settings to report)."""
        seen: set[int] = set()
        out = []
        groups: list[tuple[str, list[dict[str, Any]]]] = [
            (LABELS.get(k, k), r) for k, r in self.runs.items() if k not in ("dmf", "popularity")
        ]
        groups += [(f"DMF α={a:g}", r) for a, r in sorted(self.alpha_runs.items())]
        for label, runs in groups:
            for m in runs:
                if id(m) not in seen:
                    seen.add(id(m))
                    out.append((label, m))
        return out

    def short_max(self) -> int | None:
        """The activity split of the metrics (the runs' short_history_max)."""
        values = {config_of(m).get("short_history_max") for _, m in self.labelled_runs()}
        values.discard(None)
        return values.pop() if len(values) == 1 else None

    def groups(self) -> tuple[str, str]:
        s = self.short_max()
        return (f"L ≤ {s}", f"L > {s}") if s is not None else ("short", "long")


# ------------------------------------------------------------------- settings from runs
def config_of(m: dict[str, Any]) -> dict[str, Any]:
    return m.get("config") or {}


def model_config_of(m: dict[str, Any]) -> dict[str, Any]:
    return m.get("model_config") or {}


def agree(pairs: Iterable[tuple[str, Any]], fmt: Callable[[Any], str] = show) -> str:
    """One value when every run used the same, else each value with the runs that used it."""
    groups: dict[str, list[str]] = {}
    for label, value in pairs:
        labels = groups.setdefault(fmt(value), [])
        if label not in labels:
            labels.append(label)
    if not groups:
        return "–"
    if len(groups) == 1:
        return next(iter(groups))
    *fewer, most = sorted(groups.items(), key=lambda item: len(item[1]))
    parts = [f"{value} ({', '.join(labels)})" for value, labels in fewer]
    return "; ".join([*parts, f"{most[0]} (the other runs)"])


def _trainer_layers() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the TrainConfig defaults, the presets), from the trainer's own definitions."""
    from pipeline.config import PRESETS, TrainConfig

    return TrainConfig().to_dict(), PRESETS


def _origin_of(m: dict[str, Any], name: str, model: bool) -> str:
    config = config_of(m)
    defaults, presets = _trainer_layers()
    preset_name = config.get("preset")
    preset = presets.get(preset_name, {})
    if model:
        value, asked = model_config_of(m).get(name), config.get("model_args") or {}
        preset, defaults = preset.get("model_args", {}), defaults["model_args"]
        if name not in asked:
            return "model default"
    else:
        value = config.get(name)
    if name in preset and preset[name] == value:
        return f"preset `{preset_name}`"
    if name in defaults and defaults[name] == value:
        return "trainer default"
    return "study"


Labelled = list[tuple[str, dict[str, Any]]]


def origin(runs: Labelled, name: str, model: bool = False) -> str:
    """Where the runs' setting came from: the preset they name, the trainer's defaults,
    the model's defaults, or the study (a value the study's config set)."""
    return agree((label, _origin_of(m, name, model)) for label, m in runs)


def origins(runs: Labelled, names: Iterable[str], model: bool = False) -> str:
    """`origin` of the settings of one row: one origin when they share it, else each
    setting with its own."""
    found = {name: origin(runs, name, model) for name in names}
    if len(set(found.values())) == 1:
        return next(iter(found.values()))
    return "; ".join(f"{name}: {where}" for name, where in found.items())


def vectors_description(manifest: dict[str, Any]) -> tuple[str, str]:
    """(what the item vectors are made of, a short label for figures), from the manifest's
    `item_embeddings.source` (e.g. `title:minilm:{...}`, `vectors:FILE`, joined by ' + ')."""
    source = str((manifest.get("item_embeddings") or {}).get("source", ""))
    parts, encoders = [], []
    for part in filter(None, source.split(" + ")):
        kind, _, rest = part.partition(":")
        if kind == "title":
            encoder, _, settings = rest.partition(":")
            try:
                encoder = json.loads(settings).get("model", encoder)
            except (json.JSONDecodeError, AttributeError):
                pass
            encoders.append(encoder.rsplit("/", 1)[-1])
            parts.append("titles")
        elif kind == "vectors":
            parts.append(f"precomputed vectors ({rest})")
        elif kind != "orthogonal-projection":
            parts.append(kind)
    what = " + ".join(dict.fromkeys(parts)) or "unknown"
    if parts == ["titles"]:
        what = "titles only (no images in this data)"
    label = f"{', '.join(encoders)} title vectors" if encoders else "item vectors"
    return what, label


def settings_rows(ctx: Context) -> list[list[str]]:
    """[setting, value, where it comes from, paper]: every value read from the runs'
    recorded configs or the data manifest."""
    rows: list[list[str]] = []
    everything = ctx.labelled_runs()
    manifest, spe = ctx.manifest, ctx.spe

    def add(name: str, value: str, source: str) -> None:
        rows.append([name, value, source, PAPER_SETTINGS.get(name, "–")])

    def model_runs(*keys: str) -> list[dict[str, Any]]:
        return [m for k in keys for m in ctx.runs.get(k, [])]

    # -- data (the manifest)
    if manifest:
        paths = agree((label, (m.get("data") or {}).get("path")) for label, m in everything)
        add(
            "data",
            f"`{paths}` ({manifest.get('counts')})",
            f"`{manifest['created_by']}`" if manifest.get("created_by") else "data manifest",
        )
        protocol = dict(manifest.get("protocol") or {})
        described = PROTOCOLS.get(protocol.get("name"), str(protocol.get("name")))
        details = []
        if "negatives_per_positive" in protocol:
            details.append(
                f"{protocol['negatives_per_positive']} random unreviewed negative per positive"
            )
        if protocol.get("valid_frac"):
            details.append(f"{protocol['valid_frac']:.0%} of users' latest training pair -> valid")
        for key in ("seed", "min_events", "tie_order", "valid_days", "test_days"):
            if key in protocol:
                details.append(f"{key} {show(protocol[key])}")
        add("protocol", "; ".join([described, *details]), "data manifest `protocol`")
        vectors = manifest.get("item_embeddings") or {}
        add(
            "item vectors",
            f"{vectors.get('dim')}-d, {vectors.get('source')}",
            f"{vectors_description(manifest)[0]}; data manifest",
        )
        add(
            "history / buckets",
            f"last {manifest.get('max_history')} behaviours; "
            f"{(manifest.get('buckets') or {}).get('num_buckets')} equal-frequency similarity "
            "buckets from training similarities",
            "data manifest",
        )

    # -- the trainer (every run's resolved config)
    arch = ("embedding_dim", "num_heads", "hidden_dim", "mlp_dims")

    def architecture(mc: dict[str, Any]) -> str:
        mlp = "x".join(str(d) for d in [*(mc.get("mlp_dims") or []), 1])
        return ", ".join([*(show(mc.get(k)) for k in arch[:3]), mlp])

    add(
        "ID embeddings, heads, hidden, MLP",
        agree(((label, model_config_of(m)) for label, m in everything), architecture),
        origins(everything, arch, model=True),
    )

    def batch(m: dict[str, Any]) -> str:
        size, world = config_of(m).get("batch_size"), m.get("world_size") or 1
        per_rank = f"{size // world} per rank x {world} ranks" if size else "–"
        return f"{size} global = {per_rank}"

    add(
        "batch size",
        agree(((label, m) for label, m in everything), batch),
        origin(everything, "batch_size"),
    )

    def dense(m: dict[str, Any]) -> str:
        c = config_of(m)
        text = f"Adam, lr {show(c.get('lr'))}, {c.get('lr_schedule')}"
        if c.get("warmup_steps"):
            text += f", warmup {c['warmup_steps']} steps"
        if c.get("grad_clip") is not None:
            text += f", gradient norm clipped at {show(c['grad_clip'])}"
        return text

    add(
        "dense optimizer",
        agree(((label, m) for label, m in everything), dense),
        origins(everything, ("lr", "lr_schedule")),
    )

    def embedding(m: dict[str, Any]) -> str:
        c = config_of(m)
        name = m.get("embedding_optimizer") or c.get("embedding_optimizer")
        lr = m.get("embedding_lr", c.get("embedding_lr"))
        if lr is None:
            from pipeline.config import FIELDS

            lr = f"unset: {FIELDS['embedding_lr'].metadata['help']}"
        else:
            lr = f"lr {show(lr)}"
        from pipeline.sharding import is_dense_embedding_optimizer

        if not is_dense_embedding_optimizer(str(name)):
            return f"fused {name}, {lr}"
        text = f"{name} (replicated tables, a torch optimizer), {lr}"
        decay = c.get("embedding_weight_decay")
        return text + (f", L2 {show(decay)} on every row every step" if decay else "")

    def embedding_source(m: dict[str, Any]) -> str:
        c = config_of(m)
        return f"`embedding_optimizer: {c.get('embedding_optimizer')}` on {m.get('device')}"

    add(
        "embedding optimizer",
        agree(((label, m) for label, m in everything), embedding),
        agree(((label, m) for label, m in everything), embedding_source)
        + f" ({origin(everything, 'embedding_optimizer')})",
    )

    add("training length", *_training_length(ctx))
    if spe:
        add("steps per epoch", f"{spe:,}", "training samples / global batch")
    if ctx.runs.get("dmf"):
        add(
            "DMF alpha (main table)",
            agree(("DMF", model_config_of(m).get("alpha")) for m in ctx.runs["dmf"]),
            f"best mean validation AUC of the sweep (seeds {seed_range(ctx.alpha_seeds)})",
        )
    dmf_runs = [m for r in ctx.alpha_runs.values() for m in r] or ctx.runs.get("dmf", [])
    if dmf_runs:
        add(
            "DMF histogram",
            agree(
                ("DMF", f"{mc.get('histogram_bins')} bins, MLP {mc.get('histogram_hidden')}")
                for mc in map(model_config_of, dmf_runs)
            ),
            origins(
                [("DMF", m) for m in dmf_runs], ("histogram_bins", "histogram_hidden"), model=True
            ),
        )
    if ctx.runs.get("dmf_gate"):
        add("activity gate", *_gate(ctx))
    for key, describe, fields in (
        ("sasrec", lambda mc: f"{mc.get('num_layers')} layers", ("num_layers",)),
        (
            "din",
            lambda mc: f"attention MLP {mc.get('attention_dims')}, {mc.get('activation')}",
            ("attention_dims", "activation"),
        ),
        ("simtier", lambda mc: f"{mc.get('histogram_bins')} bins", ("histogram_bins",)),
        (
            "make",
            lambda mc: (
                f"stage-1 pre-training {plural(mc.get('pretrain_epochs'), 'epoch')}, "
                f"mm MLP {mc.get('mm_hidden')} -> {mc.get('mm_dim')}"
            ),
            ("pretrain_epochs", "mm_hidden", "mm_dim"),
        ),
    ):
        runs = model_runs(key)
        if runs:
            add(
                LABELS[key],
                agree((LABELS[key], describe(model_config_of(m))) for m in runs),
                origins([(LABELS[key], m) for m in runs], fields, model=True),
            )
    add("seeds", _seeds(ctx), "study")
    add(
        "workers",
        agree(((label, m) for label, m in everything), _workers),
        "study",
    )
    short = ctx.short_max()
    add(
        "metrics",
        "test AUC, GAUC (uniform over users with both labels), logloss; activity split at "
        f"{ctx.groups()[0]}",
        origin(everything, "short_history_max") if short is not None else "runs differ",
    )
    return rows


def _training_length(ctx: Context) -> tuple[str, str]:
    """(steps of each model's final runs, how they were chosen), from the runs' configs."""
    spe = ctx.spe
    lengths = {
        k: sorted({config_of(m).get("max_steps") for m in r}, key=str)
        for k, r in sorted(ctx.runs.items())
    }
    if not lengths:
        return "–", "–"

    def with_epochs(steps: Any) -> str:
        return f"{steps} ({steps / spe:.2f} ep)" if spe and steps else show(steps)

    per_model = ", ".join(f"{k} {' / '.join(map(with_epochs, v))}" for k, v in lengths.items())
    chosen = [m for r in ctx.runs.values() for m in r if m.get("best_step") is not None]
    if chosen and not ctx.results.get("quick"):
        best = {
            k: [m["best_step"] for m in r if m.get("best_step") is not None]
            for k, r in sorted(ctx.runs.items())
        }
        per_model = "best validation step per seed: " + ", ".join(
            f"{k} {' / '.join(map(with_epochs, v))}" for k, v in best.items() if v
        )

        def per_run(m: dict[str, Any]) -> str:
            c = config_of(m)
            text = f"up to {plural(c.get('epochs') or 0, 'epoch')}"
            if c.get("evals_per_epoch"):  # the setting asked for (eval_every: its steps)
                text += f", validated {c['evals_per_epoch']} times an epoch"
            elif c.get("eval_every"):
                text += f", validated every {epochs_text(c['eval_every'], spe)}"
            if c.get("early_stopping_patience"):
                text += f", early-stopping patience {c['early_stopping_patience']} evaluations"
            if c.get("restore_best"):
                text += ", the best validation step's weights restored for the test metrics"
            return text

        return per_model, f"chosen per run on validation: {agree(ctx.labelled_runs(), per_run)}"
    source = "fixed (`--quick`), not selected" if ctx.results.get("quick") else "fixed"
    every = {s for v in lengths.values() for s in v}
    batches = {config_of(m).get("batch_size") for r in ctx.runs.values() for m in r}
    if len(every) == 1 and len(batches) == 1:
        steps, batch = every.pop(), batches.pop()
        if steps and batch:
            epoch = f", {steps / spe:.2f} epoch" if spe else ""
            return f"{steps} steps for every model ({steps * batch:,} samples{epoch})", source
    return per_model, source


def _gate(ctx: Context) -> tuple[str, str]:
    from models.fusion import ActivityGate

    median = inspect.signature(ActivityGate).parameters["median_length"].default
    runs = ctx.runs["dmf_gate"]

    def describe(mc: dict[str, Any]) -> str:
        if not mc.get("activity_gate"):
            return "off (activity_gate false)"
        text = f"a(n) = sigmoid(w log(1+n) + b), a({median:g}) initialised at α = {show(mc.get('alpha'))}"
        selected = ctx.selected_alpha
        if selected is not None and mc.get("alpha") is not None and mc["alpha"] != selected:
            text += f" (the selected α {selected:g}, clipped into the gate's (0, 1))"
        return text

    return (
        agree((LABELS["dmf_gate"], describe(model_config_of(m))) for m in runs),
        origins([(LABELS["dmf_gate"], m) for m in runs], ("activity_gate", "alpha"), model=True),
    )


def _seeds(ctx: Context) -> str:
    per_model = agree(
        (LABELS.get(k, k), f"{len(r)} per model ({seed_range(m['seed'] for m in r)})")
        for k, r in ctx.runs.items()
    )
    if not ctx.alpha_runs:
        return per_model
    sweep = agree((f"α={a:g}", len(r)) for a, r in sorted(ctx.alpha_runs.items()))
    return f"{per_model}; alpha sweep {sweep} per alpha"


def _workers(m: dict[str, Any]) -> str:
    run = m.get("study_run") or {}
    text = f"{m.get('world_size')} torchrun processes"
    if run.get("threads"):
        text += f" x {plural(run['threads'], 'thread')}"
    if run.get("backend"):
        text += f", {run['backend']}"
    return f"{text}, {m.get('device')}"
