"""DecoupledTargetAttention: the serving form equals the training form, masks and buckets
matter, bucketize matches data prep, and the paper's Theorem 1 holds numerically."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.buckets import bucketize
from models.dta import DecoupledTargetAttention, masked_softmax
from tests.fixtures import assert_same_outputs_and_gradients, outputs_and_gradients

BUCKET_TERMS = [(False, False), (True, False), (False, True), (True, True)]


def make_dta(
    dim: int, heads: int, head_dim: int, buckets: int, keys: bool, values: bool, seed: int
) -> DecoupledTargetAttention:
    """A float64 DTA with O(1) bucket tables (the default 0.02 init would hide bucket bugs)."""
    torch.manual_seed(seed)
    dta = DecoupledTargetAttention(
        dim,
        dim,
        heads * head_dim,
        heads,
        buckets,
        temperature=0.7,
        bucket_keys=keys,
        bucket_values=values,
    ).double()
    for table in (dta.bucket_key, dta.bucket_value):
        if table is not None:
            torch.nn.init.normal_(table.weight)
    return dta


def user_inputs(
    batch: int, length: int, dim: int, buckets: int, seed: int, valid: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One user's history (L, d) and mask (L,), B queries (B, d) and buckets (B, L)."""
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(length, dim, generator=g, dtype=torch.float64)
    if valid is None:
        mask = torch.rand(length, generator=g) < 0.7
    else:
        mask = torch.arange(length) < valid
    query = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    bucket_ids = torch.randint(buckets, (batch, length), generator=g)
    return history, mask, query, bucket_ids


def training_form(
    dta: DecoupledTargetAttention,
    history: torch.Tensor,
    mask: torch.Tensor,
    query: torch.Tensor,
    buckets: torch.Tensor,
) -> torch.Tensor:
    """`forward` with the user's history repeated for each of the B candidates."""
    batch = query.shape[0]
    return dta(query, history.expand(batch, -1, -1), mask.expand(batch, -1), buckets)


def serving_form(
    dta: DecoupledTargetAttention,
    history: torch.Tensor,
    mask: torch.Tensor,
    query: torch.Tensor,
    buckets: torch.Tensor,
) -> torch.Tensor:
    """`encode` the user's real history items once, `attend` the B candidates."""
    selected = torch.empty(0, dtype=torch.long) if buckets is None else buckets[:, mask]
    return dta.attend(dta.encode(history[mask]), query, selected)


# ------------------------------------------------------------ (a) serving == training
@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 12),
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 5),
    num_buckets=st.integers(1, 9),
    batch=st.integers(1, 7),
    terms=st.sampled_from(BUCKET_TERMS),
    seed=st.integers(0, 2**16),
)
def test_serving_form_equals_forward_and_gradients(
    length: int,
    heads: int,
    head_dim: int,
    num_buckets: int,
    batch: int,
    terms: tuple[bool, bool],
    seed: int,
) -> None:
    dim = 6
    dta = make_dta(dim, heads, head_dim, num_buckets, *terms, seed=seed)
    history, mask, query, buckets = user_inputs(batch, length, dim, num_buckets, seed)
    inputs = {"history": history, "query": query}
    results = {
        name: outputs_and_gradients(
            dta,
            lambda x, form=form: form(dta, x["history"], mask, x["query"], buckets),
            inputs,
            seed,
        )  # fmt: skip
        for name, form in (("training", training_form), ("serving", serving_form))
    }
    assert results["serving"][0].shape == (batch, heads * head_dim)
    assert_same_outputs_and_gradients(results["serving"], results["training"])


# ------------------------------------------- (a') the training form == the plain reference
@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(0, 12),
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 5),
    num_buckets=st.integers(1, 9),
    batch=st.integers(1, 7),
    terms=st.sampled_from(BUCKET_TERMS),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_forward_equals_the_plain_reference_and_gradients(
    length: int,
    heads: int,
    head_dim: int,
    num_buckets: int,
    batch: int,
    terms: tuple[bool, bool],
    bias: bool,
    seed: int,
) -> None:
    """`forward` (Wk folded into the query, the history pooled before Wv, buckets by
    gather/scatter) equals `forward_reference` (K and V materialised): a different history
    per sample, random masks with empty rows, L = 0, a score bias (BFS_MF's) or none."""
    dim = 6
    dta = make_dta(dim, heads, head_dim, num_buckets, *terms, seed=seed)
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "history": torch.randn(batch, length, dim, generator=g, dtype=torch.float64),
        "query": torch.randn(batch, dim, generator=g, dtype=torch.float64),
    }
    if bias:
        inputs["bias"] = torch.randn(batch, heads, length, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, length, generator=g) < 0.6
    mask[0] = False  # an empty history
    buckets = torch.randint(num_buckets, (batch, length), generator=g)

    def call(form: Callable) -> Callable:
        return lambda x: form(x["query"], x["history"], mask, buckets, x.get("bias"))

    results = {
        name: outputs_and_gradients(dta, call(getattr(dta, name)), inputs, seed)
        for name in ("forward", "forward_reference")
    }
    assert results["forward"][0].shape == (batch, heads * head_dim)
    assert (results["forward"][0][0] == 0).all()  # the empty history
    assert_same_outputs_and_gradients(results["forward"], results["forward_reference"])


# ------------------------------------------------------------- (b) masks and empties
@pytest.mark.parametrize("terms", BUCKET_TERMS)
def test_masked_positions_get_no_weight(terms: tuple[bool, bool]) -> None:
    dta = make_dta(6, 2, 3, 4, *terms, seed=1)
    history, mask, query, buckets = user_inputs(5, 9, 6, 4, seed=2)
    batch = query.shape[0]
    with torch.no_grad():
        scores = dta.scores(query, history.expand(batch, -1, -1), buckets)
        weights = masked_softmax(scores, mask.expand(batch, -1)[:, None, :])
        assert (weights[..., ~mask] == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        # Padded rows may hold anything (even huge values): the output does not move.
        noisy = history.clone()
        noisy[~mask] = 1e3 * torch.randn_like(noisy[~mask])
        other_buckets = torch.where(mask, buckets, (buckets + 1) % 4)
        for form in (training_form, serving_form):
            torch.testing.assert_close(
                form(dta, noisy, mask, query, other_buckets),
                form(dta, history, mask, query, buckets),
            )


@pytest.mark.parametrize("terms", BUCKET_TERMS)
def test_empty_history_gives_zero_interest(terms: tuple[bool, bool]) -> None:
    dta = make_dta(6, 2, 3, 4, *terms, seed=3)
    history, _, query, buckets = user_inputs(4, 7, 6, 4, seed=4)
    empty = torch.zeros(7, dtype=torch.bool)
    query.requires_grad_(True)
    for form in (training_form, serving_form):
        out = form(dta, history, empty, query, buckets)
        assert (out == 0).all()
        out.sum().backward()
        assert torch.isfinite(query.grad).all()


# ------------------------------------------ (c) a wrong mask or bucket changes the output
@pytest.mark.parametrize("form", [training_form, serving_form])
@pytest.mark.parametrize("terms", [(True, False), (False, True), (True, True)])
def test_wrong_bucket_changes_output(form: Callable, terms: tuple[bool, bool]) -> None:
    dta = make_dta(6, 2, 3, 5, *terms, seed=5)
    history, _, query, buckets = user_inputs(4, 8, 6, 5, seed=6, valid=6)
    mask = torch.arange(8) < 6
    with torch.no_grad():
        right = form(dta, history, mask, query, buckets)
        wrong_buckets = buckets.clone()
        wrong_buckets[:, 2] = (wrong_buckets[:, 2] + 1) % 5  # one valid slot, every candidate
        wrong = form(dta, history, mask, query, wrong_buckets)
    assert ((right - wrong).abs().amax(-1) > 1e-6).all()


@pytest.mark.parametrize("form", [training_form, serving_form])
@pytest.mark.parametrize("terms", BUCKET_TERMS)
def test_wrong_mask_changes_output(form: Callable, terms: tuple[bool, bool]) -> None:
    dta = make_dta(6, 2, 3, 5, *terms, seed=7)
    history, _, query, buckets = user_inputs(4, 8, 6, 5, seed=8, valid=6)
    right_mask = torch.arange(8) < 6
    with torch.no_grad():
        right = form(dta, history, right_mask, query, buckets)
        for wrong_mask in (torch.arange(8) < 5, torch.arange(8) < 7):
            wrong = form(dta, history, wrong_mask, query, buckets)
            assert ((right - wrong).abs().amax(-1) > 1e-6).all()


def test_buckets_ignored_without_bucket_terms() -> None:
    dta = make_dta(6, 2, 3, 0, False, False, seed=9)
    history, mask, query, buckets = user_inputs(4, 8, 6, 5, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(
            serving_form(dta, history, mask, query, None),
            training_form(dta, history, mask, query, buckets),
        )


# -------------------------------------------------------------------- (d) Theorem 1
def bucketed_max_error(c: np.ndarray, w: np.ndarray, boundaries: np.ndarray) -> float:
    """max_i ||h'_i - h_i|| for h' = s + c w and h = s + e_b(c), e_m = w * mean(c in m).

    s cancels in the difference, so the error of item i is |c_i - mean of its bucket| ||w||.
    e_m is the least-squares optimal bucket embedding, fitted here in closed form through
    the same `bucketize` DTA uses.
    """
    buckets = bucketize(torch.from_numpy(c), torch.from_numpy(boundaries)).numpy()
    m = len(boundaries) + 1
    sums = np.bincount(buckets, weights=c, minlength=m)
    counts = np.maximum(np.bincount(buckets, minlength=m), 1)
    e = (sums / counts)[:, None] * w[None, :]  # (M, d) bucket embeddings
    h_prime = c[:, None] * w[None, :]  # s omitted on both sides
    return float(np.linalg.norm(h_prime - e[buckets], axis=1).max())


def equal_width(m: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, m + 1)[1:-1]


def equal_frequency(c: np.ndarray, m: int) -> np.ndarray:
    """Cut points at the quantiles of c, as data prep computes them."""
    return np.quantile(c, np.linspace(0.0, 1.0, m + 1)[1:-1])


@pytest.mark.parametrize("scheme", ["equal_width", "equal_frequency"])
def test_theorem_1_bucketed_fusion_approximates_early_fusion(scheme: str) -> None:
    rng = np.random.default_rng(0)
    # Similarities concentrated around 0.3, like cosine similarities of real items, with a
    # density bounded below on [-1, 1] (a uniform half), so equal-frequency buckets shrink
    # everywhere as M grows (with a vanishing tail density they shrink there only once M
    # approaches the number of samples).
    n = 20_000
    c = np.concatenate(
        [rng.uniform(-1.0, 1.0, n // 2), np.clip(rng.normal(0.3, 0.2, n // 2), -1.0, 1.0)]
    )
    w = rng.normal(size=16)
    sizes = [2, 8, 32, 128, 512, 2048]
    errors = []
    for m in sizes:
        boundaries = equal_width(m) if scheme == "equal_width" else equal_frequency(c, m)
        error = bucketed_max_error(c, w, boundaries)
        # Each c_i is within its bucket's range of the bucket mean.
        buckets = np.searchsorted(boundaries, c, side="right")
        widest = max(np.ptp(c[buckets == b]) for b in np.unique(buckets))
        assert error <= widest * np.linalg.norm(w) + 1e-9
        errors.append(error)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.01 * np.linalg.norm(w) < errors[0]


# -------------------------------------------------------------------- (e) bucketize
@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(
        st.floats(-1.0, 1.0, width=32, allow_nan=False), min_size=1, max_size=12, unique=True
    ),
    values=st.lists(st.floats(-1.5, 1.5, width=32, allow_nan=False), min_size=1, max_size=30),
    ties=st.lists(st.integers(0, 11), max_size=5),
)
def test_bucketize_matches_searchsorted_right(
    cuts: list[float], values: list[float], ties: list[int]
) -> None:
    boundaries = np.sort(np.asarray(cuts, dtype=np.float32))
    c = np.asarray(values + [cuts[i % len(cuts)] for i in ties], dtype=np.float32)  # exact ties
    got = bucketize(torch.from_numpy(c), torch.from_numpy(boundaries)).numpy()
    want = np.searchsorted(boundaries, c, side="right")
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0 and got.max() <= len(boundaries)
