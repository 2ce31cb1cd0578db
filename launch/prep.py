"""TorchX component: a data-prep job, on the Ray engine or over torch.distributed replicas.

Ray engine (`--engine ray`; data_prep/ray_engine.py): one driver process runs the job and
its tasks run as Ray tasks.

    # this machine: Ray started inside the job, --cpu CPUs
    torchx run -s local_cwd launch/prep.py:prep --engine ray --cpu 2 -- amazon \
        --reviews reviews.json.gz --meta meta.json.gz --out data/amazon --partitions 8
    # a Ray cluster (TorchX's Ray scheduler submits the driver as a Ray job; the tasks
    # spread over the cluster's nodes): the working directory is shipped to the cluster
    torchx run -s ray -cfg dashboard_address=HEAD:8265 launch/prep.py:prep --engine ray \
        --cpu 1 -- logs --interactions '/shared/raw/*.parquet' --items /shared/raw/items.parquet \
        --out /shared/prep --partitions 1024

torch.distributed replicas (the default `--engine local`): every replica runs
`python -m data_prep JOB ... --distributed`: the replicas form a gloo process group
(torchrun's env://), replica `rank` takes the scattering tasks and the user partitions i
with i % world_size == rank (and can run them in a local pool of `--workers` processes),
and rank 0 writes the vocabularies, the item table and the manifest.

    torchx run -s local_cwd launch/prep.py:prep -j 1x2 -- logs \
        --interactions 'raw/interactions-*.parquet' --items raw/items.parquet --out /shared/prep \
        --partitions 64 --max-history 100
    torchx run -s slurm launch/prep.py:prep -j 8x4 --cpu 32 -- logs ... --partitions 1024 --workers 8

Either way, every process needs the same file system for the inputs and `--out`.
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
    engine: str = "local",
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
        engine: "ray": one driver replica running the job with `--engine ray` (a local Ray
            of `cpu` CPUs under local_cwd, the cluster under `-s ray`); "local":
            torch.distributed replicas (`--distributed`, `j`).
        j: NODESxPROCS_PER_NODE replicas, e.g. 1x2 or 8x4 (engine "local" only).
        cpu: CPUs per node (engine "ray": the driver's, and the local Ray's --workers).
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
    env = dict(env or {})
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{os.environ.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    if engine == "ray":
        return _ray_driver(args, cpu, memMB, h, image, name, max_retries, env)
    if engine != "local":
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if "--distributed" not in args:
        args.append("--distributed")
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


def _ray_driver(
    args: list[str],
    cpu: int,
    memMB: int,
    h: Optional[str],
    image: str,
    name: str,
    max_retries: int,
    env: Dict[str, str],
) -> specs.AppDef:
    """One replica: `python -m data_prep JOB ... --engine ray --workers CPU`. Under TorchX's
    Ray scheduler the replica runs inside a Ray job, where `ray.init()` joins the cluster;
    its image is the working directory that scheduler ships (a folder: this checkout)."""
    if "--engine" not in args:
        args += ["--engine", "ray"]
    if "--workers" not in args:
        args += ["--workers", str(cpu)]
    if image == torchx.IMAGE:
        image = os.getcwd()
    resource = specs.named_resources[h] if h else specs.Resource(cpu=cpu, gpu=0, memMB=memMB)
    role = specs.Role(
        name="prep",
        image=image,
        entrypoint="python",
        args=["-m", "data_prep", *args],
        env=env,
        num_replicas=1,
        resource=resource,
        max_retries=max_retries,
    )
    return specs.AppDef(name=name.replace("/", "-"), roles=[role])
