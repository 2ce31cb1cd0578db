"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model and optimizer state,
the data position and every rank's RNG state.

Layout: OUTPUT/checkpoints/step-00001234/ (a DCP folder) + progress.json; `latest` names the
newest complete one. A checkpoint is written to a temporary name and renamed when every
rank has finished, so a worker killed mid-save never leaves a half checkpoint as `latest`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn


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


class Checkpointer:
    """Saves and restores training state under `root` (shared by all ranks)."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "progress.json").is_file() else None

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
        if dist.get_rank() == 0:
            (tmp / "progress.json").write_text(json.dumps(progress, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            (self.root / "latest.tmp").write_text(name)
            (self.root / "latest.tmp").replace(self.root / "latest")
            self._prune(keep_name=name)
        dist.barrier()
        return final

    def _prune(self, keep_name: str) -> None:
        done = sorted(p for p in self.root.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[: -self.keep]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    def load(
        self, path: Path, model: nn.Module, optimizer: Any, lazy_optimizers: tuple = ()
    ) -> dict[str, Any]:
        """Restore model, optimizer and RNG in place; returns the saved progress dict.

        lazy_optimizers: keyed optimizers whose state is created on their first step (Adam);
        their state is initialised first, because DCP loads in place into existing tensors
        and would otherwise silently skip it.
        """
        for keyed in lazy_optimizers:
            if not keyed.state:
                keyed.init_state()
        state = self._state(model, optimizer)
        dcp.load(state, checkpoint_id=str(path))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state[f"rng_rank{dist.get_rank()}"])
        return json.loads((path / "progress.json").read_text())
