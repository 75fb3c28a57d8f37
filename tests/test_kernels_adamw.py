"""tinyllm.kernels.adamw: the numba step vs the NumPy reference, optional PyTorch oracle,
in-place semantics, input validation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernel_helpers import run_with_jit_disabled
from tinyllm.kernels.adamw import (adamw_step, adamw_step_gathered, adamw_step_ref, scale_all, sum_of_squares,
                                    sums_of_squares)

EPS32 = np.finfo(np.float32).eps
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


def make_state(rng, shape, dtype):
    """param, grad, exp_avg, exp_avg_sq as after a few steps (exp_avg_sq > 0)."""
    param, grad, exp_avg = (np.asarray(rng.standard_normal(shape), dtype=dtype) for _ in range(3))
    exp_avg_sq = np.asarray(rng.random(shape) + 0.01, dtype=dtype)
    return param, grad, exp_avg, exp_avg_sq


# ----------------------------------------------------------------------------------------------
# numba kernel == reference


@st.composite
def adamw_cases(draw):
    return dict(
        shape=draw(st.sampled_from([(), (1,), (5,), (16385,), (3, 7)])),  # 16384-element chunks
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        grad_layout=draw(st.sampled_from(["c", "transposed", "strided"])),
        grad_scale=draw(st.sampled_from([1e-6, 1.0, 1e4])),
        hyper=dict(
            lr=draw(st.sampled_from([0.0, 1e-3, 0.3])),
            beta1=draw(st.sampled_from([0.0, 0.9])),
            beta2=draw(st.sampled_from([0.0, 0.95, 0.999])),
            eps=draw(st.sampled_from([0.0, 1e-8])),
            weight_decay=draw(st.sampled_from([0.0, 0.1])),
            step=draw(st.sampled_from([1, 2, 1000])),
        ),
        seed=draw(st.integers(0, 2**16)),
    )


def relayout(a, layout):
    if layout == "transposed" and a.ndim == 2:
        return np.asfortranarray(a)
    if layout == "strided" and a.ndim >= 1:
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    return a


@settings(deadline=None)  # max_examples from the conftest profile
@given(adamw_cases())
def test_kernel_matches_reference(case):
    rng = np.random.default_rng(case["seed"])
    param, grad, exp_avg, exp_avg_sq = make_state(rng, case["shape"], case["dtype"])
    grad = relayout(np.asarray(grad * case["dtype"](case["grad_scale"])), case["grad_layout"])
    # Oracle: the float64 reference on the same values. The kernel computes in the arrays' own
    # precision (float32 like PyTorch), a few roundings per value, within 4 eps of the largest.
    expected = [a.astype(np.float64) for a in (param, grad, exp_avg, exp_avg_sq)]
    adamw_step_ref(*expected, **case["hyper"])
    state = [param, exp_avg, exp_avg_sq]
    adamw_step(param, grad, exp_avg, exp_avg_sq, **case["hyper"])
    rtol = 1e-10 if case["dtype"] == np.float64 else 4 * EPS32
    for got, want in zip(state, [expected[0], expected[2], expected[3]]):
        assert got.dtype == case["dtype"]
        assert np.isfinite(got).all() and np.isfinite(want).all()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(initial=1.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_several_steps_match_reference(dtype):
    rng = np.random.default_rng(0)
    state = make_state(rng, (40, 30), dtype)
    state_ref = [a.copy() for a in state]
    for step in range(1, 6):
        grad = np.asarray(rng.standard_normal((40, 30)), dtype=dtype)
        adamw_step(state[0], grad, state[2], state[3], step=step, **HYPER)
        adamw_step_ref(state_ref[0], grad, state_ref[2], state_ref[3], step=step, **HYPER)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for got, want in zip(state, state_ref):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def test_updates_the_callers_arrays_in_place():
    rng = np.random.default_rng(1)
    param, grad, exp_avg, exp_avg_sq = make_state(rng, (4, 6), np.float32)
    before = [param.copy(), exp_avg.copy(), exp_avg_sq.copy()]
    ids = [id(param), id(exp_avg), id(exp_avg_sq)]
    assert adamw_step(param, np.asfortranarray(grad), exp_avg, exp_avg_sq, step=1, **HYPER) is None
    assert ids == [id(param), id(exp_avg), id(exp_avg_sq)]
    for a, b in zip((param, exp_avg, exp_avg_sq), before):
        assert not np.array_equal(a, b)


def test_first_step_moves_each_param_by_about_lr():
    # With bias correction, step 1 gives exp_avg / sqrt(exp_avg_sq) = sign(grad).
    param = np.zeros(5)
    grad = np.array([3.0, -2.0, 1e-3, -1e3, 0.5])
    exp_avg, exp_avg_sq = np.zeros(5), np.zeros(5)
    adamw_step(param, grad, exp_avg, exp_avg_sq, lr=0.1, beta1=0.9, beta2=0.999, eps=0.0, weight_decay=0.5, step=1)
    np.testing.assert_allclose(param, -0.1 * np.sign(grad), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# PyTorch oracle


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_adamw_over_several_steps(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    hyper = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    param = np.asarray(rng.standard_normal((17, 9)), dtype=dtype)
    exp_avg, exp_avg_sq = np.zeros_like(param), np.zeros_like(param)
    param_t = torch.tensor(param.copy(), requires_grad=True)
    opt = torch.optim.AdamW([param_t], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]),
                            eps=hyper["eps"], weight_decay=hyper["weight_decay"], foreach=False)
    for step in range(1, 8):
        grad = np.asarray(rng.standard_normal(param.shape), dtype=dtype)
        param_t.grad = torch.tensor(grad.copy())
        opt.step()
        adamw_step(param, grad, exp_avg, exp_avg_sq, step=step, **hyper)
    state = opt.state[param_t]
    atol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(param, param_t.detach().numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(exp_avg, state["exp_avg"].numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(exp_avg_sq, state["exp_avg_sq"].numpy(), rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------
# NUMBA_DISABLE_JIT and validation


def test_runs_with_jit_disabled():
    script = (
        "import numba, numpy as np\n"
        "assert numba.config.DISABLE_JIT\n"
        "from tinyllm.kernels.adamw import *\n"
        "a = [np.linspace(0.1, 1, 7) * k for k in (1, -2, 3, 4)]\n"
        "b = [x.copy() for x in a]\n"
        "kw = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=2)\n"
        "adamw_step(*a, **kw); adamw_step_ref(*b, **kw)\n"
        "for x, y in zip(a, b): np.testing.assert_allclose(x, y, rtol=1e-12)\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(script)


def test_non_contiguous_state_is_rejected_not_silently_copied():
    rng = np.random.default_rng(3)
    param, grad, exp_avg, exp_avg_sq = make_state(rng, (6, 4), np.float64)
    with pytest.raises(ValueError, match=r"param \(shape \(4, 6\), strides \(8, 32\)\) is not C-contiguous"):
        adamw_step(param.T, grad.T, exp_avg.T.copy(), exp_avg_sq.T.copy(), step=1, **HYPER)
    with pytest.raises(ValueError, match="exp_avg_sq .* is not C-contiguous"):
        adamw_step(param[:, ::2].copy(), grad[:, ::2], exp_avg[:, ::2].copy(), exp_avg_sq[:, ::2], step=1, **HYPER)
    exp_avg.flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg is read-only"):
        adamw_step(param, grad, exp_avg, exp_avg_sq, step=1, **HYPER)


def test_array_errors_name_the_problem():
    param = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"grad is float32 \(3, 2\) but param is float32 \(2, 3\)"):
        adamw_step(param, np.zeros((3, 2), np.float32), np.zeros_like(param), np.zeros_like(param), step=1, **HYPER)
    with pytest.raises(ValueError, match=r"exp_avg is float64 \(2, 3\) but param is float32"):
        adamw_step(param, np.zeros_like(param), np.zeros((2, 3)), np.zeros_like(param), step=1, **HYPER)
    with pytest.raises(ValueError, match="param has dtype int64"):
        p = np.zeros(3, dtype=np.int64)
        adamw_step(p, p, p, p, step=1, **HYPER)


@pytest.mark.parametrize("name, value, message", [
    ("lr", -0.1, "lr must be >= 0, got -0.1"),
    ("lr", float("nan"), "lr must be >= 0, got nan"),
    ("beta1", 1.0, r"beta1 must be in \[0, 1\), got 1.0"),
    ("beta2", -0.5, r"beta2 must be in \[0, 1\), got -0.5"),
    ("eps", -1e-8, "eps must be >= 0, got -1e-08"),
    ("weight_decay", -0.01, "weight_decay must be >= 0, got -0.01"),
    ("step", 0, "step must be an integer >= 1 .*, got 0"),
    ("step", 1.5, "step must be an integer >= 1 .*, got 1.5"),
])
def test_hyperparameter_errors_name_the_value(name, value, message):
    arrays = [np.zeros(3) for _ in range(4)]
    kwargs = dict(HYPER, step=1)
    kwargs[name] = value
    with pytest.raises(ValueError, match=message):
        adamw_step(*arrays, **kwargs)


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(min_dims=0, max_dims=3, max_side=20),
                  elements=st.floats(-1e3, 1e3, width=32)))
def test_sum_of_squares_matches_float64_reference(x):
    from tinyllm.kernels.adamw import sum_of_squares, sum_of_squares_ref
    got, want = sum_of_squares(x), sum_of_squares_ref(x)
    assert np.isfinite(got)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_sum_of_squares_of_a_transposed_array_and_a_bad_dtype():
    from tinyllm.kernels.adamw import sum_of_squares
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert sum_of_squares(x.T) == float((np.arange(12.0) ** 2).sum())
    with pytest.raises(ValueError, match="int64"):
        sum_of_squares(np.arange(3))


# ----------------------------------------------------------------------------------------------
# many gradients read in place (kernels/_address.py): the same numbers as one flat copy


SIZES = [(16383,), (1,), (128, 130), (5,), (16385,), (5,), (3, 7)]  # pieces across the 16384-element chunks


def _pieces(rng, dtype):
    grads = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SIZES]
    n = sum(g.size for g in grads)
    param, flat_grad, exp_avg, exp_avg_sq = make_state(rng, (n,), dtype)
    return grads, param, exp_avg, exp_avg_sq


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gathered_step_equals_the_step_on_a_flat_copy(dtype):
    grads, param, exp_avg, exp_avg_sq = _pieces(np.random.default_rng(0), dtype)
    expected = [a.copy() for a in (param, exp_avg, exp_avg_sq)]
    adamw_step(*expected[:1], np.concatenate([g.ravel() for g in grads]), *expected[1:], **HYPER, step=3)
    assert adamw_step_gathered(param, grads, exp_avg, exp_avg_sq, **HYPER, step=3)
    for got, want in zip((param, exp_avg, exp_avg_sq), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spoil", ["transposed", "read-only", "float64", "list", "too short", "a view", "twice"])
def test_gathered_step_declines_gradients_it_cannot_read_in_place(spoil):
    grads, param, exp_avg, exp_avg_sq = _pieces(np.random.default_rng(1), np.float32)
    if spoil == "transposed":
        grads[2] = np.asfortranarray(grads[2])
    elif spoil == "read-only":
        grads[2].flags.writeable = False
    elif spoil == "float64":
        grads[2] = grads[2].astype(np.float64)
    elif spoil == "list":
        grads[3] = grads[3].tolist()
    elif spoil == "a view":  # could overlap another gradient: not written in parallel
        grads[2] = np.zeros(grads[2].size + 1, np.float32)[1:].reshape(grads[2].shape)
    elif spoil == "twice":  # the same array as two gradients: scaled twice, as one at a time does
        grads[5] = grads[3]
    else:
        grads = grads[:-1]
    before = [a.copy() for a in (param, exp_avg, exp_avg_sq)]
    assert not adamw_step_gathered(param, grads, exp_avg, exp_avg_sq, **HYPER, step=1)
    for got, want in zip((param, exp_avg, exp_avg_sq), before):
        np.testing.assert_array_equal(got, want)  # nothing touched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_of_squares_and_scale_all_match_one_array_at_a_time(dtype):
    grads, *_ = _pieces(np.random.default_rng(2), dtype)
    np.testing.assert_array_equal(sums_of_squares(grads), [sum_of_squares(g) for g in grads])
    expected = [g * np.asarray(0.37, dtype=dtype) for g in grads]
    assert scale_all(grads, 0.37)
    for got, want in zip(grads, expected):
        np.testing.assert_array_equal(got, want)


def test_sums_of_squares_and_scale_all_with_mixed_or_read_only_arrays():
    a, b = np.arange(3, dtype=np.float32), np.arange(4, dtype=np.float64)
    np.testing.assert_array_equal(sums_of_squares([a, b]), [5.0, 14.0])  # one by one
    assert not scale_all([a, b], 0.5)
    b = b.astype(np.float32)
    b.flags.writeable = False
    assert not scale_all([a, b], 0.5)
    np.testing.assert_array_equal(a, [0, 1, 2])  # declined: nothing scaled
    assert sums_of_squares([]).shape == (0,)


def test_pointer_intrinsic_rejects_what_is_not_an_address():
    from numba import njit
    from numba.core.errors import TypingError

    from tinyllm.kernels.systems.address import _pointer

    @njit
    def bad(x):
        return _pointer(1.5, x)

    with pytest.raises(TypingError, match="_pointer takes an int64 address and an array"):
        bad(np.zeros(2))


def test_gather_is_off_with_the_jit_disabled():
    script = (
        "import numba, numpy as np\n"
        "assert numba.config.DISABLE_JIT\n"
        "from tinyllm.kernels.systems.address import gather\n"
        "from tinyllm.kernels.adamw import adamw_step_gathered, scale_all, sums_of_squares\n"
        "g = [np.ones(3, np.float32), np.ones(2, np.float32)]\n"
        "assert gather(g, np.float32) is None\n"
        "p, m, v = np.zeros(5, np.float32), np.zeros(5, np.float32), np.ones(5, np.float32)\n"
        "assert not adamw_step_gathered(p, g, m, v, lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)\n"
        "assert not scale_all(g, 0.5) and list(sums_of_squares(g)) == [3.0, 2.0]\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(script)
