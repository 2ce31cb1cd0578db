"""Arrow column -> numpy conversions that flag bad values instead of failing the file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INTEGER_PATTERN = r"^\s*[+-]?\d+\s*$"


def as_strings(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """String or binary column (N,) -> (values str (N,), missing (N,), not_utf8 (N,)).

    Missing = null or blank. Non-UTF-8 values are flagged (not missing) and blanked.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        try:
            column = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _decode_each(column.to_pylist())
    blank = pc.equal(pc.utf8_trim_whitespace(column), "").fill_null(True)
    values = column.fill_null("").to_numpy(zero_copy_only=False).astype(str)
    return values, blank.to_numpy(zero_copy_only=False), np.zeros(len(values), dtype=bool)


def _decode_each(values: list[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow path of `as_strings` for a binary column holding some non-UTF-8 values."""
    n = len(values)
    out = np.empty(n, dtype=object)
    missing = np.zeros(n, dtype=bool)
    not_utf8 = np.zeros(n, dtype=bool)
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                not_utf8[i] = True
                value = ""
        elif value is not None and not isinstance(value, str):
            value = str(value)
        if value is None or (not value.strip() and not not_utf8[i]):
            missing[i] = True
            value = ""
        out[i] = value
    return out.astype(str), missing, not_utf8


def as_int64(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer-like column (N,) -> (values int64 (N,), missing (N,), malformed (N,)).

    Accepts integer, integral float, timestamp (converted to seconds) and string columns.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    missing = column.is_null().to_numpy(zero_copy_only=False)
    kind = column.type
    if pa.types.is_timestamp(kind):
        column = pc.cast(pc.cast(column, pa.timestamp("s"), safe=False), pa.int64())
        kind = column.type
    if pa.types.is_integer(kind):
        values = column.fill_null(0).to_numpy().astype(np.int64)
        return values, missing, np.zeros(len(values), dtype=bool)
    if pa.types.is_floating(kind):
        raw = column.fill_null(0).to_numpy().astype(np.float64)
        malformed = ~missing & (~np.isfinite(raw) | (raw != np.round(raw)))
        return np.where(malformed, 0, raw).astype(np.int64), missing, malformed
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        column = pc.cast(column, pa.string(), safe=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        text = pc.utf8_trim_whitespace(column)
        missing |= pc.equal(text, "").fill_null(True).to_numpy(zero_copy_only=False)
        ok = (
            pc.match_substring_regex(text, INTEGER_PATTERN)
            .fill_null(False)
            .to_numpy(zero_copy_only=False)
        )
        malformed = ~missing & ~ok
        clean = pc.if_else(pa.array(ok), text, "0")
        return pc.cast(clean, pa.int64()).to_numpy().astype(np.int64), missing, malformed
    raise TypeError(f"cannot read a {kind} column as integers")
