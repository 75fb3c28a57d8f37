"""Where a GPT-2 decoding step's time goes: process CPU time per generated token spent in the
weight products (tinyllm's gemv, by weight layout), the cached attention, and everything else
(Python, LayerNorm, GELU, adds, argmax), one thread.

    python benchmarks/profile_decode.py GPT2_DIR      # a directory bench_generate.py --gpt2 can build

A profile, not a comparison: pair it with ``bench_generate.py --gpt2``, which measures the
bandwidth limit and transformers in the same run. The kernels are wrapped with
``time.process_time()`` (the time this process really ran, less inflated by a busy machine than
wall time); the best of three ``generate(ids, max_length=50)`` calls on 10 random prompt ids is
reported, divided by the 40 forward passes (the prompt's included).
"""
import argparse
import time

import tinyllm
import numpy as np
from tinyllm.kernels import attention as A
from tinyllm.kernels import gemv as G

PARTS = ("gemv, rows layout (lm_head)", "gemv, columns layout (GPT-2 Conv1D)", "cached attention")


def wrap(spent):
    real_gemv, real_attn = G.gemv_checked, A.cached_attention_forward

    def gemv(x, w, bias):
        c0 = time.process_time()
        y = real_gemv(x, w, bias)
        spent[PARTS[0] if w.flags.c_contiguous else PARTS[1]] += time.process_time() - c0
        return y

    def attention(*args, **kwargs):
        c0 = time.process_time()
        out = real_attn(*args, **kwargs)
        spent[PARTS[2]] += time.process_time() - c0
        return out

    G.gemv_checked, A.cached_attention_forward = gemv, attention
    tinyllm.use_reference(tinyllm.is_reference())  # the dispatchers look the kernels up again


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gpt2_dir")
    args = p.parse_args()
    tinyllm.set_num_threads(1)
    spent = dict.fromkeys(PARTS, 0.0)
    wrap(spent)
    model = tinyllm.AutoModelForCausalLM.from_pretrained(args.gpt2_dir)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 10))
    model.generate(ids, max_length=12)  # compile / load the kernels
    best = None
    for _ in range(3):
        for k in spent:
            spent[k] = 0.0
        c0 = time.process_time()
        model.generate(ids, max_length=50)
        row = dict(spent, total=time.process_time() - c0)
        best = row if best is None or row["total"] < best["total"] else best
    print("process CPU ms per forward pass (40: the prompt's and 39 decoding steps), one thread")
    for k in PARTS:
        print(f"  {k:38s} {best[k] / 40 * 1e3:6.2f}")
    print(f"  {'everything else':38s} {(best['total'] - sum(best[k] for k in PARTS)) / 40 * 1e3:6.2f}")
    print(f"  {'total':38s} {best['total'] / 40 * 1e3:6.2f}")


if __name__ == "__main__":
    main()
