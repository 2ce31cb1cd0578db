"""The README's multi-node launch commands, checked without a cluster.

Each `torchx run ...` command of the README's "On a cluster" block is run as written, with
`--dryrun` added, from the repository root (where `.torchxconfig` sets the component's
local defaults, which the cluster commands must override). The generated Slurm batch
script and Kubernetes (Volcano) job are then checked: nodes, processes per node, GPUs,
CPUs, memory, environment (OMP threads, NCCL), restarts, mounts and the trainer's
arguments.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TORCHX = Path(sys.executable).parent / "torchx"


def readme_cluster_commands() -> dict[str, list[str]]:
    """scheduler -> argv of each `torchx run` command in the README's cluster block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### On a cluster") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```\n", 10)]
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = {}
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("torchx run"):
            argv = shlex.split(line)
            scheduler = argv[argv.index("-s") + 1]
            commands[scheduler] = argv
    return commands


def dryrun(argv: list[str]) -> str:
    """Run a README command with --dryrun through this environment's torchx."""
    assert argv[:2] == ["torchx", "run"]
    full = [str(TORCHX), "run", "--dryrun", *argv[2:]]
    done = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def trainer_args(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1 :]


@pytest.fixture(scope="module")
def commands() -> dict[str, list[str]]:
    found = readme_cluster_commands()
    assert set(found) == {"slurm", "kubernetes"}, found
    return found


def test_slurm_sbatch_script(commands: dict[str, list[str]]) -> None:
    argv = commands["slurm"]
    out = dryrun(argv)
    script = out[out.index("# SBATCH_SCRIPT") :]
    headers = re.findall(r"^#SBATCH --job-name=(\S+) (.*)$", script, flags=re.M)
    assert [name for name, _ in headers] == [f"train-{i}" for i in range(4)]  # 4 nodes
    for _, options in headers:
        opts = dict(o.lstrip("-").split("=", 1) for o in options.split() if "=" in o)
        assert opts["ntasks-per-node"] == "1"  # one torchrun agent per node
        assert opts["gpus-per-task"] == "8"
        assert opts["cpus-per-task"] == "64"
        assert opts["mem"] == "491520"
        assert "--requeue" in options
    sruns = [s for s in script.split(" :\\\n") if "bash -c" in s]
    assert len(sruns) == 4
    for srun in sruns:
        exported = re.search(r"--export=(\S+)", srun).group(1)
        assert "OMP_NUM_THREADS=8," in exported  # 64 CPUs / 8 workers
        assert "NCCL_DEBUG=WARN," in exported
        assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=3," in exported
        assert f"PATH={TORCHX.parent}" in exported  # the shared-filesystem venv's torchrun
        command = srun[srun.index("torchrun") :]
        assert "--max-restarts 3 " in command
        assert "--nnodes 4 --nproc_per_node 8" in command
        assert "--rdzv_endpoint ${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:29500" in command
        tail = command[command.index("-m pipeline.train") :].split("'")[0]  # bash -c '...'
        expected = ["-m", "pipeline.train", *trainer_args(argv), "--resume"]
        assert shlex.split(tail) == expected


def test_kubernetes_volcano_job(commands: dict[str, list[str]]) -> None:
    argv = commands["kubernetes"]
    assert argv[argv.index("--workspace") + 1] == ""  # the image is used as it is
    out = dryrun(argv)
    job = yaml.safe_load(out[out.index("=== SCHEDULER REQUEST ===") + 25 :])
    assert job["kind"] == "Job" and job["apiVersion"].startswith("batch.volcano.sh/")
    assert job["spec"]["queue"] == "default"
    tasks = job["spec"]["tasks"]
    assert [t["name"] for t in tasks] == ["train-0", "train-1"]  # 2 nodes
    for task in tasks:
        assert task["replicas"] == 1
        pod = task["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "REGISTRY/dmf:latest"
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "8"
        assert limits["cpu"] == "64000m" and limits["memory"] == "491520M"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OMP_NUM_THREADS"] == "8"
        assert env["NCCL_DEBUG"] == "WARN" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
        assert "PATH" not in env  # --path_prefix "": the image's own PATH
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims[mounts["/mnt"]] == "recsys-data"
        command = container["command"][-1]
        assert "--max-restarts 3 " in command
        assert "--nnodes 2 --nproc_per_node 8" in command
        tail = command[command.index("-m pipeline.train") :]
        assert shlex.split(tail) == ["-m", "pipeline.train", *trainer_args(argv), "--resume"]


def test_local_default_keeps_one_thread_per_worker() -> None:
    """The component's local default (1 x 2 CPU workers on 2 CPUs): 1 OpenMP thread each
    and no NCCL settings."""
    from launch.train import train

    role = train("--model", "dmf").roles[0]
    assert role.env["OMP_NUM_THREADS"] == "1"
    assert "NCCL_DEBUG" not in role.env
    assert role.resource.gpu == 0


def test_prep_component_on_the_ray_engine() -> None:
    """launch/prep.py:prep --engine ray: one driver replica running the job with --engine ray
    and --workers CPU, under local_cwd and under TorchX's Ray scheduler (one Ray actor)."""
    job = ["--", "amazon", "--reviews", "r.json.gz", "--meta", "m.json.gz", "--out", "out"]
    local = dryrun(["torchx", "run", "-s", "local_cwd", "launch/prep.py:prep", "--engine", "ray",
                    "--cpu", "2", *job])  # fmt: skip
    assert "'num_replicas': 1" in local and "--distributed" not in local
    assert re.search(r"'amazon',.*'--engine',\s*'ray',\s*'--workers',\s*'2'", local, re.S)
    ray_job = dryrun(["torchx", "run", "-s", "ray", "-cfg", "dashboard_address=localhost:8265",
                      "launch/prep.py:prep", "--engine", "ray", "--cpu", "1", *job])  # fmt: skip
    request = ray_job[ray_job.index("=== SCHEDULER REQUEST ===") :]
    assert request.count("RayActor(") == 1
    assert "command=['python', '-m', 'data_prep', 'amazon'" in request
    assert "'--engine', 'ray', '--workers', '1'" in request
