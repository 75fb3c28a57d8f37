"""Optimizers against PyTorch (optional) and against their formulas written out in NumPy; weight
decay on the 2-D parameters only; gradient clipping; nanoGPT's learning-rate schedule.
"""
import math

import numpy as np
import pytest

from kernel_helpers import nanogpt_get_lr
from tinyllm import optim
from tinyllm.models import GPT, GPTConfig
from tinyllm.nn import Parameter
from tinyllm.training import TrainConfig, configure_optimizer

SHAPES = [(4, 3), (3,), (2, 2, 2)]


def make_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def grads_for(step, seed=100):
    rng = np.random.default_rng([seed, step])
    return [rng.standard_normal(s).astype(np.float32) * (1 + step) for s in SHAPES]


def adamw_reference(params, grads_per_step, groups):
    """AdamW written out in float64 (Loshchilov & Hutter, PyTorch's form)."""
    p = [x.astype(np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            lr, (b1, b2), eps, wd = groups[i]
            p[i] = p[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p[i] = p[i] - lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
    return p


# ----------------------------------------------------------------------------------------------
# AdamW


def _two_group_adamw(params):
    return optim.AdamW([{"params": params[:2], "weight_decay": 0.1},
                        {"params": params[2:], "weight_decay": 0.0, "lr": 3e-2}],
                       lr=1e-2, betas=(0.9, 0.95), eps=1e-8)


def test_adamw_matches_its_formula_over_several_steps_with_groups():
    params = make_params()
    start = [p.data.copy() for p in params]
    opt = _two_group_adamw(params)
    steps = [grads_for(t) for t in range(6)]
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    settings = [(1e-2, (0.9, 0.95), 1e-8, 0.1)] * 2 + [(3e-2, (0.9, 0.95), 1e-8, 0.0)]
    want = adamw_reference(start, steps, settings)
    for p, w in zip(params, want):
        assert np.isfinite(p.data).all()
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)
    assert opt.state[id(params[0])]["step"] == 6


def test_adamw_matches_torch_over_several_steps_with_groups():
    torch = pytest.importorskip("torch")
    params = make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = _two_group_adamw(params)
    topt = torch.optim.AdamW([{"params": tparams[:2], "weight_decay": 0.1},
                              {"params": tparams[2:], "weight_decay": 0.0, "lr": 3e-2}],
                             lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for t in range(6):
        for p, tp, g in zip(params, tparams, grads_for(t)):
            p.grad = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {t} param {i}")
            st, tst = opt.state[id(p)], topt.state[tp]
            np.testing.assert_allclose(st["exp_avg"], tst["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(st["exp_avg_sq"], tst["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layout", ["contiguous", "one transposed"])
def test_adamw_one_call_per_group_equals_one_call_per_parameter_bit_for_bit(layout):
    # the flat fast path (gradients read in place, or copied when one is a transposed view)
    # against adamw_step run on each parameter separately
    from tinyllm.kernels.adamw import adamw_step
    params, manual = make_params(), make_params()
    moments = [(np.zeros_like(p.data), np.zeros_like(p.data)) for p in manual]
    opt = optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for t in range(4):
        if t == 2:  # the user rebinds a parameter's array between steps
            params[1].data, manual[1].data = params[1].data.copy(), manual[1].data.copy()
        for i, (p, q, g) in enumerate(zip(params, manual, grads_for(t))):
            if layout == "one transposed" and g.ndim == 2:
                g = np.ascontiguousarray(g.T).T  # same values, Fortran order
            p.grad = g
            adamw_step(q.data, g, *moments[i], lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8,
                       weight_decay=0.1, step=t + 1)
        opt.step()
    assert opt._kernel_cache[0]["flat"] is not None  # the flat fast path did run
    for p, q, (m, v) in zip(params, manual, moments):
        np.testing.assert_array_equal(p.data, q.data)
        np.testing.assert_array_equal(opt.state[id(p)]["exp_avg"], m)
        np.testing.assert_array_equal(opt.state[id(p)]["exp_avg_sq"], v)


def test_adamw_keeps_moments_when_parameters_change_between_steps():
    # a parameter joins late (its own step count) and one is replaced by a new array: every
    # update still follows the per-parameter formula
    params, ref = make_params(), make_params()
    opt = optim.AdamW(params, lr=1e-2)
    ref_opt = [optim.AdamW([q], lr=1e-2) for q in ref]  # one group per parameter: never shared
    for t in range(5):
        grads = grads_for(t)
        for i, (p, q, g) in enumerate(zip(params, ref, grads)):
            if i == 2 and t < 2:
                p.grad = q.grad = None  # joins at step 3
            else:
                p.grad, q.grad = g, g.copy()
        if t == 3:
            params[0].data = params[0].data.copy()  # the user rebinds a parameter's array
            ref[0].data = ref[0].data.copy()
        opt.step()
        for o in ref_opt:
            if o.param_groups[0]["params"][0].grad is not None:
                o.step()
        for p, q in zip(params, ref):
            np.testing.assert_array_equal(p.data, q.data)
    assert opt.state[id(params[2])]["step"] == 3 and opt.state[id(params[0])]["step"] == 5


def test_adamw_skips_parameters_without_gradient():
    params = make_params()
    before = params[1].data.copy()
    opt = optim.AdamW(params, lr=0.1, weight_decay=0.5)
    params[0].grad = np.ones(SHAPES[0], dtype=np.float32)
    opt.step()
    np.testing.assert_array_equal(params[1].data, before)  # no decay either, as PyTorch
    assert id(params[1]) not in opt.state


def test_adamw_state_dict_round_trip_continues_identically():
    a_params, b_params = make_params(), make_params()
    a = _two_group_adamw(a_params)
    for t in range(3):
        for p, g in zip(a_params, grads_for(t)):
            p.grad = g
        a.step()
    for p, q in zip(b_params, a_params):
        p.data = q.data.copy()
    b = _two_group_adamw(b_params)
    b.load_state_dict(a.state_dict())
    for t in range(3, 6):
        for pa, pb, g in zip(a_params, b_params, grads_for(t)):
            pa.grad, pb.grad = g, g.copy()
        a.step()
        b.step()
    for pa, pb in zip(a_params, b_params):
        np.testing.assert_array_equal(pa.data, pb.data)


def _adamw_after_one_step():
    params = make_params()
    opt = optim.AdamW(params)
    for p, g in zip(params, grads_for(0)):
        p.grad = g
    opt.step()
    return params, opt


def test_optimizer_state_dict_is_a_copy():
    params, opt = _adamw_after_one_step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][...] = 99.0
    assert not (opt.state[id(params[0])]["exp_avg"] == 99.0).any()
    assert sd["param_groups"][0]["lr"] == 1e-3 and sd["param_groups"][0]["betas"] == (0.9, 0.999)


def test_optimizer_load_state_dict_checks_shapes_and_group_count():
    params, opt = _adamw_after_one_step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = np.zeros((5, 5), dtype=np.float32)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 has shape \(5, 5\), parameter \(4, 3\)"):
        optim.AdamW(make_params()).load_state_dict(sd)
    two_groups = {"state": {}, "param_groups": [{}, {}]}
    with pytest.raises(ValueError, match="2 parameter groups saved, 1 here"):
        optim.AdamW(make_params()).load_state_dict(two_groups)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr must be >= 0, got -1.0"),
    (dict(betas=(1.0, 0.9)), r"betas must be in \[0, 1\)"),
    (dict(eps=-1e-8), "eps must be >= 0"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0, got -0.1"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.AdamW(make_params(), **kwargs)


def test_optimizer_rejects_empty_duplicate_and_unknown_groups():
    params = make_params()
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])
    with pytest.raises(ValueError, match=r"shape \(4, 3\) appears in two groups"):
        optim.AdamW([{"params": params[:1]}, {"params": params[:2]}])
    with pytest.raises(ValueError, match=r"unknown parameter-group keys \['momentum'\]"):
        optim.AdamW([{"params": params, "momentum": 0.9}])


def test_optimizer_zero_grad():
    params = make_params()
    opt = optim.SGD(params)
    for p, g in zip(params, grads_for(0)):
        p.grad = g
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


# ----------------------------------------------------------------------------------------------
# weight decay groups (training.configure_optimizer)


def test_configure_optimizer_decays_only_two_dimensional_parameters():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    cfg = TrainConfig(weight_decay=0.1, learning_rate=1e-2, beta1=0.9, beta2=0.99)
    opt = configure_optimizer(model, cfg)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    named = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(named[id(p)] for p in decay["params"])
    assert "transformer.wte.weight" in decayed and "transformer.h.1.mlp.c_fc.weight" in decayed
    assert not any(n.endswith(".bias") or ".ln_" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(model.parameters())  # tied wte once
    assert opt.defaults["betas"] == (0.9, 0.99) and decay["lr"] == 1e-2

    # behaviour: with zero gradients AdamW only decays, so 2-D weights shrink by (1 - lr wd) and
    # 1-D ones do not move
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    opt.step()
    for n, p in model.named_parameters():
        factor = (1 - 1e-2 * 0.1) if p.ndim == 2 else 1.0
        np.testing.assert_allclose(p.data, before[n] * factor, rtol=1e-6, atol=1e-9, err_msg=n)


# ----------------------------------------------------------------------------------------------
# SGD


def sgd_reference(params, grads_per_step, lr, momentum, weight_decay):
    p = [x.astype(np.float64) for x in params]
    buf = [None] * len(p)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = g + weight_decay * p[i]
            buf[i] = g if buf[i] is None else momentum * buf[i] + g
            p[i] = p[i] - lr * (buf[i] if momentum else g)
    return p


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01)])
def test_sgd_matches_its_formula(momentum, weight_decay):
    params = make_params()
    start = [p.data.copy() for p in params]
    opt = optim.SGD(params, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    steps = [grads_for(t) for t in range(5)]
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    for p, w in zip(params, sgd_reference(start, steps, 0.05, momentum, weight_decay)):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)


def test_sgd_with_momentum_matches_torch():
    torch = pytest.importorskip("torch")
    params = make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    topt = torch.optim.SGD(tparams, lr=0.05, momentum=0.9, weight_decay=0.01)
    for t in range(5):
        for p, tp, g in zip(params, tparams, grads_for(t)):
            p.grad = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {t}")


def test_sgd_does_not_modify_the_gradient():
    params = make_params()
    grads = grads_for(0)
    for p, g in zip(params, grads):
        p.grad = g.copy()
    opt = optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()
    opt.step()
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad, g)


def test_sgd_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="lr must be >= 0, got -0.1"):
        optim.SGD(make_params(), lr=-0.1)
    with pytest.raises(ValueError, match="momentum must be >= 0, got -0.5"):
        optim.SGD(make_params(), momentum=-0.5)


# ----------------------------------------------------------------------------------------------
# gradient clipping


def _with_grads(scale):
    params = make_params()
    for p, g in zip(params, grads_for(0)):
        p.grad = g * scale
    return params


def _total_norm(params):
    return math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in params))


def test_clip_grad_norm_returns_pre_clip_norm_and_scales_to_max_norm():
    params = _with_grads(10.0)
    before = [p.grad.copy() for p in params]
    norm = _total_norm(params)
    assert norm > 1.0
    returned = optim.clip_grad_norm(params, 1.0)
    assert returned == pytest.approx(norm, rel=1e-12)
    assert _total_norm(params) == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, before):  # direction kept: one common factor
        np.testing.assert_allclose(p.grad, g / norm, rtol=1e-5)
        assert p.grad.dtype == np.float32


def test_clip_grad_norm_leaves_small_gradients_alone():
    params = _with_grads(0.01)
    before = [p.grad.copy() for p in params]
    norm = optim.clip_grad_norm(params, 5.0)
    assert norm == pytest.approx(_total_norm(params))
    for p, g in zip(params, before):
        np.testing.assert_array_equal(p.grad, g)


def test_clip_grad_norm_ignores_parameters_without_gradient():
    params = _with_grads(10.0)
    params[1].grad = None
    norm = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in params if p.grad is not None))
    assert optim.clip_grad_norm(params, 1.0) == pytest.approx(norm)
    assert params[1].grad is None
    assert optim.clip_grad_norm_ is optim.clip_grad_norm


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    params = _with_grads(10.0)
    tparams = [torch.zeros(p.shape, requires_grad=True) for p in params]
    for p, tp in zip(params, tparams):
        tp.grad = torch.tensor(p.grad.copy())
    theirs = float(torch.nn.utils.clip_grad_norm_(tparams, 2.0))
    ours = optim.clip_grad_norm(params, 2.0)
    assert ours == pytest.approx(theirs, rel=1e-6)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6)


def test_clip_grad_norm_accepts_a_generator():
    params = _with_grads(10.0)
    optim.clip_grad_norm((p for p in params), 1.0)
    assert _total_norm(params) == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_accepts_a_single_parameter():
    p = _with_grads(10.0)[0]
    norm = float(np.linalg.norm(p.grad.astype(np.float64)))
    assert optim.clip_grad_norm(p, 1.0) == pytest.approx(norm)
    assert float(np.linalg.norm(p.grad)) == pytest.approx(1.0, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# learning-rate schedule


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 11, 30, 55, 99, 100, 101, 150, 10_000])
def test_cosine_lr_matches_nanogpt_get_lr(step):
    args = dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=100)
    want = nanogpt_get_lr(step, **args)
    assert optim.cosine_lr(step, 1e-3, 1e-4, 10, 100) == pytest.approx(want, rel=1e-12, abs=0)


def test_cosine_lr_landmarks():
    lr = lambda t: optim.cosine_lr(t, 1.0, 0.1, 10, 110)  # noqa: E731
    assert lr(0) == pytest.approx(1 / 11)  # warmup starts above 0
    assert lr(10) == pytest.approx(1.0)  # peak at the end of warmup
    assert lr(60) == pytest.approx(0.55)  # half way down the cosine: the mean of max and min
    assert lr(110) == pytest.approx(0.1) and lr(500) == 0.1
    values = [lr(t) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_cosine_scheduler_sets_every_group():
    params = make_params()
    opt = optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}])
    sched = optim.WarmupCosineLR(opt, 1e-3, 1e-4, 10, 100)
    for step in (0, 10, 55, 200):
        lr = sched.set_step(step)
        assert lr == pytest.approx(nanogpt_get_lr(step, 1e-3, 1e-4, 10, 100))
        assert [g["lr"] for g in opt.param_groups] == [lr, lr]
    with pytest.raises(ValueError, match="warmup_steps >= 0 and decay_steps >= 0, got -1, 10"):
        optim.WarmupCosineLR(opt, 1e-3, 1e-4, -1, 10)


@pytest.mark.parametrize("step", [0, 10, 49, 50, 51, 200])
def test_warmup_longer_than_decay_behaves_like_nanogpt(step):
    """A run shorter than its warmup (e.g. --max-iters 20 with the default 100 warmup) is legal."""
    params = make_params()
    sched = optim.WarmupCosineLR(optim.AdamW(params), 1e-3, 1e-4, 50, 10)
    assert sched.set_step(step) == pytest.approx(nanogpt_get_lr(step, 1e-3, 1e-4, 50, 10), rel=1e-12)
