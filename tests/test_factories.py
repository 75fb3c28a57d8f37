"""tinyllm.zeros / ones / arange / cat / multinomial ...: PyTorch's top-level tensor factories."""
import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor


def test_shapes_and_default_dtypes_are_torchs():
    torch = pytest.importorskip("torch")
    cases = [
        (tinyllm.zeros(2, 3), torch.zeros(2, 3)), (tinyllm.ones((4,)), torch.ones((4,))),
        (tinyllm.full((2, 2), 7.0), torch.full((2, 2), 7.0)), (tinyllm.arange(5), torch.arange(5)),
        (tinyllm.arange(1, 10, 3), torch.arange(1, 10, 3)), (tinyllm.arange(0, 1, 0.25), torch.arange(0, 1, 0.25)),
        (tinyllm.eye(3, 4), torch.eye(3, 4)), (tinyllm.tril(tinyllm.ones(3, 3)), torch.tril(torch.ones(3, 3))),
        (tinyllm.triu(tinyllm.ones(3, 4), 1), torch.triu(torch.ones(3, 4), 1)),
        (tinyllm.zeros(2, dtype=np.int64), torch.zeros(2, dtype=torch.int64)),
        (tinyllm.ones_like(tinyllm.zeros(2, 3, dtype="float64")), torch.ones_like(torch.zeros(2, 3, dtype=torch.float64))),
    ]
    for ours, theirs in cases:
        assert ours.shape == tuple(theirs.shape)
        assert ours.dtype == np.dtype(str(theirs.dtype).replace("torch.", ""))
        np.testing.assert_array_equal(ours.data, theirs.numpy())


def test_cat_and_stack_take_torchs_dim_keyword():
    a, b = tinyllm.ones(2, 3, requires_grad=True), tinyllm.zeros(2, 1)
    out = tinyllm.cat((a, b), dim=1)
    assert out.shape == (2, 4)
    out.sum().backward()
    np.testing.assert_array_equal(a.grad, np.ones((2, 3)))
    assert tinyllm.stack([a, a], dim=-1).shape == (2, 3, 2)
    assert tinyllm.functional.cat([a, a], 0).shape == (4, 3)  # NumPy's positional axis still works


def test_requires_grad_and_like_dtypes():
    x = tinyllm.zeros(3, requires_grad=True)
    assert x.requires_grad and x.is_leaf
    assert tinyllm.full_like(Tensor(np.zeros(2, np.float64)), 2).dtype == np.float64
    assert tinyllm.zeros_like(x).dtype == np.float32 and not tinyllm.zeros_like(x).requires_grad


def test_random_factories_repeat_with_the_same_seed():
    draws = [(tinyllm.randn(3, 4, generator=np.random.default_rng(5)), tinyllm.rand(6, generator=np.random.default_rng(5)),
              tinyllm.randint(10, (4,), generator=np.random.default_rng(5))) for _ in range(2)]
    for a, b in zip(*draws):
        np.testing.assert_array_equal(a.data, b.data)
    n, u, i = draws[0]
    assert n.dtype == np.float32 and u.dtype == np.float32 and i.dtype == np.int64
    assert 0 <= u.data.min() and u.data.max() < 1 and 0 <= i.data.min() and i.data.max() < 10


def test_multinomial_draws_in_proportion_to_the_weights():
    rng = np.random.default_rng(0)
    probs = tinyllm.functional.softmax(Tensor(np.array([[0.0, 1.0, 2.0, -1.0]])), dim=-1)
    draws = tinyllm.multinomial(probs.expand(4000, 4), 1, generator=rng)
    assert draws.shape == (4000, 1) and draws.dtype == np.int64
    freq = np.bincount(draws.data.ravel(), minlength=4) / 4000
    np.testing.assert_allclose(freq, probs.data[0], atol=0.025)  # ~3 standard errors


def test_multinomial_without_replacement_never_repeats_and_skips_zero_weights():
    rng = np.random.default_rng(1)
    weights = np.array([[0.0, 1.0, 5.0, 1.0, 2.0], [3.0, 0.0, 1.0, 1.0, 1.0]])
    for _ in range(50):
        picks = tinyllm.multinomial(weights, 4, generator=rng).data
        assert all(len(set(row)) == 4 for row in picks)
        assert 0 not in picks[0] and 1 not in picks[1]
    assert tinyllm.multinomial(np.array([0.2, 0.8]), 3, replacement=True, generator=rng).shape == (3,)


def test_errors_say_what_to_pass():
    with pytest.raises(ValueError, match=r"randn: pass generator=np.random.default_rng\(seed\)"):
        tinyllm.randn(3)
    with pytest.raises(ValueError, match=r"zeros: sizes must be ints >= 0, got \(2, -1\)"):
        tinyllm.zeros(2, -1)
    with pytest.raises(ValueError, match="3 samples without replacement from 2 categories"):
        tinyllm.multinomial(np.array([0.5, 0.5]), 3, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite, non-negative weights"):
        tinyllm.multinomial(np.array([0.5, -0.5]), 1, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="a row has fewer nonzero weights"):
        tinyllm.multinomial(np.array([1.0, 0.0, 0.0]), 2, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="step must not be 0"):
        tinyllm.arange(0, 3, 0)
