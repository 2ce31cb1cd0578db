"""The fused CPU kernels (models/cpu_ops.py, models/csrc/dmf_cpu_ops.cpp) against their
plain ATen references, and the serving modules with the kernels on against them off."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import cpu_ops
from models.buckets import Bucketizer
from models.dta import DecoupledTargetAttention
from models.histogram import SimilarityHistogram, similarity_histogram
from models.scorer import use_cpu_kernels, uses_cpu_kernels

pytestmark = pytest.mark.skipif(
    not cpu_ops.enabled(), reason=f"fused CPU kernels unavailable: {cpu_ops.unavailable_reason()}"
)
ops = torch.ops.dmf_cpu


@settings(max_examples=60, deadline=None)
@given(
    heads=st.integers(1, 6),
    batch=st.integers(1, 7),
    length=st.integers(0, 37),
    buckets=st.integers(1, 40),
    keys=st.booleans(),
    mass=st.booleans(),
    scale=st.sampled_from([0.1, 1.0, 30.0, 300.0]),
    seed=st.integers(0, 2**16),
)
def test_bucket_softmax_equals_gather_softmax_scatter(
    heads: int,
    batch: int,
    length: int,
    buckets: int,
    keys: bool,
    mass: bool,
    scale: float,
    seed: int,
) -> None:
    """Every H (the 4-head path and the others), L not a multiple of the vector widths,
    L = 0, M = 1, and scores spread wide enough that exp underflows for most positions."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, batch, 4, generator=generator) * scale
    k_t = torch.randn(heads, 4, length, generator=generator)
    bucket_scores = (
        torch.randn(heads, batch, buckets, generator=generator) * scale if keys else None
    )
    index = torch.randint(0, buckets, (batch, length), generator=generator)
    weights, got_mass = ops.bucket_softmax(torch.bmm(q, k_t), bucket_scores, index, buckets, mass)
    ref_weights, ref_mass = cpu_ops.bucket_softmax_reference(
        q, k_t, bucket_scores, index, buckets, mass
    )
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_mass, ref_mass, rtol=1e-5, atol=1e-6)
    if length:
        torch.testing.assert_close(weights.sum(-1), torch.ones(heads, batch))


def test_bucket_softmax_rejects_a_bucket_out_of_range() -> None:
    scores = torch.zeros(4, 2, 9)
    index = torch.zeros(2, 9, dtype=torch.long)
    index[1, 5] = 7
    with pytest.raises(RuntimeError, match="bucket 7 at position 5 is outside"):
        ops.bucket_softmax(scores, torch.zeros(4, 2, 7), index, 7, True)
    index[1, 5] = -1
    with pytest.raises(RuntimeError, match="outside"):
        ops.bucket_softmax(scores, None, index, 7, True)


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(
        st.floats(-0.9990000128746033, 0.9990000128746033, width=32), min_size=0, max_size=60
    ),
    shape=st.tuples(st.integers(0, 9), st.integers(0, 41)),
    seed=st.integers(0, 2**16),
)
def test_bucketize_cells_equals_the_bucketizer(
    cuts: list[float], shape: tuple[int, int], seed: int
) -> None:
    """Random and crowded boundaries (several within one cell: K > 1), similarities on
    the boundaries themselves and outside [-1, 1]."""
    boundaries = torch.tensor(sorted(cuts), dtype=torch.float32)
    bucketizer = Bucketizer(boundaries)
    generator = torch.Generator().manual_seed(seed)
    sims = torch.rand(shape, generator=generator) * 2.4 - 1.2
    if boundaries.numel() and sims.numel():
        picks = torch.randint(0, boundaries.numel(), (sims.numel() // 3,), generator=generator)
        sims.view(-1)[: picks.numel()] = boundaries[picks]
    got = ops.bucketize_cells(sims, bucketizer.base, bucketizer.thresholds, bucketizer.half)
    assert torch.equal(got, bucketizer(sims))
    assert torch.equal(got, torch.bucketize(sims, boundaries, right=True))


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(0, 6),
    length=st.integers(0, 50),
    bins=st.integers(1, 33),
    seed=st.integers(0, 99),
)
def test_uniform_histogram_equals_the_reference(
    batch: int, length: int, bins: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    sims = torch.rand(batch, length, generator=generator) * 2.6 - 1.3
    sims.view(-1)[:3] = torch.tensor([-1.0, 1.0, 0.0])[: sims.numel()]
    got = ops.uniform_histogram(sims, bins)
    assert torch.equal(
        got, similarity_histogram(sims, torch.ones_like(sims, dtype=torch.bool), bins)
    )


@pytest.mark.parametrize("keys,values", [(True, True), (True, False)])
def test_dta_attend_with_kernels_equals_without(keys: bool, values: bool) -> None:
    torch.manual_seed(0)
    dta = DecoupledTargetAttention(16, 16, 32, 4, 9, bucket_keys=keys, bucket_values=values).eval()
    history, query = torch.randn(13, 16), torch.randn(6, 16)
    buckets = torch.randint(0, 9, (6, 13))
    for length in (0, 1, 13):
        state = dta.encode(history[:length])
        plain = dta.attend(state, query, buckets[:, :length])
        assert use_cpu_kernels(dta)
        fused = dta.attend(state, query, buckets[:, :length])
        use_cpu_kernels(dta, False)
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_histogram_and_bucketizer_serving_with_kernels_equal_without() -> None:
    torch.manual_seed(0)
    histogram = SimilarityHistogram(20, [8], 4).eval()
    bucketizer = Bucketizer(torch.linspace(-0.5, 0.6, 34))
    sims = torch.rand(5, 31) * 2 - 1
    plain = (histogram.serve(sims), bucketizer(sims))
    for module in (histogram, bucketizer):
        assert use_cpu_kernels(module) and uses_cpu_kernels(module)
    torch.testing.assert_close(histogram.serve(sims), plain[0])
    assert torch.equal(bucketizer(sims), plain[1])


def test_scripted_modules_run_the_plain_forms() -> None:
    """TorchScript never calls the kernels (they are `torch.jit.unused`): a scripted DTA
    with them switched on scores as the plain one."""
    torch.manual_seed(1)
    dta = DecoupledTargetAttention(8, 8, 16, 4, 5).eval()
    history, query, buckets = torch.randn(7, 8), torch.randn(3, 8), torch.randint(0, 5, (3, 7))
    plain = dta.attend(dta.encode(history), query, buckets)
    use_cpu_kernels(dta)
    scripted = torch.jit.script(dta)
    torch.testing.assert_close(scripted.attend(scripted.encode(history), query, buckets), plain)
    assert "dmf_cpu" not in str(scripted.attend.graph)


def test_kernels_switched_off_by_the_environment() -> None:
    """DMF_CPU_OPS=0: nothing is built or registered, the serving modules stay plain."""
    code = (
        "from models import cpu_ops; from models.dta import DecoupledTargetAttention;"
        "from models.scorer import use_cpu_kernels;"
        "m = DecoupledTargetAttention(8, 8, 16, 4, 5);"
        "print(use_cpu_kernels(m), m.cpu_kernels, cpu_ops.registered(), cpu_ops.unavailable_reason())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, cpu_ops.DISABLE_ENV: "0"},
        check=True,
    ).stdout.split()
    assert out == ["False", "False", "False", "DMF_CPU_OPS=0"]


def test_kernels_trace_through_torch_export() -> None:
    """The Meta kernels let torch.export keep each operator as one call, with dynamic B
    and L (L = 0 included), and the exported program computes what the eager one does."""
    torch.manual_seed(2)
    dta = DecoupledTargetAttention(8, 8, 16, 4, 5).eval()
    use_cpu_kernels(dta)

    class Attend(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dta = dta

        def forward(self, history: torch.Tensor, query: torch.Tensor, buckets: torch.Tensor):
            return self.dta.attend(self.dta.encode(history), query, buckets)

    history, query, buckets = torch.randn(7, 8), torch.randn(3, 8), torch.randint(0, 5, (3, 7))
    length, batch = torch.export.Dim("L", min=0), torch.export.Dim("B", min=1)
    program = torch.export.export(
        Attend(),
        (history, query, buckets),
        dynamic_shapes=({0: length}, {0: batch}, {0: batch, 1: length}),
    )
    assert "dmf_cpu.bucket_softmax" in str(program.graph)
    for n, b in ((7, 3), (0, 2), (1, 1)):
        args = (torch.randn(n, 8), torch.randn(b, 8), torch.randint(0, 5, (b, n)))
        torch.testing.assert_close(program.module()(*args), Attend()(*args))
