"""Compiling a training step's kernels in parallel processes, once, when numba's cache is empty.

The first training step of a fresh install waits for numba to compile about sixteen kernels, one
after the other, on one core (seconds each, mostly inside LLVM: docs/performance.md, "Cold
start"). numba's compiler cannot run two compilations at once in one process, but separate
processes can, and numba's on-disk cache (``cache=True``, ``systems/jit.py``) is the place
where their results meet. So:

* :data:`TRAINING_STEP` lists the kernels a float32 training step of the GPT calls from Python,
  each with the argument types it is called with (for models from a few rows, which take the
  serial LayerNorm and GELU, to ``bench_train.py``'s configs; ``tests/test_precompile.py`` holds
  the list to what such steps call).
* :func:`watch` (applied by ``jit.njit`` to every kernel) makes numba's cache lookup of a listed
  kernel notice a miss on a listed signature. The first such miss in a process starts
  :func:`compile_ahead`: one worker process per available core, each taking the next uncompiled
  kernel off the list (the slowest to compile first) until none is left, writing it into the
  shared cache (and :data:`COMPILING_NOTICE` on stderr tells the user why step 1 waits); this
  process waits for them (it has nothing else to do: its step needs the first
  kernel now) and then loads every kernel from the cache instead of compiling it.

Nothing about the numbers changes: a kernel loaded from the cache is the same machine code
numba would have compiled here. A kernel or signature not on the list compiles as before, in
this process, when first called; so does everything when compiling ahead is not possible (no
writable cache, one core, ``NUMBA_DISABLE_JIT=1``) or switched off
(``TINYLLM_COMPILE_WORKERS=0``; a number caps the workers). A worker that fails only means this
process compiles what is missing itself.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["TRAINING_STEP", "watch", "compile_ahead"]

# (module in tinyllm.kernels, kernel, argument types in numba's notation), in the order the workers
# take them: the slowest to compile first (benchmarks/profile_cold_start.py measures them), so
# that the last kernel to finish is a short one.
TRAINING_STEP = [
    ("attention", "_packed_forward_kernel", "float32[:, :, :, :, ::1], boolean, float32, int64, int64, int64[::1], "
                                            "float32[:, :, :, ::1], float32[:, :, ::1]"),
    ("attention", "_packed_backward_kernel", "float32[:, :, :, :, ::1], float32[:, :, :, ::1], float32[:, :, ::1], "
                                             "float32[:, :, :, ::1], boolean, float32, int64, int64, int64[::1], "
                                             "float32[:, :, :, :, ::1]"),
    ("cross_entropy", "_cross_entropy_forward_kernel", "float32[:, ::1], int64[::1], int64, float64, float32[::1], "
                                                       "float64[::1]"),
    ("adamw", "_adamw_gathered_kernel", "float32[::1], int64[::1], int64[::1], float32[::1], float32[::1], float32, "
                                        "float32, float32, float32, float32, float32, float32, float32"),
    ("layernorm", "_layernorm_backward_kernel", "float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], "
                                                "float32[::1], float32[:, ::1], float32[::1], float32[::1]"),
    ("blas", "_linear_backward_tasks", "float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], "
                                       "float32[:, ::1], float32[::1], int64"),
    ("cross_entropy", "_cross_entropy_backward_kernel", "float32[:, ::1], int64[::1], float32[::1], float64, int64, "
                                                        "float64, float32[:, ::1]"),
    ("blas", "_linear_forward_blocks", "float32[:, ::1], float32[:, ::1], float32[::1], float32[:, ::1], int64"),
    ("blas", "_gemm_blocks", "float32[:, ::1], boolean, float32[:, ::1], boolean, float32[:, ::1], int64"),
    ("layernorm", "_layernorm_forward_kernel", "float32[:, ::1], float32[::1], float32[::1], float64, float32[:, ::1], "
                                               "float32[::1], float32[::1]"),
    ("gelu", "_gelu_tanh_backward_f32", "float32[::1], float32[::1], float32[::1], float32[::1]"),
    ("gelu", "_gelu_tanh_forward_f32", "float32[::1], float32[::1], float32[::1]"),
    ("adamw", "_sums_of_squares_kernel", "int64[::1], int64[::1], float32[:, ::1], float64[::1]"),
    ("adamw", "_scale_kernel", "int64[::1], int64[::1], float32[:, ::1], float32"),
    ("layernorm", "_layernorm_forward_serial", "float32[:, ::1], float32[::1], float32[::1], float64, float32[:, ::1], "
                                               "float32[::1], float32[::1]"),
    ("gelu", "_gelu_tanh_chunk_f32", "float32[::1], float32[::1], float32[::1]"),
    ("elementwise", "_add_kernel", "float32[::1], float32[::1], float32[::1]"),
    ("embedding", "_scatter_add_rows", "int64[::1], float32[:, ::1], float32[:, ::1]"),
]

_WORKER_FLAG = "TINYLLM_COMPILE_AHEAD_WORKER"  # set in the workers: they compile, never start workers
_KERNELS_PACKAGE = __package__.rsplit(".", 1)[0]  # "tinyllm.kernels"
_LISTED = {(f"{_KERNELS_PACKAGE}.{module}", name) for module, name, _ in TRAINING_STEP}


# Shown on stderr once, when a process finds the training step's kernels missing from the cache:
# a first run would otherwise sit silent for tens of seconds before its first step.
COMPILING_NOTICE = ("tinyllm: compiling the kernels of a training step for this machine; this happens once "
                    "(numba keeps them in its cache) and takes 10-30 s")


def _notice(text):
    print(text, file=sys.stderr, flush=True)


class _State:
    attempted = False  # compile_ahead runs at most once per process
    report = None  # what the last compile_ahead did: workers, wall seconds, each worker's CPU seconds
    argument_types = None  # (module, name) -> set of argument-type tuples, parsed on first use


def _argument_types(args):
    """"float32[::1], int64" -> (array(float32, 1d, C), int64): the tuple numba keys its cache on
    when a kernel is called from Python (a signature given as a string would be a different key)."""
    from numba.core import sigutils

    types, _ = sigutils.normalize_signature(f"({args},)")
    return tuple(types)


def _listed_signatures(key):
    if _State.argument_types is None:
        table = {}
        for module, name, args in TRAINING_STEP:
            table.setdefault((f"{_KERNELS_PACKAGE}.{module}", name), set()).add(_argument_types(args))
        _State.argument_types = table
    return _State.argument_types.get(key, ())


class _WatchedCache:
    """numba's on-disk cache of one listed kernel, which starts :func:`compile_ahead` on the first
    miss of a listed signature and then looks again. Everything else is numba's cache itself."""

    def __init__(self, cache, key):
        self._cache, self._key = cache, key

    def load_overload(self, sig, target_context):
        compiled = self._cache.load_overload(sig, target_context)
        if compiled is None and not _State.attempted and tuple(sig) in _listed_signatures(self._key):
            _notice(COMPILING_NOTICE)
            compile_ahead()
            compiled = self._cache.load_overload(sig, target_context)
        return compiled

    def __getattr__(self, name):
        return getattr(self._cache, name)


def watch(dispatcher):
    """Called by ``jit.njit`` on every kernel it makes: a listed kernel with an on-disk cache gets
    its cache lookups watched (see the module docstring). Returns the dispatcher."""
    from numba.core.caching import NullCache

    if not hasattr(dispatcher, "_cache"):  # NUMBA_DISABLE_JIT=1: numba returned the plain function
        return dispatcher
    key = (dispatcher.py_func.__module__, dispatcher.py_func.__name__)
    if key in _LISTED and not isinstance(dispatcher._cache, NullCache) and not os.environ.get(_WORKER_FLAG):
        dispatcher._cache = _WatchedCache(dispatcher._cache, key)
    return dispatcher


def _worker_count():
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    wanted = os.environ.get("TINYLLM_COMPILE_WORKERS", "").strip()
    if wanted:
        try:
            cores = min(cores, int(wanted))
        except ValueError:
            raise ValueError(f"TINYLLM_COMPILE_WORKERS={wanted!r}: set it to a whole number of worker "
                             "processes (0 compiles every kernel in this process)") from None
    return min(cores, len(TRAINING_STEP))


def compile_ahead(workers=None, timeout=900):
    """Compile every kernel of :data:`TRAINING_STEP` into numba's on-disk cache, in ``workers``
    parallel processes (default: one per available core, at most ``TINYLLM_COMPILE_WORKERS``), and
    wait for them. A kernel already in the cache is only loaded. Does nothing with fewer than two
    workers; afterwards, a cache miss no longer starts it. Returns the number of workers started."""
    _State.attempted = True
    workers = _worker_count() if workers is None else workers
    if workers < 2:  # one worker is no faster than compiling here, in the order of first use
        return 0
    started = time.perf_counter()
    package_root = str(Path(__file__).resolve().parents[3])  # the directory holding tinyllm/
    env = dict(os.environ, **{_WORKER_FLAG: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="tinyllm-compile-") as claims:
        command = [sys.executable, "-c", f"from {__name__} import _work; _work({claims!r})"]
        procs = []
        for _ in range(workers):
            try:
                procs.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            except OSError:  # no interpreter to start (an embedded Python): compile here, as before
                break
        for proc in procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # then this process compiles what is still missing
                proc.kill()
                proc.wait()
        cpu = [float(Path(claims, f).read_text()) for f in os.listdir(claims) if f.startswith("cpu-")]
    _State.report = dict(workers=len(procs), wall_s=time.perf_counter() - started, worker_cpu_s=cpu,
                         exit_codes=[proc.returncode for proc in procs])
    return len(procs)


def _work(claims):
    """A worker: compile the listed kernels nobody has claimed yet, one at a time.

    A kernel is claimed by creating the file ``claims/<index>`` (``O_EXCL``: exactly one process
    succeeds), so the workers share the list without talking to each other."""
    import importlib

    for index, (module, name, args) in enumerate(TRAINING_STEP):
        try:
            os.close(os.open(os.path.join(claims, str(index)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        kernel = getattr(importlib.import_module(f"{_KERNELS_PACKAGE}.{module}"), name)
        kernel.compile(_argument_types(args))
    Path(claims, f"cpu-{os.getpid()}").write_text(str(time.process_time()))  # for the benchmarks
