"""The columns-layout GEMV on several threads: how many output blocks to cut the columns into.

    python benchmarks/bench_gemv_blocks.py                  # 2 threads, 30 alternating rounds
    python benchmarks/bench_gemv_blocks.py --blocks-per-thread 1 2 4 --threads 2 --rounds 40

One "pass" is a token's 48 block GEMVs of GPT-2 124M in the Conv1D layout (one row of x times
W^T (K, N) C-contiguous: c_attn 768 x 2304, c_proj 768 x 768, c_fc 768 x 3072, mlp.c_proj
3072 x 768, twelve times, 340 MB: more than the L3 cache holds). Each pass calls
``gemv._cols_parallel`` with blocks of ceil(N / (threads * b)) columns for each ``b`` of
``--blocks-per-thread``, alternating in one process, so every setting sees the same machine. The
outputs are the same bits for every block width (each column is summed in the same order); only
the memory access differs: a thread reads a slice of every weight row, N / (threads * b) floats
long. ``gemv_into`` uses one block per thread.
"""
import argparse
import statistics
import time

import numba
import numpy as np

from tinyllm.kernels import gemv as G

GPT2_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12  # W^T (K, N) per GEMV


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks-per-thread", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    wts = [rng.standard_normal(s, dtype=np.float32) for s in GPT2_SHAPES]
    xs = {k: rng.standard_normal((1, k), dtype=np.float32) for k, _ in GPT2_SHAPES}
    ys = {n: np.empty((1, n), np.float32) for _, n in GPT2_SHAPES}
    no_bias = np.empty(0, np.float32)

    def one_pass(per_thread):  # seconds for the 48 GEMVs
        t0 = time.perf_counter()
        for w in wts:
            k, n = w.shape
            G._cols_parallel(xs[k], w, no_bias, False, ys[n], -(-n // (args.threads * per_thread)))
        return time.perf_counter() - t0

    times = {b: [] for b in args.blocks_per_thread}
    for b in times:  # compile and warm up
        one_pass(b)
    for _ in range(args.rounds):
        for b in times:
            times[b].append(one_pass(b))
    nbytes = sum(w.nbytes for w in wts)
    base = statistics.median(times[args.blocks_per_thread[0]])
    print(f"{len(wts)} Conv1D GEMVs of GPT-2 ({nbytes / 1e6:.0f} MB), {args.threads} threads, {args.rounds} rounds")
    for b, ts in times.items():
        med = statistics.median(ts)
        print(f"{b} block(s) per thread: median {med * 1e3:.2f} ms ({nbytes / med / 1e9:.1f} GB/s), "
              f"best {min(ts) * 1e3:.2f} ms; median / first setting's {med / base:.3f}")


if __name__ == "__main__":
    main()
