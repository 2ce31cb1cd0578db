"""Reading tabular inputs: Parquet or CSV files, one file or a glob."""

from __future__ import annotations

import glob
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
