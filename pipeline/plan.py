"""Offline sharding plan: torchrec's planner for N ranks, without GPUs or a process group.

    python -m pipeline.plan --world-size 64 --device cuda --hbm-gb 80 --preset industrial \
        --users 8700000 --items 20900000 [--data DIR] [--json FILE]

Builds the real model (`--model`, the preset's and `--model-arg` settings) with its tables
on the meta device, attaches the embedding optimizer the trainer would use on that device
(its state counts in the memory estimate), and runs `EmbeddingShardingPlanner.plan` with
the inputs the trainer gives `collective_plan` (pipeline/planner_inputs.py): the topology
(ranks, ranks per host, device memory), the per-rank batch and the pooling factor of every
feature. Table sizes come from `--users/--items/--categories`, else from `--data`'s
manifest; pooling factors from `--data`'s shard footers (mean history length), else
`--mean-history`.

Prints the plan (sharding type, compute kernel and ranks of each table), the memory of each
rank (the planner's estimate: table shards with their optimizer state and outputs, plus
its reservation for the dense part and the input KJTs) and the estimated step time of the
embedding part (the planner's perf model: lookups, their backward and the all-to-alls;
the dense arch is not in it). Figures for 8, 16 and 64 GPUs: docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import PRESETS, TrainConfig, merge, per_rank
from pipeline.planner_inputs import (
    GB,
    SHARDING_TYPES,
    PlannerInputs,
    make_planner,
    pooling_factors,
    pooling_factors_for,
    sharders_for,
)
from pipeline.sharding import EMBEDDING_OPTIMIZERS, resolve_embedding_optimizer

DEFAULT_GPUS_PER_NODE = 8
DEFAULT_MEAN_HISTORY = 100.0  # the industrial preset's max history: an upper bound
DEFAULT_NUM_BUCKETS = 35


@dataclass
class TablePlan:
    name: str
    rows: int
    dim: int
    features: list[str]
    pooling_factors: list[float]
    sharding_type: str
    compute_kernel: str
    ranks: list[int]
    bytes_per_shard: list[int]  # the planner's storage (device memory) of each shard


@dataclass
class PlanSummary:
    """The planner's chosen plan and its estimates (per rank: bytes and milliseconds)."""

    inputs: PlannerInputs
    tables: list[TablePlan]
    sparse_bytes: list[int]  # table shards (+ optimizer state, outputs) on each rank
    host_bytes: list[int]  # host memory of each rank's shards (UVM caching; all of it on cpu)
    reserved_bytes: int  # the planner's per-rank reservation: dense part + input KJTs
    cap_bytes: int  # the memory of one rank the planner planned against
    step_ms: list[float]  # estimated embedding fwd+bwd compute+comms per rank
    critical_path_ms: float
    plan_seconds: float

    @property
    def memory_bytes(self) -> list[int]:
        return [b + self.reserved_bytes for b in self.sparse_bytes]

    def to_dict(self) -> dict[str, Any]:
        memory = self.memory_bytes
        return {
            "world_size": self.inputs.world_size,
            "local_world_size": self.inputs.local_world_size,
            "device": self.inputs.compute_device,
            "cap_bytes_per_rank": self.cap_bytes,
            "batch_size_per_rank": self.inputs.batch_size,
            "pooling_factors": dict(self.inputs.pooling_factors),
            "sharding_type": self.inputs.sharding_type,
            "tables": [t.__dict__ for t in self.tables],
            "memory_bytes_per_rank": memory,
            "max_memory_bytes": max(memory),
            "host_bytes_per_rank": self.host_bytes,
            "reserved_bytes_per_rank": self.reserved_bytes,
            "step_ms_per_rank": self.step_ms,
            "step_ms_max": max(self.step_ms),
            "critical_path_ms": self.critical_path_ms,
            "plan_seconds": self.plan_seconds,
        }


def _storage_bytes(storage: Any, device: str) -> int:
    return int(storage.hbm if device == "cuda" else storage.ddr)


def _critical_path_ms(best_plan: list[Any]) -> float:
    """torchrec's critical-path estimate (stats.py): ranks synchronise after each of
    fwd/bwd x comms/compute, and between module x sharding-type groups of comms."""
    comms: dict[tuple, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    compute: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for option in best_plan:
        for shard in option.shards:
            perf = shard.perf
            comms[(option.module, option.sharding_type, "fwd")][shard.rank] += perf.fwd_comms
            comms[(option.module, option.sharding_type, "bwd")][shard.rank] += perf.bwd_comms
            compute["fwd"][shard.rank] += perf.fwd_compute
            compute["bwd"][shard.rank] += perf.bwd_compute
    return sum(max(v.values()) for v in comms.values()) + sum(
        max(v.values()) for v in compute.values()
    )


def summarize(planner: Any, inputs: PlannerInputs, plan_seconds: float = 0.0) -> PlanSummary:
    """The plan `planner` chose on its last `plan`/`collective_plan` call, with the
    planner's own per-rank memory and perf estimates."""
    best = planner._best_plan  # torchrec keeps the chosen ShardingOptions here
    if best is None:
        raise RuntimeError("the planner has not planned yet")
    device = inputs.compute_device
    world = inputs.world_size
    sparse = [0] * world
    host = [0] * world
    step = [0.0] * world
    tables = []
    constraints = planner._constraints or {}
    for option in best:
        for shard in option.shards:
            sparse[shard.rank] += _storage_bytes(shard.storage, device)
            host[shard.rank] += int(shard.storage.ddr)
            step[shard.rank] += shard.perf.total
        constraint = constraints.get(option.name)
        features = list(getattr(option, "feature_names", None) or [])
        tables.append(
            TablePlan(
                name=option.name,
                rows=int(option.tensor.shape[0]),
                dim=int(option.tensor.shape[1]),
                features=features,
                pooling_factors=list(constraint.pooling_factors) if constraint else [1.0],
                sharding_type=option.sharding_type,
                compute_kernel=option.compute_kernel,
                ranks=[int(s.rank) for s in option.shards],
                bytes_per_shard=[_storage_bytes(s.storage, device) for s in option.shards],
            )
        )
    reservation = planner._storage_reservation
    reserved = sum(
        _storage_bytes(s, device)
        for s in (
            getattr(reservation, "_dense_storage", None),
            getattr(reservation, "_kjt_storage", None),
        )
        if s is not None
    )
    device0 = planner._topology.devices[0].storage
    return PlanSummary(
        inputs=inputs,
        tables=tables,
        sparse_bytes=sparse,
        host_bytes=host,
        reserved_bytes=reserved,
        cap_bytes=_storage_bytes(device0, device),
        step_ms=step,
        critical_path_ms=_critical_path_ms(best),
        plan_seconds=plan_seconds,
    )


def _ranks_text(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out: list[str] = []
    for r in sorted(set(ranks)):
        if out and "-" not in out[-1].split(",")[-1] and int(out[-1]) == r - 1:
            out[-1] = f"{out[-1]}-{r}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == r - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{r}"
        else:
            out.append(str(r))
    return ",".join(out)


def format_summary(summary: PlanSummary) -> str:
    """The plan as text: one line per table, then memory and step estimates."""
    inputs = summary.inputs
    mem = summary.memory_bytes
    kind = "HBM" if inputs.compute_device == "cuda" else "host memory"
    lines = [
        f"plan for {inputs.world_size} x {inputs.compute_device} "
        f"({inputs.local_world_size} per host, {summary.cap_bytes / GB:.1f} GB {kind} each), "
        f"batch {inputs.batch_size} per rank, planned in {summary.plan_seconds:.1f} s",
        "",
        f"{'table':<12} {'rows':>12} {'dim':>4}  {'pooling':<12} {'sharding':<12} "
        f"{'kernel':<17} {'shards':>6}  ranks",
    ]
    for t in summary.tables:
        pooling = "/".join(f"{p:.4g}" for p in t.pooling_factors)
        lines.append(
            f"{t.name:<12} {t.rows:>12,} {t.dim:>4}  {pooling:<12} {t.sharding_type:<12} "
            f"{t.compute_kernel:<17} {len(t.ranks):>6}  {_ranks_text(t.ranks)}"
        )
    used = max(mem)
    lines += [
        "",
        f"memory per rank ({kind}): max {used / GB:.3f} GB, mean "
        f"{sum(mem) / len(mem) / GB:.3f} GB, min {min(mem) / GB:.3f} GB "
        f"({100 * used / summary.cap_bytes:.1f}% of {summary.cap_bytes / GB:.1f} GB); "
        f"of which reserved for the dense part and inputs {summary.reserved_bytes / GB:.3f} GB",
        *(
            [
                f"host memory per rank (UVM-cached table rows): max {max(summary.host_bytes) / GB:.3f} GB"
            ]
            if inputs.compute_device == "cuda" and any(summary.host_bytes)
            else []
        ),
        f"estimated embedding step: max {max(summary.step_ms):.3f} ms per rank, mean "
        f"{sum(summary.step_ms) / len(summary.step_ms):.3f} ms, critical path "
        f"{summary.critical_path_ms:.3f} ms (lookups + backward + all-to-all; dense arch excluded)",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- model
def build_task(
    config: TrainConfig,
    num_users: int,
    num_items: int,
    num_categories: int,
    boundaries: tuple[float, ...],
    device: torch.device,
    schema: Any = None,
) -> tuple[nn.Module, str]:
    """The trainer's CTRTask for `config` with tables on the meta device and the embedding
    optimizer the trainer would fuse on `device` attached (as `shard_model` does).
    schema: the data's feature schema (models/schema.py; None: the default four keys), whose
    pooled features add the EmbeddingBagCollection's tables to the plan."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    from models.ctr import CTRTask
    from models.features import FeatureSpec
    from models.zoo import build_model, make_config

    spec = FeatureSpec(num_users, num_items, num_categories, boundaries)
    if schema is not None:
        spec = FeatureSpec(num_users, num_items, num_categories, boundaries, schema=schema)
    model_config = make_config(config.model, config.model_args)
    model = build_model(config.model, spec, model_config, embedding_device=torch.device("meta"))
    opt_name = resolve_embedding_optimizer(config.embedding_optimizer, device)
    if opt_name not in EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"embedding optimizer {opt_name!r} is not fused: the trainer replicates the tables "
            "unsharded, so there is no sharding plan to make; choose a fused one "
            f"({sorted(EMBEDDING_OPTIMIZERS)})"
        )
    tables = list(model.sparse_arch.parameters())
    if model.pooled_arch is not None:
        tables += list(model.pooled_arch.parameters())
    apply_optimizer_in_backward(EMBEDDING_OPTIMIZERS[opt_name], tables, {"lr": 0.01})
    return CTRTask(model), opt_name


def plan_offline(task: nn.Module, inputs: PlannerInputs, torchrec_stats: bool = False):
    """Run the trainer's planner (`make_planner`) on `task` without a process group.
    Returns (ShardingPlan, PlanSummary)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        # torchrec 1.8 warns that its default storage reservation over-estimates dense
        # tensors that are not materialised; only the tables are on the meta device here.
        warnings.filterwarnings("ignore", message="HeuristicalStorageReservation is known")
        planner = make_planner(task, inputs, stats=None if torchrec_stats else [])
        plan = planner.plan(task, sharders_for(task))
    return plan, summarize(planner, inputs, time.perf_counter() - start)


# --------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--world-size", type=int, required=True, help="ranks (GPUs or CPU workers)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--hbm-gb", type=float, default=None, help="memory of one GPU (default 80)")
    p.add_argument(
        "--ddr-gb", type=float, default=None, help="host memory of one rank (torchrec: 128)"
    )
    p.add_argument(
        "--local-world-size",
        type=int,
        default=None,
        help=f"ranks per host (cuda: {DEFAULT_GPUS_PER_NODE}, cpu: all)",
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default="industrial")
    p.add_argument("--model", default="dmf")
    p.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=VALUE", help="as the trainer's"
    )
    p.add_argument("--batch-size", type=int, default=None, help="GLOBAL batch (default: preset)")
    p.add_argument(
        "--embedding-optimizer",
        default=None,
        choices=("auto", *sorted(EMBEDDING_OPTIMIZERS)),  # fused ones: they are sharded
        help="default: the preset's (auto: adam on cuda, adagrad on cpu)",
    )
    p.add_argument("--sharding-type", choices=SHARDING_TYPES, default="auto")
    p.add_argument("--data", metavar="DIR", help="prepared data: table sizes, pooling factors")
    p.add_argument("--users", type=int, help="user table rows (default: --data's)")
    p.add_argument("--items", type=int, help="item table rows (default: --data's)")
    p.add_argument("--categories", type=int, default=None, help="category table rows (0: none)")
    p.add_argument(
        "--mean-history",
        type=float,
        default=None,
        help=f"history pooling factor without --data (default {DEFAULT_MEAN_HISTORY:g})",
    )
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    p.add_argument(
        "--torchrec-stats", action="store_true", help="also log torchrec's own stats table"
    )
    return p


def _model_args(entries: list[str]) -> dict[str, Any]:
    out = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.torchrec_stats else logging.WARNING)
    # The same storage-reservation notice, logged at WARNING (see plan_offline).
    logging.getLogger("torchrec.distributed.planner.storage_reservations").setLevel(logging.ERROR)
    layers = [TrainConfig().to_dict(), PRESETS[args.preset], {"model": args.model}]
    layers.append({"model_args": _model_args(args.model_arg)})
    if args.batch_size is not None:
        layers.append({"batch_size": args.batch_size})
    if args.embedding_optimizer is not None:
        layers.append({"embedding_optimizer": args.embedding_optimizer})
    config = TrainConfig.from_dict({**merge(*layers), "preset": args.preset})

    users, items, categories = args.users, args.items, args.categories
    boundaries = tuple((i + 1) / DEFAULT_NUM_BUCKETS for i in range(DEFAULT_NUM_BUCKETS - 1))
    if args.data:
        from pipeline.data import PreparedData

        data = PreparedData(args.data)
        sizes = data.vocab_sizes
        users = users or sizes["user"]
        items = items or sizes["item"]
        categories = sizes.get("category", 0) if categories is None else categories
        boundaries = tuple(data.manifest["buckets"]["boundaries"])
        factors = pooling_factors(data)
    else:
        if users is None or items is None:
            build_parser().error("give --users and --items, or --data DIR")
        factors = pooling_factors_for(args.mean_history or DEFAULT_MEAN_HISTORY)
    if args.data and args.mean_history is not None:
        factors = pooling_factors_for(args.mean_history)
    categories = categories or 0
    schema = data.schema if args.data else None

    device = torch.device(args.device)
    local = args.local_world_size or (
        min(DEFAULT_GPUS_PER_NODE, args.world_size) if args.device == "cuda" else args.world_size
    )
    hbm = int((args.hbm_gb if args.hbm_gb is not None else 80) * GB)
    inputs = PlannerInputs(
        world_size=args.world_size,
        local_world_size=local,
        compute_device=args.device,
        batch_size=per_rank(config.batch_size, args.world_size),
        hbm_cap=hbm if args.device == "cuda" else None,
        ddr_cap=int(args.ddr_gb * GB) if args.ddr_gb is not None else None,
        pooling_factors=factors,
        sharding_type=args.sharding_type,
    )
    task, opt_name = build_task(config, users, items, categories, boundaries, device, schema)
    _, summary = plan_offline(task, inputs, args.torchrec_stats)
    print(
        f"model {config.model} (preset {config.preset}), global batch {config.batch_size}, "
        f"embedding optimizer {opt_name}, tables: users {users:,}, items {items:,}, "
        f"categories {categories:,}"
    )
    print(format_summary(summary))
    if args.json:
        record = {
            "model": config.model,
            "preset": config.preset,
            "global_batch_size": config.batch_size,
            "embedding_optimizer": opt_name,
            **summary.to_dict(),
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
