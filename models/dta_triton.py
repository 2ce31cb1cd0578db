"""DTA's factorised candidate side in one fused kernel (Triton), and its PyTorch mirror.

The serving form of DTA (`DecoupledTargetAttention.attend`, models/dta.py) computes, for
one user and B candidates, per head h (q scaled, K_id (dk, L), V_id (L, dk)):

    s[b, l]    = q[b]·K_id[:, l] + (q[b] E_K^T)[bucket[b, l]]     score GEMM + bucket term
    p[b]       = softmax_l(s[b])
    mass[b, m] = sum_l p[b, l] [bucket[b, l] = m]                 bucket mass
    out[b]     = p[b] V_id + mass[b] E_V                          value GEMM + bucket values

as a chain of ATen kernels (bmm, gather, baddbmm, softmax, scatter_add, bmm, baddbmm) whose
(H, B, L) scores and weights go through memory twice each. `candidates_triton` does it in
one launch: a program takes BLOCK_B candidates of one head, computes q E_K^T (BLOCK_B, M)
with tl.dot into a small scratch, then makes two passes over tiles of BLOCK_L history
items: (1) the softmax statistics (running max and sum of exponentials), (2) the exact
probabilities, `p V_id` accumulated by tl.dot and the bucket mass by atomic adds into an
(H, B, M) scratch; it ends with `mass E_V`. Scores and probabilities never reach memory.
The bucket-key gather reads the program's own rows of q E_K^T from the scratch (written
before a CTA barrier), so nothing newer than Triton 3.0 is needed (no `tl.gather`).

`candidates_tiled` is the same two-pass algorithm in PyTorch: the spec of the kernel,
tested against `attend` and `forward` on CPU, and the fallback where Triton is missing.
`attend_fused(attention, state, query, buckets)` has `attend`'s contract.

Triton is imported here only if it is installed (serving and CPU hosts need torch only);
with TRITON_INTERPRET=1 set before this module is imported the kernel runs on CPU tensors
in Triton's interpreter, which is how its correctness is checked without a GPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from models.dta import DecoupledTargetAttention

try:  # optional: a bare serving host or the CPU test machine may not have it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None

BACKENDS = ("auto", "triton", "torch")
# Read when the kernel below is decorated (at import), as Triton itself does.
INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET", "").lower() in (
    "1", "true", "on"
)  # fmt: skip


def triton_version() -> str | None:
    return None if triton is None else str(triton.__version__)


def triton_interpreted() -> bool:
    """True when the kernel was decorated under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return INTERPRETED


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA (or on CPU under TRITON_INTERPRET=1) when Triton is
    installed, else 'torch'. An explicit 'triton' that cannot run raises."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    runnable = triton is not None and (device.type == "cuda" or triton_interpreted())
    if backend == "auto":
        return "triton" if runnable else "torch"
    if backend == "triton" and not runnable:
        raise RuntimeError(
            "the Triton kernel needs triton and a CUDA device (or TRITON_INTERPRET=1 on CPU)"
        )
    return backend


def candidate_operands(
    attention: DecoupledTargetAttention, state: dict[str, Tensor], query: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The kernel's operands, computed as `attend` computes them (views, no copies):
    q (H, B, dk) scaled, k_t (H, dk, L), v (H, L, dk), e_k and e_v (H, M, dk)."""
    if attention.bucket_key is None or attention.bucket_value is None:
        raise ValueError("the fused kernel is DTA's: it needs both bucket keys and values")
    q = attention._heads(attention.w_q(query) * attention.scale).transpose(0, 1)
    e_k = attention._heads(attention.bucket_key.weight).transpose(0, 1)
    e_v = attention._heads(attention.bucket_value.weight).transpose(0, 1)
    return q, state["k_t"], state["v"], e_k, e_v


def candidates_tiled(
    q: Tensor, k_t: Tensor, v: Tensor, e_k: Tensor, e_v: Tensor, buckets: Tensor, block_l: int = 64
) -> Tensor:
    """The kernel's algorithm in PyTorch, fp32 accumulation: (B, H*dk) in q's dtype.

    >>> h, b, l, dk, m = 2, 3, 5, 4, 6
    >>> q, k_t, v = torch.randn(h, b, dk), torch.randn(h, dk, l), torch.randn(h, l, dk)
    >>> e_k, e_v, buckets = torch.randn(h, m, dk), torch.randn(h, m, dk), torch.randint(0, m, (b, l))
    >>> candidates_tiled(q, k_t, v, e_k, e_v, buckets, block_l=2).shape
    torch.Size([3, 8])
    """
    heads, batch, dk = q.shape
    length, buckets_m = k_t.shape[2], e_k.shape[1]
    qf, kf, vf = q.float(), k_t.float(), v.float()
    qe = torch.bmm(qf, e_k.float().transpose(1, 2))  # (H, B, M)
    index = buckets.unsqueeze(0).expand(heads, batch, length)
    tiles = [(start, min(start + block_l, length)) for start in range(0, length, block_l)]

    def tile_scores(start: int, stop: int) -> Tensor:
        bucket_term = torch.gather(qe, 2, index[:, :, start:stop])
        return torch.baddbmm(bucket_term, qf, kf[:, :, start:stop])  # (H, B, tile)

    row_max = qf.new_full((heads, batch, 1), float("-inf"))
    row_sum = qf.new_zeros(heads, batch, 1)
    for start, stop in tiles:  # pass 1: softmax statistics, online
        s = tile_scores(start, stop)
        new_max = torch.maximum(row_max, s.amax(-1, keepdim=True))
        row_sum = row_sum * torch.exp(row_max - new_max) + torch.exp(s - new_max).sum(-1, True)
        row_max = new_max
    acc = qf.new_zeros(heads, batch, dk)
    mass = qf.new_zeros(heads, batch, buckets_m)
    for start, stop in tiles:  # pass 2: exact probabilities, values and bucket mass
        p = torch.exp(tile_scores(start, stop) - row_max) / row_sum
        acc = torch.baddbmm(acc, p, vf[:, start:stop])
        mass.scatter_add_(2, index[:, :, start:stop], p)
    acc = torch.baddbmm(acc, mass, e_v.float())
    return acc.transpose(0, 1).reshape(batch, heads * dk).to(q.dtype)


if triton is not None:

    @triton.jit
    def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """acc + a @ b in b's dtype, fp32 accumulation. UPCAST: fp32 operands instead, for
        Triton's interpreter, which multiplies bf16 as raw uint16 bits and rounds to bf16 by
        truncation; on a GPU the bf16 product runs as is, `a` rounded to nearest."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
        return tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)

    @triton.jit
    def _tile_scores(
        q, k_ptr, bucket_ptr, qe_ptr, qe_rows, rows, row_ok, dims, dim_ok, start, L,
        s_kd, s_kl, s_bb, s_bl, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """Scores (BLOCK_B, BLOCK_L) of one tile, -inf past L, and its buckets."""
        cols = start + tl.arange(0, BLOCK_L)
        col_ok = cols < L
        k_t = tl.load(
            k_ptr + dims[:, None] * s_kd + cols[None, :] * s_kl,
            mask=dim_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        ok = row_ok[:, None] & col_ok[None, :]
        bucket = tl.load(bucket_ptr + rows[:, None] * s_bb + cols[None, :] * s_bl, mask=ok, other=0)
        bucket_term = tl.load(qe_ptr + qe_rows[:, None] + bucket, mask=ok, other=0.0)
        s = _dot(q, k_t, tl.zeros([BLOCK_B, BLOCK_L], tl.float32), PRECISION, UPCAST)
        s += bucket_term
        return tl.where(col_ok[None, :], s, float("-inf")), bucket, ok

    @triton.jit
    def _dta_candidates_kernel(
        q_ptr, k_ptr, v_ptr, ek_ptr, ev_ptr, bucket_ptr, out_ptr, qe_ptr, mass_ptr,
        B, L, M, DK,
        s_qh, s_qb, s_qd, s_kh, s_kd, s_kl, s_vh, s_vl, s_vd,
        s_ekh, s_ekm, s_ekd, s_evh, s_evm, s_evd, s_bb, s_bl, s_ob, s_oh, s_od,
        BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        pid_b = tl.program_id(0)
        h = tl.program_id(1)
        rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        dims = tl.arange(0, BLOCK_D)
        buckets_m = tl.arange(0, BLOCK_M)
        row_ok = rows < B
        dim_ok = dims < DK
        m_ok = buckets_m < M
        q = tl.load(
            q_ptr + h * s_qh + rows[:, None] * s_qb + dims[None, :] * s_qd,
            mask=row_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        e_k = tl.load(
            ek_ptr + h * s_ekh + dims[:, None] * s_ekd + buckets_m[None, :] * s_ekm,
            mask=dim_ok[:, None] & m_ok[None, :],
            other=0.0,
        )
        # Bucket-key scores q E_K^T (BLOCK_B, BLOCK_M), kept in this program's rows of the
        # (H, B, BLOCK_M) scratch so that the tiles below can gather them by bucket.
        qe_rows = (h * B + rows) * BLOCK_M
        qe = _dot(q, e_k, tl.zeros([BLOCK_B, BLOCK_M], tl.float32), PRECISION, UPCAST)
        tl.store(qe_ptr + qe_rows[:, None] + buckets_m[None, :], qe, mask=row_ok[:, None])
        tl.debug_barrier()
        k_ptr += h * s_kh
        row_max = tl.full([BLOCK_B], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_B], tl.float32)
        for start in range(0, L, BLOCK_L):  # pass 1: softmax statistics
            s, bucket, ok = _tile_scores(
                q, k_ptr, bucket_ptr, qe_ptr, qe_rows, rows, row_ok, dims, dim_ok, start, L,
                s_kd, s_kl, s_bb, s_bl, BLOCK_B, BLOCK_L, PRECISION, UPCAST,
            )  # fmt: skip
            new_max = tl.maximum(row_max, tl.max(s, 1))
            row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), 1)
            row_max = new_max
        inv_sum = 1.0 / row_sum
        acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
        for start in range(0, L, BLOCK_L):  # pass 2: probabilities, values, bucket mass
            s, bucket, ok = _tile_scores(
                q, k_ptr, bucket_ptr, qe_ptr, qe_rows, rows, row_ok, dims, dim_ok, start, L,
                s_kd, s_kl, s_bb, s_bl, BLOCK_B, BLOCK_L, PRECISION, UPCAST,
            )  # fmt: skip
            p = tl.where(ok, tl.exp(s - row_max[:, None]) * inv_sum[:, None], 0.0)
            cols = start + tl.arange(0, BLOCK_L)
            v = tl.load(
                v_ptr + h * s_vh + cols[:, None] * s_vl + dims[None, :] * s_vd,
                mask=(cols < L)[:, None] & dim_ok[None, :],
                other=0.0,
            )
            acc = _dot(p, v, acc, PRECISION, UPCAST)
            tl.atomic_add(mass_ptr + qe_rows[:, None] + bucket, p, mask=ok, sem="relaxed")
        tl.debug_barrier()
        mass = tl.load(
            mass_ptr + qe_rows[:, None] + buckets_m[None, :], mask=row_ok[:, None], other=0.0
        )
        e_v = tl.load(
            ev_ptr + h * s_evh + buckets_m[:, None] * s_evm + dims[None, :] * s_evd,
            mask=m_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        acc = _dot(mass, e_v, acc, PRECISION, UPCAST)
        tl.store(
            out_ptr + rows[:, None] * s_ob + h * s_oh + dims[None, :] * s_od,
            acc.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & dim_ok[None, :],
        )


def _block(n: int) -> int:
    """tl.dot's operand sizes: a power of two, at least 16."""
    return max(16, 1 << max(0, n - 1).bit_length())


def candidates_triton(
    q: Tensor,
    k_t: Tensor,
    v: Tensor,
    e_k: Tensor,
    e_v: Tensor,
    buckets: Tensor,
    block_b: int = 32,
    block_l: int = 64,
    num_warps: int = 4,
    tf32: bool = False,
) -> Tensor:
    """The fused kernel: (B, H*dk) in q's dtype. fp32 operands use IEEE fp32 products
    (as torch.bmm with TF32 off) unless `tf32`; bf16 operands accumulate in fp32."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    heads, batch, dk = q.shape
    length, buckets_m = k_t.shape[2], e_k.shape[1]
    out = torch.empty(batch, heads, dk, dtype=q.dtype, device=q.device)
    if length == 0 or batch == 0:  # nothing to attend: zeros, as `attend` gives
        return out.zero_().reshape(batch, heads * dk)
    block_m = _block(buckets_m)
    qe = torch.empty(heads, batch, block_m, dtype=torch.float32, device=q.device)
    mass = torch.zeros(heads, batch, block_m, dtype=torch.float32, device=q.device)
    k_t, v, e_k, e_v = (x.to(q.dtype) for x in (k_t, v, e_k, e_v))
    grid = (triton.cdiv(batch, block_b), heads)
    _dta_candidates_kernel[grid](
        q, k_t, v, e_k, e_v, buckets, out, qe, mass,
        batch, length, buckets_m, dk,
        *q.stride(), *k_t.stride(), *v.stride(), *e_k.stride(), *e_v.stride(),
        *buckets.stride(), *out.stride(),
        BLOCK_B=block_b, BLOCK_L=block_l, BLOCK_D=_block(dk), BLOCK_M=block_m,
        # IEEE fp32 products for fp32 operands; bf16 operands take tl.dot's default.
        PRECISION="ieee" if q.dtype == torch.float32 and not tf32 else "tf32",
        UPCAST=q.dtype != torch.float32 and triton_interpreted(), num_warps=num_warps,
    )  # fmt: skip
    return out.reshape(batch, heads * dk)


def attend_fused(
    attention: DecoupledTargetAttention,
    state: dict[str, Tensor],
    query: Tensor,
    buckets: Tensor,
    backend: str = "auto",
    **kernel_args: Any,
) -> Tensor:
    """`attention.attend(state, query, buckets)` through the fused candidate side:
    the Triton kernel (`backend="triton"`, or "auto" where it can run) or its PyTorch
    mirror (`"torch"`). Forward only (inference)."""
    operands = candidate_operands(attention, state, query)
    if resolve_backend(backend, query.device) == "triton":
        return candidates_triton(*operands, buckets, **kernel_args)
    block_l = int(kernel_args.get("block_l", 64))
    return candidates_tiled(*operands, buckets, block_l=block_l)
