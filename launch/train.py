"""TorchX component: distributed training of any model of the zoo.

    torchx run launch/train.py:train -- --model dmf --data data/amazon
    torchx run -s slurm launch/train.py:train -j 4x8 --gpu 8 -- --preset industrial --data /shared/prep
    torchx run -s kubernetes -cfg queue=default launch/train.py:train -j 2x8 --gpu 8 \
        --image REGISTRY/dmf:latest --path_prefix "" -- --preset industrial --data /mnt/prep

Defaults (1 node x 2 CPU workers, local scheduler) come from `.torchxconfig`. Everything
after `--` goes to `python -m pipeline.train` (see `python -m pipeline.train --help`),
`--config FILE` included (a path the workers can read). The trainer's batch sizes are
global: `-j 4x8` with `--preset industrial` trains on the preset's 1024 samples a step,
32 per GPU, the same run as on one machine.
"""

import os
import sys
from pathlib import Path
from typing import Dict, Optional

import torchx
import torchx.specs as specs
from torchx.components.dist import ddp


def train(
    *script_args: str,
    j: str = "1x2",
    gpu: int = 0,
    cpu: int = 2,
    memMB: int = 8192,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    name: str = "dmf/train",
    max_restarts: int = 0,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    path_prefix: str = str(Path(sys.executable).parent),
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """Train and evaluate a CTR model with torchrun on NODES x PROCS workers.

    Args:
        script_args: trainer arguments (`python -m pipeline.train --help`).
        j: NODESxPROCS_PER_NODE, e.g. 1x2 (CPU laptop) or 4x8 (4 nodes of 8 GPUs).
        gpu: GPUs per node (0: CPU workers with gloo; >0: NCCL, one GPU per process).
        cpu: CPUs per node.
        memMB: memory per node in MB.
        h: a named resource of the scheduler instead of cpu/gpu/memMB.
        image: the job's image (a folder for local/slurm, a container for kubernetes).
        name: experiment/run name.
        max_restarts: torchrun restarts of the workers when one fails; the trainer then
            resumes from its latest checkpoint (`--resume` is added).
        max_retries: scheduler-level retries of the whole replica.
        rdzv_port: rendezvous port for multi-node jobs.
        path_prefix: folder put first on the workers' PATH so they find this environment's
            `torchrun` (the default is this interpreter's bin folder, right for local and
            shared-filesystem clusters); pass "" for container images.
        env: extra environment variables for the workers.
    """
    args = list(script_args)
    if max_restarts > 0 and "--resume" not in args:
        args.append("--resume")
    env = dict(env or {})
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{os.environ.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    app = ddp(
        *args,
        m="pipeline.train",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
    )
    role = app.roles[0]
    if max_restarts > 0:
        # dist.ddp builds `bash -c "torchrun ..."` without exposing torchrun's restarts.
        role.args[-1] = role.args[-1].replace(
            "torchrun ", f"torchrun --max-restarts {max_restarts} ", 1
        )
    return app
