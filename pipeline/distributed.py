"""Process group and device, chosen at run time: NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _attempt_store() -> dist.Store | None:
    """Under torchrun/TorchX with the agent's store, a store namespaced by restart attempt.

    The elastic agent keeps its store across worker restarts, so the keys the killed
    attempt's process group published (gloo's peer addresses) are still there when the
    restarted workers rendezvous: a rank can read its peer's dead address before the
    fresh one is written, and fails with "Connection refused". A prefix per attempt gives
    every attempt a clean namespace. None outside torchelastic (plain env:// init).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    client = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        is_master=False,
        timeout=timedelta(minutes=10),
    )
    return dist.PrefixStore(f"dmf/attempt_{attempt}", client)


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun/TorchX set up (RANK, WORLD_SIZE, MASTER_ADDR env), or
    make a world of one for a plain `python -m pipeline.train` (DMP and the planner always
    run on a process group, so single-process runs use the same code path).

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    backend = "nccl" if use_cuda else "gloo"
    alone = "RANK" not in os.environ
    if alone:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        # A world of one rendezvouses in memory: no TCP store on a port that another
        # process could take between choosing it and binding it (EADDRINUSE).
        store = dist.HashStore() if alone else _attempt_store()
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(
                backend=backend,
                store=store,
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
            )
    return DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
        device=dev,
    )


@contextlib.contextmanager
def leaving_distributed() -> Iterator[None]:
    """Leave the process group when the block ends. A rank whose block ended without an
    error first waits at a barrier for the others, so no rank closes its connections while a
    peer is still in the last collective (gloo aborts that peer with SIGABRT); after an
    error the others may be gone, so the group is destroyed at once."""
    clean = False
    try:
        yield
        clean = True
    finally:
        if dist.is_initialized():
            if clean and dist.get_world_size() > 1:
                dist.barrier()
            dist.destroy_process_group()
