"""`python -m data_prep.bench_scale`: throughput and memory of the logs job at scale.

Generates industrial-shaped raw logs (`synthetic_industrial`), runs the `logs` job on them
in a child process, and reports rows/s, the peak RSS of the largest process and of the
whole process tree (sampled from /proc), and the projected time for `--target-samples`
on `--target-cores` cores from the measured CPU time (user + system of the job and its
workers), assuming linear scaling over partitions: CPU time, unlike wall time, does not
depend on other processes sharing the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.integrity import atomic_file
from data_prep.synthetic_industrial import IndustrialConfig, write_raw

TICKS = os.sysconf("SC_CLK_TCK")


def process_memory() -> tuple[dict[int, tuple[int, int, float]], dict[int, list[int]]]:
    """(pid -> (resident bytes now, peak resident bytes VmHWM, CPU seconds so far), parent
    pid -> child pids) of every process, from /proc."""
    children: dict[int, list[int]] = {}
    memory: dict[int, tuple[int, int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        kib = [int(fields.get(k, "0 kB").split()[0]) * 1024 for k in ("VmRSS", "VmHWM")]
        ticks = stat.rsplit(")", 1)[1].split()
        cpu = (int(ticks[11]) + int(ticks[12])) / TICKS  # utime + stime of the process
        memory[int(entry)] = (kib[0], kib[1], cpu)
    return memory, children


def tree_rss(root: int, cpu: dict[int, float] | None = None) -> tuple[int, int]:
    """(resident bytes of `root` and all its descendants now, the largest peak (VmHWM) of
    one of them); `cpu` gets each one's CPU seconds so far."""
    memory, children = process_memory()
    total, largest, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        now, peak, seconds = memory.get(pid, (0, 0, 0.0))
        total += now
        largest = max(largest, peak)
        if cpu is not None and pid in memory:
            cpu[pid] = max(cpu.get(pid, 0.0), seconds)
        todo.extend(children.get(pid, []))
    return total, largest


def run_measured(command: list[str]) -> dict[str, float]:
    """Run a command; wall time, CPU time (user + system of it and its reaped descendants),
    peak RSS of its largest process and of its whole process tree.

    Sampled every 0.2 s from /proc: the largest process's figure is the largest VmHWM (the
    kernel's peak resident size of a process since it started its program) seen in the
    tree, the tree's is the largest sum of VmRSS. Not ru_maxrss: a child's counts the
    resident size of this process at the fork (the generated data), not only its own. RSS
    counts the pages a process has mapped, file pages included.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak_tree = peak_process = 0
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree, peak_process
        while not done.wait(0.2):
            total, largest = tree_rss(process.pid, cpu)
            peak_tree, peak_process = max(peak_tree, total), max(peak_process, largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)  # reaps the child, with its CPU usage
    process.returncode = os.waitstatus_to_exitcode(status)  # else Popen thinks it runs
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {status}")
    return {
        "wall_s": time.perf_counter() - start,
        "peak_rss_largest_process_gb": peak_process / 1e9,
        "peak_rss_tree_gb": peak_tree / 1e9,
        # The larger of: the job and the children it waited for (exact, but Ray's worker
        # processes are not its children to wait for), and the sum over every process seen
        # in the tree (misses each one's last 0.2 s).
        "cpu_s": max(usage.ru_utime + usage.ru_stime, sum(cpu.values())),
        "cpu_s_waited": usage.ru_utime + usage.ru_stime,
        "cpu_s_sampled": sum(cpu.values()),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m data_prep.bench_scale", description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/bench_scale"),
        help="scratch folder, deleted first (and afterwards unless --keep)",
    )
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--history", type=int, default=100)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target-samples", type=int, default=469_000_000)
    parser.add_argument("--target-cores", type=int, default=64)
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="the logs job's engine (--engine of python -m data_prep logs)",
    )
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the generated and prepared data")
    args = parser.parse_args(argv)

    shutil.rmtree(args.out, ignore_errors=True)
    config = IndustrialConfig(
        samples=args.samples, users=args.users, items=args.items, dim=args.dim, files=args.files
    )
    start = time.perf_counter()
    write_raw(config, args.out / "raw")
    generate_s = time.perf_counter() - start

    command = [
        sys.executable, "-m", "data_prep", "logs",
        "--interactions", str(args.out / "raw" / "interactions-*.parquet"),
        "--items", str(args.out / "raw" / "items.parquet"),
        "--out", str(args.out / "prepared"),
        "--max-history", str(args.history),
        "--partitions", str(args.partitions),
        "--workers", str(args.workers),
        "--engine", args.engine,
    ]  # fmt: skip
    measured = run_measured(command)
    manifest = json.loads((args.out / "prepared" / "manifest.json").read_text())
    rows = sum(manifest["counts"].values())
    shard = args.out / "prepared" / manifest["splits"]["train"][0]
    lengths = pc.list_value_length(
        pq.read_table(shard, columns=["hist_items"]).column("hist_items")
    )
    cores = min(args.workers, os.cpu_count() or 1)
    rows_per_s = rows / measured["wall_s"]
    report = {
        "engine": args.engine,
        "workers": args.workers,
        "rows_per_cpu_s": round(rows / measured["cpu_s"]),
        "wall_s": round(measured["wall_s"], 1),
        "peak_rss_gb": {
            "worker": round(measured["peak_rss_largest_process_gb"], 2),
            "tree": round(measured["peak_rss_tree_gb"], 2),
        },
        "command": " ".join(command),
        "generator": asdict(config),
        "rows": rows,
        "history": args.history,
        "cores": cores,
        "generate_s": round(generate_s, 1),
        "prepare_s": round(measured["wall_s"], 1),
        "cpu_s": round(measured["cpu_s"], 1),
        "cpu_s_waited": round(measured["cpu_s_waited"], 1),
        "cpu_s_sampled": round(measured["cpu_s_sampled"], 1),
        "mean_history": round(pc.mean(lengths).as_py(), 1),
        "rows_per_s": round(rows_per_s),
        "output_gb": round(
            sum(f.stat().st_size for f in (args.out / "prepared").rglob("*") if f.is_file()) / 1e9,
            2,
        ),
        "load_average_1min_after": os.getloadavg()[0],
        "target_samples": args.target_samples,
        "target_cores": args.target_cores,
        "projected_target_s": round(
            args.target_samples / (rows / measured["cpu_s"]) / args.target_cores
        ),
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
