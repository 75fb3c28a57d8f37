"""Where a GPT-2 decoding step's time goes: process CPU time per forward pass spent in the fused
block steps (kernels/decode.py: each block's four weight products, LayerNorms, cached
attention, GELU and adds in one call), the lm_head's gemv, and everything else (Python,
embedding, ln_f, argmax), one thread; then, in the same process, what the weight products
alone cost and what merely reading the same weights costs (the floor for them).

    python benchmarks/profile_decode.py GPT2_DIR      # a directory bench_generate.py --gpt2 can build

A profile, not a comparison: pair it with ``bench_generate.py --gpt2``, which measures the
bandwidth limit and transformers in the same run. The kernels are wrapped with
``time.process_time()`` (the time this process really ran, less inflated by a busy machine than
wall time); the best of ``--repeats`` ``generate(ids, max_length=50)`` calls on 10 random prompt
ids is reported, divided by the 40 forward passes (the prompt's included: it runs the layers
one by one, as a prompt of several positions does). The weight-product and streaming-read
figures are the median of ``--repeats`` passes over all of the model's matrices in decoding order.
"""
import argparse
import time

import tinyllm
import numba
import numpy as np
from tinyllm.kernels import attention as A
from tinyllm.kernels import decode as D
from tinyllm.kernels import gemv as G

PARTS = ("blocks, fused step (kernels/decode.py)", "gemv, lm_head", "layers of the prompt's pass")


def wrap(spent, lm_head_weight, clock):
    real_step, real_gemv, real_attn = D.block_step, G.gemv_checked, A.cached_attention_forward

    def timed(key, f):
        def call(*args, **kwargs):
            c0 = clock()
            out = f(*args, **kwargs)
            spent[key(*args) if callable(key) else key] += clock() - c0
            return out
        return call

    D.block_step = timed(PARTS[0], real_step)
    G.gemv_checked = timed(lambda x, w, bias: PARTS[1] if w is lm_head_weight else PARTS[2], real_gemv)
    A.cached_attention_forward = timed(PARTS[2], real_attn)
    tinyllm.use_reference(tinyllm.is_reference())  # the dispatchers look the kernels up again


@numba.njit(fastmath=True)
def _read(a):
    """A sum of every element: one streaming read of a C-contiguous 2-D array."""
    total = np.float32(0)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            total += a[i, j]
    return total


@numba.njit(fastmath=True, parallel=True)
def _read_parallel(a):
    """:func:`_read` with the rows shared among numba's threads, each reading a contiguous part."""
    total = np.float32(0)
    for i in numba.prange(a.shape[0]):
        for j in range(a.shape[1]):
            total += a[i, j]
    return total


def weight_passes(model, repeats, threads, clock):
    """CPU ms of one pass of the weight products alone (gemv_into, as the fused step calls it,
    and the lm_head's) and of one streaming read of the same arrays, medians of ``repeats``."""
    mats = []
    for block in model.transformer.h:
        for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            stored, columns = D.stored_layout(lin.weight.data)
            mats.append((stored, columns, lin.bias.data))
    mats.append((model.lm_head.weight.data, False, None))
    rng = np.random.default_rng(0)
    jobs = []
    for stored, columns, bias in mats:
        k, n = stored.shape if columns else stored.shape[::-1]
        x = rng.standard_normal((1, k)).astype(stored.dtype)
        y = np.empty((1, n), stored.dtype)
        b = bias if bias is not None else y[0, :0]
        jobs.append((x, stored, columns, b, bias is not None, y))
    nbytes = sum(m[0].nbytes for m in mats)

    def products():
        for x, stored, columns, b, has_bias, y in jobs:
            G.gemv_into(x, stored, columns, b, has_bias, y, threads, 0)

    def reads():
        for stored, _, _ in mats:
            (_read if threads == 1 else _read_parallel)(stored)

    products(), reads()
    times = {"products": [], "reads": []}
    for _ in range(repeats):
        for key, f in (("products", products), ("reads", reads)):
            c0 = clock()
            f()
            times[key].append(clock() - c0)
    return {k: float(np.median(v)) for k, v in times.items()}, nbytes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gpt2_dir")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="numba threads; above 1 the times are wall time (process CPU time would count "
                        "every thread, spinning included)")
    args = p.parse_args()
    tinyllm.set_num_threads(args.threads)
    clock, what = (time.process_time, "process CPU") if args.threads == 1 else (time.perf_counter, "wall")
    spent = dict.fromkeys(PARTS, 0.0)
    model = tinyllm.AutoModelForCausalLM.from_pretrained(args.gpt2_dir)
    wrap(spent, model.lm_head.weight.data, clock)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 10))
    model.generate(ids, max_length=12)  # compile / load the kernels
    best = None
    for _ in range(args.repeats):
        for k in spent:
            spent[k] = 0.0
        c0 = clock()
        model.generate(ids, max_length=50)
        row = dict(spent, total=clock() - c0)
        best = row if best is None or row["total"] < best["total"] else best
    passes, nbytes = weight_passes(model, args.repeats, args.threads, clock)
    print(f"{what} ms per forward pass (40: the prompt's and 39 decoding steps), {args.threads} thread(s)")
    for k in PARTS:
        print(f"  {k:44s} {best[k] / 40 * 1e3:6.2f}")
    print(f"  {'everything else':44s} {(best['total'] - sum(best[k] for k in PARTS)) / 40 * 1e3:6.2f}")
    print(f"  {'total':44s} {best['total'] / 40 * 1e3:6.2f}")
    print(f"\nthe same process, every weight matrix once ({nbytes / 1e6:.0f} MB, in decoding order), {what} ms, "
          f"median of {args.repeats}:")
    print(f"  {'weight products alone (gemv_into)':44s} {passes['products'] * 1e3:6.2f}  "
          f"({nbytes / passes['products'] / 1e9:.1f} GB/s)")
    print(f"  {'streaming read of the same arrays (a sum)':44s} {passes['reads'] * 1e3:6.2f}  "
          f"({nbytes / passes['reads'] / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    main()
