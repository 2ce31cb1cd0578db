"""The feature schema: every feature a model reads, its kind, source and embedding table.

One home for the format of docs/feature-schema.md: a YAML or JSON file, read by
`load_schema`, is this dataclass (`FeatureSchema`), written into the prepared data's
manifest (`manifest["features"]`, `FeatureSchema.as_dict`) and read back from it by the
trainer and the serving code. Torch-free (like models/features.py): a serving host, the
data-prep jobs and the model all import it.

Kinds (`Feature.kind`):
- `id`: the user and the item ids (always present, names `user` and `item`; the item's
  table serves the target and the history, keys `item` and `hist_item`).
- `sequence`: a categorical item attribute joined to the item representation of the
  target and of every history item (keys `NAME` and `hist_NAME` on one table of the
  EmbeddingCollection, shard columns `NAME` / `hist_NAME`). The default schema's
  `category` is one (its shard column is `hist_categories`, the historical name).
- `sparse`: a pooled categorical feature, one or several values per sample (user
  profile, context, item attribute), on a torchrec EmbeddingBagCollection; tables may be
  shared between features (`table`), each table has its dimension and pooling.
- `dense`: one float per sample, through a dense arch (an MLP, as torchrec DLRM's).

Sources (`Feature.source`): `event` (a column of the interaction rows: context, or user
fields logged with each event), `user` (a column of the user table, by user id), `item`
(a column of the item table, by item id). Serving encodes `event` and `user` features
once per request and `item` features per candidate.

Categorical values become indices like every vocabulary (0 padding, 1 out of vocabulary
or missing, 2.. real values): `vocab: auto` builds a sorted vocabulary from the table
(user or item source), `vocab: [a, b, ...]` fixes it, `hash_buckets: N` hashes the value
into N buckets (indices 2..N+1). The table then has `rows` rows.

>>> schema = schema_from_dict({"features": [
...     {"name": "device", "kind": "sparse", "source": "event", "column": "device",
...      "hash_buckets": 16, "dim": 4},
...     {"name": "price", "kind": "dense", "source": "item", "column": "price",
...      "transform": "log1p"}]})
>>> [f.name for f in schema.features], [f.name for f in schema.pooled], schema.num_dense
(['user', 'item', 'category', 'device', 'price'], ['device'], 1)
>>> schema.feature("device").table, schema.feature("device").rows
('t_device', 18)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

KINDS = ("id", "sequence", "sparse", "dense")
SOURCES = ("event", "user", "item")
POOLINGS = ("sum", "mean")
TRANSFORMS = ("none", "log1p")
# Shard columns and KJT keys the prepared data already uses: no feature may take them.
RESERVED = frozenset(
    {"label", "ts", "click", "hist_items", "hist_sims", "hist_ts_delta", "hist_categories"}
)
SCHEMA_VERSION = 1


class SchemaError(ValueError):
    """A schema that cannot be used: names the file (when there is one) and the feature."""


@dataclass(frozen=True)
class Feature:
    """One feature of the schema (see the module docstring for kinds and sources).

    name: the feature's key in the batches (and its shard column); column: the input
    column it is read from (default: the name). table: the embedding table (default
    `t_NAME`; several features may name one table: one copy of the rows, shared); dim:
    the table's dimension (sparse; None = the model's embedding_dim; sequence and id
    features always use embedding_dim, the EmbeddingCollection's one dimension); pooling:
    sum or mean (sparse, per table). vocab: "auto", a list of values, or None with
    hash_buckets. multi_valued: several values per sample (a list column, or strings cut
    at `separator`), at most `max_values` kept (user source only: an item-side feature is
    one value per item, a context one per event). Dense: transform (none | log1p, applied
    before the model), fill (the value of a missing cell; None: a missing cell is
    rejected), and min_value/max_value (outside: rejected).
    vocab_size: rows of a vocabulary built by data prep ("auto"), recorded in the manifest.
    """

    name: str
    kind: str
    source: str = "event"
    column: str = ""
    table: str = ""
    dim: int | None = None
    pooling: str = "sum"
    vocab: Any = None  # "auto" | tuple[str, ...] | None
    hash_buckets: int | None = None
    multi_valued: bool = False
    separator: str | None = None
    max_values: int = 32
    transform: str = "none"
    fill: float | None = None
    min_value: float | None = None
    max_value: float | None = None
    vocab_size: int | None = None

    @property
    def is_categorical(self) -> bool:
        return self.kind in ("id", "sequence", "sparse")

    @property
    def rows(self) -> int:
        """Rows of the feature's table: padding and OOV included."""
        if self.hash_buckets:
            return self.hash_buckets + 2
        if isinstance(self.vocab, tuple):
            return len(self.vocab) + 2
        if self.vocab_size is None:
            raise SchemaError(f"feature {self.name!r}: vocabulary size unknown before data prep")
        return self.vocab_size

    @property
    def history_key(self) -> str:
        """The history-aligned key of a sequence feature (`hist_category` for `category`)."""
        return f"hist_{self.name}"

    @property
    def history_column(self) -> str:
        """The history-aligned shard column of a sequence feature."""
        return "hist_categories" if self.name == "category" else f"hist_{self.name}"


def _default_features() -> tuple[Feature, ...]:
    return (
        Feature("user", "id", "event", "user_id", "t_user"),
        Feature("item", "id", "event", "item_id", "t_item"),
        Feature("category", "sequence", "item", "category", "t_category", vocab="auto"),
    )


@dataclass(frozen=True)
class FeatureSchema:
    """The features, in order (the head reads the pooled ones and the dense ones in it)."""

    features: tuple[Feature, ...] = field(default_factory=_default_features)
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        validate(self)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in the schema")

    def of_kind(self, kind: str) -> list[Feature]:
        return [f for f in self.features if f.kind == kind]

    @property
    def pooled(self) -> list[Feature]:
        """Sparse features, on the EmbeddingBagCollection, in schema order."""
        return self.of_kind("sparse")

    @property
    def dense(self) -> list[Feature]:
        return self.of_kind("dense")

    @property
    def num_dense(self) -> int:
        return len(self.dense)

    @property
    def sequence(self) -> list[Feature]:
        """Item attributes joined to target and history (category first when present)."""
        return self.of_kind("sequence")

    @property
    def extra_sequence(self) -> list[Feature]:
        """Sequence features beyond the built-in category."""
        return [f for f in self.sequence if f.name != "category"]

    @property
    def extended(self) -> bool:
        """Whether it names anything beyond the default four keys."""
        return bool(self.pooled or self.dense or self.extra_sequence)

    def pooled_tables(self) -> dict[str, list[Feature]]:
        """Table name -> the sparse features looking it up (schema order)."""
        out: dict[str, list[Feature]] = {}
        for f in self.pooled:
            out.setdefault(f.table, []).append(f)
        return out

    def with_vocab_sizes(self, sizes: dict[str, int]) -> FeatureSchema:
        """The schema with the sizes data prep built (feature name -> rows)."""
        return FeatureSchema(
            tuple(replace(f, vocab_size=sizes.get(f.name, f.vocab_size)) for f in self.features),
            self.version,
        )

    def without(self, *names: str) -> FeatureSchema:
        """The schema without the named features (an ablation: the data keeps them)."""
        missing = set(names) - {f.name for f in self.features}
        if missing:
            raise KeyError(f"no features {sorted(missing)} in the schema")
        return FeatureSchema(tuple(f for f in self.features if f.name not in names), self.version)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the manifest's `features`; `schema_from_dict` reads it back)."""
        features = []
        for f in self.features:
            entry = {k: v for k, v in asdict(f).items() if v != getattr(Feature, k, None)}
            entry["name"], entry["kind"] = f.name, f.kind
            if isinstance(f.vocab, tuple):
                entry["vocab"] = list(f.vocab)
            features.append(entry)
        return {"version": self.version, "features": features}


def _feature(entry: Any, where: str) -> Feature:
    if not isinstance(entry, dict):
        raise SchemaError(f"{where}: a feature is a mapping, got {entry!r}")
    known = set(Feature.__dataclass_fields__)
    unknown = set(entry) - known
    if unknown:
        raise SchemaError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    if "name" not in entry or "kind" not in entry:
        raise SchemaError(f"{where}: every feature needs a name and a kind")
    entry = dict(entry)
    name = str(entry["name"])
    entry.setdefault("column", name)
    entry.setdefault("table", f"t_{name}")
    if isinstance(entry.get("vocab"), list):
        entry["vocab"] = tuple(str(v) for v in entry["vocab"])
    return Feature(**entry)


def schema_from_dict(data: dict[str, Any], where: str = "schema") -> FeatureSchema:
    """A schema from its JSON/YAML form. The ids (`user`, `item`) and, unless listed or
    turned off with `category: false`, the default `category` are added when absent."""
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        raise SchemaError(f"{where}: expected a mapping with a 'features' list")
    unknown = set(data) - {"version", "features", "category"}
    if unknown:
        raise SchemaError(f"{where}: unknown top-level keys {sorted(unknown)}")
    version = int(data.get("version", SCHEMA_VERSION))
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema version {version}, this code reads {SCHEMA_VERSION}")
    features = [
        _feature(
            e, f"{where}: feature {i} {(' ' + repr(e.get('name'))) if isinstance(e, dict) else ''}"
        )
        for i, e in enumerate(data["features"])
    ]
    names = {f.name for f in features}
    defaults = [f for f in _default_features() if f.name not in names]
    if data.get("category", True) is False:
        defaults = [f for f in defaults if f.name != "category"]
    try:
        return FeatureSchema(tuple(defaults + features), version)
    except SchemaError as error:
        raise SchemaError(f"{where}: {error}") from None


def load_schema(path: str | Path) -> FeatureSchema:
    """A schema file (.yaml, .yml or .json), checked; SchemaError names the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SchemaError(f"{path}: cannot read the schema ({error})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # PyYAML, a dependency of the project (setup.cfg)

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # yaml.YAMLError / json.JSONDecodeError
        raise SchemaError(f"{path}: not valid {path.suffix[1:]} ({error})") from None
    return schema_from_dict(data, str(path))


def validate(schema: FeatureSchema) -> None:
    """Raise SchemaError for a schema the data prep or the model cannot use."""
    seen: set[str] = set()
    tables: dict[str, Feature] = {}
    for f in schema.features:
        where = f"feature {f.name!r}"
        if not f.name.isidentifier():
            raise SchemaError(f"{where}: a name is a Python identifier (letters, digits, _)")
        if f.name in seen:
            raise SchemaError(f"{where}: named twice")
        seen.add(f.name)
        if f.name in RESERVED or f.name.startswith("hist_"):
            raise SchemaError(f"{where}: the name is reserved (a prepared-data column)")
        if f.kind not in KINDS:
            raise SchemaError(f"{where}: kind {f.kind!r}, expected one of {KINDS}")
        if f.source not in SOURCES:
            raise SchemaError(f"{where}: source {f.source!r}, expected one of {SOURCES}")
        if f.kind == "id":
            if f.name not in ("user", "item"):
                raise SchemaError(f"{where}: kind id is only for `user` and `item`")
            continue
        if f.name in ("user", "item"):
            raise SchemaError(f"{where}: `user` and `item` are of kind id")
        if f.kind == "dense":
            if f.transform not in TRANSFORMS:
                raise SchemaError(f"{where}: transform {f.transform!r}, expected {TRANSFORMS}")
            if f.multi_valued or f.vocab is not None or f.hash_buckets:
                raise SchemaError(f"{where}: a dense feature has no vocabulary nor values list")
            continue
        # categorical: sequence or sparse
        if (f.vocab is None) == (f.hash_buckets is None):
            raise SchemaError(
                f"{where}: give exactly one of vocab (auto or a list) and hash_buckets"
            )
        if f.vocab is not None and f.vocab != "auto" and not isinstance(f.vocab, tuple):
            raise SchemaError(f"{where}: vocab is 'auto' or a list of values, got {f.vocab!r}")
        if f.hash_buckets is not None and f.hash_buckets < 1:
            raise SchemaError(f"{where}: hash_buckets must be >= 1")
        if f.vocab == "auto" and f.source == "event":
            raise SchemaError(
                f"{where}: an event column is read by many processes: give hash_buckets or "
                "a vocab list (vocab: auto is for user and item tables)"
            )
        if f.multi_valued and f.source != "user":
            raise SchemaError(f"{where}: multi_valued is for user-table features only")
        if f.max_values < 1:
            raise SchemaError(f"{where}: max_values must be >= 1")
        if f.kind == "sequence":
            if f.source != "item":
                raise SchemaError(f"{where}: a sequence feature is an item attribute (source item)")
            if f.dim is not None:
                raise SchemaError(f"{where}: sequence tables use the model's embedding_dim")
        if f.kind == "sparse" and f.pooling not in POOLINGS:
            raise SchemaError(f"{where}: pooling {f.pooling!r}, expected one of {POOLINGS}")
        first = tables.setdefault(f.table, f)
        if first is not f:
            same = (first.kind, first.dim, first.pooling, first.vocab, first.hash_buckets)
            if same != (f.kind, f.dim, f.pooling, f.vocab, f.hash_buckets) or f.kind != "sparse":
                raise SchemaError(
                    f"{where}: shares table {f.table!r} with {first.name!r}: shared tables are "
                    "for sparse features of the same vocabulary (or hash_buckets), dim and pooling"
                )
        if first.vocab == "auto" and first is not f:
            raise SchemaError(f"{where}: a shared table needs a fixed vocab list or hash_buckets")
    for required in ("user", "item"):
        if required not in seen:
            raise SchemaError(f"the schema has no {required!r} id feature")


DEFAULT_SCHEMA = FeatureSchema()  # today's four keys: user, item (target and history), category
