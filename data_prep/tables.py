"""Reading inputs: JSON-lines text, Parquet or CSV files, one file or a glob.

Every reader here knows the line of each record and never fails on one bad record:

- `read_lines`: the lines of a plain or gzip text file, bounded in length. Line ends
  are `\\n`, `\\r\\n` or `\\r` (universal newlines), a UTF-8 byte-order mark at the start
  is dropped, blank lines are not records. A line longer than the limit is reported as
  `None` (and skipped without being held in memory).
- `iter_csv`: CSV rows as Arrow tables of `binary` columns with the 1-based line where
  each row starts (a quoted value may span lines). A row with the wrong number of fields
  or a line beyond the limit is reported through `on_bad` and is not in the tables.
- Parquet: row groups in batches; `line` is the 1-based row number.

A file that cannot be read at all (truncated gzip, not Parquet, no CSV header) raises
`InputError` naming it and, when known, the line where it broke.
"""

from __future__ import annotations

import csv
import glob
import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.limits import DEFAULT_MAX_LINE_BYTES
from data_prep.rejects import InputError

BOM = b"\xef\xbb\xbf"
READ_CHUNK = 1 << 20
# Errors of a damaged compressed stream or file (gzip.BadGzipFile is an OSError).
STREAM_ERRORS = (EOFError, OSError, zlib.error)


@dataclass
class Batch:
    """Rows of one input file: an Arrow table and the 1-based line (or row) of each row."""

    table: pa.Table
    lines: np.ndarray  # (N,) int64


BadRow = Callable[[int, str, str], None]  # (line, reason, excerpt)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_lines(
    path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, keep_blank: bool = False
) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line without its end) of the non-blank lines of a text file
    (plain or .gz); `None` instead of the bytes for a line longer than `max_line_bytes`."""
    number = 0
    carry = b""
    skipping = False  # inside a line already known to be too long
    first = True
    try:
        with _open(path) as f:
            while True:
                chunk = f.read(READ_CHUNK)
                if first and chunk:
                    while len(chunk) < len(BOM) and BOM.startswith(chunk):
                        more = f.read(READ_CHUNK)
                        if not more:
                            break
                        chunk += more
                    if chunk.startswith(BOM):
                        chunk = chunk[len(BOM) :]
                    first = False
                data = carry + chunk
                pieces = data.splitlines(keepends=True)
                carry = b""
                if (
                    chunk
                    and pieces
                    and (not pieces[-1].endswith((b"\n", b"\r")) or pieces[-1].endswith(b"\r"))
                ):
                    carry = pieces.pop()  # incomplete, or a `\r` that a `\n` may follow
                for piece in pieces:
                    number += 1
                    if skipping:
                        skipping = False
                        yield number, None
                        continue
                    line = piece.rstrip(b"\r\n")
                    if len(line) > max_line_bytes:
                        yield number, None
                    elif keep_blank or line.strip():
                        yield number, line
                if len(carry) > max_line_bytes:
                    carry, skipping = b"", True
                if not chunk:
                    break
    except STREAM_ERRORS as error:
        raise InputError(
            f"{path.name}: cannot be read past line {number} ({type(error).__name__}: {error}); "
            "the file is truncated or damaged"
        ) from None
    if skipping:
        yield number + 1, None


def iter_csv(
    path: Path,
    batch_rows: int,
    on_bad: BadRow,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Batch]:
    """CSV rows (header first) as tables of binary columns, with each row's first line.

    The bytes are decoded as latin-1 for tokenising (one character per byte, so quotes
    and separators are found exactly as in UTF-8) and re-encoded: values keep their bytes
    and UTF-8 is checked per value later. A blank line is not a record.
    """
    too_long: list[int] = []

    def text_lines() -> Iterator[str]:
        for number, raw in read_lines(path, max_line_bytes, keep_blank=True):
            if raw is None:
                too_long.append(number)
                yield "\n"
            else:
                yield raw.decode("latin-1") + "\n"

    def report_too_long() -> None:
        for number in too_long:
            on_bad(number, "line_too_long", f"line {number} is longer than {max_line_bytes} bytes")
        too_long.clear()

    csv.field_size_limit(max(max_line_bytes, 1 << 16))
    reader = csv.reader(text_lines(), strict=False)
    header: list[str] | None = None
    consumed = 0  # lines read so far: every line is fed to the reader, blank ones too
    columns: list[list[bytes]] = []
    lines: list[int] = []
    yielded = False
    while True:
        start = consumed + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            consumed = reader.line_num
            report_too_long()
            on_bad(start, "malformed", f"CSV error: {error}")
            continue
        consumed = reader.line_num
        report_too_long()
        if not row:
            continue  # blank line
        if header is None:
            header = row
            columns = [[] for _ in header]
            continue
        if len(row) != len(header):
            text = ",".join(row).encode("latin-1")
            on_bad(start, "malformed", f"{len(row)} fields, the header has {len(header)}: {text!r}")
            continue
        for values, value in zip(columns, row):
            values.append(value.encode("latin-1"))
        lines.append(start)
        if len(lines) >= batch_rows:
            yield _csv_batch(header, columns, lines)
            yielded = True
            columns, lines = [[] for _ in header], []
    report_too_long()
    if header is None:
        raise InputError(f"{path.name}: no CSV header (the file is empty)")
    if lines or not yielded:
        yield _csv_batch(header, columns, lines)


def _csv_batch(header: list[str], columns: list[list[bytes]], lines: list[int]) -> Batch:
    names = [name.encode("latin-1").decode("utf-8", errors="replace").strip() for name in header]
    table = pa.table({n: pa.array(c, pa.binary()) for n, c in zip(_unique(names), columns)})
    return Batch(table, np.asarray(lines, dtype=np.int64))


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}.{count}")
    return out


def is_csv(path: Path) -> bool:
    return ".csv" in path.suffixes


def iter_batches(
    path: Path,
    batch_rows: int,
    on_bad: BadRow | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Batch]:
    """Stream a Parquet or CSV file in batches of about `batch_rows` rows."""
    if path.suffix == ".parquet":
        first = 1
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                yield Batch(table, np.arange(first, first + table.num_rows, dtype=np.int64))
                first += table.num_rows
        except (pa.ArrowException, OSError) as error:
            raise InputError(
                f"{path.name}: not a readable Parquet file (after row {first - 1}): {error}"
            ) from None
        return
    if not is_csv(path):
        raise InputError(f"{path}: expected a .parquet or .csv file")
    yield from iter_csv(path, batch_rows, on_bad or _raise_bad(path), max_line_bytes)


def _raise_bad(path: Path) -> BadRow:
    def fail(line: int, reason: str, excerpt: str) -> None:
        raise InputError(f"{path.name}:{line}: {reason}: {excerpt}")

    return fail


def read_batch(
    path: Path, on_bad: BadRow | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Batch:
    """A whole Parquet or CSV file as one Batch (CSV: binary columns)."""
    batches = list(iter_batches(path, 1 << 62, on_bad, max_line_bytes))
    if not batches:  # an empty Parquet file
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{path.name}: not a readable Parquet file: {error}") from None
        return Batch(schema.empty_table(), np.zeros(0, dtype=np.int64))
    table = pa.concat_tables([b.table for b in batches])
    return Batch(table, np.concatenate([b.lines for b in batches]))


def read_table(path: Path) -> pa.Table:
    """Parquet (.parquet) or CSV (.csv, .csv.gz) -> Arrow table (CSV: binary columns; a bad
    CSV row raises InputError naming its line)."""
    return read_batch(path).table


def expand_inputs(pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        raise InputError(f"no interaction file matches {pattern!r}")
    folders = [p for p in paths if not p.is_file()]
    if folders:
        raise InputError(f"{folders[0]}: not a file")
    return paths
