"""python scripts/measure_serial_steps.py RAW_DIR SCRATCH: CPU time of the driver's serial steps
(item load, sha256 of the item table, the user vocabulary from 1M users) on a raw folder of
`python -m data_prep synthetic-industrial --raw-only` (docs/data-prep.md, "Measured")."""

import os
import shutil
import sys
from pathlib import Path

import numpy as np

from data_prep import user_vocab as uv
from data_prep.embed import EmbedSettings
from data_prep.integrity import file_sha256
from data_prep.logs_job import load_items
from data_prep.rejects import RejectLog
from data_prep.scatter import user_partition


def cpu():
    t = os.times()
    return t.user + t.system


shutil.rmtree(Path(sys.argv[2]) / "spill", ignore_errors=True)
a = cpu()
with RejectLog(Path(sys.argv[2]) / "r.jsonl", False) as r:
    items = load_items(
        Path(sys.argv[1]) / "items.parquet", EmbedSettings(), r, spill=Path(sys.argv[2]) / "spill"
    )
b = cpu()
print(f"item load, 4M x 64: {b - a:.1f} CPU-s")
file_sha256(Path(sys.argv[1]) / "items.parquet")
c = cpu()
print(
    f"sha256 of items.parquet ({os.path.getsize(Path(sys.argv[1]) / 'items.parquet') / 1e9:.2f} GB): {c - b:.1f} CPU-s"
)
n, P = 1_000_000, 16
ids = np.array([f"u{i}" for i in range(n)])
part = user_partition(ids, P)
w = Path(sys.argv[2]) / "users"
shutil.rmtree(w, ignore_errors=True)
(w / "clean").mkdir(parents=True)
for p in range(P):
    np.save(uv.users_file(w, p), np.sort(ids[part == p]))
d = cpu()
cuts = uv.splitters(w, P, P)
e = cpu()
res = [t.run() for t in uv.range_tasks(w, P, cuts)]
f = cpu()
uv.write_vocab(w, len(res), w / "user.parquet")
g = cpu()
print(
    f"users 1M: splitters {e - d:.2f} CPU-s (driver), range tasks {f - e:.2f} CPU-s (parallel, all {len(res)}), vocab file {g - f:.2f} CPU-s (driver)"
)
