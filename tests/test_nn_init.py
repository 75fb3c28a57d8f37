"""nn.init against torch.nn.init: the same gains, fans, bounds and distributions."""
import math

import numpy as np
import pytest

from tinyllm import Tensor, nn
from tinyllm.nn import Parameter, init


def _param(shape, value=0.0):
    return Parameter(np.full(shape, value, np.float32))


@pytest.mark.parametrize("nonlinearity,param", [
    ("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
    ("leaky_relu", None), ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)), ("selu", None),
])
def test_calculate_gain_equals_torchs(nonlinearity, param):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity, param),
                                                                      rel=1e-15)


# (our function, torch's, kwargs, shape): the bound or std each draws with depends on the fans
RANDOM_INITS = [
    ("uniform_", dict(a=-0.3, b=0.7), (300, 400)),
    ("normal_", dict(mean=0.5, std=0.02), (300, 400)),
    ("xavier_uniform_", dict(gain=2.0), (300, 40, 10)),
    ("xavier_normal_", dict(), (200, 600)),
    ("kaiming_uniform_", dict(a=math.sqrt(5)), (300, 400)),
    ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu"), (120, 400, 3)),
    ("kaiming_normal_", dict(nonlinearity="relu"), (300, 400)),
    ("trunc_normal_", dict(mean=0.1, std=0.5, a=-0.4, b=0.9), (300, 400)),
]


@pytest.mark.parametrize("name,kwargs,shape", RANDOM_INITS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(RANDOM_INITS)])
def test_random_inits_draw_from_torchs_distribution(name, kwargs, shape):
    # 120k draws each: means and stds agree to well under 2 % (their standard errors are ~0.3 %),
    # bounded ones' ranges to within the sampling of the extremes; a wrong fan or gain is off by far more
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ours = getattr(init, name)(_param(shape), **kwargs, generator=np.random.default_rng(0)).data.astype(np.float64)
    theirs = getattr(torch.nn.init, name)(torch.zeros(shape), **kwargs).double().numpy()
    scale = theirs.std()
    assert abs(ours.mean() - theirs.mean()) < 0.02 * scale
    assert ours.std() == pytest.approx(scale, rel=0.02)
    if "uniform" in name or "trunc" in name:  # bounded: the same range
        assert ours.min() >= theirs.min() - 0.02 * scale and ours.max() <= theirs.max() + 0.02 * scale
    if "uniform" in name:
        assert ours.min() == pytest.approx(theirs.min(), abs=0.01 * scale)
        assert ours.max() == pytest.approx(theirs.max(), abs=0.01 * scale)


def test_kaiming_uniform_with_sqrt5_is_linears_own_initialisation():
    w = init.kaiming_uniform_(_param((64, 50)), a=math.sqrt(5), generator=np.random.default_rng(1))
    bound = 1 / math.sqrt(50)
    assert np.abs(w.data).max() <= bound and np.abs(w.data).max() > 0.99 * bound
    assert np.abs(nn.Linear(50, 64).weight.data).max() <= bound


def test_trunc_normal_stays_inside_its_bounds():
    w = init.trunc_normal_(_param((500, 100)), std=1.0, a=-0.5, b=0.25, generator=np.random.default_rng(2))
    assert w.data.min() >= -0.5 and w.data.max() <= 0.25
    assert w.data.min() < -0.49 and w.data.max() > 0.24


def test_constant_fills_and_eye():
    assert (init.constant_(_param((3, 2)), 0.25).data == 0.25).all()
    assert (init.ones_(_param(4)).data == 1).all() and (init.zeros_(_param(4, 7.0)).data == 0).all()
    np.testing.assert_array_equal(init.eye_(_param((2, 3))).data, np.eye(2, 3, dtype=np.float32))


def test_same_generator_seed_same_weights_and_successive_draws_differ():
    a = init.normal_(_param((5, 5)), std=0.02, generator=np.random.default_rng(7))
    b = init.normal_(_param((5, 5)), std=0.02, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b.data)
    rng = np.random.default_rng(7)
    c, d = init.normal_(_param((5, 5)), generator=rng), init.normal_(_param((5, 5)), generator=rng)
    assert not np.array_equal(c.data, d.data)


def test_filling_is_in_place_and_keeps_the_dtype():
    p = Parameter(np.zeros((4, 3), np.float32))
    array = p.data
    view = array[1]
    assert init.uniform_(p, -1, 1, generator=np.random.default_rng(0)) is p
    assert p.data is array and p.data.dtype == np.float32 and (view == array[1]).all() and view.any()
    p64 = init.normal_(Parameter(np.zeros(3)), generator=np.random.default_rng(0))
    assert p64.dtype == np.float64


def test_a_read_only_array_is_replaced_not_written():
    frozen = np.zeros((2, 2), np.float32)
    frozen.flags.writeable = False
    p = Parameter(frozen)
    init.ones_(p)
    assert (p.data == 1).all() and (frozen == 0).all()


def test_nanogpt_init_weights_through_module_apply():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 3))

    def _init_weights(module):  # nanoGPT's, with the generator tinyllm needs
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=0.02, generator=rng)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=0.02, generator=rng)

    model.apply(_init_weights)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p.data == 0).all(), name
        else:
            assert 0.01 < p.data.std() < 0.03, name
    out = model(Tensor(np.array([[1, 2, 3]])))
    out.sum().backward()
    assert model[1].weight.grad is not None


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"normal_: pass generator=np.random.default_rng\(seed\)"):
        init.normal_(_param(3))
    with pytest.raises(TypeError, match="generator must be a np.random.Generator, got int"):
        init.uniform_(_param(3), generator=0)
    with pytest.raises(ValueError, match=r"xavier_uniform_: .* at least 2 dimensions, got shape \(5,\)"):
        init.xavier_uniform_(_param(5), generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out', got 'fan_avg'"):
        init.kaiming_normal_(_param((2, 2)), mode="fan_avg", generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unsupported nonlinearity 'gelu'"):
        init.calculate_gain("gelu")
    with pytest.raises(TypeError, match="needs a float Tensor or ndarray"):
        init.zeros_(Tensor(np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match="trunc_normal_: needs a < b, got a=1, b=1"):
        init.trunc_normal_(_param(3), a=1, b=1, generator=np.random.default_rng(0))
