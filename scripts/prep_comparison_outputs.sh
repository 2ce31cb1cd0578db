#!/bin/bash
# scripts/prep_comparison_outputs.sh CODE_DIR OUT_DIR [extra args for logs/amazon]: the
# comparison outputs of one checkout (compare two with scripts/compare_prepared.py).
# The Amazon files are read from the checkout's ../shared; PYTHON overrides the interpreter.
set -e
CODE=$(cd "$1" && pwd); OUT=$2; shift 2; cd "$CODE"
PY="nice -n 10 env PYTHONPATH=$CODE ${PYTHON:-$CODE/.venv/bin/python} -m data_prep"
S=$(cd "$CODE/../shared/data/amazon-electronics-2014" && pwd)
mkdir -p "$OUT"
$PY amazon --reviews $S/reviews_Electronics_5.json.gz --meta $S/meta_Electronics.json.gz \
  --out $OUT/amazon --encoder hashed --partitions 3 "$@" > $OUT/amazon.log 2>&1
$PY default --out $OUT/default > $OUT/default.log 2>&1
$PY synthetic-industrial --out $OUT/ind --samples 30000 --users 300 --items 3000 --files 3 --raw-only > /dev/null
$PY logs --interactions "$OUT/ind/raw/interactions-*.parquet" --items $OUT/ind/raw/items.parquet \
  --out $OUT/logs --partitions 4 --max-history 100 "$@" > $OUT/logs.log 2>&1
