"""tinyllm.kernels.cross_entropy: numba kernels vs the NumPy reference, the reference vs finite
differences, optional PyTorch oracle, input validation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import assert_close, assert_fd_check_rejects, assert_grad_matches_fd, fd_grad, run_with_jit_disabled
from tinyllm.kernels.cross_entropy import (
    cross_entropy_backward,
    cross_entropy_backward_ref,
    cross_entropy_forward,
    cross_entropy_forward_ref,
)

EPS32 = np.finfo(np.float32).eps
IGNORE = -100


# ----------------------------------------------------------------------------------------------
# numba kernel == reference


@st.composite
def ce_cases(draw):
    return dict(
        n_rows=draw(st.sampled_from([1, 2, 7, 33])),
        vocab=draw(st.sampled_from([1, 2, 5, 64, 257])),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        layout=draw(st.sampled_from(["c", "transposed", "strided"])),
        scale=draw(st.sampled_from([1.0, 30.0, 1e4])),
        ignore_frac=draw(st.sampled_from([0.0, 0.3])),
        seed=draw(st.integers(0, 2**16)),
    )


def build_case(case):
    rng = np.random.default_rng(case["seed"])
    n_rows, vocab = case["n_rows"], case["vocab"]
    logits = (case["scale"] * rng.standard_normal((n_rows, vocab))).astype(case["dtype"])
    if case["layout"] == "transposed":
        logits = np.asfortranarray(logits)
    elif case["layout"] == "strided":
        wide = np.zeros((n_rows, 3 * vocab), dtype=logits.dtype)
        wide[:, ::3] = logits
        logits = wide[:, ::3]
    targets = rng.integers(0, vocab, size=2 * n_rows)[::2]  # strided too
    targets[rng.random(n_rows) < case["ignore_frac"]] = IGNORE
    targets[0] = rng.integers(0, vocab)  # at least one valid row (all-ignored is tested apart)
    return logits, targets


def tol(dtype, vocab):
    """Relative tolerance for a result built from a reduction over a row of vocab logits."""
    return 1e-10 if dtype == np.float64 else 16 * EPS32 * np.sqrt(vocab)


# The oracle is the reference in float64 on the same (upcast) logits: the kernels compute in
# float64 and round once, while the float32 reference loses ~eps * |z| in lse (5e-4 at |z| = 1e4).


@settings(deadline=None)  # max_examples from the conftest profile
@given(ce_cases())
def test_forward_kernel_matches_reference(case):
    logits, targets = build_case(case)
    loss, lse = cross_entropy_forward(logits, targets)
    assert loss.shape == () and loss.dtype == lse.dtype == logits.dtype
    loss_ref, lse_ref = cross_entropy_forward_ref(logits.astype(np.float64), targets)
    rtol = tol(logits.dtype, logits.shape[1])
    assert_close(lse, lse_ref, rtol)
    # The reference's lse - z_t loses ~eps64 * |z| when both are large; measure against that.
    assert_close(loss, loss_ref, rtol, scale=max(float(np.abs(logits).max()), abs(float(loss_ref))))


@settings(deadline=None)  # max_examples from the conftest profile
@given(ce_cases(), st.sampled_from([1.0, -0.37, 5.0]))
def test_backward_kernel_matches_reference(case, grad_loss):
    logits, targets = build_case(case)
    _, lse = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(logits, targets, lse, np.array(grad_loss, dtype=logits.dtype))
    assert dlogits.dtype == logits.dtype and dlogits.shape == logits.shape
    logits64 = logits.astype(np.float64)
    _, lse64 = cross_entropy_forward_ref(logits64, targets)
    dlogits_ref = cross_entropy_backward_ref(logits64, targets, lse64, grad_loss)
    n_valid = np.count_nonzero(targets != IGNORE)
    # |dlogits| <= |grad_loss| / n_valid; measure the error against that scale.
    assert_close(dlogits, dlogits_ref, tol(logits.dtype, logits.shape[1]), scale=abs(grad_loss) / n_valid)
    np.testing.assert_array_equal(dlogits[targets == IGNORE], 0.0)


def test_float32_reference_agrees_on_moderate_logits():
    rng = np.random.default_rng(5)
    logits = (3 * rng.standard_normal((40, 100))).astype(np.float32)
    targets = rng.integers(0, 100, size=40)
    loss, lse = cross_entropy_forward(logits, targets)
    loss_ref, lse_ref = cross_entropy_forward_ref(logits, targets)
    assert loss_ref.dtype == lse_ref.dtype == np.float32
    assert_close(lse, lse_ref, tol(np.float32, 100))
    assert_close(loss, loss_ref, tol(np.float32, 100 * 40))
    assert_close(cross_entropy_backward(logits, targets, lse, 1.0),
                 cross_entropy_backward_ref(logits, targets, lse_ref, 1.0), tol(np.float32, 100), scale=1 / 40)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", [1e4, 1e30, np.finfo(np.float32).max / 4])
def test_extreme_logits_stay_finite(dtype, magnitude):
    logits = np.array([[magnitude, -magnitude, 0.0], [-magnitude, -magnitude, -magnitude],
                       [magnitude, magnitude, -magnitude]], dtype=dtype)
    targets = np.array([0, 2, 1])
    loss, lse = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(logits, targets, lse, 1.0)
    assert np.isfinite(loss) and np.isfinite(lse).all() and np.isfinite(dlogits).all()
    m = np.float64(dtype(magnitude))
    np.testing.assert_allclose(lse, [m, -m + np.log(3), m + np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(loss, (np.log(3) + np.log(2)) / 3, rtol=1e-6)  # row 0 contributes ~0
    expected = np.array([[0, 0, 0], [1 / 3, 1 / 3, -2 / 3], [0.5, -0.5, 0]]) / 3
    np.testing.assert_allclose(dlogits, expected, atol=1e-7)


def test_every_row_ignored_gives_nan_loss_and_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    targets = np.full(3, IGNORE)
    for forward in (cross_entropy_forward, cross_entropy_forward_ref):
        loss, lse = forward(logits, targets)
        assert loss.dtype == np.float32 and np.isnan(loss)
        assert np.isfinite(lse).all()
    for backward in (cross_entropy_backward, cross_entropy_backward_ref):
        np.testing.assert_array_equal(backward(logits, targets, lse, 1.0), 0.0)


def test_custom_ignore_index_inside_the_vocabulary():
    logits = np.random.default_rng(1).standard_normal((4, 5))
    targets = np.array([0, 3, 0, 4])
    loss, lse = cross_entropy_forward(logits, targets, ignore_index=0)
    loss_ref, _ = cross_entropy_forward_ref(logits, targets, ignore_index=0)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    dlogits = cross_entropy_backward(logits, targets, lse, 1.0, ignore_index=0)
    np.testing.assert_array_equal(dlogits[[0, 2]], 0.0)
    np.testing.assert_allclose(dlogits, cross_entropy_backward_ref(logits, targets, lse, 1.0, 0), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# gradients vs finite differences (float64; the loss is a scalar, weighted by grad_loss)


@pytest.mark.parametrize("impl", ["ref", "numba"])
@pytest.mark.parametrize("targets", [[2, 0, 4], [2, IGNORE, 1], [3]])
def test_backward_matches_finite_differences(impl, targets):
    forward, backward = {
        "ref": (cross_entropy_forward_ref, cross_entropy_backward_ref),
        "numba": (cross_entropy_forward, cross_entropy_backward),
    }[impl]
    targets = np.array(targets)
    logits = np.random.default_rng(2).standard_normal((len(targets), 5)) * 2
    grad_loss = -1.7

    def loss():
        return float(forward(logits, targets)[0]) * grad_loss

    _, lse = forward(logits, targets)
    assert_grad_matches_fd(backward(logits, targets, lse, grad_loss), fd_grad(loss, logits))


def test_finite_difference_check_catches_a_wrong_gradient():
    targets = np.array([2, 0, 4])
    logits = np.random.default_rng(3).standard_normal((3, 5))

    def loss():
        return float(cross_entropy_forward_ref(logits, targets)[0])

    _, lse = cross_entropy_forward_ref(logits, targets)
    # A classic slip: forgetting to divide by the number of valid rows.
    wrong = cross_entropy_backward_ref(logits, targets, lse, 1.0) * len(targets)
    assert_fd_check_rejects(wrong, loss, logits)


# ----------------------------------------------------------------------------------------------
# PyTorch oracle


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_cross_entropy(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((37, 50)) * 3).astype(dtype)
    targets = rng.integers(0, 50, size=37)
    targets[::4] = IGNORE
    loss, lse = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(logits, targets, lse, 0.5)

    lt = torch.tensor(logits, requires_grad=True)
    lt_loss = torch.nn.functional.cross_entropy(lt, torch.tensor(targets), ignore_index=IGNORE)
    (lt_loss * 0.5).backward()
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss, lt_loss.item(), rtol=rtol)
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(lse, torch.logsumexp(lt.detach(), dim=1).numpy(), rtol=rtol)


# ----------------------------------------------------------------------------------------------
# NUMBA_DISABLE_JIT and validation


def test_runs_with_jit_disabled():
    script = (
        "import numba, numpy as np\n"
        "assert numba.config.DISABLE_JIT\n"
        "from tinyllm.kernels.cross_entropy import *\n"
        "z = np.arange(12.0).reshape(3, 4) % 5; t = np.array([1, -100, 3])\n"
        "loss, lse = cross_entropy_forward(z, t)\n"
        "loss_ref, lse_ref = cross_entropy_forward_ref(z, t)\n"
        "np.testing.assert_allclose([loss, *lse], [loss_ref, *lse_ref], rtol=1e-12)\n"
        "np.testing.assert_allclose(cross_entropy_backward(z, t, lse, 1.0),\n"
        "                           cross_entropy_backward_ref(z, t, lse, 1.0), atol=1e-14)\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(script)


def test_errors_name_the_problem():
    logits = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"targets\[1\] = 4 is outside \[0, 4\) and is not ignore_index=-100"):
        cross_entropy_forward(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"targets\[2\] = -1 is outside \[0, 4\)"):
        cross_entropy_forward(logits, np.array([0, -100, -1]))
    with pytest.raises(ValueError, match="targets must be integers, got dtype float64"):
        cross_entropy_forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"targets have shape \(2,\), expected \(3,\)"):
        cross_entropy_forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"logits must be a 2-D array \(N, V\), got \(2, 3, 4\)"):
        cross_entropy_forward(np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="logits have dtype int64"):
        cross_entropy_forward(np.zeros((3, 4), dtype=np.int64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="ignore_index must be an integer, got 1.5"):
        cross_entropy_forward(logits, np.array([0, 1, 2]), ignore_index=1.5)
    lse = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"lse has shape \(2,\), expected \(3,\)"):
        cross_entropy_backward(logits, np.array([0, 1, 2]), lse[:2], 1.0)
    with pytest.raises(ValueError, match=r"grad_loss must be a scalar, got shape \(2,\)"):
        cross_entropy_backward(logits, np.array([0, 1, 2]), lse, np.ones(2))
    with pytest.raises(ValueError, match=r"targets\[0\] = 7"):
        cross_entropy_backward(logits, np.array([7, 1, 2]), lse, 1.0)
