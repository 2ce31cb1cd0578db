"""python scripts/bench_table.py FILE.json ...: the bench_scale reports as a Markdown table."""

import json
import sys

print(
    "| samples (rows) | items | workers | engine | rows / CPU-s | CPU s | wall s | peak RSS, largest process | peak RSS, tree | load avg after |"
)
print("|---|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    r = json.load(open(path))
    g = r["generator"]
    print(
        f"| {g['samples'] / 1e6:g}M ({r['rows'] / 1e6:.2f}M) | {g['items'] / 1e6:g}M | {r['workers']} | {r['engine']} "
        f"| {r['rows_per_cpu_s']:,} | {r['cpu_s']} | {r['wall_s']} | {r['peak_rss_gb']['worker']} GB "
        f"| {r['peak_rss_gb']['tree']} GB | {r['load_average_1min_after']:.1f} |"
    )
