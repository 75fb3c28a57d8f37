"""Train an encoder-decoder Transformer to translate, on a CPU, in minutes.

    python examples/train_translation.py                      # English -> French number words, generated here
    python examples/train_translation.py --data fra.tsv       # any "source<TAB>target" file (Tatoeba / Anki)
    python examples/train_translation.py --resume             # continue the run in --out-dir
    python examples/translate.py --model-dir out-translation "three hundred five"

The default task needs no download: the source is a number from 0 to 999,999 in English words,
the target the same number in French words (tinyllm/datasets/numbers.py). Test and validation
numbers are held out: the model never trains on them.

Writes into --out-dir: ckpt.safetensors (full training state, for --resume), log.csv, the model
and its tokenizer (save_pretrained: config.json, model.safetensors, tinyllm_tokenizer.json) for
examples/translate.py and ``tinyllm serve``, and metrics.json: corpus BLEU of greedy and of beam
decoding on the test split (sacrebleu's definition), exact match, the validation loss and
perplexity, the wall time. This file holds only what is particular to translation, the pairs,
the tokenizer, the model and BLEU; the loop, checkpoints, resuming and the shared options are
tinyllm.training and tinyllm.cli.
"""
import argparse
import time
from pathlib import Path

import numpy as np

import tinyllm
from tinyllm import cli
from tinyllm.datasets import (
    PairDataset,
    group_by_source,
    number_pairs,
    read_tsv_pairs,
    reference_streams,
    split_numbers,
    split_pairs,
)
from tinyllm.metrics import corpus_bleu
from tinyllm.tokenizers import Seq2SeqTokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="a UTF-8 'source<TAB>target' file (default: the generated number task)")
    # A model this small spends its time in many short kernel calls, and numba's thread pool waits
    # for every one of its threads at each: on a 2-core machine shared with other jobs, one thread
    # trained the default model 7x faster (195 against 1473 ms a step, alternating in one process at
    # load 6.8; 82 against 768 ms in separate runs at load 3). Pass --num-threads 0 on an idle
    # machine with many cores, where the pool may win.
    p.add_argument("--num-threads", type=int, default=1,
                   help="threads for the kernels (default: %(default)s; 0: tinyllm's default, all cores)")
    d = p.add_argument_group("data")
    d.add_argument("--n-train", type=int, default=100_000, help="training numbers (number task)")
    d.add_argument("--n-val", type=int, default=1_000, help="validation numbers (number task)")
    d.add_argument("--n-test", type=int, default=2_000, help="test numbers (number task)")
    d.add_argument("--val-fraction", type=float, default=0.05, help="share of distinct sources for validation (--data)")
    d.add_argument("--test-fraction", type=float, default=0.05, help="share of distinct sources for test (--data)")
    d.add_argument("--max-test", type=int, default=2_000, help="at most this many test sources are decoded")
    d.add_argument("--max-len", type=int, default=64,
                   help="longest source / target in tokens (EOS included); longer pairs are left out")
    d.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size (both languages, 3 special ids)")
    d.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split")
    cli.add_encoder_decoder_args(p, dropout=0.0)
    e = p.add_argument_group("evaluation")
    e.add_argument("--num-beams", type=int, default=4, help="beams for the beam-search BLEU")
    e.add_argument("--eval-batch-size", type=int, default=256, help="sources decoded at once")
    # 800 steps of 64 pairs (half the training numbers seen once) reach 100.0 test BLEU; 3000 steps
    # did no better and took 4x as long (see the README for the measurements)
    cli.add_training_args(p, out_dir="out-translation", max_iters=800, batch_size=64, lr=1e-3, min_lr=1e-4,
                          warmup_iters=100, weight_decay=0.01, eval_interval=200, eval_iters=10, sample_tokens=64)
    args = p.parse_args(argv)
    # checked now: the test split is scored after training, too late to fail
    for flag, value in (("--n-train", args.n_train), ("--n-val", args.n_val), ("--num-beams", args.num_beams),
                        ("--eval-batch-size", args.eval_batch_size)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    return args


# ---- data -----------------------------------------------------------------------------------
def load_pairs(args):
    """(train, val, test) lists of (source, target) pairs and a one-line description."""
    if args.data is None:
        train, val, test = split_numbers(args.n_train, args.n_val, args.n_test, seed=args.split_seed)
        return (number_pairs(train), number_pairs(val), number_pairs(test),
                f"numbers in words, English -> French: {len(train):,} train, {len(val):,} val, "
                f"{len(test):,} held-out test numbers")
    pairs = read_tsv_pairs(args.data)
    train, val, test = split_pairs(pairs, args.val_fraction, args.test_fraction, seed=args.split_seed)
    return train, val, test, (f"{args.data}: {len(pairs):,} pairs -> {len(train):,} train, {len(val):,} val, "
                              f"{len(test):,} test (split by source sentence)")


def build_tokenizer(args, train_pairs, run):
    saved = run.saved_tokenizer()
    if saved is not None:  # resuming: the vocabulary the checkpoint was trained with
        if not isinstance(saved, Seq2SeqTokenizer):
            raise ValueError(f"--resume: {run.checkpoint_path} holds a {type(saved).__name__}, not the "
                             "Seq2SeqTokenizer of a translation run; choose another --out-dir")
        return saved
    t0 = time.perf_counter()
    tok = Seq2SeqTokenizer.train([s for pair in train_pairs for s in pair], vocab_size=args.vocab_size)
    print(f"trained a BPE tokenizer of {tok.vocab_size} ids on both languages in {time.perf_counter() - t0:.1f} s")
    return tok


def build_model(args, tokenizer, train_ds):
    # max_tgt_len counts the decoder's positions: BOS plus every token generated before EOS
    return cli.encoder_decoder_from_args(args, tokenizer, train_ds.max_src_len, train_ds.max_tgt_len + 1)


# ---- what the shared loop asks of a task (see tinyllm/training.py) ---------------------------
def get_batch(dataset, batch_size, rng):
    """``batch_size`` random pairs -> inputs (src_ids, tgt_in), targets tgt_out."""
    src, tgt_in, tgt_out = dataset.get_batch(batch_size, rng)
    return (src, tgt_in), tgt_out


def evaluator(batch_size):
    def evaluate(model, dataset):
        """Mean cross-entropy per target token over the whole split (no label smoothing, no
        dropout), and its perplexity."""
        src, tgt_in, tgt_out = dataset.batch(range(len(dataset)))
        return model.evaluate(src, tgt_in, tgt_out, batch_size=batch_size)

    return evaluate


def sampler(tokenizer, pairs, n=3):
    """``sample`` for the loop: the first ``n`` validation sources, translated greedily."""
    sources = [src for src, _ in pairs[:n]]

    def sample(model, max_new_tokens, seed):
        hyps = translate(model, tokenizer, sources, len(sources), max_new_tokens=max_new_tokens)
        return "\n".join(f"{s} -> {h}" + ("" if h == t else f"   (reference: {t})")
                         for (s, t), h in zip(pairs[:n], hyps))

    return sample


# ---- translating and scoring ------------------------------------------------------------------
def translate(model, tokenizer, sources, batch_size, max_new_tokens=None, **generate_kwargs):
    """Translate ``sources`` (list of str) in batches of similar length; returns list of str."""
    limit = model.config.max_tgt_len
    max_new_tokens = limit if max_new_tokens is None else min(max_new_tokens, limit)
    lengths = [len(tokenizer.encode(s)) for s in sources]
    order = sorted(range(len(sources)), key=lengths.__getitem__)  # little padding in each batch
    out = [None] * len(sources)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        src_ids = tokenizer.batch_encode([sources[i] for i in rows])  # (B, S), padded
        generated = model.generate(src_ids, max_new_tokens=max_new_tokens, **generate_kwargs)
        for i, text in zip(rows, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            out[i] = text
    return out


def score_translations(hypotheses, references):
    """Corpus BLEU against every reference of each source, and the share of exact matches."""
    bleu = corpus_bleu(hypotheses, reference_streams(references))
    exact = float(np.mean([h in refs for h, refs in zip(hypotheses, references)]))
    return bleu, exact


def bleu_scorer(tokenizer, test_pairs, args, t_start):
    """``extra_metrics`` for the run: BLEU (greedy and beam) and exact match on at most
    --max-test held-out sources, with every known translation of a source as a reference
    (``t_start``: when the run began, for the total time)."""

    def score(model):
        sources, references = group_by_source(test_pairs)
        fits = [i for i, s in enumerate(sources) if len(tokenizer.encode(s)) <= model.config.max_src_len]
        n_too_long = len(sources) - len(fits)
        fits = fits[:args.max_test]
        sources, references = [sources[i] for i in fits], [references[i] for i in fits]
        test = {"n_sources": len(sources), "n_too_long": n_too_long}
        # early_stopping=False (Hugging Face's default): with True a source stops at its first num_beams
        # finished hypotheses, and the low-probability beams of a confident model end early with
        # garbage that fills them (97.1% exact match against 99.95% on the default run)
        for name, kwargs in (("greedy", {}), ("beam", {"num_beams": args.num_beams})):
            t0 = time.perf_counter()
            hyps = translate(model, tokenizer, sources, args.eval_batch_size, **kwargs)
            bleu, exact = score_translations(hyps, references)
            test[name] = {"bleu": bleu.score, "exact_match": exact, "bleu_detail": str(bleu),
                          "decode_s": time.perf_counter() - t0}
            print(f"test, {name} ({len(sources)} sources): {bleu}; exact match {exact:.1%}")
            if name == "greedy":
                test["examples"] = [{"source": s, "output": h, "references": r}
                                    for s, h, r in list(zip(sources, hyps, references))[:5]]
        return {
            "task": "numbers" if args.data is None else str(args.data),
            "bleu": {"greedy": test["greedy"]["bleu"], "beam": test["beam"]["bleu"], "num_beams": args.num_beams},
            "exact_match": {"greedy": test["greedy"]["exact_match"], "beam": test["beam"]["exact_match"]},
            "test": test,
            "total_s": time.perf_counter() - t_start,  # data, tokenizer, training and this evaluation
        }

    return score


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    with cli.exit_on_error():  # (--num-threads 99 is a ValueError naming the pool's size)
        if args.num_threads:
            tinyllm.set_num_threads(args.num_threads)
    with cli.exit_on_error(), cli.TrainingRun(args) as run:
        train_pairs, val_pairs, test_pairs, description = load_pairs(args)
        print(description)
        tokenizer = build_tokenizer(args, train_pairs, run)
        train_ds = PairDataset(train_pairs, tokenizer, args.max_len, args.max_len)
        val_ds = PairDataset(val_pairs, tokenizer, train_ds.max_src_len, train_ds.max_tgt_len)
        if train_ds.n_skipped or val_ds.n_skipped:
            print(f"left out {train_ds.n_skipped} train and {val_ds.n_skipped} val pairs longer than the limits")
        model = build_model(args, tokenizer, train_ds)
        print(f"EncoderDecoderTransformer: {model.num_parameters():,} parameters; sources up to "
              f"{model.config.max_src_len} tokens, targets up to {model.config.max_tgt_len - 1}")
        metrics = run.train(model, train_ds, val_ds, tokenizer, get_batch=get_batch,
                            evaluate=evaluator(args.eval_batch_size), sample=sampler(tokenizer, val_ds.pairs),
                            extra_metrics=bleu_scorer(tokenizer, test_pairs, args, t_start))
        print(f"{time.perf_counter() - t_start:.0f} s in all; translate with: python examples/translate.py "
              f"--model-dir {args.out_dir} \"{test_pairs[0][0] if test_pairs else 'three hundred five'}\"")
    return metrics


if __name__ == "__main__":
    main()
