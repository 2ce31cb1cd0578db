"""The GPU check (scripts/gpu_check.py) in its CPU quick mode, and the fused DTA kernel
(models/dta_triton.py) against DTA's reference forms.

The quick run is the script as a bare GPU box runs it (a subprocess outside the
repository, no install step, torchrec, fbgemm, pyarrow and the rest made unimportable),
at tiny sizes. The Triton kernel itself runs here only
where the `triton` package is installed (its interpreter, TRITON_INTERPRET=1, runs it on
CPU tensors); its PyTorch mirror, the same two-pass algorithm, is tested everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from models.dta import DecoupledTargetAttention
from models.dta_triton import attend_fused, candidate_operands, candidates_tiled, resolve_backend
from pipeline.bench_serving import KEYS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


# A bare CUDA box has none of these: the script runs with their imports made to fail.
ABSENT = ("torchrec", "fbgemm_gpu", "pyarrow", "torchx", "torchmetrics", "tensorboard")
BARE_BOX = f"""
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on a bare GPU box)")
sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    argv = [str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out), *args]
    proc = subprocess.run(
        [sys.executable, "-c", BARE_BOX, *argv],
        cwd=tmp_path,  # not the repository root: the script finds its modules itself
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, json.loads(out.read_text()) if out.exists() else {}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    return run_script("--kernel-backend", "torch", tmp_path=tmp_path_factory.mktemp("quick"))


def test_quick_cpu_run_writes_every_figure(quick_run: tuple) -> None:
    proc, report = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["ok"] and not report["errors"]
    assert report["checks"] and all(c["ok"] for c in report["checks"])
    device = report["device"]
    assert device["type"] == "cpu" and device["torch"] == torch.__version__
    assert "triton" in device  # None here: not installed
    assert not report["imported_torchrec"]  # torch only, as on a bare CUDA box
    assert any("TorchRec" in s["what"] and "not installed" in s["why"] for s in report["skipped"])

    assert set(report["serving"]) == {"B48_L24", "B80_L37"}
    for size in report["serving"].values():
        assert set(size) == {"fp32", "bf16"}
        for result in size.values():
            assert set(result["requests_per_s"]) == set(KEYS)
            assert all(v > 0 for v in result["requests_per_s"].values())
            lat = result["latency_ms"]["dta"]
            assert lat["min"] <= lat["median"] <= lat["max"]
            assert 0 < result["peak_fraction"]["early_fusion"]
            assert set(result["reference_max_abs_error"]) == {
                "ta", "early_fusion_rank1", "late_fusion", "dta", "dmf"
            }  # fmt: skip

    kernel = report["kernel"]
    assert kernel["backend"] == "torch" and kernel["max_abs_error_fp32"] < 1e-5
    for case in kernel["cases"].values():
        for fmt in ("fp32", "bf16"):
            assert case[fmt]["kernel_ms"]["median"] > 0 and case[fmt]["attend_ms"]["median"] > 0
        assert case["fp32"]["max_abs_error_vs_forward_fp32"] < 1e-5

    training = report["training"]
    assert set(training["samples_per_s"]) == {"ta", "dmf"}
    assert training["dmf_over_ta"] > 0 and training["amp"] is None  # autocast on CUDA only
    assert report["elapsed_s"] < 60 and report["within_budget"]


def test_budget_trims_the_timed_loops(tmp_path: Path) -> None:
    proc, report = run_script(
        "--budget-s", "0.01", "--stages", "serving", "--kernel-backend", "torch", tmp_path=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for size in report["serving"].values():
        for result in size.values():
            assert result["rounds"] == 1  # the first round only: every scorer timed once
            assert result["latency_ms"]["ta"]["requests"] == 1
    assert report["kernel"] is None and report["training"] is None


def test_failed_comparison_exits_non_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from scripts import gpu_check

    monkeypatch.setitem(gpu_check.TOLERANCE, "kernel_fp32", -1.0)
    out = tmp_path / "failed.json"
    threads = str(torch.get_num_threads())
    argv = ["--device", "cpu", "--quick", "--stages", "kernel", "--kernel-backend", "torch"]
    assert gpu_check.main([*argv, "--threads", threads, "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert not report["ok"] and any(not c["ok"] for c in report["checks"])


def test_industrial_sizes_are_the_preset() -> None:
    from pipeline.config import PRESETS
    from scripts.gpu_check import INDUSTRIAL

    preset = PRESETS["industrial"]
    assert {k: INDUSTRIAL[k] for k in preset["model_args"]} == preset["model_args"]
    assert INDUSTRIAL["batch_size"] == preset["batch_size"] and INDUSTRIAL["lr"] == preset["lr"]


def random_dta(d: int, heads: int, buckets: int, seed: int) -> DecoupledTargetAttention:
    torch.manual_seed(seed)
    attention = DecoupledTargetAttention(d, d, d, heads, buckets).eval()
    with torch.no_grad():
        attention.bucket_key.weight.normal_(std=0.5)
        attention.bucket_value.weight.normal_(std=0.5)
    return attention


@pytest.mark.parametrize(
    ("batch", "length", "block_l"), [(7, 0, 16), (5, 1, 16), (33, 50, 16), (40, 130, 64)]
)
def test_tiled_mirror_matches_attend_and_forward(batch: int, length: int, block_l: int) -> None:
    attention = random_dta(32, 4, 7, seed=length)
    history, query = torch.randn(length, 32), torch.randn(batch, 32)
    buckets = torch.randint(0, 7, (batch, length))
    with torch.no_grad():
        state = attention.encode(history)
        out = candidates_tiled(*candidate_operands(attention, state, query), buckets, block_l)
        torch.testing.assert_close(out, attention.attend(state, query, buckets))
        if length:
            mask = torch.ones(batch, length, dtype=torch.bool)
            plain = attention(query, history.expand(batch, length, 32), mask, buckets)
            torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
        low = attention.to(torch.bfloat16)
        state16 = low.encode(history.bfloat16())
        out16 = attend_fused(low, state16, query.bfloat16(), buckets, backend="torch")
        assert out16.dtype == torch.bfloat16
        torch.testing.assert_close(out16.float(), out.float(), atol=3e-2, rtol=3e-2)


def test_backend_choice() -> None:
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="bucket"):  # TA has no bucket terms
        ta = DecoupledTargetAttention(8, 8, 8, 2, 0, bucket_keys=False, bucket_values=False)
        attend_fused(ta, ta.encode(torch.randn(3, 8)), torch.randn(2, 8), torch.zeros(2, 3).long())


def test_triton_kernel_interpreted_matches_attend(tmp_path: Path) -> None:
    """The real Triton kernel, in Triton's interpreter on CPU tensors (needs `triton`)."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import torch
        from models.dta_triton import candidate_operands, candidates_triton, resolve_backend
        from tests.test_gpu_check import random_dta
        assert resolve_backend("auto", torch.device("cpu")) == "triton"
        for batch, length, seed in [(37, 70, 0), (20, 1, 1), (3, 0, 2)]:
            att = random_dta(32, 4, 7, seed)
            history, query = torch.randn(length, 32), torch.randn(batch, 32)
            buckets = torch.randint(0, 7, (batch, length))
            with torch.no_grad():
                state = att.encode(history)
                ops = candidate_operands(att, state, query)
                out = candidates_triton(*ops, buckets, block_b=16, block_l=32)
                torch.testing.assert_close(out, att.attend(state, query, buckets))
                low = att.to(torch.bfloat16)
                state16 = low.encode(history.bfloat16())
                ops16 = candidate_operands(low, state16, query.bfloat16())
                out16 = candidates_triton(*ops16, buckets, block_b=16, block_l=32)
                torch.testing.assert_close(out16.float(), out, atol=3e-2, rtol=3e-2)
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


@pytest.mark.parametrize("capability", [90, 86])  # H100/H200, and the paper's A10
def test_triton_kernel_compiles_for_the_gpus_without_one(capability: int) -> None:
    """Ahead-of-time compilation to a cubin (Triton's bundled ptxas; no GPU or driver
    needed), both dtypes: the GPU run cannot fail on a compile error (needs `triton`)."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        f"""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from models.dta_triton import _dta_candidates_kernel as fn
        pointers = {{"q_ptr", "k_ptr", "v_ptr", "ek_ptr", "ev_ptr", "out_ptr"}}
        for dtype, precision in (("fp32", "ieee"), ("bf16", "tf32")):
            signature = {{}}
            for name in fn.arg_names:
                if name in pointers:
                    signature[name] = "*" + dtype
                elif name in ("qe_ptr", "mass_ptr"):
                    signature[name] = "*fp32"
                elif name == "bucket_ptr":
                    signature[name] = "*i64"
                elif name.startswith("BLOCK_") or name in ("PRECISION", "UPCAST"):
                    signature[name] = "constexpr"
                else:
                    signature[name] = "i32"
            constexprs = dict(BLOCK_B=32, BLOCK_L=64, BLOCK_D=32, BLOCK_M=64,
                              PRECISION=precision, UPCAST=False)
            kernel = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                target=GPUTarget("cuda", {capability}, 32),
                options={{"num_warps": 4}},
            )
            assert kernel.asm["cubin"] and "bar.sync" in kernel.asm["ptx"], dtype
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
