"""tinyllm/kernels/systems/runtime.py: the process settings applied at import (OpenBLAS thread timeout, malloc)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code, **env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("OPENBLAS_THREAD_TIMEOUT", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                             "MALLOC_MMAP_MAX_", "TINYLLM_TUNE_RUNTIME", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    full_env.update(env, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_imported_before_numpy_sets_the_openblas_timeout_and_malloc():
    got = run("import tinyllm, os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), sorted(tinyllm.kernels.systems.runtime.applied))")
    if sys.platform.startswith("linux"):
        assert got == "4 ['M_MMAP_MAX', 'M_MMAP_THRESHOLD', 'M_TRIM_THRESHOLD', 'OPENBLAS_THREAD_TIMEOUT']"
    else:
        assert got.startswith("4 ")


def test_imported_after_numpy_leaves_openblas_alone():
    got = run("import numpy, tinyllm, os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    assert got == "None"


def test_the_users_own_settings_win_and_the_tuning_can_be_switched_off():
    assert run("import tinyllm, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'], "
               "'M_MMAP_THRESHOLD' in tinyllm.kernels.systems.runtime.applied)",
               OPENBLAS_THREAD_TIMEOUT="20", MALLOC_MMAP_THRESHOLD_="65536") == "20 False"
    assert run("import tinyllm, os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), tinyllm.kernels.systems.runtime.applied)",
               TINYLLM_TUNE_RUNTIME="0") == "None {}"


def test_numba_threads_spin_briefly_unless_the_user_chose_a_wait_policy():
    """libgomp's threads spin 10,000 times, not 300,000, waiting for the next kernel (systems/jit.py:
    on a busy machine the long spin made 2 threads 4x slower than 1); a user's own setting wins."""
    code = "import tinyllm, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert run(code) == "10000"
    assert run(code, GOMP_SPINCOUNT="300000") == "300000"
    assert run(code, OMP_WAIT_POLICY="ACTIVE") == "None"
