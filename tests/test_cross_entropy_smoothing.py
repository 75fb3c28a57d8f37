"""Label smoothing in the fused cross-entropy: kernel == NumPy reference, the reference == the
definition, finite differences (tinyllm.gradcheck), PyTorch, and no change without smoothing."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyllm.functional as F
from kernel_helpers import run_with_jit_disabled
from tinyllm import GradcheckError, Tensor, gradcheck
from tinyllm.kernels import cross_entropy as CE

EPS32 = float(np.finfo(np.float32).eps)


def definition(logits, targets, ignore_index, eps):
    """PyTorch's definition, written out: the target distribution (1 - e) onehot + e / V,
    mean over the rows whose target is not ignore_index."""
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    rows = np.flatnonzero(targets != ignore_index)
    q = np.full((len(rows), z.shape[1]), eps / z.shape[1])
    q[np.arange(len(rows)), targets[rows]] += 1 - eps
    return -(q * logp[rows]).sum() / len(rows)


def case(seed, n, vocab, dtype, scale=3.0, ignore_index=-100):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((n, vocab))).astype(dtype)
    targets = rng.integers(0, vocab, n)
    targets[rng.random(n) < 0.3] = ignore_index
    targets[0] = rng.integers(0, vocab)
    return logits, targets


@settings(deadline=None, max_examples=40)
@given(n=st.sampled_from([1, 2, 17, 40]), vocab=st.sampled_from([1, 2, 7, 65, 300]),
       dtype=st.sampled_from([np.float32, np.float64]), eps=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       scale=st.sampled_from([1.0, 30.0, 1e4]), transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_kernel_matches_reference_and_definition(n, vocab, dtype, eps, scale, transposed, seed):
    logits, targets = case(seed, n, vocab, dtype, scale)
    if transposed:
        logits = np.asfortranarray(logits)
    as64 = logits.astype(np.float64)
    loss_ref, lse_ref = CE.cross_entropy_forward_ref(as64, targets, label_smoothing=eps)
    loss, lse = CE.cross_entropy_forward(logits, targets, label_smoothing=eps)
    tol = 1e-10 if dtype == np.float64 else 16 * EPS32 * np.sqrt(vocab)
    assert np.isfinite(loss) and np.isfinite(lse).all()
    np.testing.assert_allclose(float(loss_ref), definition(as64, targets, -100, eps), rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(lse, lse_ref.astype(dtype), rtol=tol, atol=tol)
    g = 0.7
    d_ref = CE.cross_entropy_backward_ref(as64, targets, lse_ref, g, label_smoothing=eps)
    d = CE.cross_entropy_backward(logits, targets, lse, g, label_smoothing=eps)
    assert d.dtype == dtype and np.isfinite(d).all()
    np.testing.assert_allclose(d, d_ref, rtol=0, atol=tol * g / max(1, np.count_nonzero(targets != -100)) + 1e-300)
    assert (d[targets == -100] == 0).all()


def test_no_smoothing_is_the_plain_loss_bit_for_bit():
    """label_smoothing=0 computes exactly what the kernel computed before smoothing existed:
    lse - z[t] per row (the GPT's losses do not move by a bit)."""
    logits, targets = case(1, 64, 65, np.float32)
    loss, lse = CE.cross_entropy_forward(logits, targets)
    loss0, lse0 = CE.cross_entropy_forward(logits, targets, label_smoothing=0.0)
    np.testing.assert_array_equal(loss, loss0)
    np.testing.assert_array_equal(lse, lse0)
    rows = np.flatnonzero(targets != -100)
    m = logits.max(1).astype(np.float64)
    s = np.exp(logits.astype(np.float64) - m[:, None]).sum(1)  # the kernel's float32 exp differs by ulps
    picked = logits[rows, targets[rows]]
    np.testing.assert_allclose(float(loss), ((m[rows] - picked) + np.log(s[rows])).mean(), rtol=1e-6)
    d = CE.cross_entropy_backward(logits, targets, lse, 1.0)
    np.testing.assert_array_equal(d, CE.cross_entropy_backward(logits, targets, lse, 1.0, label_smoothing=0.0))


@pytest.mark.parametrize("eps", [0.1, 0.6])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_gradcheck(eps, ignore_index):
    rng = np.random.default_rng(2)
    logits = Tensor(rng.standard_normal((2, 3, 5)), requires_grad=True)
    targets = rng.integers(0, 5, (2, 3))
    targets[0, 1] = ignore_index
    assert gradcheck(lambda z: F.cross_entropy(z, targets, ignore_index=ignore_index, label_smoothing=eps),
                     (logits,), rtol=1e-6, atol=1e-7)


def test_gradcheck_rejects_the_unsmoothed_gradient():
    """The check can fail: a backward that forgets the smoothing term is caught."""
    from tinyllm.tensor import Function

    class Forgetful(Function):
        @staticmethod
        def forward(ctx, z, t):
            loss, lse = CE.cross_entropy_forward(z, t, label_smoothing=0.1)
            ctx.save_for_backward(z, t, lse)
            return loss

        @staticmethod
        def backward(ctx, g):
            z, t, lse = ctx.saved_tensors
            return CE.cross_entropy_backward(z, t, lse, g), None

    rng = np.random.default_rng(3)
    z = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    with pytest.raises(GradcheckError):
        gradcheck(lambda z: Forgetful.apply(z, np.array([0, 1, 3])), (z,), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_matches_torch(dtype, eps):
    torch = pytest.importorskip("torch")
    logits, targets = case(4, 37, 65, dtype, ignore_index=-100)
    z = Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(z, targets, label_smoothing=eps)
    loss.backward()
    zt = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(zt, torch.tensor(targets), ignore_index=-100, label_smoothing=eps)
    loss_t.backward()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.isfinite(loss.item()) and np.isfinite(z.grad).all()
    np.testing.assert_allclose(loss.item(), loss_t.item(), rtol=tol)
    np.testing.assert_allclose(z.grad, zt.grad.numpy(), rtol=tol, atol=tol * 1e-2)


def test_extreme_logits_stay_finite():
    for dtype in (np.float32, np.float64):
        logits, targets = case(5, 8, 9, dtype, scale=1e30 if dtype == np.float64 else 1e20)
        loss, lse = CE.cross_entropy_forward(logits, targets, label_smoothing=0.2)
        d = CE.cross_entropy_backward(logits, targets, lse, 1.0, label_smoothing=0.2)
        assert np.isfinite(loss) and np.isfinite(d).all()
        np.testing.assert_allclose(float(loss), definition(logits, targets, -100, 0.2), rtol=1e-5)


def test_every_row_ignored():
    logits = np.zeros((3, 4))
    targets = np.full(3, -100)
    loss, lse = CE.cross_entropy_forward(logits, targets, label_smoothing=0.1)
    assert np.isnan(loss)
    assert (CE.cross_entropy_backward(logits, targets, lse, 1.0, label_smoothing=0.1) == 0).all()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_smoothing_is_named(bad):
    for fn in (CE.cross_entropy_forward, CE.cross_entropy_forward_ref):
        with pytest.raises(ValueError, match=re.escape(f"{fn.__name__}: label_smoothing must be")):
            fn(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=bad)
    with pytest.raises(ValueError, match=re.escape("cross_entropy: label_smoothing must be a number in [0, 1], got")):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 1]), label_smoothing=bad)


def test_runs_with_jit_disabled():
    code = (
        "import numpy as np\n"
        "from tinyllm.kernels import cross_entropy as CE\n"
        "z = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)\n"
        "t = np.array([0, 6, -100, 3, 2])\n"
        "loss, lse = CE.cross_entropy_forward(z, t, label_smoothing=0.1)\n"
        "ref, lse_ref = CE.cross_entropy_forward_ref(z.astype(np.float64), t, label_smoothing=0.1)\n"
        "assert abs(float(loss) - float(ref)) < 1e-5\n"
        "d = CE.cross_entropy_backward(z, t, lse, 1.0, label_smoothing=0.1)\n"
        "assert np.allclose(d, CE.cross_entropy_backward_ref(z.astype(np.float64), t, lse_ref, 1.0,\n"
        "                   label_smoothing=0.1), atol=1e-6)\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(code)
