"""tinyllm.kernels.blas: NumPy's OpenBLAS gemm called from numba's threads, and its loop twin
(matmul.gemm_tile_loops) used where no BLAS can be called, against the definition of the product
computed without BLAS (float64 einsums, see test_kernels_matmul.py). The threaded paths start at
``blas.SMALL`` multiply-adds; the tests reach them on small shapes too, by calling the parallel
kernels directly with any number of parts, and by lowering ``SMALL`` (monkeypatch) so that
``matmul``, ``linear_forward`` / ``linear_backward`` and the autograd above them take them."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import run_with_jit_disabled
from test_kernels_matmul import assert_matmul_close, definition, operand
from tinyllm.kernels import blas
from tinyllm.kernels.systems import openblas as _openblas
from tinyllm.kernels import matmul as M

needs_blas = pytest.mark.skipif(not blas.available(), reason="NumPy's BLAS is not an ILP64 OpenBLAS here")


@needs_blas
@settings(deadline=None, max_examples=40)
@given(m=st.integers(1, 300), k=st.integers(1, 200), n=st.integers(1, 300),
       dtype=st.sampled_from([np.float32, np.float64]), a_t=st.booleans(), b_t=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_matmul_matches_the_definition(m, k, n, dtype, a_t, b_t, seed):
    # both sides of blas.SMALL, tall (split by rows) and wide (split by columns) results
    rng = np.random.default_rng(seed)
    a, b = operand(rng, (m, k), dtype, a_t), operand(rng, (k, n), dtype, b_t)
    assert_matmul_close(blas.matmul(a, b), a, b)
    assert_matmul_close(M.matmul(a, b), a, b)


@needs_blas
@pytest.mark.parametrize("shape", [(768, 128, 384), (1, 512, 3000), (5, 700, 2000), (2000, 300, 3)])
def test_matmul_of_training_shapes_matches_the_definition_and_leaves_blas_threads_as_they_were(shape):
    m, k, n = shape
    assert m * k * n >= blas.SMALL  # these really take the threaded path
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)  # a Linear weight (out, in): x @ w.T
    before = _openblas.OPENBLAS.get_num_threads()
    assert_matmul_close(blas.matmul(a, w.T), a, w.T)
    g = rng.standard_normal((m, n)).astype(np.float32)
    assert_matmul_close(blas.matmul(g.T, a), g.T, a)  # the weight gradient: a transposed first operand
    assert _openblas.OPENBLAS.get_num_threads() == before


small = dict(m=st.integers(1, 9), k=st.integers(1, 9), n=st.integers(1, 9),
             dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31 - 1))


@needs_blas
@settings(deadline=None, max_examples=40)
@given(a_t=st.booleans(), b_t=st.booleans(), parts=st.integers(1, 12), **small)
def test_gemm_blocks_on_small_shapes_in_any_number_of_parts(m, k, n, dtype, a_t, b_t, parts, seed):
    # the parallel kernel behind matmul, called directly far below SMALL: every block's offsets,
    # a short last block, and more parts than rows or columns (blocks that do nothing)
    rng = np.random.default_rng(seed)
    a, b = operand(rng, (m, k), dtype, a_t), operand(rng, (k, n), dtype, b_t)
    (pa, ta), (pb, tb) = blas._c_contiguous(a), blas._c_contiguous(b)
    c = np.full((m, n), np.nan, dtype)  # every element must be written
    blas._gemm_blocks(pa, ta, pb, tb, c, parts)
    assert_matmul_close(c, a, b)


@needs_blas
@settings(deadline=None, max_examples=25)
@given(batch=st.integers(1, 4), a_t=st.booleans(), b_t=st.booleans(), **small)
def test_gemm_batch_on_small_shapes(batch, m, k, n, dtype, a_t, b_t, seed):
    rng = np.random.default_rng(seed)
    a, b = operand(rng, (batch, m, k), dtype, a_t), operand(rng, (batch, k, n), dtype, b_t)
    (pa, ta), (pb, tb) = blas._c_contiguous(a), blas._c_contiguous(b)
    c = np.full((batch, m, n), np.nan, dtype)
    blas._gemm_batch(pa, ta, pb, tb, c)
    for i in range(batch):
        assert_matmul_close(c[i], a[i], b[i])


@needs_blas
@settings(deadline=None, max_examples=30)
@given(parts=st.integers(1, 12), halves=st.integers(1, 6), **small)
def test_linear_kernels_on_small_shapes_in_any_number_of_parts(m, k, n, dtype, parts, halves, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    bias, g = rng.standard_normal(n).astype(dtype), rng.standard_normal((m, n)).astype(dtype)
    y = np.full((m, n), np.nan, dtype)
    blas._linear_forward_blocks(x, w, bias, y, parts)
    assert_linear_close(y, x, w, bias)
    dx, dw, db = np.full((m, k), np.nan, dtype), np.full((n, k), np.nan, dtype), np.full(n, np.nan, dtype)
    blas._linear_backward_tasks(g, x, w, dx, dw, db, halves)
    assert_matmul_close(dx, g, w)
    assert_matmul_close(dw, g.T, x)
    assert_column_sums_close(db, g)


def spy(monkeypatch, module, name):
    """Replace module.name by a wrapper that counts its calls; returns the list of calls."""
    calls, original = [], getattr(module, name)

    def wrapper(*args):
        calls.append(name)
        return original(*args)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@needs_blas
@settings(deadline=None, max_examples=30)
@given(a_t=st.booleans(), b_t=st.booleans(), batch=st.sampled_from([None, 1, 3]), **small)
def test_matmul_and_linear_take_the_threaded_kernels_on_small_shapes_when_small_is_lowered(
        m, k, n, dtype, a_t, b_t, batch, seed):
    lead = () if batch is None else (batch,)
    rng = np.random.default_rng(seed)
    a, b = operand(rng, lead + (m, k), dtype, a_t), operand(rng, lead + (k, n), dtype, b_t)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blas, "SMALL", 0)
        calls = spy(mp, blas, "_gemm_batch" if batch else "_gemm_blocks")
        got = M.matmul(a, b)
        assert calls, "matmul did not reach the threaded kernel"
        for i in np.ndindex(*lead):
            assert_matmul_close(got[i], a[i], b[i])
        if batch is None:
            x, w = np.ascontiguousarray(a), rng.standard_normal((n, k)).astype(dtype)
            bias, g = rng.standard_normal(n).astype(dtype), rng.standard_normal((m, n)).astype(dtype)
            forward, backward = spy(mp, blas, "_linear_forward_blocks"), spy(mp, blas, "_linear_backward_tasks")
            assert_linear_close(blas.linear_forward(x, w, bias), x, w, bias)
            dx, dw, db = blas.linear_backward(g, x, w)
            # the fused loops also want at least as many rows as the weight has rows or columns
            assert bool(forward and backward) == (m >= max(n, k)), "linear took the wrong path"
            assert_matmul_close(dx, g, w)
            assert_matmul_close(dw, g.T, x)
            assert_column_sums_close(db, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_transpose_of_a_column_vector_is_multiplied_right(dtype):
    # a (1, K) view of a (K, 1) array: NumPy flags it C-contiguous with a row stride of one
    # element, an illegal gemm leading dimension; matmul must read it as the transpose it is.
    # (It once returned an unwritten C, and with it the weight gradient of any Linear(K, 1) whose
    # input needs no gradient: dw = g.T @ x.)
    rng = np.random.default_rng(6)
    column = rng.standard_normal((600, 1)).astype(dtype)
    b = rng.standard_normal((600, 500)).astype(dtype)
    row = column.T
    assert row.flags.c_contiguous and row.strides[0] == row.itemsize
    assert row.size * b.shape[1] >= blas.SMALL
    assert_matmul_close(blas.matmul(row, b), row, b)
    assert_matmul_close(blas.matmul(b.T, column), b.T, column)

    from tinyllm import Tensor, nn

    lin = nn.Linear(256, 1, rng=np.random.default_rng(0), dtype=dtype)
    x = rng.standard_normal((1024, 256)).astype(dtype)
    r = rng.standard_normal((1024, 1)).astype(dtype)
    (lin(Tensor(x)) * Tensor(r)).sum().backward()
    assert_matmul_close(lin.weight.grad, r.T, x)


@needs_blas
def test_gradients_through_the_threaded_kernels_on_small_shapes(monkeypatch):
    # the autograd's products and sums on small float64 shapes, every one forced onto the
    # threaded kernels (SMALL lowered), against finite differences
    from tinyllm import Tensor, gradcheck
    from tinyllm import functional as F
    from tinyllm.kernels import elementwise as E

    monkeypatch.setattr(blas, "SMALL", 0)
    monkeypatch.setattr(E, "SMALL", 0)
    kernels = ("_gemm_blocks", "_gemm_batch", "_linear_forward_blocks", "_linear_backward_tasks")
    calls = {name: spy(monkeypatch, blas, name) for name in kernels}
    calls["_add_kernel"] = spy(monkeypatch, E, "_add_kernel")
    rng = np.random.default_rng(7)

    def leaf(*shape):
        return Tensor(rng.standard_normal(shape), requires_grad=True)

    x, w, b = leaf(5, 3), leaf(4, 3), leaf(4)
    assert gradcheck(lambda x, w: x @ w.T, (x, w))
    # a same-shape add (the residual stream's) whose backward also adds x's two gradients
    assert gradcheck(lambda x, w, b: F.linear(x, w, b) + F.linear(x * 2.0, w, b), (x, w, b))
    assert gradcheck(lambda p, q: p @ q, (leaf(2, 5, 3), leaf(2, 3, 4)))
    assert all(calls.values()), {name: len(c) for name, c in calls.items()}


def test_matmul_falls_back_to_numpy_for_what_it_does_not_handle():
    rng = np.random.default_rng(1)
    strided = rng.standard_normal((600, 400)).astype(np.float32)[::2, ::2]  # neither C nor F contiguous
    b = rng.standard_normal((200, 500)).astype(np.float32)
    np.testing.assert_array_equal(blas.matmul(strided, b), np.matmul(strided, b))  # NumPy's, bit for bit
    assert_matmul_close(blas.matmul(strided, b), strided, b)
    ints = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(blas.matmul(ints, ints.T), np.einsum("ik,jk->ij", ints, ints))
    mixed = blas.matmul(b.T.astype(np.float64), b)  # float64 @ float32: NumPy's promotion
    assert mixed.dtype == np.float64


@settings(deadline=None, max_examples=60)
@given(m=st.integers(1, 20), n=st.integers(1, 20), depth=st.integers(1, 20),
       dtype=st.sampled_from([np.float32, np.float64]), a_t=st.booleans(), b_t=st.booleans(),
       accumulate=st.booleans(), offset=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_tile_products_blas_and_loops_agree_with_numpy(m, n, depth, dtype, a_t, b_t, accumulate, offset, seed):
    """c[:m, :n] (+)= A @ B on arrays larger than the tile and on row slices, as attention calls it;
    the rest of c is untouched."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(((depth, m + 2) if a_t else (m + 1, depth + 3))).astype(dtype)
    b = rng.standard_normal(((n + 1, depth + 2) if b_t else (depth + 2, n + 3))).astype(dtype)
    big_a = np.concatenate([rng.standard_normal((offset, a.shape[1])).astype(dtype), a])
    c0 = rng.standard_normal((m + 2, n + 4)).astype(dtype)
    A = a[:depth, :m].T if a_t else a[:m, :depth]
    B = b[:n, :depth].T if b_t else b[:depth, :n]
    expected = c0.copy()
    expected[:m, :n] = (c0[:m, :n] if accumulate else 0) + definition(A, B)
    tol = 8 * np.finfo(dtype).eps * (depth + 1) * (1 + definition(np.abs(A), np.abs(B)) + np.abs(c0[:m, :n]))
    twins = [M.gemm_tile_loops] + ([blas.gemm_tile] if blas.available() else [])
    for product in twins:
        c = c0.copy()
        product(c, big_a[offset:], a_t, b, b_t, m, n, depth, accumulate)
        assert np.isfinite(c).all()
        assert (np.abs(c[:m, :n] - expected[:m, :n]) <= tol).all(), product
        np.testing.assert_array_equal(c[m:], c0[m:])
        np.testing.assert_array_equal(c[:, n:], c0[:, n:])


def test_without_blas_the_attention_kernels_use_the_loop_twin_and_openmp_threads_sleep():
    # TINYLLM_POOL_BLAS=0 is what a NumPy on MKL or Accelerate gets: no BLAS from numba, np.matmul,
    # OMP_WAIT_POLICY=PASSIVE. The kernels run as plain Python here (jit disabled), so small shapes.
    code = (
        "import os\n"
        "import numpy as np\n"
        "from tinyllm.kernels import attention as A, blas, matmul as M\n"
        "assert not blas.available() and A._tile_product is M.gemm_tile_loops\n"
        "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
        "rng = np.random.default_rng(0)\n"
        "q, k, v, g = (rng.standard_normal((2, 9, 3)) for _ in range(4))\n"
        "out, lse = A.attention_forward(q, k, v, causal=True)\n"
        "ref, ref_lse = A.attention_forward_ref(q, k, v, causal=True)\n"
        "assert np.allclose(out, ref, atol=1e-12) and np.allclose(lse, ref_lse, atol=1e-12)\n"
        "for got, want in zip(A.attention_backward(q, k, v, out, lse, g, causal=True),\n"
        "                     A.attention_backward_ref(q, k, v, ref, ref_lse, g, causal=True)):\n"
        "    assert np.allclose(got, want, atol=1e-12)\n"
        "a = rng.standard_normal((300, 40)).astype(np.float32)\n"
        "assert np.array_equal(M.matmul(a, a.T), a @ a.T)\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(code, TINYLLM_POOL_BLAS="0")


@needs_blas
def test_with_blas_openmp_threads_keep_the_default_wait_policy():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "TINYLLM_POOL_BLAS")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root
    code = "import tinyllm, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # a user's own choice wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def assert_linear_close(y, x, w, bias):
    """y == x @ w.T + bias within a few eps per term of what was added up (float64 definition)."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    expected = definition(x64, w64.T) + bias
    size = definition(np.abs(x64), np.abs(w64.T)) + np.abs(bias)
    assert y.shape == expected.shape and np.isfinite(y).all()
    assert (np.abs(y - expected) <= 4 * np.finfo(y.dtype).eps * (x.shape[1] + 2) * size).all()


def assert_column_sums_close(db, g):
    """db == g.sum(axis=0), against a float64 sum of each column in Python's exactly rounded fsum."""
    exact = np.array([math.fsum(col) for col in g.astype(np.float64).T])
    size = np.abs(g.astype(np.float64)).sum(axis=0)
    assert db.dtype == g.dtype and np.isfinite(db).all()
    assert (np.abs(db - exact) <= 4 * np.finfo(db.dtype).eps * (g.shape[0] + 1) * size + 1e-300).all()


@settings(deadline=None, max_examples=30)
@given(m=st.integers(1, 600), k=st.integers(1, 130), n=st.integers(1, 300),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31 - 1))
def test_linear_products_with_the_bias_folded_in_match_the_definition(m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    y = blas.linear_forward(x, w, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_linear_close(y, x, w, bias)
    assert_matmul_close(blas.linear_forward(x, w, None), x, w.T)
    g = rng.standard_normal((m, n)).astype(dtype)
    check = (lambda dx: assert_matmul_close(dx, g, w), lambda dw: assert_matmul_close(dw, g.T, x),
             lambda db: assert_column_sums_close(db, g))
    for needs in [(True, True, True), (True, False, False), (False, True, True), (True, True, False)]:
        got = blas.linear_backward(g, x, w, *needs)
        for want, part, check_part in zip(needs, got, check):
            assert (part is None) == (not want)
            if want:
                check_part(part)


def test_linear_takes_the_fused_loops_at_training_shapes():
    # (768, 128) x (384, 128): the shapes of a GPT step, big enough for the row-split loops
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((768, 128)).astype(np.float32), rng.standard_normal((384, 128)).astype(np.float32)
    bias, g = rng.standard_normal(384).astype(np.float32), rng.standard_normal((768, 384)).astype(np.float32)
    assert blas._split_by_rows(x, w) == blas.available()
    assert_linear_close(blas.linear_forward(x, w, bias), x, w, bias)
    dx, dw, db = blas.linear_backward(g, x, w)
    assert_matmul_close(dx, g, w)
    assert_matmul_close(dw, g.T, x)
    assert_column_sums_close(db, g)


@needs_blas
@settings(deadline=None, max_examples=25)
@given(lead=st.sampled_from([(1,), (5,), (2, 3)]), m=st.integers(1, 140), k=st.integers(1, 70),
       n=st.integers(1, 140), dtype=st.sampled_from([np.float32, np.float64]), a_t=st.booleans(), b_t=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_batched_matmul_matches_the_definition(lead, m, k, n, dtype, a_t, b_t, seed):
    # stacks of matrices (attention's q @ k^T with dropout on goes this way): one gemm per matrix
    rng = np.random.default_rng(seed)
    a, b = operand(rng, lead + (m, k), dtype, a_t), operand(rng, lead + (k, n), dtype, b_t)
    got = blas.matmul(a, b)
    assert got.shape == lead + (m, n)
    for i in np.ndindex(*lead):
        assert_matmul_close(got[i], a[i], b[i])


def test_batched_matmul_leaves_broadcasting_and_mismatches_to_numpy():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 200, 300)).astype(np.float32)
    b = rng.standard_normal((300, 400)).astype(np.float32)  # a 2-D b broadcast over the batch
    np.testing.assert_array_equal(blas.matmul(a, b), np.matmul(a, b))  # NumPy's, bit for bit
    assert_matmul_close(blas.matmul(a, b), a, b)
    with pytest.raises(ValueError):  # NumPy's own message for mismatched inner dimensions
        blas.matmul(a, rng.standard_normal((3, 299, 400)).astype(np.float32))


@needs_blas
def test_kernels_run_from_several_python_threads_at_once():
    # each kernel call holds OpenBLAS at one thread; overlapping calls must neither hang nor
    # leave the count changed (the last one out restores it)
    import threading

    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((8, 200, 64)).astype(np.float32) for _ in range(3))
    expected = A_forward(q, k, v)
    before = _openblas.OPENBLAS.get_num_threads()
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(A_forward(q, k, v))
                blas.matmul(q[0], k[0].T)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(not t.is_alive() for t in threads)
    assert len(results) == 15
    for got in results:
        np.testing.assert_array_equal(got, expected)
    assert _openblas.OPENBLAS.get_num_threads() == before


def A_forward(q, k, v):
    from tinyllm.kernels import attention

    return attention.attention_forward(q, k, v, causal=True)[0]
