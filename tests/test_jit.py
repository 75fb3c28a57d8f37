"""The numba wrapper: thread control, and the read-only-install fallback of cache=True."""
import numba
import numpy as np
import pytest

import tinyllm
from tinyllm.kernels.systems import jit as _jit


def test_set_num_threads_round_trip():
    before = tinyllm.get_num_threads()
    try:
        tinyllm.set_num_threads(1)
        assert numba.get_num_threads() == 1
    finally:
        tinyllm.set_num_threads(before)
    assert tinyllm.get_num_threads() == before


@pytest.mark.parametrize("n", [0, -1, numba.config.NUMBA_NUM_THREADS + 1])
def test_set_num_threads_rejects_bad_counts(n):
    with pytest.raises(ValueError, match=f"n={n} is outside 1..{numba.config.NUMBA_NUM_THREADS}"):
        tinyllm.set_num_threads(n)


def test_njit_falls_back_to_no_cache_where_none_can_be_written(monkeypatch):
    calls = []
    real_njit = numba.njit

    def fake_njit(*, cache, **options):
        calls.append(cache)
        if cache:  # what numba raises when no cache locator can write next to the source
            raise RuntimeError("cannot cache function 'double': no locator available for file")
        return real_njit(cache=False, **options)

    monkeypatch.setattr(_jit, "_numba_njit", fake_njit)

    @_jit.njit
    def double(x):
        return 2 * x

    assert calls == [True, False]
    assert double(np.float64(3.0)) == 6.0


def test_kernels_divide_by_zero_as_numpy_does():
    # error_model="numpy": IEEE results instead of ZeroDivisionError (and vectorisable loops)
    @_jit.njit
    def divide(a, b):
        return a / b

    assert divide(1.0, 0.0) == np.inf
    assert np.isnan(divide(0.0, 0.0))


def test_stale_kernel_cache_is_cleared_when_a_source_changes(tmp_path, monkeypatch):
    kernels = tmp_path / "kernels"
    (kernels / "__pycache__").mkdir(parents=True)
    (kernels / "systems" / "__pycache__").mkdir(parents=True)
    (kernels / "systems" / "jit.py").write_text("# a kernel source\n")
    cached = kernels / "__pycache__" / "attention._fwd-1.py311.nbi"
    cached_systems = kernels / "systems" / "__pycache__" / "cblas.gemm-1.py311.nbi"
    monkeypatch.setattr(_jit, "__file__", str(kernels / "systems" / "jit.py"))

    _jit._drop_stale_cache()  # first run: records the sources' hash
    cached.write_text("compiled code")
    cached_systems.write_text("compiled code")
    _jit._drop_stale_cache()  # nothing changed: the cache stays
    assert cached.exists() and cached_systems.exists()

    (kernels / "matmul.py").write_text("# an edited helper that attention inlines\n")
    _jit._drop_stale_cache()
    assert not cached.exists() and not cached_systems.exists()

    cached.write_text("compiled code")
    (kernels / "systems" / "cblas.py").write_text("# an edited systems helper\n")
    _jit._drop_stale_cache()  # a change in systems/ clears kernels/ too
    assert not cached.exists()


def test_a_run_with_the_jit_disabled_leaves_the_kernel_cache_alone(tmp_path, monkeypatch):
    # it compiles nothing, and its digest ("loops") differs from a compiled run's: clearing the
    # cache there made every compiled process after a NUMBA_DISABLE_JIT=1 one recompile everything
    kernels = tmp_path / "kernels"
    (kernels / "__pycache__").mkdir(parents=True)
    (kernels / "systems" / "__pycache__").mkdir(parents=True)
    (kernels / "systems" / "jit.py").write_text("# a kernel source\n")
    monkeypatch.setattr(_jit, "__file__", str(kernels / "systems" / "jit.py"))
    _jit._drop_stale_cache()  # a compiled run records the digest
    cached = kernels / "__pycache__" / "attention._fwd-1.py311.nbi"
    cached.write_text("compiled code")
    stamp = (kernels / "__pycache__" / "kernels-source.sha256").read_text()

    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    _jit._drop_stale_cache()
    assert cached.exists()
    assert (kernels / "__pycache__" / "kernels-source.sha256").read_text() == stamp
    monkeypatch.setattr(numba.config, "DISABLE_JIT", False)
    _jit._drop_stale_cache()  # and the compiled run after it finds its cache
    assert cached.exists()
