"""`python -m data_prep embed-items`: add an mm_vector column to an item table from titles.

Reads a Parquet or CSV item table (item_id, title, any other columns, kept as they are)
and writes it as Parquet with `mm_vector` (list<float32>, L2-normalised): the input of
`python -m data_prep logs --items`. Items with a blank title get a null vector, which the
logs job turns into a zero vector (similarity 0). Embeddings are cached, so a re-run with
the same titles and settings does not run the encoder again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow.parquet as pq

from data_prep.embed import add_embed_arguments, add_title_vectors, embed_settings
from data_prep.integrity import atomic_file
from data_prep.tables import read_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=Path, required=True, help="item table (.parquet or .csv)")
    parser.add_argument("--out", type=Path, required=True, help="output Parquet file")
    parser.add_argument("--title-column", default="title")
    add_embed_arguments(parser, ("minilm", "hashed"))


def main(args: argparse.Namespace, command: str) -> None:
    start = time.perf_counter()
    table, source, blank = add_title_vectors(
        read_table(args.items), embed_settings(args), args.title_column
    )
    with atomic_file(args.out) as tmp:  # a killed run never leaves a half-written table
        pq.write_table(table, tmp)
    print(
        f"wrote {args.out}: {table.num_rows:,} items, {blank:,} blank titles (null vector), "
        f"{time.perf_counter() - start:.1f} s ({source})"
    )
