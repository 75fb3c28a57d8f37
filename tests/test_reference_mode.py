"""Reference mode (tinyllm.use_reference): every Function on its plain NumPy reference.

A whole training step of a small GPT (forward, backward, clipping, AdamW) and cached greedy
generation must give the fast mode's results up to float32 rounding; no compiled kernel may run
in reference mode; and every ``name_ref`` must take the same arguments as its kernel ``name``,
so that the Functions can call either.
"""
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba.core.dispatcher import Dispatcher

import tinyllm
from kernel_helpers import run_with_jit_disabled
from tinyllm import kernels
from tinyllm.data import get_batch
from tinyllm.kernels import adamw
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import AdamW, clip_grad_norm
from tinyllm.tokenizers import CharTokenizer

TEXT = "".join(np.random.default_rng(0).choice(list("abcdefgh ,.\nXYZ"), 3000))
KERNEL_MODULES = [importlib.import_module(f"tinyllm.kernels.{m.name}")
                  for m in pkgutil.iter_modules(kernels.__path__) if not m.ispkg and m.name != "dispatch"]


def _model(dropout, activation):
    tok = CharTokenizer.from_text(TEXT)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=32,
                       dropout=dropout, activation=activation)
    return GPT(config, seed=0), np.asarray(tok.encode(TEXT), dtype=np.int64)


def _training_step(reference, dropout, activation):
    """One step in the given mode: the loss, the gradients, the norm and gradients after
    clipping, the weights after AdamW."""
    with tinyllm.reference_mode(reference):
        model, data = _model(dropout, activation)
        params = model.parameters()  # nanoGPT's groups (configure_optimizer) with eps = 1e-3:
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},  # see the
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]   # test below
        opt = AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-3)
        x, y = get_batch(data, 3, 24, np.random.default_rng(1))
        _, loss = model(x, y)
        loss.backward()
        names = [n for n, _ in model.named_parameters()]
        grads = [p.grad.copy() for p in model.parameters()]
        norm = clip_grad_norm(model.parameters(), 0.5)
        clipped = [p.grad.copy() for p in model.parameters()]
        opt.step()
        weights = [p.data.copy() for p in model.parameters()]
    return dict(loss=loss.item(), names=names, grads=grads, norm=norm, clipped=clipped, weights=weights)


def _assert_close(fast, ref, rtol, atol, what):
    for name, a, b in zip(fast["names"], fast[what], ref[what]):
        assert np.isfinite(a).all() and np.isfinite(b).all(), name
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, err_msg=f"{what} of {name}")


@pytest.mark.parametrize("dropout, activation", [(0.0, "gelu_tanh"), (0.1, "gelu")])
def test_a_training_step_is_the_same_in_both_modes(dropout, activation):
    # Tolerances: the kernels and the references compute the same float32 formulas in another
    # order (fused passes, float64 partial sums, a polynomial exp within 2 eps), so results
    # differ by a few float32 ulps per operation, compounded over two layers forward and back:
    # ~1e-7 absolute on these gradients (|g| <= 0.3), ~1e-6 relative. rtol 1e-5 and atol 1e-6
    # leave a 10x margin and still catch any real mistake (a wrong term is >= 1e-3 relative).
    # AdamW's eps is 1e-3 here, not 1e-8: its first update is lr * g / (|g| + eps), which for
    # eps = 1e-8 is lr * sign(g) wherever |g| >> 1e-8, so a gradient that is zero up to rounding
    # would flip a weight by 2 lr. With eps = 1e-3 the update moves by at most lr / (4 eps) per
    # unit of gradient, ~3e-8 for these 1e-7 gradient differences: far below atol, and a wrong
    # update (decay, bias correction, moments) is still far above it.
    fast = _training_step(False, dropout, activation)
    ref = _training_step(True, dropout, activation)
    assert np.isfinite(fast["loss"]) and np.isfinite(ref["loss"])
    np.testing.assert_allclose(ref["loss"], fast["loss"], rtol=1e-6)
    _assert_close(fast, ref, 1e-5, 1e-6, "grads")
    assert fast["norm"] > 0.5  # clipping really scaled the gradients
    np.testing.assert_allclose(ref["norm"], fast["norm"], rtol=1e-6)
    _assert_close(fast, ref, 1e-5, 1e-6, "clipped")
    _assert_close(fast, ref, 1e-5, 1e-6, "weights")


def test_the_comparison_can_fail():
    # the same check sees a mistake as small as a 1e-4 relative error in the largest gradient
    fast = _training_step(False, 0.0, "gelu_tanh")
    largest = int(np.argmax([np.abs(g).max() for g in fast["grads"]]))
    wrong = dict(fast, grads=[g * (1 + 1e-4) if i == largest else g for i, g in enumerate(fast["grads"])])
    with pytest.raises(AssertionError):
        _assert_close(fast, wrong, 1e-5, 1e-6, "grads")


def test_adamw_group_step_equals_its_reference_at_the_default_eps():
    # the same gradients in both: then even eps = 1e-8 leaves only rounding between them
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (7,), (2, 2, 4)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 10.0 ** rng.integers(-6, 0) for s in shapes]
    results = []
    for group_step in (adamw.adamw_group_step, adamw.adamw_group_step_ref):
        ps = [p.copy() for p in params]
        states = [dict(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p)) for p in ps]
        cache = {}
        for _ in range(3):
            ps = group_step(ps, grads, states, cache, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
        results.append((ps, states))
    (fast, fast_states), (ref, ref_states) = results
    for a, b, sa, sb in zip(fast, ref, fast_states, ref_states):
        assert sa["step"] == sb["step"] == 3
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-6, atol=0)


def test_generate_with_a_kv_cache_gives_the_same_greedy_tokens():
    model, data = _model(0.0, "gelu_tanh")
    prompt = data[None, :5]
    fast = model.generate(prompt, max_new_tokens=30, do_sample=False)
    with tinyllm.reference_mode():
        ref = model.generate(prompt, max_new_tokens=30, do_sample=False)
        ref_uncached = model.generate(prompt, max_new_tokens=30, do_sample=False, use_cache=False)
    np.testing.assert_array_equal(ref, fast)
    np.testing.assert_array_equal(ref_uncached, fast)


def _numba_kernels():
    """(module, name) of every compiled function in the kernel modules (systems/ included)."""
    modules = KERNEL_MODULES + [importlib.import_module(f"tinyllm.kernels.systems.{m.name}")
                                for m in pkgutil.iter_modules(kernels.systems.__path__)]
    return [(m, name) for m in modules for name, f in vars(m).items() if isinstance(f, Dispatcher)]


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no compiled kernels to watch")
def test_no_compiled_kernel_runs_in_reference_mode(monkeypatch):
    found = _numba_kernels()
    assert len(found) > 30  # the watch really covers the kernels

    def refuse(module, name):
        def called(*args, **kwargs):
            raise AssertionError(f"{module.__name__}.{name} ran in reference mode")
        return called

    for module, name in found:
        monkeypatch.setattr(module, name, refuse(module, name))
    for dropout, activation in [(0.0, "gelu_tanh"), (0.1, "gelu")]:
        _training_step(True, dropout, activation)
    with tinyllm.reference_mode():
        model, data = _model(0.0, "gelu_tanh")
        model.generate(data[None, :5], max_new_tokens=3, do_sample=False)
    with pytest.raises(AssertionError, match="ran in reference mode"):  # and the watch does watch
        _training_step(False, 0.0, "gelu_tanh")


def test_every_reference_takes_its_kernels_arguments():
    pairs = 0
    for module in KERNEL_MODULES:
        for name, ref in vars(module).items():
            if name.endswith("_ref") and callable(ref) and hasattr(module, name[:-4]):
                fast = getattr(module, name[:-4])
                assert inspect.signature(ref) == inspect.signature(fast), f"{module.__name__}.{name}"
                pairs += 1
    assert pairs >= 15


def test_the_switches():
    assert not tinyllm.is_reference()
    with tinyllm.reference_mode():
        assert tinyllm.is_reference()
        with tinyllm.reference_mode(False):
            assert not tinyllm.is_reference()
        assert tinyllm.is_reference()
    with pytest.raises(ZeroDivisionError), tinyllm.reference_mode():
        1 / 0
    assert not tinyllm.is_reference()  # restored after the exception
    tinyllm.use_reference()
    try:
        assert tinyllm.is_reference() and "reference mode" in repr(tinyllm.functional._ln)
        assert tinyllm.functional._ln.layernorm_forward is kernels.layernorm.layernorm_forward_ref
    finally:
        tinyllm.use_reference(False)
    assert tinyllm.functional._ln.layernorm_forward is kernels.layernorm.layernorm_forward


@pytest.mark.parametrize("value, reference", [("1", True), ("0", False), ("", False), ("on", True), ("maybe", None)])
def test_the_environment_variable_is_read_strictly(value, reference):
    code = "import tinyllm; print(tinyllm.is_reference())"
    env = dict(os.environ, TINYLLM_REFERENCE=value, PYTHONPATH=str(Path(tinyllm.__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if reference is None:
        assert out.returncode != 0 and "TINYLLM_REFERENCE='maybe': set it to 1" in out.stderr
    else:
        assert out.returncode == 0 and out.stdout.strip() == str(reference), out.stderr


def test_the_environment_variable_and_the_jit_disabled():
    # TINYLLM_REFERENCE=1 at import, and a training step with no compiled code at all
    script = (
        "import numpy as np, tinyllm\n"
        "from tinyllm.models import GPT, GPTConfig\n"
        "from tinyllm.optim import AdamW, clip_grad_norm\n"
        "assert tinyllm.is_reference()\n"
        "model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.1), seed=0)\n"
        "x = np.random.default_rng(0).integers(0, 11, (2, 8))\n"
        "_, loss = model(x, x)\n"
        "loss.backward()\n"
        "clip_grad_norm(model.parameters(), 1.0)\n"
        "AdamW(model.parameters()).step()\n"
        "assert np.isfinite(loss.item()) and model.generate(x[:1, :3], max_new_tokens=2).shape == (1, 5)\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(script, TINYLLM_REFERENCE="1")
