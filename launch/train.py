"""TorchX component: distributed training of any model of the zoo.

    torchx run launch/train.py:train -- --model dmf --data data/amazon
    torchx run -s slurm launch/train.py:train -j 4x8 --gpu 8 --cpu 64 --memMB 491520 \
        --max_restarts 3 -- --preset industrial --data /shared/prep
    torchx run --workspace "" -s kubernetes -cfg queue=default launch/train.py:train -j 2x8 \
        --gpu 8 --cpu 64 --memMB 491520 --max_restarts 3 --image REGISTRY/dmf:latest \
        --path_prefix "" --mounts type=volume,src=recsys-data,dst=/mnt -- \
        --preset industrial --data /mnt/prep --output-dir /mnt/runs/dmf

`--cpu`, `--memMB` and `--gpu` are per node (per replica); the defaults (2 CPUs, 8 GB) are
for the local CPU run. `--workspace ""` on Kubernetes: the image already holds this
repository (without it torchx tries to build a patched image with a local docker daemon).
Both cluster commands are checked with `--dryrun` in tests/test_launch_dryrun.py.

Defaults (1 node x 2 CPU workers, local scheduler) come from `.torchxconfig`. Everything
after `--` goes to `python -m pipeline.train` (see `python -m pipeline.train --help`),
`--config FILE` included (a path the workers can read). The trainer's batch sizes are
global: `-j 4x8` with `--preset industrial` trains on the preset's 1024 samples a step,
32 per GPU, the same run as on one machine.
"""

import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

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
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train and evaluate a CTR model with torchrun on NODES x PROCS workers.

    Args:
        script_args: trainer arguments (`python -m pipeline.train --help`).
        j: NODESxPROCS_PER_NODE, e.g. 1x2 (CPU laptop) or 4x8 (4 nodes of 8 GPUs).
        gpu: GPUs per node (0: CPU workers with gloo; >0: NCCL, one GPU per process).
        cpu: CPUs per node; each worker's OMP_NUM_THREADS is cpu / workers per node.
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
        env: extra environment variables for the workers (override the component's:
            OMP_NUM_THREADS, and on GPUs NCCL_DEBUG=WARN, TORCH_NCCL_ASYNC_ERROR_HANDLING=3).
        mounts: volumes for container schedulers, e.g.
            type=volume,src=PVC_NAME,dst=/mnt (data, checkpoints) on Kubernetes.
    """
    args = list(script_args)
    if max_restarts > 0 and "--resume" not in args:
        args.append("--resume")
    env = dict(env or {})
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{os.environ.get('PATH', '')}"
    # One OpenMP pool per worker sized to its share of the node's CPUs (1 for the local
    # 1x2 default: spinning threads lose badly on a shared machine, docs/benchmarks.md).
    procs_per_node = int(j.split("x")[-1])  # j is NODESxPROCS or PROCS
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu // procs_per_node)))
    if gpu > 0:
        # NCCL prints its warnings (a failed collective names its cause), and a rank whose
        # collective fails or times out tears its process down (so torchrun restarts the
        # workers and the trainer resumes) instead of hanging the job.
        env.setdefault("NCCL_DEBUG", "WARN")
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
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
        mounts=mounts,
    )
    role = app.roles[0]
    if max_restarts > 0:
        # dist.ddp builds `bash -c "torchrun ..."` without exposing torchrun's restarts.
        role.args[-1] = role.args[-1].replace(
            "torchrun ", f"torchrun --max-restarts {max_restarts} ", 1
        )
    return app
