"""The GPU check: serving benchmark, fused DTA kernel and DMF's dense training step on one
CUDA GPU, from a copy of this repository, with PyTorch (and Triton) only, in minutes.

    python scripts/gpu_check.py --json runs/gpu_check.json     # a CUDA machine, ~5-7 min
    python scripts/gpu_check.py --device cpu --quick            # seconds: what the tests run

No install step: the script puts the repository root on sys.path and imports the project's
own torch-only modules (models/ arches, models/scorer.py, pipeline/bench_serving.py,
models/dta_triton.py); nothing needs torchrec or fbgemm, and what would (sharded embedding
training, NCCL) is skipped with a message. Stages, in order, each given a share of
`--budget-s` (what an earlier stage leaves over goes to the later ones; a stage whose
share is below its minimum is skipped and listed in the JSON):

1. kernel: the fused Triton kernel of DTA's factorised candidate side
   (models/dta_triton.py) against `DecoupledTargetAttention.attend` (factorised) and
   `forward_reference` (plain, K and V materialised), fp32 and bf16, at B x L = 1200 x 400 and
   4096 x 1000, and both timed (CUDA events, forward only). Without Triton (or on CPU
   without TRITON_INTERPRET=1) its PyTorch mirror is checked instead, and on a GPU that
   counts as a failure.
2. serving: pipeline.bench_serving (TA, early fusion per candidate as the paper defines
   it, its rank-1 rewrite, late fusion, naive DTA, factorised DTA, DMF) at B=1200, L=400,
   d=128, H=4, M=35, then B=4096, L=1000, fp32 and bf16: median/min/max latency,
   requests/s, matmul FLOPs and the fraction of the matmul peak measured in the same run,
   and each cached scorer's CTRs against its per-candidate (training-forward) form.
3. training: DMF's and TA's dense over-arch (interest arch + head MLP, the project's
   modules, on padded random batches: the sparse TorchRec part is not run) at the
   industrial preset, forward + backward + Adam, bf16 autocast on a GPU, interleaved in
   the same run: samples/s and DMF / TA.

Writes one JSON (`--json`, also after every stage, so a run cut short leaves what it
measured): `device`, `kernel`, `serving`, `training`, `checks`, `skipped`, `errors`,
`elapsed_s`. Exits 1 if a comparison with a reference fails or a stage raises, 2 on bad
arguments (no CUDA device for `--device cuda`).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a plain copy of the repository: no install step
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from models import dmf, ta  # noqa: E402
from models.buckets import bucketize  # noqa: E402
from models.dta import DecoupledTargetAttention  # noqa: E402
from models.features import FeatureSpec  # noqa: E402
from models.interest import InterestInputs  # noqa: E402
from models.mlp import MLP  # noqa: E402
from models.scorer import head_input  # noqa: E402
from pipeline import bench_serving  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# PRESETS["industrial"] of pipeline/config.py (which imports torchrec through the zoo, so
# it is not imported here; tests/test_gpu_check.py checks the two agree), plus the data
# settings the preset is prepared with (--num-buckets 35 --max-history 100).
INDUSTRIAL = {
    "embedding_dim": 32,
    "hidden_dim": 128,
    "num_heads": 4,
    "mlp_dims": [128, 64],
    "batch_size": 1024,
    "lr": 1e-3,
    "history": 100,
    "buckets": 35,
}
QUICK_TRAINING = {**INDUSTRIAL, "embedding_dim": 8, "hidden_dim": 16, "mlp_dims": [16, 8]}
QUICK_TRAINING.update(batch_size=64, history=20, buckets=8)


@dataclass
class Sizes:
    """Everything the stages size: the paper's serving shapes, or tiny ones (--quick)."""

    serving: list[tuple[int, int]] = field(default_factory=lambda: [(1200, 400), (4096, 1000)])
    hidden: int = 128
    heads: int = 4
    buckets: int = 35
    items: int = 20000
    users: int = 1000
    requests: int = 60
    warmup: int = 3
    slow_every: int = 4
    peak_size: int = 0  # bench_serving's default: 4096 on a GPU, 2048 on a CPU
    kernel_reps: int = 50
    kernel_args: dict[str, int] = field(default_factory=dict)  # block sizes; defaults: 32, 64
    training: dict[str, Any] = field(default_factory=lambda: dict(INDUSTRIAL))
    training_block: int = 10  # steps timed together
    min_stage_s: float = 5.0


QUICK = Sizes(
    serving=[(48, 24), (80, 37)],
    hidden=32,
    heads=4,
    buckets=8,
    items=400,
    users=40,
    requests=3,
    warmup=1,
    slow_every=1,
    peak_size=128,
    kernel_reps=2,
    kernel_args={"block_b": 16, "block_l": 16},  # several tiles even at these lengths
    training=dict(QUICK_TRAINING),
    training_block=2,
    min_stage_s=0.0,
)
TOLERANCE = {  # max |error| / max(1, max |reference|)
    "kernel_fp32": 1e-4,  # IEEE fp32 products on both sides
    "kernel_bf16_floor": 8e-3,  # bf16 has 8 significant bits; also <= 2x the reference's own
    "scorer_fp32": 1e-4,  # CTRs in (0, 1)
    "scorer_bf16": 3e-2,
}


class Budget:
    """Seconds left of `total`, shared out among the stages still to run by weight."""

    def __init__(self, total: float) -> None:
        self.total = total
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def share(self, weight: float, weights_left: float) -> float:
        return max(0.0, self.total - self.elapsed()) * weight / weights_left


def time_calls(
    fn: Callable[[], object], device: torch.device, reps: int, limit_s: float, warmup: int = 2
) -> dict:
    """fn() timed `reps` times (CUDA events on a GPU), after `warmup` calls; stops early
    after `limit_s` seconds (at least 3 calls). Milliseconds: median, min, max, calls."""
    clock = bench_serving.timer(device)
    for _ in range(warmup):
        fn()
    times, started = [], time.perf_counter()
    for _ in range(reps):
        times.append(clock(fn))
        if len(times) >= min(3, reps) and time.perf_counter() - started > limit_s:
            break
    return {
        "median": 1e3 * statistics.median(times),
        "min": 1e3 * min(times),
        "max": 1e3 * max(times),
        "calls": len(times),
    }


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |out - reference|, that over max(1, max |reference|))."""
    err = float((out.float() - reference.float()).abs().max()) if out.numel() else 0.0
    scale = max(1.0, float(reference.float().abs().max())) if reference.numel() else 1.0
    return err, err / scale


# ----------------------------------------------------------------------------- device
def device_info(device: torch.device) -> dict:
    info: dict[str, Any] = {
        "type": device.type,
        "name": bench_serving.device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": package_version("triton"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["capability"] = f"{props.major}.{props.minor}"
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
    return info


def installed(module: str) -> bool:
    """Whether `module` could be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- kernel
def load_kernel_module(device: torch.device) -> Any:
    """models.dta_triton, with Triton's interpreter switched on for a CPU run when Triton
    is installed (it must be set before the kernel is decorated, i.e. before import)."""
    if device.type == "cpu" and installed("triton"):
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return import_kernel_module()


def import_kernel_module() -> Any:
    from models import dta_triton

    return dta_triton


def plain_forward(
    attention: DecoupledTargetAttention,
    history: torch.Tensor,
    query: torch.Tensor,
    buckets: torch.Tensor,
    chunk: int = 1024,
) -> torch.Tensor:
    """The training forward with the history repeated per candidate (K, V materialised),
    in chunks of candidates to bound its (chunk, L, d_h) tensors."""
    outs = []
    for q, b in zip(query.split(chunk), buckets.split(chunk), strict=True):
        hist = history.unsqueeze(0).expand(q.shape[0], *history.shape)
        mask = torch.ones(q.shape[0], history.shape[0], dtype=torch.bool, device=q.device)
        outs.append(attention.forward_reference(q, hist, mask, b))
    return torch.cat(outs)


def kernel_stage(
    device: torch.device, sizes: Sizes, limit_s: float, seed: int, backend: str = "auto"
) -> dict:
    fused = load_kernel_module(device) if backend != "torch" else import_kernel_module()
    requested, backend = backend, fused.resolve_backend(backend, device)
    result: dict[str, Any] = {
        "backend": backend,
        "triton": fused.triton_version(),
        "interpreted": backend == "triton" and fused.triton_interpreted(),
        "reference": "DecoupledTargetAttention.attend (factorised) and forward_reference (plain)",
        "tolerance": {k: v for k, v in TOLERANCE.items() if k.startswith("kernel")},
        "cases": {},
    }
    checks = []
    if backend != "triton":
        why = "triton is not installed" if fused.triton is None else "no CUDA device"
        print(f"kernel: Triton kernel not run ({why}); checking its PyTorch mirror instead")
        if device.type == "cuda" and requested == "auto":
            checks.append(check("kernel: Triton kernel runs on the GPU", 0.0, 0.0, ok=False))
    per_call = limit_s / (4 * len(sizes.serving))  # 2 dtypes x 2 timings per size
    for batch, length in sizes.serving:
        case, case_checks = kernel_case(
            fused, backend, device, sizes, batch, length, per_call, seed
        )
        result["cases"][f"B{batch}_L{length}"] = case
        checks += case_checks
        release(device)
    for fmt in DTYPES:
        result[f"max_abs_error_{fmt}"] = max(
            case[fmt]["max_abs_error_vs_attend_fp32"] for case in result["cases"].values()
        )
    print(format_kernel(result))
    return {"result": result, "checks": checks}


def kernel_case(
    fused: Any, backend: str, device: torch.device, sizes: Sizes, batch: int, length: int,
    limit_s: float, seed: int,
) -> tuple[dict, list[dict]]:  # fmt: skip
    """One B x L case: the fused candidate side against `attend` and `forward` (fp32) and
    against fp32 `attend` in bf16 (tolerance: twice bf16 `attend`'s own error, at least the
    floor), then both timed, forward only."""
    d, heads, m = sizes.hidden, sizes.heads, sizes.buckets
    torch.manual_seed(seed)
    attention = DecoupledTargetAttention(d, d, d, heads, m).to(device).eval()
    with torch.no_grad():  # bucket terms as large as the ID terms, so their errors show
        attention.bucket_key.weight.normal_(std=0.5)
        attention.bucket_value.weight.normal_(std=0.5)
    history = torch.randn(length, d, device=device)
    query = torch.randn(batch, d, device=device)
    buckets = torch.randint(0, m, (batch, length), device=device)
    name = f"kernel {batch}x{length}"
    case: dict[str, Any] = {}
    checks = []
    with torch.inference_mode():
        reference = attention.attend(attention.encode(history), query, buckets)
        for fmt, dtype in DTYPES.items():
            module = attention if fmt == "fp32" else copy.deepcopy(attention).to(dtype)
            state = module.encode(history.to(dtype))
            q = query.to(dtype)
            out = fused.attend_fused(module, state, q, buckets, backend, **sizes.kernel_args)
            err, rel = relative_error(out, reference)
            c: dict[str, Any] = {"max_abs_error_vs_attend_fp32": err}
            if fmt == "fp32":
                err_plain, rel_plain = relative_error(
                    out, plain_forward(attention, history, query, buckets)
                )
                c["max_abs_error_vs_forward_fp32"] = err_plain
                tolerance = TOLERANCE["kernel_fp32"]
                checks.append(check(f"{name} fp32 vs forward", rel_plain, tolerance))
            else:
                own_err, own_rel = relative_error(module.attend(state, q, buckets), reference)
                c["attend_bf16_max_abs_error_vs_attend_fp32"] = own_err
                tolerance = max(2.0 * own_rel, TOLERANCE["kernel_bf16_floor"])
            checks.append(check(f"{name} {fmt} vs attend fp32", rel, tolerance))

            def run_attend(module: Any = module, state: Any = state, q: torch.Tensor = q) -> None:
                module.attend(state, q, buckets)

            def run_kernel(module: Any = module, state: Any = state, q: torch.Tensor = q) -> None:
                fused.attend_fused(module, state, q, buckets, backend, **sizes.kernel_args)

            c["attend_ms"] = time_calls(run_attend, device, sizes.kernel_reps, limit_s)
            interpreted = backend == "triton" and fused.triton_interpreted()  # slow: once
            c["kernel_ms"] = time_calls(
                run_kernel, device, 1 if interpreted else sizes.kernel_reps, limit_s,
                warmup=0 if interpreted else 2,
            )  # fmt: skip
            c["speedup"] = c["attend_ms"]["median"] / c["kernel_ms"]["median"]
            case[fmt] = c
    return case, checks


def format_kernel(result: dict) -> str:
    lines = [
        f"kernel backend={result['backend']} interpreted={result['interpreted']} "
        f"triton={result['triton']}",
        f"{'case':<14}{'dtype':<6}{'max err':>10}{'attend ms':>11}{'kernel ms':>11}{'speedup':>9}",
    ]
    for name, case in result["cases"].items():
        for fmt, c in case.items():
            lines.append(
                f"{name:<14}{fmt:<6}{c['max_abs_error_vs_attend_fp32']:>10.2e}{c['attend_ms']['median']:>11.3f}"
                f"{c['kernel_ms']['median']:>11.3f}{c['speedup']:>9.2f}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- serving
def serving_stage(
    device: torch.device, sizes: Sizes, batch: int, length: int, fmt: str, limit_s: float,
    seed: int, threads: int,
) -> dict:  # fmt: skip
    config = bench_serving.BenchConfig(
        candidates=batch,
        history=length,
        hidden=sizes.hidden,
        heads=sizes.heads,
        buckets=sizes.buckets,
        items=sizes.items,
        users=sizes.users,
        threads=threads,
        requests=sizes.requests,
        warmup=sizes.warmup,
        slow_every=sizes.slow_every,
        script=False,  # eager: TorchScript is the CPU deployment form
        seed=seed,
        device=str(device),
        dtype=fmt,
        time_limit_s=max(1e-6, 0.5 * limit_s),  # rest: building, FLOPs, reference, peaks (0: none)
        peak_size=sizes.peak_size,
        check_reference=True,
    )
    result = bench_serving.benchmark(config)
    result["requests_per_s"] = result["qps"]
    print(bench_serving.format_result(result))
    tolerance = TOLERANCE[f"scorer_{fmt}"]
    checks = [
        check(f"serving {batch}x{length} {fmt} {key} cached vs per-candidate", err, tolerance)
        for key, err in result["reference_max_abs_error"].items()
    ]
    release(device)
    return {"result": result, "checks": checks}


# --------------------------------------------------------------------------- training
def training_stage(device: torch.device, sizes: Sizes, limit_s: float, seed: int) -> dict:
    """DMF's and TA's dense over-arch (interest arch + head) trained on random padded
    batches, forward + backward + Adam, interleaved blocks of steps; samples/s each."""
    preset = sizes.training
    emb, hist_len, num_buckets = preset["embedding_dim"], preset["history"], preset["buckets"]
    batch = preset["batch_size"]
    amp = device.type == "cuda"
    generator = torch.Generator().manual_seed(seed)
    mm = nn.functional.normalize(torch.randn(4096, 128, generator=generator), dim=1)
    sample = (
        mm[torch.randint(0, 4096, (50_000,), generator=generator)]
        * mm[torch.randint(0, 4096, (50_000,), generator=generator)]
    ).sum(-1)
    quantiles = torch.linspace(0, 1, num_buckets + 1)[1:-1]
    boundaries = tuple(torch.quantile(sample, quantiles).tolist())
    spec = FeatureSpec(
        num_users=1000, num_items=4096, num_categories=0, bucket_boundaries=boundaries
    )
    shape = {k: preset[k] for k in ("embedding_dim", "hidden_dim", "num_heads", "mlp_dims")}
    models: dict[str, nn.ModuleDict] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for name, (config_cls, build) in {
        "ta": (ta.TAConfig, ta.build_ta),
        "dmf": (dmf.DMFConfig, dmf.build_dmf),
    }.items():
        torch.manual_seed(seed)
        interest = build(config_cls(**shape), emb, spec)
        head = MLP(interest.out_dim + 2 * emb, [*shape["mlp_dims"], 1])
        models[name] = nn.ModuleDict({"interest": interest, "head": head}).to(device).train()
        optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=preset["lr"])
    boundary_tensor = torch.tensor(boundaries, device=device)

    def random_batch() -> dict[str, torch.Tensor]:
        lengths = torch.randint(1, hist_len + 1, (batch,), generator=generator)
        mask = torch.arange(hist_len).unsqueeze(0) < lengths.unsqueeze(1)
        target_mm = mm[torch.randint(0, 4096, (batch,), generator=generator)]
        hist_mm = mm[torch.randint(0, 4096, (batch, hist_len), generator=generator)]
        sims = torch.einsum("bd,bld->bl", target_mm, hist_mm) * mask
        tensors = {
            # the sparse arch's outputs: leaves whose gradients the backward computes
            "target": torch.randn(batch, emb, generator=generator) * 0.1,
            "user": torch.randn(batch, emb, generator=generator) * 0.1,
            "history": torch.randn(batch, hist_len, emb, generator=generator)
            * 0.1
            * mask[..., None],
            "mask": mask,
            "sims": sims,
            "lengths": lengths,
            "labels": (torch.rand(batch, generator=generator) < 0.3).float(),
        }
        tensors = {k: v.to(device) for k, v in tensors.items()}
        for k in ("target", "user", "history"):
            tensors[k].requires_grad_(True)
        return tensors

    batches = [random_batch() for _ in range(4)]
    loss_fn = nn.BCEWithLogitsLoss()
    losses: dict[str, list[float]] = {name: [] for name in models}
    step_count = {name: 0 for name in models}

    def step(name: str) -> torch.Tensor:
        model, optimizer = models[name], optimizers[name]
        b = batches[step_count[name] % len(batches)]
        step_count[name] += 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x = InterestInputs(
                b["target"], b["history"], b["mask"], b["sims"],
                bucketize(b["sims"], boundary_tensor), b["lengths"],
            )  # fmt: skip
            interest = model["interest"](x)
            logits = model["head"](head_input(interest, b["target"], b["user"])).squeeze(-1)
        loss = loss_fn(logits.float(), b["labels"])
        optimizer.zero_grad(set_to_none=True)
        for k in ("target", "user", "history"):
            b[k].grad = None
        loss.backward()
        optimizer.step()
        return loss.detach()

    def block(name: str) -> None:
        for _ in range(sizes.training_block):
            losses[name].append(step(name))

    for name in models:  # warm-up: kernels, cuBLAS handles, Adam state
        for _ in range(3):
            step(name)
    clock = bench_serving.timer(device)
    seconds = {name: 0.0 for name in models}
    steps = {name: 0 for name in models}
    started = time.perf_counter()
    rounds = 0
    while rounds < 1 or time.perf_counter() - started < 0.8 * limit_s:
        for name in models:
            seconds[name] += clock(block, name)
            steps[name] += sizes.training_block
        rounds += 1
        if rounds >= 50:
            break
    throughput = {name: steps[name] * batch / seconds[name] for name in models}
    final = {name: [float(x) for x in losses[name][-3:]] for name in models}
    finite = all(math.isfinite(x) for v in final.values() for x in v)
    result = {
        "preset": preset,
        "amp": "bf16 autocast" if amp else None,
        "optimizer": "torch.optim.Adam",
        "what": "interest arch + head MLP (dense over-arch), forward + backward + Adam; "
        "inputs: padded random embeddings (requires_grad), similarities, bucketized in the step",
        "steps": steps,
        "seconds": seconds,
        "samples_per_s": throughput,
        "dmf_over_ta": throughput["dmf"] / throughput["ta"],
        "last_losses": final,
    }
    print(
        f"training ({result['amp'] or 'fp32'}, batch {batch}, history {hist_len}): "
        + ", ".join(f"{k} {v:,.0f} samples/s" for k, v in throughput.items())
        + f", dmf/ta {result['dmf_over_ta']:.3f}"
    )
    release(device)
    return {
        "result": result,
        "checks": [check("training losses finite", 0.0 if finite else 1.0, 0.0)],
    }


# ------------------------------------------------------------------------------- main
def check(name: str, value: float, tolerance: float, ok: bool | None = None) -> dict:
    passed = bool(value <= tolerance and math.isfinite(value)) if ok is None else ok
    return {"name": name, "value": value, "tolerance": tolerance, "ok": passed}


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N, cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for CPU tests")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "gpu_check.json",
                   help="where the results go (default: runs/gpu_check.json)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for the whole run, shared out among the stages "
                   "(default 420, --quick 60); stages trim their timed loops to fit")  # fmt: skip
    p.add_argument("--stages", default="kernel,serving,training",
                   help="comma-separated subset of kernel, serving, training")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: 1 with --quick, else all cores)")  # fmt: skip
    p.add_argument("--kernel-backend", default="auto", choices=("auto", "triton", "torch"),
                   help="auto: the Triton kernel where it runs (CUDA, or CPU under "
                   "TRITON_INTERPRET=1 when triton is installed), else its PyTorch mirror")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s if args.budget_s is not None else (60.0 if args.quick else 420.0))
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if device.type == "cuda":
        if device.index is None:  # set_device and the stages want an index: cuda:N
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    sizes = QUICK if args.quick else Sizes()
    threads = args.threads or (1 if args.quick else (os.cpu_count() or 1))
    torch.set_num_threads(threads)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"kernel", "serving", "training"}
    if unknown:
        print(f"gpu_check: unknown stages {sorted(unknown)}", file=sys.stderr)
        return 2

    report: dict[str, Any] = {
        "device": device_info(device),
        "args": {"quick": args.quick, "budget_s": budget.total, "stages": stages},
        "sizes": asdict(sizes),
        "kernel": None,
        "serving": {},
        "training": None,
        "checks": [],
        "skipped": [],
        "errors": [],
    }
    if not installed("torchrec") or not installed("fbgemm_gpu"):
        why = "torchrec / fbgemm-gpu are not installed here"
    else:
        why = "not part of this check: run `python -m pipeline.train --device cuda` for it"
    report["skipped"].append(
        {"what": "sparse TorchRec training (sharded embeddings, NCCL, fbgemm kernels)", "why": why}
    )
    print(f"gpu_check on {report['device']['name']} ({device}), torch {torch.__version__}, "
          f"triton {report['device']['triton']}, budget {budget.total:.0f} s")  # fmt: skip
    print(f"skipped: sparse TorchRec training: {why}")

    plan: list[tuple[str, float, Callable[[float], dict], Callable[[dict], None]]] = []
    if "kernel" in stages:
        plan.append(("kernel", 2.0, lambda s: kernel_stage(device, sizes, s, args.seed, args.kernel_backend),
                     lambda r: report.__setitem__("kernel", r)))  # fmt: skip
    serving_runs = [(b, L, f) for b, L in sizes.serving for f in DTYPES]
    first, rest = serving_runs[:2], serving_runs[2:]

    def serving_entry(b: int, L: int, f: str) -> tuple:
        key = f"B{b}_L{L}"

        def store(r: dict) -> None:
            report["serving"].setdefault(key, {})[f] = r

        run = lambda s: serving_stage(device, sizes, b, L, f, s, args.seed, threads)  # noqa: E731
        return (f"serving {key} {f}", 1.5, run, store)

    if "serving" in stages:
        plan += [serving_entry(*r) for r in first]
    if "training" in stages:
        plan.append(("training", 2.0, lambda s: training_stage(device, sizes, s, args.seed),
                     lambda r: report.__setitem__("training", r)))  # fmt: skip
    if "serving" in stages:
        plan += [serving_entry(*r) for r in rest]

    weights_left = sum(weight for _, weight, _, _ in plan)
    for stage, weight, run, store in plan:
        share = budget.share(weight, weights_left)
        weights_left -= weight
        if share < sizes.min_stage_s:
            print(f"skipped: {stage}: {share:.1f} s left of the budget")
            report["skipped"].append({"what": stage, "why": f"budget: {share:.1f} s left"})
            continue
        print(f"\n== {stage} (up to ~{share:.0f} s)", flush=True)
        started = time.perf_counter()
        try:
            out = run(share)
            store(out["result"])
            report["checks"] += out["checks"]
        except Exception as exc:  # noqa: BLE001 - every stage reports, the run goes on
            traceback.print_exc()
            report["errors"].append({"stage": stage, "error": f"{type(exc).__name__}: {exc}"})
            try:
                release(device)
            except Exception:  # noqa: BLE001 - a broken CUDA context: later stages report it
                pass
        print(f"   {stage}: {time.perf_counter() - started:.1f} s", flush=True)
        report["elapsed_s"] = budget.elapsed()
        write(report, args.json)

    report["elapsed_s"] = budget.elapsed()
    report["within_budget"] = report["elapsed_s"] <= budget.total
    report["imported_torchrec"] = any(
        m.split(".")[0] in ("torchrec", "fbgemm_gpu") for m in sys.modules
    )
    failed = [c for c in report["checks"] if not c["ok"]]
    report["ok"] = not failed and not report["errors"]
    write(report, args.json)
    print(f"\n{len(report['checks']) - len(failed)}/{len(report['checks'])} checks passed, "
          f"{len(report['errors'])} stage errors, {report['elapsed_s']:.0f} s "
          f"(budget {budget.total:.0f} s) -> {args.json}")  # fmt: skip
    for c in failed:
        print(f"FAILED: {c['name']}: {c['value']:.3g} > {c['tolerance']:.3g}")
    for e in report["errors"]:
        print(f"ERROR: {e['stage']}: {e['error']}")
    return 0 if report["ok"] else 1


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
