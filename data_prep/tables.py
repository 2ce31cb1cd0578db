"""Reading tabular inputs: Parquet or CSV files, one file or a glob."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq


def read_table(path: Path, binary_strings: bool = False) -> pa.Table:
    """Parquet (.parquet) or CSV (.csv, .csv.gz) -> Arrow table.

    With `binary_strings`, CSV columns are read as bytes so that a non-UTF-8 value rejects
    one record instead of failing the file.
    """
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if ".csv" in path.suffixes:
        options = pcsv.ConvertOptions()
        if binary_strings:
            names = pcsv.open_csv(path).schema.names
            options = pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.binary()))
        return pcsv.read_csv(path, convert_options=options)
    raise ValueError(f"{path}: expected a .parquet or .csv file")


def expand_inputs(pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no interaction file matches {pattern!r}")
    return paths


def iter_batches(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """Stream a Parquet or CSV file in tables of about `batch_rows` rows (CSV: bytes columns)."""
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield pa.Table.from_batches([batch])
        return
    if ".csv" not in path.suffixes:
        raise ValueError(f"{path}: expected a .parquet or .csv file")
    names = pcsv.open_csv(path).schema.names
    options = pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.binary()))
    for batch in pcsv.open_csv(path, convert_options=options):
        yield pa.Table.from_batches([batch])
