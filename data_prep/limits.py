"""Bounds on what one input record may hold, and the checks of the command-line values.

Every record beyond a bound is rejected with its reason (docs/data-prep.md, "Bad
records"); nothing is truncated or clamped:

| bound | default | reason |
|---|---|---|
| `--max-id-length` characters of a user, item or category id | 256 | `id_too_long` |
| `--max-line-bytes` bytes of one line (JSON lines, CSV) | 1 MiB | `line_too_long` |
| `--max-depth` nesting of a JSON / Python-literal record | 16 | `too_deep` |
| `--min-timestamp` .. `--max-timestamp` seconds | 0 .. the job's start + 1 day | `timestamp_out_of_range` |

Ids are checked before any fixed-width array is built, so memory per record is bounded
by the id limit, whatever the longest id of the input is. The default timestamp window
ends one day after the job started (a log cannot hold later events). `manifest["limits"]`
records the bounds: the default end as that rule (DEFAULT_MAX_TIMESTAMP_RULE), not as the
clock's value, so the same inputs and settings give the same manifest and checksum
whenever they are prepared (a record the rule rejects is counted in the manifest's
`records`, so its effect is recorded either way); a given --max-timestamp as its value.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from typing import Any

DAY_SECONDS = 86_400
DEFAULT_MAX_ID_LENGTH = 256
DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


DEFAULT_MAX_TIMESTAMP_RULE = "one day after the job started"


def default_max_timestamp() -> int:
    return int(time.time()) + DAY_SECONDS


@dataclass(frozen=True)
class Limits:
    """The bounds; `max_timestamp` None (the default) resolves to one day after now."""

    max_id_length: int = DEFAULT_MAX_ID_LENGTH
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    min_timestamp: int = 0
    max_timestamp: int | None = None  # resolved in __post_init__
    max_timestamp_is_default: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        defaulted = self.max_timestamp is None
        object.__setattr__(self, "max_timestamp_is_default", defaulted)
        if defaulted:
            object.__setattr__(self, "max_timestamp", default_max_timestamp())
        for name in ("max_id_length", "max_line_bytes", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.min_timestamp > self.max_timestamp:
            raise ValueError(
                f"min_timestamp {self.min_timestamp} > max_timestamp {self.max_timestamp}"
            )

    def timestamp_ok(self, ts: int) -> bool:
        return self.min_timestamp <= ts <= self.max_timestamp

    def as_dict(self) -> dict[str, Any]:
        """The bounds as the manifest records them (the default end as its rule)."""
        out = asdict(self)
        out.pop("max_timestamp_is_default")
        if self.max_timestamp_is_default:
            out["max_timestamp"] = DEFAULT_MAX_TIMESTAMP_RULE
        return out


# ---------------------------------------------------------------- argument checks
def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def at_least_two(text: str) -> int:
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 2 buckets are needed")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def timestamp(text: str) -> int:
    value = _int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in int64 seconds")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def add_limit_arguments(parser: argparse.ArgumentParser, lines: bool = True) -> None:
    group = parser.add_argument_group("input bounds (a record beyond one is rejected)")
    group.add_argument(
        "--max-id-length",
        type=positive_int,
        default=DEFAULT_MAX_ID_LENGTH,
        help="characters of a user, item or category id (%(default)s)",
    )
    if lines:
        group.add_argument(
            "--max-line-bytes",
            type=positive_int,
            default=DEFAULT_MAX_LINE_BYTES,
            help="bytes of one input line (%(default)s)",
        )
        group.add_argument(
            "--max-depth",
            type=positive_int,
            default=DEFAULT_MAX_DEPTH,
            help="nesting depth of one JSON record (%(default)s)",
        )
    group.add_argument(
        "--min-timestamp", type=timestamp, default=0, help="earliest event, seconds (0)"
    )
    group.add_argument(
        "--max-timestamp",
        type=timestamp,
        default=None,
        help="latest event, seconds (default: one day after the job starts)",
    )


def limits_from_args(args: argparse.Namespace) -> Limits:
    limits = Limits(
        max_id_length=args.max_id_length,
        max_line_bytes=getattr(args, "max_line_bytes", DEFAULT_MAX_LINE_BYTES),
        max_depth=getattr(args, "max_depth", DEFAULT_MAX_DEPTH),
        min_timestamp=args.min_timestamp,
        max_timestamp=args.max_timestamp,
    )
    return limits
