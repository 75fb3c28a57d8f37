"""tinyllm.kernels.gelu: numba kernels vs the NumPy reference, the reference vs finite
differences, optional PyTorch oracle, input validation."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import assert_close, assert_fd_check_rejects, assert_grad_matches_fd, fd_grad, run_with_jit_disabled
from tinyllm.kernels.gelu import gelu_backward, gelu_backward_ref, gelu_forward, gelu_forward_ref

EPS32 = np.finfo(np.float32).eps
MODES = ["tanh", "none"]


# ----------------------------------------------------------------------------------------------
# numba kernel == reference


@st.composite
def gelu_cases(draw):
    return dict(
        shape=draw(st.sampled_from([(), (1,), (7,), (4097,), (3, 1, 5), (2, 2100)])),  # 4096-element chunks
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        layout=draw(st.sampled_from(["c", "reversed", "transposed"])),
        scale=draw(st.sampled_from([1.0, 4.0, 1e4])),
        approximate=draw(st.sampled_from(MODES)),
        seed=draw(st.integers(0, 2**16)),
    )


def build_case(case):
    rng = np.random.default_rng(case["seed"])
    x = np.asarray(case["scale"] * rng.standard_normal(case["shape"]), dtype=case["dtype"])
    dy = np.asarray(rng.standard_normal(case["shape"]), dtype=case["dtype"])
    if case["layout"] == "reversed" and x.ndim:  # negative strides
        x, dy = np.ascontiguousarray(x[..., ::-1])[..., ::-1], np.ascontiguousarray(dy[..., ::-1])[..., ::-1]
    elif case["layout"] == "transposed":
        x, dy = np.asfortranarray(x), np.asfortranarray(dy)
    return x, dy


# The oracle is the float64 reference on the same (upcast) values; the kernels compute in float64
# and round once. Element-wise, so no reduction length: the tolerance is a few ulp.
def tol(dtype):
    return 1e-10 if dtype == np.float64 else 4 * EPS32


@settings(deadline=None)  # max_examples from the conftest profile
@given(gelu_cases())
def test_forward_kernel_matches_reference(case):
    x, _ = build_case(case)
    y = gelu_forward(x, case["approximate"])
    assert y.shape == x.shape and y.dtype == x.dtype
    y_ref = gelu_forward_ref(x.astype(np.float64), case["approximate"])
    # The tanh reference's 1 + tanh(u) cancels for x < 0 (absolute error ~eps), the kernel's
    # x * sigmoid(2u) does not: compare with an absolute floor of eps * max(1, |x|).
    assert_close(y, y_ref, tol(x.dtype), scale=max(1.0, np.abs(x).max(initial=0.0)))


@settings(deadline=None)  # max_examples from the conftest profile
@given(gelu_cases())
def test_backward_kernel_matches_reference(case):
    x, dy = build_case(case)
    dx = gelu_backward(x, dy, case["approximate"])
    assert dx.shape == x.shape and dx.dtype == x.dtype
    dx_ref = gelu_backward_ref(x.astype(np.float64), dy.astype(np.float64), case["approximate"])
    # gelu' is at most ~1.13; its cancellation error is ~eps * |x|.
    assert_close(dx, dx_ref, tol(x.dtype), scale=max(1.0, np.abs(x).max(initial=0.0)) * np.abs(dy).max(initial=0.0))


@settings(deadline=None)  # max_examples from the conftest profile
@given(gelu_cases())
def test_backward_from_the_forwards_tanh_equals_recomputing_it(case):
    # the float32 tanh form hands t = tanh(u) from the forward to the backward: same bits
    x, dy = build_case(case)
    y, t = gelu_forward(x, case["approximate"], return_tanh=True)
    np.testing.assert_array_equal(y, gelu_forward(x, case["approximate"]))
    if x.dtype != np.float32 or case["approximate"] != "tanh":
        assert t is None
        return
    assert t.shape == x.shape and t.dtype == np.float32
    assert np.isfinite(t).all() and (np.abs(t) <= 1).all()
    np.testing.assert_array_equal(gelu_backward(x, dy, case["approximate"], tanh=t),
                                  gelu_backward(x, dy, case["approximate"]))


def test_a_saved_tanh_of_the_wrong_shape_is_refused():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"tanh is float32 \(3, 2\)"):
        gelu_backward(x, x, tanh=np.ones((3, 2), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("approximate", MODES)
def test_float32_reference_agrees(dtype, approximate):
    rng = np.random.default_rng(0)
    x, dy = (3 * rng.standard_normal((2, 300))).astype(dtype)
    assert gelu_forward_ref(x, approximate).dtype == dtype
    assert gelu_backward_ref(x, dy, approximate).dtype == dtype
    rtol = 1e-10 if dtype == np.float64 else 8 * EPS32
    assert_close(gelu_forward(x, approximate), gelu_forward_ref(x, approximate), rtol, scale=3.0)
    assert_close(gelu_backward(x, dy, approximate), gelu_backward_ref(x, dy, approximate), rtol, scale=10.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("approximate", MODES)
def test_huge_inputs_are_identity_or_zero(dtype, approximate):
    # 1e15**3 overflows float32: the clip inside the cubic must keep everything finite.
    big = [1e4, 1e15, 1e30, float(np.finfo(dtype).max)]
    x = np.array(big + [-b for b in big], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either (reference included)
        for forward, backward in ((gelu_forward, gelu_backward), (gelu_forward_ref, gelu_backward_ref)):
            y, dx = forward(x, approximate), backward(x, np.ones_like(x), approximate)
            assert np.isfinite(y).all() and np.isfinite(dx).all()
            np.testing.assert_array_equal(y, np.where(x > 0, x, 0.0))
            np.testing.assert_array_equal(dx, np.where(x > 0, 1.0, 0.0))


def test_pinned_values():
    x = np.array([-1.0, 0.0, 0.5, 2.0])
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(gelu_forward(x, "none"), x * phi, rtol=1e-14)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    np.testing.assert_allclose(gelu_forward(x, "tanh"), 0.5 * x * (1 + np.tanh(u)), rtol=1e-14)
    np.testing.assert_array_equal(gelu_backward(np.zeros(2), np.ones(2), "tanh"), 0.5)  # gelu'(0) = 1/2
    np.testing.assert_array_equal(gelu_backward(np.zeros(2), np.ones(2), "none"), 0.5)


def test_empty_input():
    x = np.zeros((0, 3), dtype=np.float32)
    assert gelu_forward(x).shape == (0, 3)
    assert gelu_backward(x, x, "none").shape == (0, 3)


# ----------------------------------------------------------------------------------------------
# gradients vs finite differences (float64, loss = sum(gelu(x) * R))


@pytest.mark.parametrize("impl", ["ref", "numba"])
@pytest.mark.parametrize("approximate", MODES)
def test_backward_matches_finite_differences(impl, approximate):
    forward, backward = {
        "ref": (gelu_forward_ref, gelu_backward_ref),
        "numba": (gelu_forward, gelu_backward),
    }[impl]
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-6, 6, 13), rng.standard_normal(7) * 2]).reshape(4, 5)
    R = rng.standard_normal(x.shape)

    def loss():
        return (forward(x, approximate) * R).sum()

    assert_grad_matches_fd(backward(x, R, approximate), fd_grad(loss, x))


def test_finite_difference_check_catches_a_wrong_gradient():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(12)
    R = rng.standard_normal(12)

    def loss():
        return (gelu_forward_ref(x, "tanh") * R).sum()

    # A plausible slip: the derivative of the exact GELU used for the tanh approximation.
    wrong = gelu_backward_ref(x, R, "none")
    assert_fd_check_rejects(wrong, loss, x)


# ----------------------------------------------------------------------------------------------
# PyTorch oracle


@pytest.mark.parametrize("approximate", MODES)
def test_matches_torch_gelu(approximate):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(200) * 3, [-20.0, -9.0, 0.0, 9.0, 20.0]])
    dy = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate=approximate)
    yt.backward(torch.tensor(dy))
    # atol: for x < 0, 1 + tanh(u) cancels to an absolute error ~eps in either implementation.
    np.testing.assert_allclose(gelu_forward(x, approximate), yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gelu_backward(x, dy, approximate), xt.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("approximate", MODES)
def test_float32_matches_torch_gelu(approximate):
    # the float32 kernels (vectorised exp; erfc fit for the exact form) against torch's float32
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(5000) * 3, [-20.0, -9.0, -5.0, 0.0, 5.0, 9.0, 20.0]]).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate=approximate)
    yt.backward(torch.tensor(dy))
    # a few float32 ulp of max(1, |x|): both round differently, and 1 + erf(x) cancels in torch's
    scale = np.maximum(1.0, np.abs(x))
    assert (np.abs(gelu_forward(x, approximate) - yt.detach().numpy()) <= 8 * EPS32 * scale).all()
    assert (np.abs(gelu_backward(x, dy, approximate) - xt.grad.numpy()) <= 8 * EPS32 * scale * np.abs(dy)).all()


# ----------------------------------------------------------------------------------------------
# NUMBA_DISABLE_JIT and validation


def test_runs_with_jit_disabled():
    script = (
        "import numba, numpy as np\n"
        "assert numba.config.DISABLE_JIT\n"
        "from tinyllm.kernels.gelu import *\n"
        "x = np.linspace(-3, 3, 7).reshape(7, 1)\n"
        "for a in ('tanh', 'none'):\n"
        "    np.testing.assert_allclose(gelu_forward(x, a), gelu_forward_ref(x, a), atol=1e-14)\n"
        "    np.testing.assert_allclose(gelu_backward(x, x, a), gelu_backward_ref(x, x, a), atol=1e-14)\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(script)


def test_errors_name_the_problem():
    x = np.zeros(3)
    for fn in (gelu_forward, gelu_forward_ref):
        with pytest.raises(ValueError, match=r"approximate='erf' is not one of \('tanh', 'none'\)"):
            fn(x, "erf")
    for fn in (gelu_backward, gelu_backward_ref):
        with pytest.raises(ValueError, match=r"approximate=None is not one of"):
            fn(x, x, None)
    with pytest.raises(ValueError, match="x has dtype int64, expected float32 or float64"):
        gelu_forward(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"dy is float64 \(4,\) but x is float64 \(3,\)"):
        gelu_backward(x, np.zeros(4))
    with pytest.raises(ValueError, match=r"dy is float32 \(3,\) but x is float64 \(3,\)"):
        gelu_backward(x, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="x must be a numpy array, got list"):
        gelu_forward([1.0, 2.0])
