"""Training steps of examples/train_translation.py's default model on 1 thread and on numba's pool,
alternating in one process: what decided the example's ``--num-threads 1`` default. With
``--preset summarization``, the same for examples/train_summarization.py's default model.

    python benchmarks/bench_translation_threads.py                     # 5 rounds of 10 steps each
    python benchmarks/bench_translation_threads.py --rounds 2 --steps 2   # smoke test
    python benchmarks/bench_translation_threads.py --preset summarization --rounds 3 --steps 3

Method. One model (2 + 2 layers, d_model 128, d_ff 512, shared BPE vocabulary, batches of 64
number pairs), one optimizer. After untimed warm-up steps with each thread count (numba compiles
and starts its pool), each round times ``--steps`` steps with 1 thread, then ``--steps`` with
``--threads`` (default: all of numba's), so a load spike from another process hits both. Reported:
the median ms/step of each and the median over rounds of the ratio, with the 1-minute load average,
which says how busy the machine was.

The summarization preset: 2 + 2 layers, d_model 128, d_ff 512, dropout 0.1, a 2048-id shared
vocabulary, batches of 32 rows of ``--src-len`` source ids (the example's --max-src-len) and 20
target ids (a typical summary), random ids: the step's cost depends on the shapes, not the text.
"""
import argparse
import os
import time

import numpy as np

import tinyllm
from tinyllm import optim
from tinyllm.datasets import PairDataset, number_pairs, split_numbers
from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer
from tinyllm.tokenizers import Seq2SeqTokenizer


def build(batch_size):
    train, _, _ = split_numbers(20_000, 100, 100)
    pairs = number_pairs(train)
    tok = Seq2SeqTokenizer.train([s for p in pairs for s in p], vocab_size=1024)
    ds = PairDataset(pairs, tok)
    config = EncoderDecoderConfig(
        src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, max_src_len=ds.max_src_len,
        max_tgt_len=ds.max_tgt_len + 1, n_encoder_layers=2, n_decoder_layers=2, n_head=4, d_model=128, d_ff=512,
        dropout=0.0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        share_embeddings=True)
    model = EncoderDecoderTransformer(config)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def steps(n):
        """ms per step over n forward + backward + AdamW steps."""
        t0 = time.perf_counter()
        for _ in range(n):
            src, tgt_in, tgt_out = ds.get_batch(batch_size, rng)
            _, loss = model(src, tgt_in, targets=tgt_out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n * 1000

    return steps


def build_summarization(batch_size, src_len, tgt_len=20, vocab_size=2048):
    config = EncoderDecoderConfig(
        src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, max_src_len=src_len, max_tgt_len=tgt_len,
        n_encoder_layers=2, n_decoder_layers=2, n_head=4, d_model=128, d_ff=512, dropout=0.1,
        pad_token_id=vocab_size - 3, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, share_embeddings=True)
    model = EncoderDecoderTransformer(config, seed=0)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    src = rng.integers(0, vocab_size - 3, (batch_size, src_len))
    tgt = rng.integers(0, vocab_size - 3, (batch_size, tgt_len))
    tgt[:, 0] = config.bos_token_id

    def steps(n):
        """ms per step over n forward + backward + AdamW steps."""
        t0 = time.perf_counter()
        for _ in range(n):
            _, loss = model(src, tgt, targets=tgt)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n * 1000

    return steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per thread count per round")
    p.add_argument("--threads", type=int, default=None, help="the pool's size (default: numba's, all cores)")
    p.add_argument("--preset", choices=("translation", "summarization"), default="translation",
                   help="whose default model to time (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="(default: 64 translation, 32 summarization)")
    p.add_argument("--src-len", type=int, default=64, help="summarization: source ids per row (default: %(default)s)")
    args = p.parse_args(argv)
    pool = args.threads or tinyllm.get_num_threads()
    if args.preset == "translation":
        steps = build(args.batch_size or 64)
    else:
        steps = build_summarization(args.batch_size or 32, args.src_len)
    for n in (1, pool):
        tinyllm.set_num_threads(n)
        steps(3)
    times = {1: [], pool: []}
    for _ in range(args.rounds):
        for n in (1, pool):
            tinyllm.set_num_threads(n)
            times[n].append(steps(args.steps))
    one, many = np.array(times[1]), np.array(times[pool])
    print(f"load average {os.getloadavg()[0]:.2f}; 1 thread {np.median(one):.0f} ms/step, {pool} threads "
          f"{np.median(many):.0f} ms/step; {pool} threads / 1 thread = {np.median(many / one):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in many / one)})")


if __name__ == "__main__":
    main()
