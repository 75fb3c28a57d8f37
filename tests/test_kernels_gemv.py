"""The decoding products (tinyllm/kernels/gemv.py) against their NumPy reference, on awkward
shapes, in both weight layouts; and the properties generation relies on: a row's result does not
depend on the other rows of the batch, on the thread count or on serial vs parallel."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import assert_close
from tinyllm.kernels import blas, gemv as G


def weight(rng, n, k, dtype, columns):
    """w (N, K) C-contiguous (rows layout) or the transpose of a C-contiguous (K, N) array
    (columns layout, as a memory-mapped GPT-2 Conv1D weight)."""
    if columns:
        w = rng.standard_normal((k, n)).astype(dtype).T
        assert w.T.flags.c_contiguous
        return w
    return rng.standard_normal((n, k)).astype(dtype)


def tolerance(dtype, k):
    return (3e-6 if dtype == np.float32 else 1e-14) * max(1.0, np.sqrt(k))


@settings(deadline=None, max_examples=60)
@given(m=st.integers(1, G.MAX_ROWS), n=st.integers(1, 300), k=st.integers(1, 200),
       dtype=st.sampled_from([np.float32, np.float64]), columns=st.booleans(), has_bias=st.booleans(),
       parallel=st.booleans(), seed=st.integers(0, 2**16))
def test_gemv_matches_reference(m, n, k, dtype, columns, has_bias, parallel, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = weight(rng, n, k, dtype, columns)
    bias = rng.standard_normal(n).astype(dtype) if has_bias else None
    old = G.SERIAL_WORK
    G.SERIAL_WORK = 0 if parallel else 1 << 62
    try:
        got = G.gemv(x, w, bias)
    finally:
        G.SERIAL_WORK = old
    assert got.shape == (m, n) and got.dtype == dtype
    assert_close(got, G.gemv_ref(x, w, bias), tolerance(dtype, k), scale=np.abs(x).max() * np.abs(w).max() * k)


@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("n, k", [(1, 1), (1, 777), (4097, 3), (5000, 65), (130, 1)])
def test_gemv_on_blocks_that_do_not_divide_the_shape(columns, n, k):
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((3, k)).astype(np.float32)
    w = weight(rng, n, k, np.float32, columns)
    bias = rng.standard_normal(n).astype(np.float32)
    assert_close(G.gemv(x, w, bias), G.gemv_ref(x, w, bias), tolerance(np.float32, k),
                 scale=np.abs(x).max() * np.abs(w).max() * k)


@pytest.mark.parametrize("columns", [False, True])
def test_a_row_gets_the_same_bits_alone_in_a_batch_serial_or_parallel(columns, monkeypatch):
    # generate() relies on this: a sequence's logits do not depend on its batch or the threads
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 300)).astype(np.float32)
    w = weight(rng, 3000, 300, np.float32, columns)
    bias = rng.standard_normal(3000).astype(np.float32)
    monkeypatch.setattr(G, "SERIAL_WORK", 1 << 62)
    serial = G.gemv(x, w, bias)
    alone = np.concatenate([G.gemv(x[i:i + 1], w, bias) for i in range(5)])
    monkeypatch.setattr(G, "SERIAL_WORK", 0)
    parallel = G.gemv(x, w, bias)
    np.testing.assert_array_equal(serial, alone)
    np.testing.assert_array_equal(serial, parallel)


def test_extreme_values_stay_finite_and_other_layouts_are_copied():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 64)) * 1e4).astype(np.float32)
    w = (rng.standard_normal((40, 64)) * 1e4).astype(np.float32)
    assert_close(G.gemv(x, w), G.gemv_ref(x, w), 1e-5)
    strided = rng.standard_normal((80, 128)).astype(np.float32)[::2, ::2]  # neither layout
    assert_close(G.gemv(x, strided), G.gemv_ref(x, strided), 1e-5)
    transposed_x = rng.standard_normal((64, 2)).astype(np.float32).T
    assert_close(G.gemv(transposed_x, w), G.gemv_ref(transposed_x, w), 1e-5)


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="with the JIT disabled, linear_forward takes NumPy's matmul (blas._few_rows)")
def test_linear_forward_takes_gemv_for_few_rows_in_inference_only(monkeypatch):
    calls = []
    real = G.gemv_checked
    monkeypatch.setattr(G, "gemv_checked", lambda *a: calls.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(2)
    w, bias = rng.standard_normal((50, 30)).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    for m in (1, G.MAX_ROWS, G.MAX_ROWS + 1):
        x = rng.standard_normal((m, 30)).astype(np.float32)
        for inference in (False, True):
            assert_close(blas.linear_forward(x, w, bias, inference=inference), blas.linear_forward_ref(x, w, bias), 1e-5)
    assert calls == [(1, 30), (G.MAX_ROWS, 30)]


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="with the JIT disabled, linear_forward takes NumPy's matmul (blas._few_rows)")
def test_training_never_takes_gemv_and_generation_does(monkeypatch):
    from tinyllm import Tensor, no_grad, nn

    calls = []
    real = G.gemv_checked
    monkeypatch.setattr(G, "gemv_checked", lambda *a: calls.append(a[0].shape) or real(*a))
    lin = nn.Linear(8, 4, rng=np.random.default_rng(0))
    x = Tensor(np.ones((2, 8), np.float32))
    lin(x).sum().backward()
    assert calls == []
    with no_grad():
        lin(x)
    assert calls == [(2, 8)]


@pytest.mark.parametrize("bad", [
    dict(x=np.ones((2, 3), np.float32), w=np.ones((4, 5), np.float32)),
    dict(x=np.ones((2, 3), np.float32), w=np.ones((4, 3), np.float64)),
    dict(x=np.ones((2, 3), np.int32), w=np.ones((4, 3), np.int32)),
    dict(x=np.ones((2, 3), np.float32), w=np.ones((4, 3), np.float32), bias=np.ones(5, np.float32)),
])
def test_gemv_input_errors_name_the_shapes(bad):
    with pytest.raises(ValueError, match="gemv"):
        G.gemv(bad["x"], bad["w"], bad.get("bias"))
