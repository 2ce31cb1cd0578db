"""python scripts/compare_prepared.py REF NEW: prepared folders equal (manifest and every file)."""

import hashlib
import json
import sys
from pathlib import Path

ref, new = Path(sys.argv[1]), Path(sys.argv[2])
bad = 0
for job in ("amazon", "default", "logs"):
    a = json.loads((ref / job / "manifest.json").read_text())
    b = json.loads((new / job / "manifest.json").read_text())
    for key in sorted(set(a) | set(b)):
        if key in ("created_by", "inputs", "checksum"):  # checksum: of the manifest itself
            continue
        if a.get(key) != b.get(key):
            print(job, "manifest differs:", key)
            bad += 1
    fa = sorted(
        p.relative_to(ref / job).as_posix()
        for p in (ref / job).rglob("*")
        if p.is_file() and "raw/" not in p.relative_to(ref / job).as_posix()
    )
    fb = sorted(
        p.relative_to(new / job).as_posix()
        for p in (new / job).rglob("*")
        if p.is_file() and "raw/" not in p.relative_to(new / job).as_posix()
    )
    if fa != fb:
        print(job, "file lists differ", set(fa) ^ set(fb))
        bad += 1
    for f in fa:
        if f == "manifest.json" or f not in fb:
            continue
        if (
            hashlib.sha256((ref / job / f).read_bytes()).digest()
            != hashlib.sha256((new / job / f).read_bytes()).digest()
        ):
            print(job, "file differs:", f)
            bad += 1
    print(job, "compared", len(fa), "files")
print("EQUAL" if bad == 0 else f"{bad} DIFFERENCES")
sys.exit(bad != 0)
