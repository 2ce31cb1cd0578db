"""manifest.json: what a prepared folder holds (docs/data-format.md, "manifest.json").

The manifest is written last, into a complete folder, and lists the size and sha256 of
every other file of the folder under `files`; its own `checksum` covers everything else.
`verify_folder` checks both (sizes always, hashes when asked), `read_manifest` is the
quiet form data_prep uses to decide whether a folder is up to date.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from data_prep.integrity import (
    IntegrityError,
    file_sha256,
    safe_path,
    verify_files,
    write_json_atomic,
)

MANIFEST = "manifest.json"
__all__ = [
    "MANIFEST",
    "IntegrityError",
    "checksum",
    "file_sha256",
    "input_record",
    "listed_paths",
    "read_manifest",
    "verify_folder",
    "write_manifest",
]


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
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def listed_paths(manifest: dict[str, Any]) -> list[str]:
    """The files the trainer reads: every split's shards, the multimodal table and the
    per-modality tables (`modalities`, when the items have several)."""
    files = [p for paths in (manifest.get("splits") or {}).values() for p in paths]
    files.append((manifest.get("item_embeddings") or {}).get("path", "item_mm.npy"))
    files += [entry["path"] for entry in manifest.get("modalities") or []]
    return files


def load_manifest(out_dir: Path) -> dict[str, Any]:
    """Parse `out_dir/manifest.json`; IntegrityError naming it when absent or not JSON."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{path}: no manifest; run `python -m data_prep ...` first")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise IntegrityError(f"{path}: not a JSON manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path}: not a JSON object")
    return manifest


def verify_folder(out_dir: Path, full: bool = False) -> dict[str, Any]:
    """The manifest of a prepared folder, once its checksum and every file it lists are
    checked (sizes; sha256 too when `full`); IntegrityError naming the first problem."""
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    path = out_dir / MANIFEST
    if manifest.get("checksum") != checksum(manifest):
        raise IntegrityError(f"{path}: checksum mismatch: the manifest was edited or damaged")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise IntegrityError(
            f"{path}: lists no file checksums (written before checksums were added); "
            "run the data-prep job again"
        )
    for name in listed_paths(manifest):
        safe_path(out_dir, name, "path in the manifest")
        if name not in files:
            raise IntegrityError(f"{path}: {name!r} is used but has no checksum")
    verify_files(out_dir, files, full=full, what="manifest")
    return manifest


def read_manifest(out_dir: Path, full: bool = False) -> dict[str, Any] | None:
    """The manifest if present, intact and matching every file it lists; else None."""
    try:
        return verify_folder(out_dir, full=full)
    except IntegrityError:
        return None
