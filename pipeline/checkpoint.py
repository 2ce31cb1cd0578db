"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model and optimizer state,
the data position and every rank's RNG state.

Layout: OUTPUT/checkpoints/step-00001234/ (a DCP folder) + progress.json + checksums.json;
`latest` names the newest verified one. A checkpoint is written to a temporary name, its
checksum table (size and sha256 of every file, `data_prep.integrity`) is written, it is
renamed when every rank has finished and verified again before `latest` moves to it and
before any older checkpoint is pruned: a worker killed mid-save never leaves a half
checkpoint as `latest`, and a good checkpoint is never pruned before a newer one is known
to be good.

Checkpoints are code-bearing: DCP's `.metadata` is a pickle, and unpickling runs code.
Nothing of a checkpoint is unpickled before its files match the checksum table the trainer
wrote with it; that makes a damaged or swapped file harmless, but the table itself is only
as trustworthy as the folder (docs/reliability.md): load checkpoints from trusted places.

A run trained with `--restore-best` also keeps OUTPUT/checkpoints/best/ (weights only) at
its best validation step; `best_or_latest_checkpoint(RUN)` is the checkpoint of the weights a
finished run's test metrics are of (best/ when kept, else the latest regular one): what
`pipeline.export --run` and the study's case study load.

`latest()` (what `--resume` and `best_or_latest_checkpoint` use) verifies before returning:
an unusable newest checkpoint is skipped with a warning naming it and the reason, and the
previous good one is used; when checkpoints exist but none is usable it raises
CheckpointError instead of starting again from step 0.

    python -m pipeline.checkpoint verify RUN/checkpoints/step-00000100
    python -m pipeline.checkpoint seal PATH   # write checksums.json for a trusted checkpoint
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from data_prep.integrity import (
    IntegrityError,
    checksum_files,
    list_files,
    safe_path,
    verify_files,
    write_json_atomic,
)

log = logging.getLogger(__name__)
CHECKSUMS = "checksums.json"
POINTER = "latest"
STEP_NAME = re.compile(r"step-\d{8}")
_UNSET = object()


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is expected; the message names each and why."""


def write_checksums(path: Path) -> dict[str, Any]:
    """Write `path/checksums.json`: size and sha256 of every file of the checkpoint."""
    path = Path(path)
    table = {"files": checksum_files(path, list_files(path, exclude=[CHECKSUMS]))}
    write_json_atomic(path / CHECKSUMS, table)
    return table


def verify_checkpoint(path: Path, full: bool = True) -> None:
    """Check a checkpoint folder against its checksums.json (sha256 unless `full` is False);
    CheckpointError naming the file and the problem."""
    path = Path(path)
    table_path = path / CHECKSUMS
    try:
        if not table_path.is_file():
            raise IntegrityError(
                f"{table_path}: missing; the checkpoint cannot be verified (written before "
                "checksums were added, or not by the trainer)"
            )
        try:
            table = json.loads(table_path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise IntegrityError(f"{table_path}: not JSON ({error})") from None
        files = table.get("files") if isinstance(table, dict) else None
        if not isinstance(files, dict) or ".metadata" not in files:
            raise IntegrityError(f"{table_path}: does not list .metadata")
        verify_files(path, files, full=full, what="checkpoint's checksums.json")
    except IntegrityError as error:
        raise CheckpointError(str(error)) from None


def _rng_state() -> dict[str, torch.Tensor]:
    """Global torch (and CUDA) generator state. numpy and `random` are not used through
    their global state anywhere in training (the data order comes from seeded
    numpy Generators keyed by seed and epoch), so they need no saving."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _from_rank0(compute):
    """`compute()` on rank 0, its result on every rank."""
    if not _distributed():
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Checkpointer:
    """Saves and restores training state under `root` (shared by all ranks)."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep
        self._good: set[str] = set()  # checkpoints verified by this process
        self._latest: Any = _UNSET

    # ------------------------------------------------------------------ finding one
    def checkpoints(self) -> list[Path]:
        """Complete-looking checkpoint folders, newest first (temporary ones excluded)."""
        if not self.root.is_dir():
            return []
        found = [
            p
            for p in self.root.iterdir()
            if STEP_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
        ]  # a link could lead anywhere: not a checkpoint of this folder
        return sorted(found, key=lambda p: p.name, reverse=True)

    def _pointer(self) -> str | None:
        """The checkpoint `latest` names, if it is a plain checkpoint name of this folder."""
        pointer = self.root / POINTER
        if not pointer.is_file():
            return None
        name = pointer.read_text(errors="replace").strip()
        try:
            path = safe_path(self.root, name, "checkpoint named by `latest`")
        except IntegrityError as error:
            log.warning("%s; ignoring it", error)
            return None
        if not STEP_NAME.fullmatch(name) or path.parent != self.root:
            log.warning("%s names %r, not a checkpoint of this folder; ignoring it", pointer, name)
            return None
        return name

    def _find(self) -> tuple[str | None, str | None]:
        """(name of the checkpoint to resume from, None) or (None, why none is usable)."""
        pointer = self._pointer()
        names = [p.name for p in self.checkpoints()]
        order = ([pointer] if pointer in names else []) + [n for n in names if n != pointer]
        if pointer is not None and pointer not in names:
            log.warning("%s names %s, which does not exist", self.root / POINTER, pointer)
        problems = []
        for name in order:
            try:
                verify_checkpoint(self.root / name)
            except CheckpointError as error:
                problems.append(f"{name}: {error}")
                log.warning("checkpoint %s is unusable: %s", self.root / name, error)
                continue
            if problems:
                log.warning(
                    "resuming from the previous good checkpoint %s instead", self.root / name
                )
            return name, None
        if problems:
            return None, (
                f"{self.root}: no usable checkpoint, refusing to start again from step 0 "
                "(move the folder away to train from scratch): " + "; ".join(problems)
            )
        return None, None

    def latest(self) -> Path | None:
        """The newest verified checkpoint (see the module docstring); None when there is none.

        Rank 0 verifies and tells the others; the answer is kept until the next save."""
        if self._latest is _UNSET:
            name, problem = _from_rank0(self._find)
            if problem is not None:
                raise CheckpointError(problem)
            if name is not None:
                self._good.add(name)
            self._latest = None if name is None else self.root / name
        return self._latest

    # ------------------------------------------------------------------ saving
    def _state(self, model: nn.Module, optimizer: Any) -> dict[str, Any]:
        rank = dist.get_rank()
        # RNG is per rank; DCP deduplicates equal keys across ranks, so key it by rank.
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            f"rng_rank{rank}": _rng_state(),
        }

    def save(self, step: int, model: nn.Module, optimizer: Any, progress: dict[str, Any]) -> Path:
        name = f"step-{step:08d}"
        final, tmp = self.root / name, self.root / f"{name}.tmp"
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        dcp.save(self._state(model, optimizer), checkpoint_id=str(tmp))
        dist.barrier()
        problem = None
        if dist.get_rank() == 0:
            problem = self._finish_save(name, tmp, final, progress)
        if _distributed():
            box = [problem]
            dist.broadcast_object_list(box, src=0)
            problem = box[0]
        if problem is not None:
            raise CheckpointError(problem)
        self._good.add(name)
        self._latest = final
        return final

    def _finish_save(self, name: str, tmp: Path, final: Path, progress: dict) -> str | None:
        """Rank 0: progress, checksums, rename, verify, then `latest` and pruning."""
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2))
        write_checksums(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        try:
            verify_checkpoint(final)
        except CheckpointError as error:
            return f"the checkpoint just written does not verify, `latest` left as it was: {error}"
        self._good.add(name)
        write_json_pointer(self.root / POINTER, name)
        self._prune()
        return None

    def _prune(self) -> None:
        """Remove a checkpoint only when `keep` checkpoints newer than it are known good."""
        good_newer = 0
        for path in self.checkpoints():  # newest first
            if good_newer >= self.keep:
                shutil.rmtree(path, ignore_errors=True)
            elif path.name in self._good:
                good_newer += 1

    # ------------------------------------------------------------------ loading
    def load(
        self, path: Path, model: nn.Module, optimizer: Any, lazy_optimizers: tuple = ()
    ) -> dict[str, Any]:
        """Restore model, optimizer and RNG in place; returns the saved progress dict.

        The checkpoint is verified first (unless `latest()` just did). lazy_optimizers:
        keyed optimizers whose state is created on their first step (Adam); their state
        is initialised first, because DCP loads in place into existing tensors and would
        otherwise silently skip it.
        """
        path = Path(path)
        if path.name not in self._good or path.parent != self.root:
            problem = _from_rank0(lambda: _verify_message(path))
            if problem is not None:
                raise CheckpointError(problem)
        for keyed in lazy_optimizers:
            if not keyed.state:
                keyed.init_state()
        state = self._state(model, optimizer)
        saved_world = saved_world_size(path)
        world = dist.get_world_size()
        rng_key = f"rng_rank{dist.get_rank()}"
        if saved_world != world:
            log.warning(
                "%s was written by %d ranks and is resumed on %d: model weights and optimizer "
                "state are resharded to this world's plan; the data order of the current "
                "epoch is re-partitioned over %d ranks from the same step (within this epoch "
                "some rows may be read twice and others not at all; later epochs are exact)",
                path,
                saved_world,
                world,
                world,
            )
        if dist.get_rank() >= saved_world:  # a rank the checkpoint did not have
            state.pop(rng_key)
        problems = unloadable(path, state["optimizer"])
        if problems:
            state.pop("optimizer")
            log.warning(
                "%s: the optimizer state does not fit this run's sharding plan and is NOT "
                "restored (%s); the model weights are, and training continues with fresh "
                "optimizer state",
                path,
                "; ".join(problems[:3])
                + (f"; and {len(problems) - 3} more" if len(problems) > 3 else ""),
            )
        dcp.load(state, checkpoint_id=str(path))
        model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if rng_key in state:
            _set_rng_state(state[rng_key])
        return json.loads((path / "progress.json").read_text())


def best_or_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the weights a finished run's test metrics are of: the best
    validation step's (RUN/checkpoints/best, `--restore-best`; the trainer saves it at
    every new best, the last step included), else the latest regular checkpoint; None
    when the run kept neither. Both verified by `Checkpointer.latest`."""
    root = Path(run_dir) / "checkpoints"
    return Checkpointer(root / "best").latest() or Checkpointer(root).latest()


def unloadable(path: Path, optimizer_state: dict[str, Any]) -> list[str]:
    """Why the checkpoint's optimizer state cannot be loaded into `optimizer_state` (this
    run's, same layout as saved): entries missing from it or saved with another global
    shape (torchrec states it cannot reshard to a new plan); [] when it loads. The same
    answer on every rank (from metadata every rank reads alike)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    flat, _ = flatten_state_dict({"optimizer": optimizer_state})
    problems = []
    for key, value in flat.items():
        entry = saved.get(key)
        if entry is None:
            problems.append(f"{key}: not in the checkpoint")
        elif hasattr(value, "size") and hasattr(entry, "size"):
            here, there = tuple(value.size()), tuple(entry.size)
            if here != there:
                problems.append(f"{key}: saved {there}, here {here}")
    return problems


def saved_world_size(path: Path) -> int:
    """Ranks that wrote the checkpoint at `path` (one RNG state each in its metadata)."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    ranks = {
        key.split(".", 1)[0] for key in metadata.state_dict_metadata if key.startswith("rng_rank")
    }
    return max(1, len(ranks))


def _verify_message(path: Path) -> str | None:
    try:
        verify_checkpoint(path)
    except CheckpointError as error:
        return str(error)
    return None


def write_json_pointer(path: Path, name: str) -> None:
    """The `latest` pointer: the plain checkpoint name, replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(name)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify or seal a DCP checkpoint folder.")
    parser.add_argument("action", choices=("verify", "seal"))
    parser.add_argument("path", type=Path, help="a step-NNNNNNNN folder")
    args = parser.parse_args(argv)
    if args.action == "seal" and not (args.path / ".metadata").is_file():
        print(f"error: {args.path}: not a DCP checkpoint (no .metadata)", file=sys.stderr)
        return 1
    if args.action == "seal":
        table = write_checksums(args.path)
        print(f"{args.path}: wrote {CHECKSUMS} ({len(table['files'])} files)")
        return 0
    try:
        verify_checkpoint(args.path)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.path}: intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
