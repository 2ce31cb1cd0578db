"""Fused CPU kernels of the DTA / DMF candidate side, beside their plain references.

The C++ source is models/csrc/dmf_cpu_ops.cpp; it registers three operators in the
`dmf_cpu` namespace (CPU and Meta kernels, so torch.export and AOTInductor keep them as
calls). Each replaces a chain of ATen passes of one request (docs/serving.md, "Speed of
the candidate side"):

    bucket_softmax(scores, bucket_scores, buckets, M, with_mass)   (H,B,L) -> weights, mass
    bucketize_cells(sims, base, thresholds, half)                   Bucketizer's lookup
    uniform_histogram(sims, num_bins)                               DMF's histogram, no mask

The plain ATen forms, the references, are what the serving modules run without the
library: `bucket_softmax_reference` below (DTA's attend), `models.buckets.Bucketizer` and
`models.histogram.similarity_histogram`; tests/test_cpu_ops.py compares each operator
with its reference. The library is compiled
on first use by `torch.utils.cpp_extension.load` (ninja and a C++ compiler; about a minute,
cached under TORCH_EXTENSIONS_DIR), or loaded from a given .so (`load_library(path)`: an
exported artifact ships its copy, pipeline/artifact.py). Where it cannot be built the
serving modules run the references: `enabled()` is False, with the reason in
`unavailable_reason()`.
"""

# No `from __future__ import annotations` here: TorchScript reads the real annotations of
# the `*_method` functions below (the serving modules hold them as `torch.jit.unused`
# methods, and TorchScript cannot parse string annotations of unused methods).
import os
from pathlib import Path

import torch
from torch import Tensor

NAMESPACE = "dmf_cpu"
SOURCE = Path(__file__).with_name("csrc") / "dmf_cpu_ops.cpp"
# The ISA the kernels are compiled for: what every x86-64 serving CPU of the last decade
# has (AVX2 + FMA); an artifact's copy of the library needs it on the serving host.
CFLAGS = ["-O3", "-mavx2", "-mfma", "-fno-math-errno"]
DISABLE_ENV = "DMF_CPU_OPS"  # =0: never build or use the fused kernels

_state: dict = {"path": None, "error": None}


def registered() -> bool:
    """Whether the `dmf_cpu` operators are registered in this process."""
    return hasattr(getattr(torch.ops, NAMESPACE), "bucket_softmax")


def load_library(path: str | os.PathLike | None = None) -> str | None:
    """Register the operators: from `path` (a built .so), or build the source (cached).

    Returns the path of the loaded library, or None (reason in `unavailable_reason()`).
    A second call is a no-op; a library already registered by another copy is kept.
    """
    if _state["path"] is not None or registered():
        return _state["path"] or "(registered)"
    if _state["error"] is not None and path is None:
        return None
    if os.environ.get(DISABLE_ENV, "1") == "0":
        _state["error"] = f"{DISABLE_ENV}=0"
        return None
    try:
        if path is not None:
            torch.ops.load_library(str(path))
            _state["path"] = str(path)
        else:
            from torch.utils import cpp_extension

            _state["path"] = cpp_extension.load(
                name="dmf_cpu_ops",
                sources=[str(SOURCE)],
                extra_cflags=CFLAGS,
                is_python_module=False,
                verbose=False,
            )
    except Exception as error:  # no compiler, no ninja, an unsupported platform
        _state["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        return None
    return _state["path"]


def library_path() -> str | None:
    """The .so that registered the operators (None when not loaded from a file here)."""
    return _state["path"] if _state["path"] not in (None, "(registered)") else None


def enabled() -> bool:
    """Build or load the library if needed; whether the fused kernels can be called."""
    if not registered():
        load_library()
    return registered()


def unavailable_reason() -> str | None:
    return None if registered() else _state["error"]


# --------------------------------------------------- the serving modules' fused calls
# Held by the modules as `torch.jit.unused` methods (so a scripted module never calls
# them and needs no library), named `_fused` in DecoupledTargetAttention, Bucketizer and
# SimilarityHistogram.
def dta_fused_method(
    self, scores: Tensor, bucket_scores: Tensor | None, buckets: Tensor
) -> tuple[Tensor, Tensor]:
    """DecoupledTargetAttention: (H, B, L) weights and (H, B, M) mass of one request."""
    return torch.ops.dmf_cpu.bucket_softmax(
        scores, bucket_scores, buckets, self.num_buckets, self.bucket_value is not None
    )


def bucketizer_fused_method(self, sims: Tensor) -> Tensor:
    """Bucketizer: sims (...) -> bucket (...) long, its lookup in one pass."""
    return torch.ops.dmf_cpu.bucketize_cells(sims, self.base, self.thresholds, self.half)


def histogram_fused_method(self, sims: Tensor) -> Tensor:
    """SimilarityHistogram: uniform-bin counts (B, n) of sims (B, L), no padding."""
    return torch.ops.dmf_cpu.uniform_histogram(sims, self.num_bins)


# ------------------------------------------------------------------ plain references
def bucket_softmax_reference(
    q: Tensor,
    k_t: Tensor,
    bucket_scores: Tensor | None,
    buckets: Tensor,
    num_buckets: int,
    with_mass: bool,
    score_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """DTA's attention weights and bucket mass in ATen ops: what
    `bucket_softmax(bmm(q, k_t), ...)` computes, and the plain form DTA's `attend` runs.

    q (H, B, dk) scaled queries, k_t (H, dk, L), bucket_scores (H, B, M) = q E_K or None,
    buckets (B, L) long in [0, M) (unread without bucket terms), score_bias (H or 1, B, L) or None -> weights (H, B, L) =
    softmax(q k_t + bucket_scores[.., buckets] + score_bias), mass (H, B, M) = the weight per
    bucket ((H, B, 0) without `with_mass`).
    """
    heads, batch, length = q.shape[0], q.shape[1], k_t.shape[2]
    index = buckets  # unread (may be empty) without bucket terms
    if bucket_scores is not None or with_mass:
        index = buckets.unsqueeze(0).expand(heads, batch, length)
    # Each (H, B, L) tensor is this function's own and updated in place: a new one is a
    # fresh 7.7 MB allocation (B=1200, L=400, H=4) whose pages are faulted in on first touch.
    if bucket_scores is not None:
        scores = torch.gather(bucket_scores, 2, index)  # (H, B, L), then += q k_t in place
        scores.baddbmm_(q, k_t)
    else:
        scores = torch.bmm(q, k_t)
    if score_bias is not None:
        scores.add_(score_bias)
    weights = torch.softmax(scores, dim=-1)
    mass = weights.new_zeros(heads, batch, num_buckets if with_mass else 0)
    if with_mass:
        mass.scatter_add_(2, index, weights)
    return weights, mass
