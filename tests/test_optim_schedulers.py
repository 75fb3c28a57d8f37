"""optim.Adam and optim.lr_scheduler against torch.optim (and transformers' warmup schedules)."""
import math

import numpy as np
import pytest

from tinyllm import optim
from tinyllm.nn import Parameter
from tinyllm.optim import lr_scheduler

from test_optim import grads_for, make_params


# ----------------------------------------------------------------------------------------------
# Adam (L2 weight decay through the gradient)


def adam_reference(params, grads_per_step, lr, betas, eps, wd):
    """Adam with coupled weight decay, written out in float64 (torch.optim.Adam's documented form)."""
    p = [x.astype(np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    b1, b2 = betas
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p[i] = p[i] - lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_adam_matches_its_formula_and_leaves_the_gradient_alone(wd):
    params = make_params()
    start = [p.data.copy() for p in params]
    opt = optim.Adam(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=wd)
    steps = [grads_for(t) for t in range(6)]
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()
        for p, g in zip(params, grads):
            np.testing.assert_array_equal(p.grad, g)  # torch's Adam does not write the decay into .grad
    want = adam_reference(start, steps, 1e-2, (0.9, 0.95), 1e-8, wd)
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)


def test_adam_with_decay_differs_from_adamw_with_the_same_decay():
    # the test above could pass with AdamW's decoupled decay only if the two forms agreed: they do not
    a, b = make_params(), make_params()
    adam, adamw = optim.Adam(a, lr=1e-2, weight_decay=0.5), optim.AdamW(b, lr=1e-2, weight_decay=0.5)
    for t in range(3):
        for p, q, g in zip(a, b, grads_for(t)):
            p.grad, q.grad = g, g
        adam.step()
        adamw.step()
    assert max(np.abs(p.data - q.data).max() for p, q in zip(a, b)) > 1e-3


def test_adam_matches_torch_with_groups():
    torch = pytest.importorskip("torch")
    params = make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    groups = lambda ps: [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "lr": 3e-2}]  # noqa: E731
    opt = optim.Adam(groups(params), lr=1e-2, betas=(0.9, 0.95))
    topt = torch.optim.Adam(groups(tparams), lr=1e-2, betas=(0.9, 0.95))
    for t in range(6):
        for p, tp, g in zip(params, tparams, grads_for(t)):
            p.grad, tp.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {t} param {i}")
    assert opt.param_groups[1]["weight_decay"] == 0.0 == topt.param_groups[1]["weight_decay"]


def test_adam_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="Adam: weight_decay must be >= 0, got -1"):
        optim.Adam(make_params(), weight_decay=-1)


# ----------------------------------------------------------------------------------------------
# schedulers: the lr of every step equal to torch's, bit for bit


SCHEDULES = {
    "LambdaLR": (dict(lr_lambda=lambda t: 0.95 ** t / (1 + t % 3)),),
    "StepLR": (dict(step_size=4, gamma=0.5),),
    "MultiStepLR": (dict(milestones=[3, 7, 7, 12], gamma=0.3),),
    "ExponentialLR": (dict(gamma=0.9),),
    "LinearLR": (dict(start_factor=0.25, end_factor=0.9, total_iters=7), dict()),
    "CosineAnnealingLR": (dict(T_max=6, eta_min=1e-4), dict(T_max=10)),
}
CASES = [(name, kwargs) for name, options in SCHEDULES.items() for kwargs in options]


def _optimizers(torch):
    mine = optim.SGD([{"params": [Parameter(np.zeros(2, np.float32))]},
                      {"params": [Parameter(np.zeros(2, np.float32))], "lr": 0.03}], lr=0.1)
    theirs = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)]},
                              {"params": [torch.zeros(2, requires_grad=True)], "lr": 0.03}], lr=0.1)
    return mine, theirs


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_scheduler_lrs_equal_torchs_bit_for_bit(name, kwargs):
    torch = pytest.importorskip("torch")
    mine, theirs = _optimizers(torch)
    sched = getattr(lr_scheduler, name)(mine, **kwargs)
    tsched = getattr(torch.optim.lr_scheduler, name)(theirs, **kwargs)
    got, want = [sched.get_last_lr()], [tsched.get_last_lr()]
    for _ in range(25):
        mine.step()
        theirs.step()
        sched.step()
        tsched.step()
        got.append(sched.get_last_lr())
        want.append(tsched.get_last_lr())
    assert got == want
    assert [g["lr"] for g in mine.param_groups] == [g["lr"] for g in theirs.param_groups]
    assert [g["initial_lr"] for g in mine.param_groups] == [0.1, 0.03]
    assert len({tuple(lrs) for lrs in got}) > 3  # the schedule moved


@pytest.mark.parametrize("name,kwargs", [("StepLR", dict(step_size=3)), ("CosineAnnealingLR", dict(T_max=8))])
def test_scheduler_state_dict_resumes_the_same_schedule(name, kwargs):
    def run(opt, sched, n):
        out = []
        for _ in range(n):
            sched.step()
            out.append(sched.get_last_lr())
        return out

    opt = optim.SGD(make_params(), lr=0.1)
    sched = getattr(lr_scheduler, name)(opt, **kwargs)
    straight = run(opt, sched, 12)

    opt = optim.SGD(make_params(), lr=0.1)
    sched = getattr(lr_scheduler, name)(opt, **kwargs)
    first = run(opt, sched, 5)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    assert "optimizer" not in saved_sched and saved_sched["last_epoch"] == 5
    opt2 = optim.SGD(make_params(), lr=0.1)
    sched2 = getattr(lr_scheduler, name)(opt2, **kwargs)  # PyTorch's order: the scheduler, then both states
    opt2.load_state_dict(saved_opt)  # the current lr (and initial_lr)
    sched2.load_state_dict(saved_sched)
    assert first + run(opt2, sched2, 7) == straight


def test_resuming_without_initial_lr_is_a_clear_error():
    opt = optim.SGD(make_params(), lr=0.1)
    with pytest.raises(KeyError, match=r"param_groups\[0\] has no 'initial_lr' while resuming with last_epoch=4"):
        lr_scheduler.StepLR(opt, step_size=2, last_epoch=4)


def test_scheduler_argument_errors_name_the_value():
    opt = optim.SGD(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="step_size must be an int >= 1, got 0"):
        lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max must be > 0, got 0"):
        lr_scheduler.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="2 lr_lambdas for 1 parameter groups"):
        lr_scheduler.LambdaLR(opt, [lambda t: 1.0, lambda t: 1.0])
    with pytest.raises(TypeError, match="lr_lambda should be a function, got float"):
        lr_scheduler.LambdaLR(opt, 0.5)
    with pytest.raises(TypeError, match="list is not an optimizer"):
        lr_scheduler.StepLR([], step_size=1)


@pytest.mark.parametrize("name,args", [
    ("get_constant_schedule_with_warmup", (5,)),
    ("get_linear_schedule_with_warmup", (5, 30)),
    ("get_cosine_schedule_with_warmup", (5, 30)),
    ("get_cosine_schedule_with_warmup", (0, 20, 1.5)),
])
def test_hugging_face_warmup_schedules_equal_transformers(name, args):
    torch = pytest.importorskip("torch")
    transformers_optimization = pytest.importorskip("transformers.optimization")
    mine, theirs = _optimizers(torch)
    sched = getattr(lr_scheduler, name)(mine, *args)
    tsched = getattr(transformers_optimization, name)(theirs, *args)
    got, want = [], []
    for _ in range(35):
        got.append(sched.get_last_lr())
        want.append(tsched.get_last_lr())
        mine.step()
        theirs.step()
        sched.step()
        tsched.step()
    assert got == want
    assert got[0] == ([0.0, 0.0] if args[0] else [0.1, 0.03])


def test_cosine_annealing_follows_its_closed_form():
    # independent of torch: the chainable recurrence stays on eta_min + (lr0 - eta_min)(1 + cos(pi t / T)) / 2
    opt = optim.SGD(make_params(), lr=0.2)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=9, eta_min=0.01)
    for t in range(1, 30):
        sched.step()
        want = 0.01 + (0.2 - 0.01) * (1 + math.cos(math.pi * t / 9)) / 2
        assert sched.get_last_lr()[0] == pytest.approx(want, rel=1e-12, abs=1e-15)
