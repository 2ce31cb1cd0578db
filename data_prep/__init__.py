"""Data preparation jobs: raw logs -> the prepared format of docs/data-format.md.

Run `python -m data_prep --help` for the jobs. The modules each do one thing:

- `rejects`: bad-record accounting (rejects.jsonl, strict mode, read = used + rejected).
- `vocab`: raw ids -> dense indices (0 pad, 1 OOV, 2.. sorted raw ids).
- `ragged`: helpers for variable-length lists stored as offsets + flat values.
- `history`: per-event behaviour histories (temporal click-log and next-item protocols).
- `similarity`: target/history cosine similarities and equal-frequency bucket boundaries.
- `writer`: sharded Parquet sample files.
- `manifest`: manifest.json with its checksum.
- `synthetic`: the raw-log generator behind the embedded default dataset.
- `logs_job`: the generic click-log job; `default_job`: the embedded default dataset.
"""

SCHEMA_VERSION = 1
