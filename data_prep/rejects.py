"""Bad-record accounting shared by every job.

Every input record is either used, repaired (used after a documented fix, e.g. a zero
vector for an empty title) or rejected with a reason. Rejected records go to
`rejects.jsonl`, one JSON object a line: file, line, reason, excerpt. The job checks
`read == used + sum(rejected)` before it writes its manifest.

In strict mode the first bad record (rejected or repaired) raises `BadRecordError`
naming the file, the line and the problem.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

EXCERPT_CHARS = 200


class DataPrepError(ValueError):
    """An input the job cannot use, with a message naming the file (and line): the command
    line prints it without a traceback and exits with status 1."""


class BadRecordError(DataPrepError):
    """A bad input record in strict mode."""


class InputError(DataPrepError):
    """A whole input that cannot be read (damaged, truncated, wrong columns, no records)."""


class AccountingError(RuntimeError):
    """Records read != records used + records rejected: a bug in the job, not in the data."""


def excerpt(record: Any) -> str:
    """A short printable excerpt of a record (bytes decoded with replacement)."""
    if isinstance(record, bytes):
        record = record.decode("utf-8", errors="replace")
    text = record if isinstance(record, str) else repr(record)
    text = text.strip()
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


class RejectLog:
    """Counts and records rejected and repaired input records.

    Use as a context manager so that `rejects.jsonl` is closed. `read` and `used` are
    counted by the job through `add_read` / `add_used`.
    """

    def __init__(self, path: Path | None, strict: bool = False) -> None:
        self.path = path
        self.strict = strict
        self.read = 0
        self.used = 0
        self.rejected: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()
        self._out: TextIO | None = None

    def __enter__(self) -> RejectLog:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.path.open("w", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def add_read(self, n: int) -> None:
        self.read += int(n)

    def add_used(self, n: int) -> None:
        self.used += int(n)

    def reject(self, file: str, line: int, reason: str, record: Any) -> None:
        """Reject one record. `line` is 1-based (row number for columnar files)."""
        self._fail_if_strict(file, line, reason, record)
        self.rejected[reason] += 1
        if self._out is not None:
            entry = {"file": file, "line": int(line), "reason": reason, "excerpt": excerpt(record)}
            self._out.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def repair(self, file: str, line: int, reason: str, record: Any) -> None:
        """Count a record that is used after a documented fix (not written to rejects)."""
        self._fail_if_strict(file, line, reason, record)
        self.repaired[reason] += 1

    def _fail_if_strict(self, file: str, line: int, reason: str, record: Any) -> None:
        if self.strict:
            raise BadRecordError(f"{file}:{line}: {reason}: {excerpt(record)}")

    def as_manifest(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "used": self.used,
            "rejected": dict(sorted(self.rejected.items())),
            "repaired": dict(sorted(self.repaired.items())),
        }


def merge_records(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum `RejectLog.as_manifest()` dicts of several tasks."""
    rejected: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    for part in parts:
        rejected.update(part["rejected"])
        repaired.update(part["repaired"])
    return {
        "read": sum(part["read"] for part in parts),
        "used": sum(part["used"] for part in parts),
        "rejected": dict(sorted(rejected.items())),
        "repaired": dict(sorted(repaired.items())),
    }


def check_records(records: dict[str, Any]) -> None:
    """Raise `AccountingError` unless read == used + rejected."""
    rejected = sum(records["rejected"].values())
    if records["read"] != records["used"] + rejected:
        raise AccountingError(
            f"records read ({records['read']}) != used ({records['used']}) + rejected ({rejected}: {records['rejected']})"
        )


def summary(records: dict[str, Any]) -> str:
    """Human-readable record counts."""
    rejected = sum(records["rejected"].values())
    lines = [f"records: read {records['read']:,}, used {records['used']:,}, rejected {rejected:,}"]
    lines += [f"  rejected {reason}: {n:,}" for reason, n in records["rejected"].items()]
    lines += [f"  repaired {reason}: {n:,}" for reason, n in records["repaired"].items()]
    return "\n".join(lines)
