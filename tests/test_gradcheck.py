"""``tinyllm.gradcheck`` itself: it must pass correct gradients and, above all, fail wrong ones,
including errors that a plain ``.sum()`` of the output would hide."""
import re

import numpy as np
import pytest

import tinyllm
from tinyllm import Function, Tensor
from tinyllm.gradcheck import GradcheckError


def leaf(a):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


class WrongSquare(Function):
    """y = x^2 with a wrong derivative (x instead of 2x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x


class WrongSecondInput(Function):
    """y = a * b, whose gradient for b is wrong only at one element (flat index 4)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        gb = g * a
        gb.reshape(-1)[4] += 0.01
        return g * b, gb


class SoftmaxIdentityBackward(Function):
    """softmax forward, but backward passes g through unchanged (forgets the Jacobian)."""

    @staticmethod
    def forward(ctx, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    @staticmethod
    def backward(ctx, g):
        return g


class SoftmaxRightBackward(Function):
    @staticmethod
    def forward(ctx, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        out = e / e.sum(axis=-1, keepdims=True)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return out * (g - (g * out).sum(axis=-1, keepdims=True))


X = np.array([[0.3, -1.2, 0.8], [1.5, 0.1, -0.4]])


def gradient_scaled_by(factor):
    """An identity Function whose backward multiplies the gradient by ``factor``: placed in front
    of a correct op, it makes every gradient of that op wrong by the same relative amount."""

    class ScaleGradient(Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy()

        @staticmethod
        def backward(ctx, g):
            return g * factor

    return ScaleGradient.apply


# correct ops of various kinds: smooth element-wise, a row-coupled one (softmax, whose rows sum to
# 1), a product, a reduction, and one whose outputs are large (S = sum |f * R| ~ 1e3, so the
# rounding allowance is large too)
OPS = {
    "square": lambda x: x * x,
    "tanh": lambda x: x.tanh(),
    "softmax": lambda x: x.softmax(-1),
    "matmul": lambda x: x @ x.T,
    "logsumexp": lambda x: x.exp().sum(axis=-1).log(),
    "large outputs": lambda x: (x * x) * 300.0 + x * 100.0,
}


@pytest.mark.parametrize("op", OPS.values(), ids=OPS.keys())
def test_gradcheck_accepts_the_exact_gradient_and_rejects_a_systematic_error_of_0_1_and_0_01_percent(op):
    assert tinyllm.gradcheck(lambda x: op(gradient_scaled_by(1.0)(x)), (leaf(X),))
    for error in (1e-3, 1e-4, -1e-4):
        wrong = gradient_scaled_by(1.0 + error)
        with pytest.raises(GradcheckError, match="input 0"):
            tinyllm.gradcheck(lambda x: op(wrong(x)), (leaf(X),))


def test_pytorchs_default_tolerance_would_accept_those_errors():
    # why the defaults are tighter than torch.autograd.gradcheck's (atol=1e-5, rtol=1e-3)
    for error in (1e-3, 1e-4):
        wrong = gradient_scaled_by(1.0 + error)
        assert tinyllm.gradcheck(lambda x: wrong(x).tanh(), (leaf(X),), atol=1e-5, rtol=1e-3)


def test_a_small_absolute_error_where_the_gradient_is_zero_is_caught():
    # y = x^2 at x = 0: the gradient is 0, so rtol * |numeric| is 0 and the outputs are 0 (no
    # rounding allowance); an absolute error of 1e-7 exceeds atol = 1e-8
    class SquarePlus1e7(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g + 1e-7

    with pytest.raises(GradcheckError, match=r"rounding noise 0\)"):
        tinyllm.gradcheck(SquarePlus1e7.apply, (leaf([0.0, 0.0]),))
    assert tinyllm.gradcheck(lambda x: x * x, (leaf([0.0, 0.0]),))


def test_gradcheck_passes_a_correct_gradient():
    assert tinyllm.gradcheck(lambda x: x * x, (leaf(X),)) is True
    assert tinyllm.gradcheck(SoftmaxRightBackward.apply, (leaf(X),)) is True


def test_gradcheck_rejects_a_wrong_derivative_naming_input_and_element():
    with pytest.raises(GradcheckError, match=re.escape("input 0 (shape (2, 3)), element (0, 0)")):
        tinyllm.gradcheck(WrongSquare.apply, (leaf(X),))


def test_gradcheck_names_the_second_input_and_the_exact_element():
    a, b = leaf(X), leaf(X[::-1])
    with pytest.raises(GradcheckError) as info:
        tinyllm.gradcheck(WrongSecondInput.apply, (a, b))
    msg = str(info.value)
    assert "input 1" in msg and "element (1, 1)" in msg, msg  # flat index 4 of a (2, 3) array
    assert "analytic" in msg and "numeric" in msg


def test_gradcheck_is_an_assertion_error():
    assert issubclass(GradcheckError, AssertionError)


def test_plain_sum_would_hide_a_softmax_that_forgets_its_jacobian():
    # The premise: the gradient of sum(softmax(x)) is zero, so a backward that returns g unchanged
    # (all ones) is wrong, but a check through .sum() would see ...
    x_right, x_wrong = leaf(X), leaf(X)
    SoftmaxRightBackward.apply(x_right).sum().backward()
    np.testing.assert_allclose(x_right.grad, 0.0, atol=1e-12)
    SoftmaxIdentityBackward.apply(x_wrong).sum().backward()
    np.testing.assert_allclose(x_wrong.grad, 1.0)
    # ... finite differences of sum() give 0 too, while the wrong backward gives 1: so this one is
    # caught even by sum; a subtler error (g minus its mean) is not:
    class MeanFreeIdentity(SoftmaxIdentityBackward):
        @staticmethod
        def backward(ctx, g):
            return g - g.mean(axis=-1, keepdims=True)

    x_subtle = leaf(X)
    MeanFreeIdentity.apply(x_subtle).sum().backward()
    np.testing.assert_allclose(x_subtle.grad, x_right.grad, atol=1e-12)  # sum() sees no difference
    # gradcheck weights the output with a random R, and catches both.
    with pytest.raises(GradcheckError, match="input 0"):
        tinyllm.gradcheck(MeanFreeIdentity.apply, (leaf(X),))
    with pytest.raises(GradcheckError, match="input 0"):
        tinyllm.gradcheck(SoftmaxIdentityBackward.apply, (leaf(X),))


def test_gradcheck_checks_only_inputs_that_require_grad_and_passes_others_through():
    const = Tensor(X)  # wrong gradient would flow only into x: still caught
    with pytest.raises(GradcheckError, match="input 1"):
        tinyllm.gradcheck(lambda c, x, k: WrongSquare.apply(x) * c + k, (const, leaf(X), 2.0))
    assert tinyllm.gradcheck(lambda c, x, k: x * c + k, (const, leaf(X), 2.0))


def test_gradcheck_with_several_outputs():
    assert tinyllm.gradcheck(lambda x: (x.exp(), x.tanh()), (leaf(X),))
    with pytest.raises(GradcheckError):
        tinyllm.gradcheck(lambda x: (x.exp(), WrongSquare.apply(x)), (leaf(X),))


def test_gradcheck_handles_non_contiguous_inputs():
    xt = np.ascontiguousarray(X.T).T
    assert not xt.flags.c_contiguous
    assert tinyllm.gradcheck(lambda x: (x @ x.T).softmax(-1), (leaf(xt),))
    with pytest.raises(GradcheckError):
        tinyllm.gradcheck(WrongSquare.apply, (leaf(xt),))


def test_gradcheck_casts_float32_inputs_to_float64():
    x32 = Tensor(X.astype(np.float32), requires_grad=True)
    seen = []

    def f(x):
        seen.append(x.dtype)
        return x.tanh()

    assert tinyllm.gradcheck(f, (x32,))
    assert set(seen) == {np.dtype(np.float64)}


def test_gradcheck_rejects_nothing_to_check():
    with pytest.raises(ValueError, match="requires_grad"):
        tinyllm.gradcheck(lambda x: x * 2.0, (Tensor(X),))


def test_gradcheck_rejects_a_non_finite_output():
    # log(-1) is NaN on purpose: NumPy's "invalid value" warning is expected, so it is silenced
    with np.errstate(invalid="ignore"), pytest.raises(GradcheckError, match="not finite"):
        tinyllm.gradcheck(lambda x: x.log(), (leaf([-1.0, 2.0]),))


def test_gradcheck_catches_a_missing_gradient():
    class Detached(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 3.0

        @staticmethod
        def backward(ctx, g):
            return None  # claims no gradient flows

    with pytest.raises(GradcheckError, match="analytic gradient 0"):
        tinyllm.gradcheck(Detached.apply, (leaf(X),))
