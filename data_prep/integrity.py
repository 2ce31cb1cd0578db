"""Checksums, safe paths and atomic outputs: one helper for data folders, checkpoints and
serving artifacts (docs/reliability.md).

- `file_entry` / `checksum_files`: `{"relative/path": {"bytes": N, "sha256": HEX}}`, the
  checksum table a data folder's manifest, a checkpoint's `checksums.json` and an exported
  artifact's `serving.json` all carry.
- `verify_files`: checks such a table against a folder, sizes always and sha256 when
  `full`; the first mismatch raises `IntegrityError` naming the file.
- `safe_path`: a relative path read from a pointer or a manifest, resolved inside its own
  folder; anything else (absolute, `..`, a link leading out) is refused.
- `write_json_atomic`, `atomic_file`, `staging_folder` + `commit_folder`: outputs are
  written under a temporary name beside the target and renamed into place when complete.

Standard library only, so the serving job (torch + pyarrow) can use it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A file that does not match its checksum table, or a path that leads outside its folder."""


def file_sha256(path: Path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """`{"bytes": N, "sha256": HEX}` of one file."""
    path = Path(path)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def safe_path(folder: Path, name: object, what: str = "path") -> Path:
    """`folder / name` for a relative path `name` read from a pointer or a manifest.

    Refuses (IntegrityError naming `what`) anything that is not a plain relative path
    staying inside `folder` once links are resolved: absolute paths, `..`, drive letters,
    backslashes, NUL bytes, links leading out.
    """
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise IntegrityError(f"{folder}: {what} {name!r} is not a relative path")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or ":" in pure.parts[0]:
        raise IntegrityError(f"{folder}: {what} {name!r} leads outside the folder")
    path = folder.joinpath(*pure.parts)
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as error:  # a link loop
        raise IntegrityError(f"{folder}: {what} {name!r} cannot be resolved: {error}") from None
    if not inside:
        raise IntegrityError(f"{folder}: {what} {name!r} leads outside the folder (a link)")
    return path


def checksum_files(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Checksum table of the files `names` (relative, POSIX separators) under `folder`."""
    return {name: file_entry(safe_path(folder, name)) for name in sorted(set(names))}


def list_files(folder: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Every regular file under `folder` (relative POSIX paths, sorted), minus `exclude`."""
    folder, skip = Path(folder), set(exclude)
    names = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            name = path.relative_to(folder).as_posix()
            if name not in skip:
                names.append(name)
    return sorted(names)


def verify_files(
    folder: Path, entries: object, full: bool = False, what: str = "checksum table"
) -> None:
    """Check every file of a checksum table: present, the recorded size and, when `full`,
    the recorded sha256. Raises IntegrityError naming the first bad file."""
    folder = Path(folder)
    if not isinstance(entries, dict) or not entries:
        raise IntegrityError(f"{folder}: the {what} lists no files")
    for name, entry in entries.items():
        path = safe_path(folder, name, f"file of the {what}")
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
            raise IntegrityError(f"{path}: the {what} has no size for it")
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in the {what})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise IntegrityError(
                f"{path}: {size} bytes, the {what} says {entry['bytes']}: truncated, "
                "half-written or replaced"
            )
        if full and file_sha256(path) != entry.get("sha256"):
            raise IntegrityError(
                f"{path}: sha256 differs from the {what}: damaged or modified after it was written"
            )


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON to a temporary file beside `path`, flush it to disk and rename it."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` when the block succeeds,
    removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), Path(path).open("rb") as f:
        os.fsync(f.fileno())


def staging_folder(target: Path) -> Path:
    """The temporary folder a job builds `target` in: `.NAME.partial` beside it. The name is
    fixed so every rank of a distributed job finds it; a leftover one (a killed run) is
    emptied by the next run. Readers never look at it."""
    target = Path(os.path.abspath(target))  # `.` has no name; its parent does
    return target.parent / f".{target.name}.partial"


def fresh_staging_folder(target: Path) -> Path:
    stage = staging_folder(target)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def commit_folder(stage: Path, target: Path, outputs: Iterable[str], marker: str) -> None:
    """Move a complete `stage` folder into `target`, `marker` (the manifest) last.

    `target` absent: one rename. Otherwise (an existing folder is kept, so a shell whose
    current folder it is keeps working) `target` may hold other things (raw
    inputs, a cache) that must survive: the old `marker` is removed first, so from then on
    the folder is refused by every reader until the new `marker` lands; each entry of the
    stage replaces its namesake; the `outputs` names the stage did not produce this time
    (a split that no longer exists) are removed; the new `marker` is renamed in last.
    """
    stage, target = Path(stage), Path(os.path.abspath(target))
    if not target.exists() and not target.is_symlink():
        os.replace(stage, target)
        return
    if not target.is_dir():
        raise IntegrityError(f"{target}: exists and is not a folder")
    old = target / marker
    if old.exists() or old.is_symlink():
        old.unlink()
    produced = {p.name for p in stage.iterdir()}
    for name in sorted(produced - {marker}):
        _remove(target / name)
        os.replace(stage / name, target / name)
    for name in set(outputs) - produced:
        _remove(target / name)
    os.replace(stage / marker, target / marker)
    shutil.rmtree(stage, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
