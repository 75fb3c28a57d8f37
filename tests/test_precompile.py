"""Compiling a training step's kernels ahead, in parallel processes (kernels/systems/precompile.py)."""
import json

import numba
import pytest

from tinyllm.kernels.systems import precompile

from kernel_helpers import run_script

jit_only = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no compiled kernels with NUMBA_DISABLE_JIT=1")


@jit_only
def test_every_listed_kernel_is_a_numba_kernel_with_a_parsable_signature():
    import importlib

    seen = set()
    for module, name, args in precompile.TRAINING_STEP:
        kernel = getattr(importlib.import_module(f"tinyllm.kernels.{module}"), name)
        assert isinstance(kernel, numba.core.registry.CPUDispatcher), (module, name)
        types = precompile._argument_types(args)
        assert len(types) == kernel.py_func.__code__.co_argcount, (module, name)
        assert (module, name, types) not in seen
        seen.add((module, name, types))


class _FakeCache:
    """numba's cache as _WatchedCache sees it: a miss (None) until `filled`, then a hit."""

    def __init__(self):
        self.filled, self.lookups = False, 0

    def load_overload(self, sig, target_context):
        self.lookups += 1
        return "compiled" if self.filled else None

    def flush(self):
        return "flushed"


@pytest.fixture
def watched(monkeypatch):
    """A _WatchedCache on the first listed kernel, with compile_ahead replaced by a counter that
    fills the cache (as the workers would)."""
    monkeypatch.setattr(precompile._State, "attempted", False)
    module, name, args = precompile.TRAINING_STEP[0]
    cache = _FakeCache()
    calls = []

    def fake_compile_ahead():
        calls.append(1)
        precompile._State.attempted = True
        cache.filled = True

    monkeypatch.setattr(precompile, "compile_ahead", fake_compile_ahead)
    return precompile._WatchedCache(cache, (f"tinyllm.kernels.{module}", name)), cache, calls, args


def test_a_miss_on_a_listed_signature_compiles_ahead_once_and_looks_again(watched, capsys):
    proxy, cache, calls, args = watched
    sig = precompile._argument_types(args)
    assert proxy.load_overload(sig, None) == "compiled"
    assert calls == [1] and cache.lookups == 2
    assert capsys.readouterr().err == precompile.COMPILING_NOTICE + "\n"  # the user is told why step 1 waits
    assert proxy.load_overload(sig, None) == "compiled"  # a hit: nothing started, nothing said
    assert calls == [1] and capsys.readouterr().err == ""
    assert proxy.flush() == "flushed"  # everything else is numba's cache itself


def test_a_miss_on_an_unlisted_signature_compiles_only_that_kernel_as_before(watched, capsys):
    proxy, cache, calls, args = watched
    float64_sig = precompile._argument_types(args.replace("float32", "float64"))
    assert proxy.load_overload(float64_sig, None) is None
    assert calls == [] and cache.lookups == 1 and capsys.readouterr().err == ""


def test_compile_ahead_starts_at_most_once_per_process(watched):
    proxy, cache, calls, args = watched
    precompile._State.attempted = True  # e.g. it ran and a worker failed: this process compiles
    assert proxy.load_overload(precompile._argument_types(args), None) is None
    assert calls == []


@pytest.mark.parametrize("value,expected", [("0", 0), ("1", 1), ("2", 2)])
def test_compile_workers_setting_caps_the_workers(monkeypatch, value, expected):
    monkeypatch.setenv("TINYLLM_COMPILE_WORKERS", value)
    monkeypatch.setattr(precompile.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert precompile._worker_count() == expected


def test_a_bad_compile_workers_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TINYLLM_COMPILE_WORKERS", "two")
    with pytest.raises(ValueError, match="TINYLLM_COMPILE_WORKERS='two'.*whole number"):
        precompile._worker_count()


STEP_AFTER_COMPILE_AHEAD = """
import importlib, json
import numpy as np
import tinyllm
from tinyllm.kernels.systems import precompile
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import clip_grad_norm
from tinyllm.training import TrainConfig, configure_optimizer

workers = precompile.compile_ahead(workers=2)
rng = np.random.default_rng(0)
# a tiny model (the serial LayerNorm and GELU for a few rows) and bench_train.py's small config
for vocab, layers, heads, width, block, batch in [(11, 2, 2, 16, 8, 3), (65, 4, 4, 128, 64, 12)]:
    model = GPT(GPTConfig(vocab_size=vocab, n_layer=layers, n_head=heads, n_embd=width, block_size=block), seed=0)
    optimizer = configure_optimizer(model, TrainConfig(learning_rate=1e-3, weight_decay=0.1, grad_clip=1.0))
    x, y = rng.integers(0, vocab, size=(batch, block)), rng.integers(0, vocab, size=(batch, block))
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    clip_grad_norm(model.parameters(), 1.0)
    optimizer.step()
# every numba kernel that holds machine code in this process now, with its argument types
held = {}
for name, module in list(importlib.sys.modules.items()):
    if name.startswith("tinyllm.kernels."):
        for attr, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher) and value.overloads:
                held[f"{name.rsplit('.', 1)[-1]}.{attr}"] = sorted(str(sig) for sig in value.overloads)
print(json.dumps(dict(workers=workers, report=precompile._State.report, held=held)))
""".replace("import tinyllm\n", "import numba\nimport tinyllm\n")


@jit_only
def test_the_list_is_exactly_what_float32_training_steps_call():
    """After compile_ahead, a training step loads each listed kernel from the cache: the kernels
    this process then holds are the listed ones with the listed signatures, and nothing else (a
    kernel the list missed, or a signature that differs from the one numba keys its cache on,
    would compile here, with the helpers it calls)."""
    result = json.loads(run_script(STEP_AFTER_COMPILE_AHEAD, timeout=900).strip().splitlines()[-1])
    assert result["workers"] == 2 and result["report"]["exit_codes"] == [0, 0]
    expected = {}
    for module, name, args in precompile.TRAINING_STEP:
        expected.setdefault(f"{module}.{name}", []).append(str(precompile._argument_types(args)))
    assert result["held"] == {k: sorted(v) for k, v in expected.items()}
