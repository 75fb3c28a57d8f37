"""The columns-layout GEMV (GPT-2's Conv1D weights) against another revision's and the rows layout.

    python benchmarks/bench_gemv_columns.py                        # against main's parent, 2 threads
    python benchmarks/bench_gemv_columns.py --against 8075e8b --rows 1 8 --threads 1 2 --rounds 20

One "pass" is a token's 48 block GEMVs of GPT-2 124M (c_attn 768 x 2304, c_proj 768 x 768, c_fc
768 x 3072, mlp.c_proj 3072 x 768, twelve times each: 340 MB, more than the L3 cache holds),
x (M, K) times W^T (K, N) C-contiguous, biases included, as the fused decoding step calls
``gemv_into``. Side by side, alternating in one process so that every kernel sees the same
machine:

* ``this``: the working tree's ``tinyllm/kernels/gemv.py``;
* ``against``: ``gemv.py`` of the revision ``--against`` (read with ``git show``; its
  ``gemv_into`` must take the same arguments);
* ``rows``: this tree's rows-layout kernel over contiguous (N, K) copies of the same weights
  (the layout the columns kernel avoids copying into);
* ``read``: a plain streaming read (a sum) of the same arrays, the threads sharing the rows:
  the floor for reading those bytes.

Prints the median and best ms per pass and GB/s for each, per M and thread count.
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

import tinyllm  # noqa: F401  (sets the environment numba and OpenBLAS read)
from tinyllm.kernels import gemv as G

GPT2_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12  # W^T (K, N) per GEMV
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def revision_gemv(rev):
    """``tinyllm/kernels/gemv.py`` as it was at ``rev``, imported as a module of its own."""
    src = subprocess.run(["git", "-C", REPO, "show", f"{rev}:tinyllm/kernels/gemv.py"], check=True,
                         capture_output=True, text=True).stdout
    src = src.replace("from .systems.", "from tinyllm.kernels.systems.")
    path = os.path.join(tempfile.mkdtemp(prefix="gemv_rev_"), "gemv_at_revision.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("gemv_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@numba.njit(fastmath=True, parallel=True)
def _read(a):
    total = np.float32(0)
    for i in numba.prange(a.shape[0]):
        for j in range(a.shape[1]):
            total += a[i, j]
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default="HEAD~1", help="a git revision (default: HEAD~1)")
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="rows of x (sequences of a batch)")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    other = revision_gemv(args.against)
    rng = np.random.default_rng(0)
    wts = [rng.standard_normal(s, dtype=np.float32) for s in GPT2_SHAPES]
    biases = [rng.standard_normal(s[1], dtype=np.float32) for s in GPT2_SHAPES]
    nbytes = sum(w.nbytes for w in wts)
    print(f"GPT-2 124M's 48 Conv1D GEMVs ({nbytes / 1e6:.0f} MB), ms per pass, median (best) of "
          f"{args.rounds} alternating rounds; this tree vs {args.against}")
    for threads in args.threads:
        numba.set_num_threads(threads)
        for m in args.rows:
            xs = {k: rng.standard_normal((m, k), dtype=np.float32) for k, _ in GPT2_SHAPES}
            ys = {n: np.empty((m, n), np.float32) for _, n in GPT2_SHAPES}

            def columns(module):
                for w, b in zip(wts, biases):
                    module.gemv_into(xs[w.shape[0]], w, True, b, True, ys[w.shape[1]], threads, module.SERIAL_WORK)

            rows_copies = [np.ascontiguousarray(w.T) for w in wts]

            def rows():
                for w, b in zip(rows_copies, biases):
                    G.gemv_into(xs[w.shape[1]], w, False, b, True, ys[w.shape[0]], threads, G.SERIAL_WORK)

            def read():
                for w in wts:
                    _read(w)

            runs = {"this": lambda: columns(G), "against": lambda: columns(other), "rows": rows, "read": read}
            times = {name: [] for name in runs}
            for f in runs.values():  # compile and warm up
                f()
            for _ in range(args.rounds):
                for name, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - t0)
            cells = [f"{name} {statistics.median(t) * 1e3:6.2f} ({min(t) * 1e3:5.2f}) "
                     f"{nbytes / statistics.median(t) / 1e9:4.1f} GB/s" for name, t in times.items()]
            ratio = statistics.median(times["this"]) / statistics.median(times["against"])
            print(f"  {threads} thread(s), M = {m:2d}:  " + "   ".join(cells) + f"   this / against {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
