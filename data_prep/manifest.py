"""manifest.json: what a prepared folder holds (docs/data-format.md, "manifest.json")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def input_record(path: Path) -> dict[str, Any]:
    """The manifest's `inputs` entry of one input file."""
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its `checksum` field (canonical JSON, sorted keys)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the checksum and write `out_dir/manifest.json` atomically; returns the manifest."""
    manifest = {**manifest, "checksum": checksum(manifest)}
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out_dir / MANIFEST)
    return manifest


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest if present, intact (checksum matches) and its files exist; else None."""
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if manifest.get("checksum") != checksum(manifest):
        return None
    files = [p for paths in manifest.get("splits", {}).values() for p in paths]
    files.append(manifest.get("item_embeddings", {}).get("path", "item_mm.npy"))
    if not all((out_dir / p).exists() for p in files):
        return None
    return manifest
