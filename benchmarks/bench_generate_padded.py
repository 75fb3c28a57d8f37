"""Speed of generating for a LEFT-PADDED batch (``attention_mask``) against the same batch without
padding, in one process, alternating runs; reported as ratios.

    python benchmarks/bench_generate_padded.py
    python benchmarks/bench_generate_padded.py --batch 8 --prompt 16 --new 64 --repeats 7

Three ways, the same greedy ``generate`` call on the same model and prompt ids:

* ``unpadded``: no mask (the fast path every unpadded generation takes): the reference;
* ``padded, kernel``: row 0's first quarter is padding; the KV-cache attention kernel skips each
  row's padded keys (``key_starts``), what ``generate`` does;
* ``padded, composed``: the same, with the kernel path switched off, so every layer's attention
  over the cache is the composed softmax of masked scores (what a mask that is not left padding
  takes).

Model: vocab 65, 4 layers, 4 heads, 128 wide, block_size 256, float32. Set NUMBA_NUM_THREADS to
pin threads. The minimum of ``--repeats`` alternating runs is reported per way.
"""
import argparse
import time

import numpy as np

import tinyllm  # noqa: F401  (before anything else imports NumPy: tinyllm's process settings)
from tinyllm import functional as F
from tinyllm.models.gpt import GPT, GPTConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    model = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=128)).eval()
    ids = np.random.default_rng(0).integers(1, 65, (args.batch, args.prompt))
    mask = np.ones_like(ids)
    mask[0, :max(1, args.prompt // 4)] = 0
    real_starts = F.key_starts_from_mask

    def run(attention_mask, kernel=True):
        F.key_starts_from_mask = real_starts if kernel else (lambda *a, **k: None)
        try:
            t = time.perf_counter()
            out = model.generate(ids, attention_mask=attention_mask, max_new_tokens=args.new, do_sample=False)
            return time.perf_counter() - t, out
        finally:
            F.key_starts_from_mask = real_starts

    ways = {"unpadded": (None, True), "padded, kernel": (mask, True), "padded, composed": (mask, False)}
    outputs = {name: run(*how)[1] for name, how in ways.items()}  # warm-up: compile the kernels
    same = np.array_equal(outputs["padded, kernel"], outputs["padded, composed"])
    times = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, how in ways.items():
            times[name].append(run(*how)[0])
    best = {name: min(t) for name, t in times.items()}
    print(f"batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, min of {args.repeats} runs")
    for name in ways:
        print(f"  {name:18s} {best[name]:.3f} s   {best[name] / best['unpadded']:.2f}x the unpadded time")
    print(f"  kernel and composed padded outputs {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
