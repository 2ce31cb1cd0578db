"""Serving benchmark: requests/s of every fusion strategy, same machine, same run.

    python -m pipeline.bench_serving [--format eager,pt2,aoti,torchscript] [--json FILE]
        [--candidates 1200 --history 400 --hidden 128 --heads 4 --buckets 35 --threads 2
        --requests 60 --warmup 2] [--device cpu|cuda --dtype fp32|bf16 --time-limit-s S
        --check-reference]

One request = `encode_user` (history of L items) + `score` (B candidates), end to end,
under torch.inference_mode, with random weights at the given sizes (d = embedding size =
d_h = d_m = --hidden, as in the paper's Table I). Scorers (models.ctr.CTRScorer over the
zoo's own arches), keyed: ta; early_fusion (ta_early per candidate, as defined);
early_fusion_rank1 (ta_early from its per-user cache, the exact rank-1 rewrite);
late_fusion (ta_late: cached ID side, similarity side per candidate); dta_naive (dta per
candidate, K and V materialised); dta; dmf. They are timed in
interleaved rounds so that load from other processes hits all of them alike; the slow ones
(materialising (B, L, d) tensors) run every `--slow-every` rounds only. FLOPs per request
are the matmul FLOPs counted by torch.utils.flop_counter.FlopCounterMode (elementwise
work, softmax, gathers and scatters are not counted); the peak is the best GFLOP/s of a
2048^3 torch.mm measured in the same run (before and after the scorers), in the
benchmark's dtype.

`--device cuda` builds the scorers and tables on the GPU and times each request with CUDA
events (synchronised before and after, so a request's time is all of its GPU work); GPU
scorers run eager (TorchScript is the CPU deployment form), the peak is a 4096^3 mm.
`--dtype bf16` converts every floating weight and table of the scorers to bf16, the
multimodal table included, so the similarities are bf16 cosines; they are bucketed
exactly (fp32 bucketizer), but a cosine within a bf16 rounding of a boundary can land in
the neighbouring bucket, and DMF's histogram counts in bf16: the figure is a speed (the
GPU check measures the kernel's accuracy separately).
`--time-limit-s` ends the timed rounds early once that many seconds have passed (after
the first round, which times every scorer); `--check-reference` compares each cached
scorer's CTRs with its per-candidate form (the training forward) on one request.
scripts/gpu_check.py drives this module on a GPU.

`--format` (comma-separated) times the scorers in several forms in the same interleaved
rounds: `eager` (the CTRScorer modules), and the artifacts of pipeline/export.py, each
exported to a temporary folder and loaded with `load_artifact`: `pt2` (torch.export
programs), `aoti` (compiled by AOTInductor: a C++ compile per program, minutes for all
seven scorers) and `torchscript`. Per format: QPS, latencies, ratios, and the cold start
of each artifact (load + first request, in this process, torch already imported). The
default is `pt2` on a CPU (`--eager`: eager), eager on a GPU; the first format's figures
are also at the top level of the JSON, as before formats existed. `--malloc retain` (the
default) keeps freed memory in the process (pipeline.artifact.retain_freed_memory), as a
serving process should run; `--malloc default` leaves glibc's behaviour.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import dmf, ta, ta_early, ta_late
from models.buckets import Bucketizer
from models.config import ModelConfig
from models.features import FeatureSpec
from models.interest import InterestArch
from models.mlp import MLP
from models.scorer import CTRScorer, use_cpu_kernels, uses_cpu_kernels
from pipeline import artifact

FORMATS = ("eager", "pt2", "aoti", "torchscript")
KEYS = ("ta", "early_fusion", "early_fusion_rank1", "late_fusion", "dta_naive", "dta", "dmf")
SLOW = ("early_fusion", "late_fusion", "dta_naive")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class BenchConfig:
    """Benchmark sizes; see `--help`."""

    candidates: int = 1200
    history: int = 400
    hidden: int = 128
    heads: int = 4
    buckets: int = 35
    items: int = 20000
    users: int = 1000
    threads: int = 2
    requests: int = 60
    warmup: int = 2
    slow_every: int = 8
    script: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    time_limit_s: float = 0.0  # 0: no limit
    peak_size: int = 0  # 0: 2048 on CPU, 4096 on a GPU
    check_reference: bool = False
    formats: str = ""  # comma-separated FORMATS; "": pt2 if `script`, else eager
    malloc: str = "retain"  # "retain": pipeline.artifact.retain_freed_memory(); "default"
    cpu_kernels: str = "on"  # "on": models/cpu_ops.py's fused kernels where available; "off"


Request = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # hist_items (L,), user (), cands (B,)


def random_item_mm(config: BenchConfig, generator: torch.Generator) -> torch.Tensor:
    """(items, d_m) random L2-normalised multimodal table; rows 0 and 1 zero (padding, OOV)."""
    mm = torch.randn(config.items, config.hidden, generator=generator)
    mm = nn.functional.normalize(mm, dim=1)
    mm[:2] = 0.0
    return mm


def equal_frequency_boundaries(
    item_mm: torch.Tensor, buckets: int, generator: torch.Generator
) -> tuple[float, ...]:
    """M-1 quantile cut points of sampled item-item cosines, as data prep computes them."""
    a = torch.randint(2, item_mm.shape[0], (100_000,), generator=generator)
    b = torch.randint(2, item_mm.shape[0], (100_000,), generator=generator)
    sims = (item_mm[a] * item_mm[b]).sum(-1).numpy()
    return tuple(np.quantile(sims, np.linspace(0, 1, buckets + 1)[1:-1]).tolist())


class Float32Bucketizer(nn.Module):
    """A bf16 scorer's bucketizer: the exact `Bucketizer`, fp32 tables, fed the bf16
    cosines as fp32 (its cell arithmetic, x * G/2 clamped to G - 1, needs fp32)."""

    def __init__(self, bucketizer: Bucketizer) -> None:
        super().__init__()
        self.bucketizer = bucketizer

    def forward(self, sims: torch.Tensor) -> torch.Tensor:
        return self.bucketizer(sims.float())


# The benchmarked models: the zoo's own config and builder of each (torch only, no
# torchrec: the same code runs on a bare CUDA box, see scripts/gpu_check.py).
ARCHES: dict[str, tuple[type[ModelConfig], Callable[..., InterestArch]]] = {
    "ta": (ta.TAConfig, ta.build_ta),
    "ta_early": (ta_early.TAEarlyConfig, ta_early.build_ta_early),
    "ta_late": (ta_late.TALateConfig, ta_late.build_ta_late),
    "dta": (ta.DTAConfig, ta.build_dta),
    "dmf": (dmf.DMFConfig, dmf.build_dmf),
}
# Benchmark key -> (model, served per candidate).
SCORERS = {
    "ta": ("ta", False),
    "early_fusion": ("ta_early", True),
    "early_fusion_rank1": ("ta_early", False),
    "late_fusion": ("ta_late", False),
    "dta_naive": ("dta", True),
    "dta": ("dta", False),
    "dmf": ("dmf", False),
}


def build_scorers(config: BenchConfig) -> dict[str, nn.Module]:
    """Every benchmarked scorer (`models.scorer.CTRScorer` over the zoo's interest arch),
    random weights and tables at the configured sizes (drawn on the CPU, then moved to
    `device` and `dtype`), scripted unless `script` is False."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    item_mm = random_item_mm(config, generator)
    spec = FeatureSpec(
        num_users=config.users,
        num_items=config.items,
        num_categories=0,
        bucket_boundaries=equal_frequency_boundaries(item_mm, config.buckets, generator),
    )
    d = config.hidden
    tables = {
        "t_item": torch.randn(config.items, d, generator=generator) * 0.1,
        "t_user": torch.randn(config.users, d, generator=generator) * 0.1,
    }
    shape = {"embedding_dim": d, "hidden_dim": d, "num_heads": config.heads}
    scorers: dict[str, nn.Module] = {}
    for key, (name, per_candidate) in SCORERS.items():
        config_cls, build = ARCHES[name]
        model_config = config_cls(**shape, mlp_dims=[d, d // 2])
        interest = build(model_config, d, spec)
        head = MLP(interest.out_dim + 2 * d, [*model_config.mlp_dims, 1])
        boundaries = torch.tensor(spec.bucket_boundaries, dtype=torch.float32)
        scorer = CTRScorer(interest, head, tables, item_mm, boundaries, per_candidate=per_candidate)
        scorer = scorer.to(device=config.device, dtype=DTYPES[config.dtype])
        if config.dtype != "fp32":
            scorer.bucketizer = Float32Bucketizer(Bucketizer(boundaries).to(config.device))
        cpu_fp32 = torch.device(config.device).type == "cpu" and config.dtype == "fp32"
        use_cpu_kernels(scorer, config.cpu_kernels == "on" and cpu_fp32)
        scorers[key] = scorer.eval().requires_grad_(False)
    if not config.script:
        return scorers
    return {key: torch.jit.script(scorer) for key, scorer in scorers.items()}


def make_requests(config: BenchConfig, count: int) -> list[Request]:
    generator = torch.Generator().manual_seed(config.seed + 1)
    requests = [
        (
            torch.randint(2, config.items, (config.history,), generator=generator),
            torch.randint(2, config.users, (), generator=generator),
            torch.randint(2, config.items, (config.candidates,), generator=generator),
        )
        for _ in range(count)
    ]
    return [tuple(x.to(config.device) for x in request) for request in requests]


def run_request(scorer: nn.Module, request: Request) -> torch.Tensor:
    hist_items, user, candidates = request
    return scorer.score(scorer.encode_user(hist_items, user), candidates)


def timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds taken by fn(*args)."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def timed_cuda(fn: Callable[..., object], *args: object) -> float:
    """Seconds of GPU time from before fn(*args) to after all the work it launched: CUDA
    events, with the device synchronised first (nothing earlier is counted)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn(*args)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def timer(device: str | torch.device) -> Callable[..., float]:
    """`timed` on a CPU, `timed_cuda` on a GPU."""
    return timed_cuda if torch.device(device).type == "cuda" else timed


def matmul_peak_gflops(
    size: int = 2048,
    repeats: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """Best GFLOP/s of a (size x size) @ (size x size) torch.mm on `device` in `dtype`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    clock = timer(device)
    torch.mm(a, b)
    best = min(clock(torch.mm, a, b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _bmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of baddbmm_(a (b, n, k), b (b, k, m)): 2 b n k m, as torch counts baddbmm."""
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]


def count_flops(scorer: nn.Module, request: Request) -> int:
    """Matmul FLOPs of one request (eager scorer: the dispatcher sees every op). The counter
    knows baddbmm but not its in-place form, which DTA's attend uses: mapped to the same
    formula."""
    with FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.baddbmm_: _bmm_flops}
    ) as counter:
        run_request(scorer, request)
    return int(counter.get_total_flops())


def reference_errors(eager: dict[str, nn.Module], request: Request) -> dict[str, float]:
    """Max |CTR difference| of each cached scorer against its own per-candidate form (the
    arch's training forward over the history repeated per candidate), on one request."""
    errors = {}
    for key, scorer in eager.items():
        if scorer.per_candidate:  # early_fusion, dta_naive: the reference form itself
            continue
        cached = run_request(scorer, request)
        scorer.per_candidate = True
        try:
            reference = run_request(scorer, request)
        finally:
            scorer.per_candidate = False
        errors[key] = float((cached.float() - reference.float()).abs().max())
    return errors


def device_name(device: str | torch.device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def formats_of(config: BenchConfig) -> list[str]:
    """The formats to time: `config.formats` (comma-separated), else pt2 when `script`
    (serve an artifact: the default on a CPU) or eager."""
    names = [f.strip() for f in config.formats.split(",") if f.strip()]
    names = names or (["pt2"] if config.script else ["eager"])
    unknown = set(names) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    if len(set(names)) != len(names):
        raise ValueError(f"a format is named twice in {config.formats!r}")
    cpu_fp32 = torch.device(config.device).type == "cpu" and config.dtype == "fp32"
    if not cpu_fp32 and set(names) != {"eager"}:
        raise ValueError("artifact formats are CPU fp32 programs: use --format eager here")
    return names


def build_format(
    kind: str, eager: dict[str, nn.Module], request: Request, folder: Path
) -> tuple[dict[str, object], dict[str, float], dict[str, float]]:
    """({key: scorer}, {key: cold start s}, {key: export s}) of one format: `eager` as
    built; the others exported by pipeline.export into `folder`, then loaded with
    load_artifact and run once (cold start = load + first request, in this process)."""
    if kind == "eager":
        return dict(eager), {}, {}
    from pipeline import export  # torchrec and pyarrow: not needed for eager runs

    scorers, cold, build = {}, {}, {}
    for key, scorer in eager.items():
        path = folder / f"{key}{export.SUFFIX[kind]}"
        started = time.perf_counter()
        with torch.inference_mode(False):
            export.export_scorer(scorer, path, {"benchmark": key}, kind)
        build[key] = time.perf_counter() - started
        started = time.perf_counter()
        loaded, _ = artifact.load_artifact(path)
        with torch.inference_mode():
            run_request(loaded, request)
        cold[key] = time.perf_counter() - started
        scorers[key] = loaded
    return scorers, cold, build


def benchmark(config: BenchConfig) -> dict:
    """Run everything; returns the JSON-able result: per format ("formats"), and the first
    format's figures at the top level as well (the layout before formats existed)."""
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    kinds = formats_of(config)
    if config.malloc not in ("retain", "default"):
        raise ValueError(f"malloc must be 'retain' or 'default', got {config.malloc!r}")
    retained = artifact.retain_freed_memory() if config.malloc == "retain" else False
    torch.set_num_threads(config.threads)
    load_before = os.getloadavg()[0]
    clock = timer(config.device)
    cuda = torch.device(config.device).type == "cuda"
    peak_size = config.peak_size or (4096 if cuda else 2048)

    def peak_gflops() -> float:
        return matmul_peak_gflops(peak_size, device=config.device, dtype=DTYPES[config.dtype])

    errors: dict[str, float] = {}
    rounds = 0
    eager = build_scorers(BenchConfig(**{**asdict(config), "script": False}))
    requests = make_requests(config, 8)
    built: dict[str, dict[str, object]] = {}
    cold: dict[str, dict[str, float]] = {}
    build_s: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        for kind in kinds:
            built[kind], cold[kind], build_s[kind] = build_format(
                kind, eager, requests[0], Path(folder)
            )
    with torch.inference_mode():
        peak = peak_gflops()  # measured again after the scorers; the best is kept
        flops = {key: count_flops(eager[key], requests[0]) for key in KEYS}
        if config.check_reference:
            errors = reference_errors(eager, requests[0])
        timed_pairs = [(kind, key) for key in KEYS for kind in kinds]
        for kind, key in timed_pairs:
            for i in range(config.warmup):
                run_request(built[kind][key], requests[i % len(requests)])
        times: dict[tuple[str, str], list[float]] = {pair: [] for pair in timed_pairs}
        # The similarity GEMM of each request alone (B x d_m @ d_m x L), timed in the same
        # rounds: the part of DTA's extra work over TA that no fusion removes.
        similarity = [
            (eager["dta"].item_mm[c].contiguous(), eager["dta"].item_mm[h].t().contiguous())
            for h, _, c in requests
        ]
        sims_times: list[float] = []
        started = time.perf_counter()
        for round_ in range(config.requests):
            if (
                round_
                and config.time_limit_s
                and time.perf_counter() - started > config.time_limit_s
            ):
                break
            request = requests[round_ % len(requests)]
            for kind, key in timed_pairs:
                if key in SLOW and round_ % config.slow_every:
                    continue
                times[kind, key].append(clock(run_request, built[kind][key], request))
            sims_times.append(clock(torch.mm, *similarity[round_ % len(requests)]))
            rounds += 1
        peak = max(peak, peak_gflops())
    per_format = {}
    for kind in kinds:
        latency = {
            key: {
                "median": 1e3 * statistics.median(times[kind, key]),
                "min": 1e3 * min(times[kind, key]),
                "max": 1e3 * max(times[kind, key]),
                "requests": len(times[kind, key]),
            }
            for key in KEYS
        }
        qps = {key: 1e3 / latency[key]["median"] for key in KEYS}
        sims_ms = {"median": 1e3 * statistics.median(sims_times), "min": 1e3 * min(sims_times)}
        ta_ms = latency["ta"]
        per_format[kind] = {
            "qps": qps,
            "latency_ms": latency,
            "peak_fraction": {key: flops[key] * qps[key] / (peak * 1e9) for key in KEYS},
            "ratios": qps_ratios(qps),
            # The same ratios from the fastest request of each scorer: on a shared machine
            # the best case is the closest to an idle one.
            "ratios_min": qps_ratios({key: 1e3 / latency[key]["min"] for key in KEYS}),
            # What DTA / TA would be if DTA cost TA plus its similarity GEMM and nothing else
            # (bucketize, gathers, scatter, bucket terms free), from medians and minima.
            "dta_over_ta_bound": {
                stat: ta_ms[stat] / (ta_ms[stat] + sims_ms[stat]) for stat in ("median", "min")
            },
            # Load + first request of the artifact (not for eager), and its export time.
            "cold_start_ms": {key: 1e3 * t for key, t in cold[kind].items()},
            "export_s": build_s[kind],
        }
    first = per_format[kinds[0]]
    result = {
        "config": asdict(config),
        "torch": torch.__version__,
        "cpu_kernels": "on" if any(uses_cpu_kernels(s) for s in eager.values()) else "off",
        "device": device_name(config.device),
        "rounds": rounds,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        # Other processes' load (1-minute average) around the run: the numbers are only
        # comparable within one run when the machine is shared.
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()[0],
            "freed_memory_retained": retained,
        },
        "peak_gflops": peak,
        "flops": flops,
        "similarity_mm_ms": {
            "median": 1e3 * statistics.median(sims_times) if sims_times else math.nan,
            "min": 1e3 * min(sims_times) if sims_times else math.nan,
        },
        "formats": per_format,
        **{k: first[k] for k in ("qps", "latency_ms", "peak_fraction", "ratios", "ratios_min")},
    }
    if config.check_reference:
        result["reference_max_abs_error"] = errors
    return result


def qps_ratios(qps: dict[str, float]) -> dict[str, float]:
    """The headline QPS ratios of a {scorer: QPS} dict: DTA and DMF over TA and over early
    fusion (as defined), DTA over its materialised form."""
    return {
        "dta_over_early_fusion": qps["dta"] / qps["early_fusion"],
        "dta_over_ta": qps["dta"] / qps["ta"],
        "dta_over_dta_naive": qps["dta"] / qps["dta_naive"],
        "dmf_over_early_fusion": qps["dmf"] / qps["early_fusion"],
        "dmf_over_ta": qps["dmf"] / qps["ta"],
    }


def format_result(result: dict) -> str:
    """The result as a plain-text table, one block per format."""
    c = result["config"]
    lines = [
        f"B={c['candidates']} L={c['history']} d={c['hidden']} H={c['heads']} "
        f"M={c['buckets']} threads={c['threads']} "
        f"device={result.get('device', 'cpu')} dtype={c.get('dtype', 'fp32')} "
        f"torch={result['torch']} peak={result['peak_gflops']:.1f} GFLOP/s "
        f"loadavg={result['machine']['loadavg_before']:.1f}->"
        f"{result['machine']['loadavg_after']:.1f} rounds={result['rounds']} "
        f"malloc={c.get('malloc', 'default')}"
        f"{'' if result['machine'].get('freed_memory_retained') else ' (not retained)'} "
        f"cpu_kernels={result.get('cpu_kernels', 'off')}",
    ]
    for kind, figures in result["formats"].items():
        cold = figures.get("cold_start_ms") or {}
        lines.append(
            f"[{kind}] {'scorer':<19}{'QPS':>8}{'median ms':>11}{'min ms':>9}{'max ms':>9}"
            f"{'n':>5}{'GFLOP/req':>11}{'% peak':>8}{'cold ms':>9}"
        )
        for key in KEYS:
            lat = figures["latency_ms"][key]
            cold_ms = f"{cold[key]:>9.0f}" if key in cold else f"{'-':>9}"
            lines.append(
                f"{'':<{len(kind) + 3}}{key:<19}{figures['qps'][key]:>8.1f}{lat['median']:>11.2f}"
                f"{lat['min']:>9.2f}{lat['max']:>9.2f}{lat['requests']:>5}"
                f"{result['flops'][key] / 1e9:>11.3f}{100 * figures['peak_fraction'][key]:>8.1f}"
                f"{cold_ms}"
            )
        for name in ("ratios", "ratios_min"):
            values = ", ".join(f"{k}={v:.2f}" for k, v in figures[name].items())
            lines.append(f"{'':<{len(kind) + 3}}{name}: {values}")
        bound = figures["dta_over_ta_bound"]
        lines.append(
            f"{'':<{len(kind) + 3}}dta_over_ta_bound (TA + the similarity GEMM alone): "
            f"{bound['median']:.2f} (min {bound['min']:.2f})"
        )
    sims = result["similarity_mm_ms"]
    lines.append(f"similarity GEMM alone: median {sims['median']:.2f} ms, min {sims['min']:.2f} ms")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = BenchConfig()
    choices = {
        "device": None,
        "dtype": sorted(DTYPES),
        "malloc": ["retain", "default"],
        "cpu_kernels": ["on", "off"],
    }
    for name, value in asdict(defaults).items():
        if isinstance(value, bool) or name == "formats":
            continue
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, type=type(value), default=value, choices=choices.get(name))
    parser.add_argument(
        "--format",
        dest="formats",
        default="",
        help=f"formats to time in one run, comma-separated, of {','.join(FORMATS)} "
        "(default: pt2 on a CPU, eager on a GPU)",
    )
    parser.add_argument(
        "--eager", action="store_true", help="same as --format eager (always on a GPU)"
    )
    parser.add_argument(
        "--check-reference",
        action="store_true",
        help="compare each cached scorer with its per-candidate form on one request",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = vars(parser.parse_args(argv))
    out, eager = args.pop("json"), args.pop("eager")
    script = not eager and torch.device(args["device"]).type == "cpu"
    if eager and not args["formats"]:
        args["formats"] = "eager"
    return BenchConfig(**args, script=script), out


def main(argv: list[str] | None = None) -> int:
    config, out = parse_args(argv)
    result = benchmark(config)
    print(format_result(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
