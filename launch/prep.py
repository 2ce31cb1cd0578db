"""TorchX component: a data-prep job spread over several replicas.

    torchx run -s local_cwd launch/prep.py:prep -j 1x2 -- logs \
        --interactions 'raw/interactions-*.parquet' --items raw/items.parquet --out /shared/prep \
        --partitions 64 --max-history 100
    torchx run -s slurm launch/prep.py:prep -j 8x4 --cpu 32 -- logs ... --partitions 1024 --workers 8

Every replica runs `python -m data_prep JOB ... --distributed`: the replicas form a gloo
process group (torchrun's env://), replica `rank` takes the scattering tasks and the
user partitions i with i % world_size == rank (and can run them in a local pool of
`--workers` processes), and rank 0 writes the vocabularies, the item table and the
manifest. All replicas need the same shared filesystem for the inputs and `--out`.
"""

import os
import sys
from pathlib import Path
from typing import Dict, Optional

import torchx
import torchx.specs as specs
from torchx.components.dist import ddp


def prep(
    *script_args: str,
    j: str = "1x2",
    cpu: int = 2,
    memMB: int = 8192,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    name: str = "dmf/prep",
    max_retries: int = 0,
    rdzv_port: int = 29501,
    path_prefix: str = str(Path(sys.executable).parent),
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """Run a data-prep job (`python -m data_prep JOB --help`) on NODES x PROCS replicas.

    Args:
        script_args: the job and its arguments, e.g. `logs --interactions ... --out ...`.
        j: NODESxPROCS_PER_NODE replicas, e.g. 1x2 or 8x4.
        cpu: CPUs per node.
        memMB: memory per node in MB (a replica needs about its partition's size).
        h: a named resource of the scheduler instead of cpu/memMB.
        image: the job's image (a folder for local/slurm, a container for kubernetes).
        name: run name.
        max_retries: scheduler-level retries of the whole job.
        rdzv_port: rendezvous port for multi-node jobs.
        path_prefix: folder put first on the replicas' PATH so they find `torchrun`; pass ""
            for container images.
        env: extra environment variables for the replicas.
    """
    args = list(script_args)
    if "--distributed" not in args:
        args.append("--distributed")
    env = dict(env or {})
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{os.environ.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return ddp(
        *args,
        m="data_prep",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=0,
        memMB=memMB,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
    )
