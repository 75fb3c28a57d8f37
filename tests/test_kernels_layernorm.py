"""tinyllm.kernels.layernorm: numba kernels vs the NumPy reference, the reference vs finite
differences, optional PyTorch oracle, input validation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import assert_close, assert_fd_check_rejects, assert_grad_matches_fd, fd_grad, run_with_jit_disabled
from tinyllm.kernels import get_num_threads, set_num_threads
from tinyllm.kernels.layernorm import (
    layernorm_backward,
    layernorm_backward_ref,
    layernorm_forward,
    layernorm_forward_ref,
)

EPS32 = np.finfo(np.float32).eps


def tol(dtype, n):
    """Relative tolerance for a result built from a reduction over n elements."""
    return 1e-10 if dtype == np.float64 else 16 * EPS32 * np.sqrt(max(n, 1))


def relayout(a, layout):
    """The same values as the 2-D array a, stored C-order, transposed (Fortran order) or strided."""
    if layout == "transposed":
        return np.asfortranarray(a)
    if layout == "strided":
        wide = np.zeros((a.shape[0], 2 * a.shape[1]), dtype=a.dtype)
        wide[:, ::2] = a
        return wide[:, ::2]
    return a


# ----------------------------------------------------------------------------------------------
# numba kernel == reference


@st.composite
def layernorm_cases(draw):
    n_rows = draw(st.sampled_from([1, 2, 31, 32, 33, 70]))  # around the 32-row backward block
    n_cols = draw(st.sampled_from([1, 2, 3, 17, 64, 100]))
    return dict(
        n_rows=n_rows,
        n_cols=n_cols,
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        layout=draw(st.sampled_from(["c", "transposed", "strided"])),
        offset=draw(st.sampled_from([0.0, 1e4, -3e4])),
        noise=draw(st.sampled_from([1e-2, 1.0, 1e2])),
        constant_rows=draw(st.booleans()),
        with_bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def build_case(case):
    rng = np.random.default_rng(case["seed"])
    shape, dtype, layout = (case["n_rows"], case["n_cols"]), case["dtype"], case["layout"]
    x = case["offset"] + case["noise"] * rng.standard_normal(shape)
    if case["constant_rows"]:
        x[::3] = case["offset"] + 0.5
    x = relayout(x.astype(dtype), layout)
    weight = rng.standard_normal(2 * shape[1]).astype(dtype)[::2]  # strided
    bias = rng.standard_normal(shape[1]).astype(dtype) if case["with_bias"] else None
    dy = relayout(rng.standard_normal(shape).astype(dtype), layout)
    return x, weight, bias, dy


def upcast(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


@settings(deadline=None)  # max_examples from the conftest profile
@given(layernorm_cases())
def test_forward_kernel_matches_reference(case):
    x, weight, bias, _ = build_case(case)
    y, mean, rstd = layernorm_forward(x, weight, bias)
    assert (y.dtype, mean.dtype, rstd.dtype) == (x.dtype,) * 3
    # Oracle: the float64 reference on x minus each row's first element. Layer norm is shift
    # invariant, and the shift makes the (two-pass) reference exact even for rows like
    # 1e4 + 0.01 * noise, where it would otherwise lose digits to |mean| >> std.
    x64, w64, b64 = upcast(x, weight, bias)
    shift = x64[:, :1]
    y_ref, mean_ref, rstd_ref = layernorm_forward_ref(x64 - shift, w64, b64)
    rtol = tol(x.dtype, case["n_cols"])
    assert_close(y, y_ref, rtol)
    assert_close(mean, mean_ref + shift[:, 0], rtol)
    assert_close(rstd, rstd_ref, rtol)


@settings(deadline=None)  # max_examples from the conftest profile
@given(layernorm_cases())
def test_backward_kernel_matches_reference(case):
    x, weight, _, dy = build_case(case)
    _, mean, rstd = layernorm_forward(x, weight, None)
    dx, dweight, dbias = layernorm_backward(dy, x, weight, mean, rstd)
    assert (dx.dtype, dweight.dtype, dbias.dtype) == (x.dtype,) * 3
    dx_ref, dweight_ref, dbias_ref = layernorm_backward_ref(*upcast(dy, x, weight, mean, rstd))
    n_rows, n_cols = x.shape
    # dx = rstd * (g - mean(g) - ...) can cancel to ~0: measure its error against rstd * |g|.
    dx_scale = np.abs(rstd.astype(np.float64)[:, None] * dy * weight).max()
    assert_close(dx, dx_ref, tol(x.dtype, n_cols), scale=max(dx_scale, np.abs(dx_ref).max()))
    assert_close(dweight, dweight_ref, tol(x.dtype, n_rows), scale=np.abs(dy).sum(axis=0).max())
    assert_close(dbias, dbias_ref, tol(x.dtype, n_rows), scale=np.abs(dy).sum(axis=0).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_plain_reference_on_ordinary_data(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((45, 70)) * 3 + 1).astype(dtype)
    weight, bias, dy = (rng.standard_normal(s).astype(dtype) for s in (70, 70, (45, 70)))
    y, mean, rstd = layernorm_forward(x, weight, bias, eps=1e-3)
    y_ref, mean_ref, rstd_ref = layernorm_forward_ref(x, weight, bias, eps=1e-3)
    assert y_ref.dtype == dtype
    for got, want in ((y, y_ref), (mean, mean_ref), (rstd, rstd_ref)):
        assert_close(got, want, tol(dtype, 70))
    grads = layernorm_backward(dy, x, weight, mean, rstd)
    grads_ref = layernorm_backward_ref(dy, x, weight, mean_ref, rstd_ref)
    for got, want in zip(grads, grads_ref):
        assert_close(got, want, tol(dtype, 70 * 45))


def test_large_mean_rows_are_accurate_in_float32():
    # 1e4 + noise of std 0.1: a float32 sum of squares would leave nothing of the variance.
    rng = np.random.default_rng(2)
    x = (1e4 + 0.1 * rng.standard_normal((8, 384))).astype(np.float32)
    weight = np.ones(384, dtype=np.float32)
    y, mean, rstd = layernorm_forward(x, weight, None)
    x64 = x.astype(np.float64)
    exact_mean = x64.mean(axis=1)
    exact_xhat = (x64 - exact_mean[:, None]) / np.sqrt(x64.var(axis=1) + 1e-5)[:, None]
    assert np.isfinite(y).all()
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-7)
    np.testing.assert_allclose(y, exact_xhat, rtol=1e-6, atol=1e-6)
    # The float32 two-pass reference is off by ~1e-3 here: it is the spec, not an oracle.
    y_ref32 = layernorm_forward_ref(x, weight, None)[0]
    assert np.abs(y - exact_xhat).max() < np.abs(y_ref32 - exact_xhat).max()


def test_constant_rows_give_bias_and_finite_gradients():
    x = np.full((3, 5), 7.25)
    weight, bias = np.linspace(0.5, 1.5, 5), np.arange(5.0)
    y, mean, rstd = layernorm_forward(x, weight, bias)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, x.shape))
    np.testing.assert_array_equal(mean, 7.25)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(1e-5))
    dx, dweight, dbias = layernorm_backward(np.ones_like(x), x, weight, mean, rstd)
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dx, np.broadcast_to(rstd[0] * (weight - weight.mean()), x.shape))  # xhat = 0
    np.testing.assert_array_equal(dweight, 0.0)
    np.testing.assert_array_equal(dbias, 3.0)


def test_zero_rows():
    x = np.zeros((0, 4), dtype=np.float32)
    y, mean, rstd = layernorm_forward(x, np.ones(4, np.float32), None)
    assert y.shape == (0, 4) and mean.shape == rstd.shape == (0,)
    dx, dweight, dbias = layernorm_backward(x, x, np.ones(4, np.float32), mean, rstd)
    assert dx.shape == (0, 4)
    np.testing.assert_array_equal(dweight, 0.0)
    np.testing.assert_array_equal(dbias, 0.0)


def test_backward_does_not_depend_on_thread_count():
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((2, 200, 48))
    weight = rng.standard_normal(48)
    _, mean, rstd = layernorm_forward(x, weight, None)
    before = get_num_threads()
    try:
        set_num_threads(1)
        one = layernorm_backward(dy, x, weight, mean, rstd)
        set_num_threads(before)
        many = layernorm_backward(dy, x, weight, mean, rstd)
    finally:
        set_num_threads(before)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# gradients vs finite differences (float64, loss = sum(y * R))


@pytest.mark.parametrize("impl", ["ref", "numba"])
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (4, 2)])
def test_backward_matches_finite_differences(impl, shape):
    forward, backward = {
        "ref": (layernorm_forward_ref, layernorm_backward_ref),
        "numba": (layernorm_forward, layernorm_backward),
    }[impl]
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    weight, bias = rng.standard_normal((2, shape[1]))
    R = rng.standard_normal(shape)

    def loss():
        return (forward(x, weight, bias)[0] * R).sum()

    _, mean, rstd = forward(x, weight, bias)
    dx, dweight, dbias = backward(R, x, weight, mean, rstd)
    assert_grad_matches_fd(dx, fd_grad(loss, x))
    assert_grad_matches_fd(dweight, fd_grad(loss, weight))
    assert_grad_matches_fd(dbias, fd_grad(loss, bias))


def test_finite_difference_check_catches_a_wrong_gradient():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5))
    weight, bias = rng.standard_normal((2, 5))
    R = rng.standard_normal((3, 5))

    def loss():
        return (layernorm_forward_ref(x, weight, bias)[0] * R).sum()

    _, mean, rstd = layernorm_forward_ref(x, weight, bias)
    # A classic slip: forgetting that mean and rstd depend on x (dx = rstd * g).
    wrong_dx = rstd[:, None] * R * weight
    assert_fd_check_rejects(wrong_dx, loss, x)


# ----------------------------------------------------------------------------------------------
# PyTorch oracle


@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_torch_layer_norm(with_bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((2, 37, 50)) * 2 + 0.5
    weight, bias = rng.standard_normal((2, 50))
    bias = bias if with_bias else None
    y, mean, rstd = layernorm_forward(x, weight, bias, eps=1e-5)
    dx, dweight, dbias = layernorm_backward(dy, x, weight, mean, rstd)

    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True) if with_bias else None
    yt = torch.nn.functional.layer_norm(xt, (50,), wt, bt, eps=1e-5)
    (yt * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dweight, wt.grad.numpy(), rtol=1e-10, atol=1e-11)
    if with_bias:
        np.testing.assert_allclose(dbias, bt.grad.numpy(), rtol=1e-10, atol=1e-11)


# ----------------------------------------------------------------------------------------------
# NUMBA_DISABLE_JIT and validation


def test_runs_with_jit_disabled():
    script = (
        "import numba, numpy as np\n"
        "assert numba.config.DISABLE_JIT\n"
        "from tinyllm.kernels.layernorm import *\n"
        "x = np.arange(6.0).reshape(2, 3) ** 2; w = np.ones(3); b = np.zeros(3)\n"
        "y, m, r = layernorm_forward(x, w, b)\n"
        "g = layernorm_backward(np.ones_like(x) + x, x, w, m, r)\n"
        "ref = layernorm_forward_ref(x, w, b)\n"
        "g_ref = layernorm_backward_ref(np.ones_like(x) + x, x, w, ref[1], ref[2])\n"
        "for a, e in zip((y, m, r) + g, ref + g_ref): np.testing.assert_allclose(a, e, atol=1e-12)\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(script)


def test_forward_errors_name_the_problem():
    x = np.zeros((4, 3), dtype=np.float32)
    w = np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"x must be a 2-D array \(N, C\), got \(2, 4, 3\)"):
        layernorm_forward(np.zeros((2, 4, 3), np.float32), w, None)
    with pytest.raises(ValueError, match="x has dtype int64"):
        layernorm_forward(np.zeros((4, 3), np.int64), w, None)
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(3,\)"):
        layernorm_forward(x, np.ones(4, np.float32), None)
    with pytest.raises(ValueError, match="bias has dtype float64, expected float32"):
        layernorm_forward(x, w, np.zeros(3))
    with pytest.raises(ValueError, match="eps must be finite and >= 0, got -1.0"):
        layernorm_forward(x, w, None, eps=-1.0)
    with pytest.raises(ValueError, match=r"shape \(4, 0\): cannot normalise rows of 0 elements"):
        layernorm_forward(np.zeros((4, 0), np.float32), np.ones(0, np.float32), None)


def test_backward_errors_name_the_problem():
    x = np.zeros((4, 3))
    w, mean, rstd = np.ones(3), np.zeros(4), np.ones(4)
    with pytest.raises(ValueError, match=r"dy has shape \(4, 2\), expected \(4, 3\)"):
        layernorm_backward(np.zeros((4, 2)), x, w, mean, rstd)
    with pytest.raises(ValueError, match=r"rstd has shape \(3,\), expected \(4,\)"):
        layernorm_backward(x, x, w, mean, np.ones(3))
    with pytest.raises(ValueError, match="mean has dtype float32, expected float64"):
        layernorm_backward(x, x, w, mean.astype(np.float32), rstd)
