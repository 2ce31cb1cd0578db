"""The feature schema's columns in data prep (models/schema.py, docs/feature-schema.md).

`SchemaPrep` reads the columns a schema names and turns them into model inputs:
- `event` features: columns of the interaction rows, encoded batch by batch in the
  scattering processes (`encode_events`; hashed or a fixed vocabulary list), carried with
  each event to its sample (`RawEvents.extra`);
- `item` features: columns of the item table (`filter_items`, on the leader), one value
  per item index, saved as `features/item_NAME.npy`;
- `user` features: columns of a user table (`--users FILE`, keyed by `user_id`), one value
  (or a list) per user index, saved as `features/user_NAME.npy` (`.offsets.npy` beside a
  multi-valued one); users without a row get the missing value.
Categorical values: index 0 padding, 1 missing or unknown, 2.. real values (`vocab: auto`
sorted, `vocab: [...]` in list order sorted, `hash_buckets: N`: 2 + hash % N). Dense
values: float32 after `transform`. A bad value (an unreadable or too long id, a dense
value that is not a finite number, outside [min_value, max_value], or missing without a
`fill`) rejects its record with the reason `bad_feature_value` / `missing_feature_value`
/ `feature_out_of_range` and the feature named in the excerpt; nothing is dropped
silently. `fill_samples` writes the shard columns (docs/feature-schema.md).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.columns import ColumnTypeError, as_ids
from data_prep.limits import Limits
from data_prep.rejects import InputError, RejectLog
from data_prep.samples import Samples
from data_prep.tables import read_batch
from data_prep.vocab import FIRST_ID, OOV, Vocab
from models.schema import Feature, FeatureSchema

FEATURES_DIR = "features"


def hash_values(values: np.ndarray, buckets: int) -> np.ndarray:
    """Raw strings (N,) -> indices 2..buckets+1 (crc32 of the UTF-8 bytes, stable across
    runs, machines and Python versions)."""
    codes = np.fromiter((zlib.crc32(v.encode("utf-8")) for v in values), np.int64, len(values))
    return FIRST_ID + codes % buckets


@dataclass
class Encoded:
    """One feature of N records: values (N,) int64 or float32 (multi-valued: the flat
    values and `offsets` (N+1,)), and per record the reason it is bad ("" when good)."""

    values: np.ndarray
    bad: np.ndarray  # (N,) object, reason or ""
    offsets: np.ndarray | None = None


def _column(table: pa.Table, feature: Feature, file: str) -> pa.ChunkedArray:
    if feature.column not in table.column_names:
        raise InputError(
            f"{file}: no column {feature.column!r} for feature {feature.name!r} "
            f"(columns: {table.column_names})"
        )
    return table.column(feature.column)


def _raw_strings(
    column: pa.ChunkedArray | pa.Array, limits: Limits
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values str, missing, bad) of a scalar column."""
    ids = as_ids(column, limits.max_id_length)
    return ids.values, ids.missing, ids.not_utf8 | ids.too_long


def _categorical(
    feature: Feature, column: pa.ChunkedArray, limits: Limits, vocab: Vocab | None
) -> tuple[Encoded, np.ndarray]:
    """-> (Encoded, raw strings of the flat values) (the vocabulary is applied later when
    `vocab` is None and the feature's is "auto")."""
    n = len(column)
    bad = np.full(n, "", dtype=object)
    offsets = None
    if feature.multi_valued:
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lists = column.fill_null(pa.scalar([], column.type))
            offsets = np.asarray(lists.offsets).astype(np.int64)
            raw, missing, wrong = _raw_strings(lists.flatten(), limits)
            keep = ~missing
        else:
            if feature.separator is None:
                raise InputError(
                    f"feature {feature.name!r}: column {feature.column!r} is {column.type}, "
                    "not a list: give a separator"
                )
            raw_cells, missing_cells, wrong_cells = _raw_strings(column, limits)
            parts = [
                [] if m else [p for p in s.split(feature.separator) if p.strip()]
                for s, m in zip(raw_cells, missing_cells)
            ]
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
            raw = np.array([p for ps in parts for p in ps], dtype=str)
            missing = np.zeros(len(raw), dtype=bool)
            wrong = np.repeat(wrong_cells, np.diff(offsets))
            bad[wrong_cells] = "bad_feature_value"
            keep = np.ones(len(raw), dtype=bool)
        owner = np.repeat(np.arange(n), np.diff(offsets))
        bad[np.unique(owner[wrong])] = "bad_feature_value"
        lengths = np.diff(offsets)
        too_many = lengths > feature.max_values
        if too_many.any():  # keep the first max_values of a record
            position = np.arange(len(raw)) - np.repeat(offsets[:-1], lengths)
            keep &= position < feature.max_values
        raw, owner = raw[keep], owner[keep]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n))]).astype(np.int64)
    else:
        raw, missing, wrong = _raw_strings(column, limits)
        bad[wrong] = "bad_feature_value"
    values = encode_raw(feature, raw, vocab)
    if not feature.multi_valued:
        values = np.where(missing | wrong, OOV, values)
    return Encoded(values, bad, offsets), raw


def encode_raw(feature: Feature, raw: np.ndarray, vocab: Vocab | None) -> np.ndarray:
    """Raw strings -> indices (hash, the fixed list, or `vocab` for "auto"; OOV without)."""
    if feature.hash_buckets:
        return hash_values(raw, feature.hash_buckets)
    if isinstance(feature.vocab, tuple):
        return Vocab(list(feature.vocab)).encode(raw)
    if vocab is not None:
        return vocab.encode(raw)
    return np.full(len(raw), OOV, dtype=np.int64)


def _dense(feature: Feature, column: pa.ChunkedArray) -> Encoded:
    n = len(column)
    bad = np.full(n, "", dtype=object)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        missing = np.asarray(column.is_null())
        values = np.asarray(column.cast(pa.float64()).fill_null(0.0), dtype=np.float64)
    else:
        if pa.types.is_nested(column.type):
            raise InputError(f"feature {feature.name!r}: a {column.type} column is not dense")
        text = column.cast(pa.string()) if pa.types.is_binary(column.type) else column
        cells = pc.utf8_trim_whitespace(text.cast(pa.string())).to_pylist()
        missing = np.array([c is None or c == "" for c in cells], dtype=bool)
        values = np.zeros(n)
        for i, c in enumerate(cells):
            if not missing[i]:
                try:
                    values[i] = float(c)
                except ValueError:
                    bad[i] = "bad_feature_value"
    bad[(bad == "") & ~missing & ~np.isfinite(values)] = "bad_feature_value"
    ok = (bad == "") & ~missing
    low = -math.inf if feature.min_value is None else feature.min_value
    high = math.inf if feature.max_value is None else feature.max_value
    if feature.transform == "log1p":
        low = max(low, 0.0)
    out_of_range = ok & ((values < low) | (values > high))
    bad[out_of_range] = "feature_out_of_range"
    if feature.fill is None:
        bad[(bad == "") & missing] = "missing_feature_value"
    values = np.where(missing, feature.fill or 0.0, values)
    if feature.transform == "log1p":
        values = np.log1p(np.where(bad == "", values, 0.0))
    return Encoded(values.astype(np.float32), bad)


def encode_table(
    table: pa.Table, features: list[Feature], file: str, limits: Limits, vocabs: dict[str, Vocab]
) -> tuple[dict[str, Encoded], dict[str, np.ndarray], np.ndarray]:
    """The features' columns of `table` -> ({name: Encoded}, {name: raw strings}, the
    first bad reason of each row (N,) ("" when the row is good))."""
    encoded, raws = {}, {}
    reason = np.full(table.num_rows, "", dtype=object)
    for feature in features:
        column = _column(table, feature, file)
        try:
            if feature.kind == "dense":
                enc = _dense(feature, column)
            else:
                enc, raws[feature.name] = _categorical(
                    feature, column, limits, vocabs.get(feature.name)
                )
        except ColumnTypeError as error:
            raise InputError(f"{file}: column {feature.column!r}: {error}") from None
        first = (reason == "") & (enc.bad != "")
        reason[first] = [f"{r}" for r in enc.bad[first]]
        encoded[feature.name] = enc
    return encoded, raws, reason


def reject_rows(
    table: pa.Table,
    lines: np.ndarray,
    reason: np.ndarray,
    encoded: dict[str, Encoded],
    features: list[Feature],
    file: str,
    rejects: RejectLog,
) -> np.ndarray:
    """Reject the rows with a reason (the excerpt names the feature); returns keep (N,)."""
    bad_rows = np.flatnonzero(reason != "")
    for row in bad_rows:
        names = [f.name for f in features if encoded[f.name].bad[row] != ""]
        record = {"feature": names[0], **table.slice(int(row), 1).to_pylist()[0]}
        rejects.reject(file, int(lines[row]), str(reason[row]), record)
    return reason == ""


def _take(enc: Encoded, rows: np.ndarray) -> Encoded:
    """The records `rows` of an Encoded (multi-valued: their lists)."""
    if enc.offsets is None:
        return Encoded(enc.values[rows], enc.bad[rows])
    lengths = np.diff(enc.offsets)[rows]
    index = np.concatenate(
        [np.arange(enc.offsets[r], enc.offsets[r + 1]) for r in rows] or [np.zeros(0, np.int64)]
    ).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Encoded(enc.values[index], enc.bad[rows], offsets)


@dataclass
class SchemaPrep:
    """The schema's side of one data-prep run (see the module docstring).

    users: the user table (Parquet or CSV with `user_id` and the user features' columns),
    needed when the schema has user-source features.
    """

    schema: FeatureSchema
    users: Path | None = None
    limits: Limits = field(default_factory=Limits)
    item_values: dict[str, Any] = field(default_factory=dict)  # leader: raw item id -> value
    vocab_sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.of("user") and self.users is None:
            names = [f.name for f in self.of("user")]
            raise InputError(f"features {names} come from the user table: give --users FILE")

    def of(self, source: str) -> list[Feature]:
        """The extended features (not the built-in ids and category) of a source."""
        return [
            f
            for f in self.schema.features
            if f.source == source and f.kind != "id" and f.name != "category"
        ]

    # ------------------------------------------------------------------ events
    def encode_events(
        self, table: pa.Table, file: str, keep: np.ndarray, reason: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The event features of one batch of interaction rows: values (N,) per feature;
        rows with a bad value get its reason in `reason` and leave `keep` (in place)."""
        features = self.of("event")
        if not features:
            return {}
        encoded, _, bad = encode_table(table, features, file, self.limits, {})
        first = keep & (bad != "")
        reason[first] = bad[first]
        keep &= ~first
        return {name: enc.values for name, enc in encoded.items()}

    # ------------------------------------------------------------------- items
    def filter_items(
        self, table: pa.Table, lines: np.ndarray, file: str, rejects: RejectLog
    ) -> tuple[pa.Table, np.ndarray]:
        """The item table without the rows holding a bad feature value (rejected, counted
        read); keeps the good rows' values by raw item id for `save_items`."""
        features = self.of("item")
        if not features:
            return table, lines
        encoded, raws, reason = encode_table(table, features, file, self.limits, {})
        keep = reject_rows(table, lines, reason, encoded, features, file, rejects)
        rejects.add_read(int((~keep).sum()))  # read here; the kept rows are read later
        rows = np.flatnonzero(keep)
        ids = as_ids(table.column("item_id"), self.limits.max_id_length).values[rows]
        self.item_values = {
            "ids": ids,
            "encoded": {n: _take(e, rows) for n, e in encoded.items()},
            "raw": {n: r[rows] for n, r in raws.items()},
        }
        return table.take(pa.array(rows)), lines[rows]

    def save_items(self, vocab: Vocab, out: Path) -> list[str]:
        """Per item index (I,) arrays of the item features, in out/features/; vocabularies
        ("auto") in out/vocab/. Returns the files written (relative to out)."""
        features = self.of("item")
        if not features:
            return []
        ids = self.item_values["ids"]
        unique, first = np.unique(ids, return_index=True)
        pos = np.searchsorted(unique, vocab.raw_ids)
        pos = np.minimum(pos, max(len(unique) - 1, 0))
        found = unique[pos] == vocab.raw_ids if len(unique) else np.zeros(0, bool)
        rows = first[pos]
        written = []
        for feature in features:
            enc = self.item_values["encoded"][feature.name]
            values = enc.values
            if feature.vocab == "auto":
                raw = self.item_values["raw"][feature.name]
                used = Vocab(raw[raw != ""])
                written.append(self._save_vocab(feature, used, out))
                values = np.where(raw != "", used.encode(raw), OOV)
            table = np.zeros(len(vocab), dtype=values.dtype)
            if feature.is_categorical:
                table[1] = OOV
            table[FIRST_ID:] = np.where(found, values[rows], OOV if feature.is_categorical else 0)
            written.append(self._save(out, f"item_{feature.name}.npy", table))
            self._size(feature)
        return written

    # ------------------------------------------------------------------- users
    def save_users(self, user_vocab: Vocab, out: Path, rejects: RejectLog) -> list[str]:
        """Read the user table, reject its bad rows, save per user index arrays."""
        features = self.of("user")
        if not features:
            return []
        assert self.users is not None
        name = self.users.name

        def bad_row(line: int, reason: str, record: str) -> None:
            rejects.add_read(1)
            rejects.reject(name, line, reason, record)

        batch = read_batch(self.users, bad_row, self.limits.max_line_bytes)
        table, lines = batch.table, batch.lines
        if "user_id" not in table.column_names:
            raise InputError(f"{name}: no column 'user_id' (columns: {table.column_names})")
        rejects.add_read(table.num_rows)
        encoded, raws, reason = encode_table(table, features, name, self.limits, {})
        ids = as_ids(table.column("user_id"), self.limits.max_id_length)
        reason[(reason == "") & (ids.missing | ids.not_utf8 | ids.too_long)] = "missing_field"
        unique, first = np.unique(np.where(reason == "", ids.values, ""), return_index=True)
        duplicate = np.ones(table.num_rows, dtype=bool)
        duplicate[first] = False
        reason[(reason == "") & duplicate] = "duplicate_user"
        keep = reject_rows(table, lines, reason, encoded, features, name, rejects)
        rejects.add_used(int(keep.sum()))
        rows = np.flatnonzero(keep)
        index = user_vocab.encode(ids.values[rows])  # OOV: a user with no events
        written = []
        for feature in features:
            enc = _take(encoded[feature.name], rows)
            values = enc.values
            if feature.vocab == "auto":
                full = encoded[feature.name]
                raw = _take(Encoded(raws[feature.name], full.bad, full.offsets), rows).values
                used = Vocab(raw[raw != ""])
                written.append(self._save_vocab(feature, used, out))
                values = np.where(raw != "", used.encode(raw), OOV)
            if enc.offsets is None:
                table_ = np.full(
                    len(user_vocab), OOV if feature.is_categorical else 0, values.dtype
                )
                if not feature.is_categorical:
                    table_[:] = feature.fill or 0.0
                table_[index] = values
                table_[0] = 0
            else:  # ragged per user index: lengths, then offsets
                lengths = np.zeros(len(user_vocab), np.int64)
                lengths[index] = np.diff(enc.offsets)
                offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                table_ = np.zeros(int(offsets[-1]), np.int64)
                for k, u in enumerate(index):
                    table_[offsets[u] : offsets[u + 1]] = values[
                        enc.offsets[k] : enc.offsets[k + 1]
                    ]
                written.append(self._save(out, f"user_{feature.name}.offsets.npy", offsets))
            written.append(self._save(out, f"user_{feature.name}.npy", table_))
            self._size(feature)
        return written

    # --------------------------------------------------------------- samples
    def fill_samples(
        self, samples: Samples, out: Path, events_extra: dict[str, np.ndarray]
    ) -> None:
        """samples.features: each extended feature's shard columns, in schema order (event
        features from `events_extra`, the samples' own rows of RawEvents.extra)."""
        columns: dict[str, Any] = {}
        for feature in self.schema.features:
            if feature.kind == "id" or feature.name == "category":
                continue
            if feature.source == "event":
                columns[feature.name] = events_extra[feature.name]
            elif feature.source == "item":
                table = np.load(out / FEATURES_DIR / f"item_{feature.name}.npy", mmap_mode="r")
                columns[feature.name] = np.asarray(table[samples.item])
                if feature.kind == "sequence":
                    columns[feature.history_column] = np.asarray(table[samples.hist_items])
            else:
                table = np.load(out / FEATURES_DIR / f"user_{feature.name}.npy", mmap_mode="r")
                path = out / FEATURES_DIR / f"user_{feature.name}.offsets.npy"
                if path.exists():
                    offsets = np.load(path)
                    users = samples.user
                    lengths = offsets[users + 1] - offsets[users]
                    index = _ragged(offsets, users, lengths)
                    columns[feature.name] = (
                        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                        np.asarray(table[index]),
                    )
                else:
                    columns[feature.name] = np.asarray(table[samples.user])
        samples.features = columns

    # ------------------------------------------------------------- manifest
    def manifest_schema(self) -> dict[str, Any]:
        return self.schema.with_vocab_sizes(self.vocab_sizes).as_dict()

    def table_sizes(self) -> dict[str, int]:
        """Feature name -> rows, for the manifest's vocab_sizes (categorical features)."""
        schema = self.schema.with_vocab_sizes(self.vocab_sizes)
        return {
            f.name: f.rows
            for f in schema.features
            if f.kind in ("sparse", "sequence") and f.name != "category"
        }

    def _size(self, feature: Feature) -> None:
        if feature.vocab != "auto" and feature.is_categorical:
            self.vocab_sizes[feature.name] = feature.rows

    def _save_vocab(self, feature: Feature, vocab: Vocab, out: Path) -> str:
        path = f"vocab/{feature.name}.parquet"
        vocab.save(out / path)
        self.vocab_sizes[feature.name] = len(vocab)
        return path

    @staticmethod
    def _save(out: Path, name: str, array: np.ndarray) -> str:
        (out / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
        np.save(out / FEATURES_DIR / name, array)
        return f"{FEATURES_DIR}/{name}"


def _ragged(offsets: np.ndarray, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.repeat(offsets[rows] - starts, lengths) + np.arange(
        int(lengths.sum()), dtype=np.int64
    )
