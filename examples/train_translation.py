"""Train an encoder-decoder Transformer to translate, on a CPU, in minutes.

    python examples/train_translation.py                      # English -> French number words, generated here
    python examples/train_translation.py --data fra.tsv       # any "source<TAB>target" file (Tatoeba / Anki)
    python examples/train_translation.py --resume             # continue the run in --out-dir
    python examples/translate.py --model-dir out-translation "three hundred five"

The default task needs no download: the source is a number from 0 to 999,999 in English words,
the target the same number in French words (tinyllm/datasets/numbers.py). Test and validation
numbers are held out: the model never trains on them.

Writes into --out-dir: the model and its tokenizer (save_pretrained: config.json,
model.safetensors, tinyllm_tokenizer.json) for examples/translate.py, and metrics.json: corpus
BLEU of greedy and of beam decoding on the test split (sacrebleu's definition), exact match,
the validation loss and perplexity, the wall time.

DRAFT: the training loop below (``draft_train``) stands in for the shared training harness
(progress, checkpoints, --resume, divergence stop) until it lands; then this file calls it
instead and ``draft_train`` goes away.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import tinyllm  # noqa: F401  (before NumPy: see tinyllm/_runtime.py)
import numpy as np

from tinyllm import optim
from tinyllm.datasets import (
    PairDataset,
    group_by_source,
    number_pairs,
    read_tsv_pairs,
    reference_streams,
    split_numbers,
    split_pairs,
)
from tinyllm.metrics import corpus_bleu, perplexity
from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer
from tinyllm.tokenizers import Seq2SeqTokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="a UTF-8 'source<TAB>target' file (default: the generated number task)")
    p.add_argument("--out-dir", default="out-translation", help="where checkpoints, logs and the model go")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out-dir")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out-dir holds a run")
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
    m = p.add_argument_group("model")
    m.add_argument("--n-encoder-layers", type=int, default=2)
    m.add_argument("--n-decoder-layers", type=int, default=2)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--d-model", type=int, default=128)
    m.add_argument("--d-ff", type=int, default=512)
    m.add_argument("--dropout", type=float, default=0.0)
    m.add_argument("--label-smoothing", type=float, default=0.0)
    m.add_argument("--pos-encoding", choices=["sinusoidal", "learned"], default="sinusoidal")
    m.add_argument("--norm-first", action=argparse.BooleanOptionalAction, default=True,
                   help="pre-LN (default, trains without care) or the paper's post-LN")
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--max-iters", type=int, default=3000)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--min-lr", type=float, default=1e-4)
    t.add_argument("--warmup-iters", type=int, default=200)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--eval-interval", type=int, default=500)
    t.add_argument("--eval-iters", type=int, default=10)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--num-beams", type=int, default=4, help="beams for the beam-search BLEU")
    e.add_argument("--eval-batch-size", type=int, default=256)
    return p.parse_args(argv)


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


def build_tokenizer(args, train_pairs):
    t0 = time.perf_counter()
    tok = Seq2SeqTokenizer.train([s for pair in train_pairs for s in pair], vocab_size=args.vocab_size)
    print(f"trained a BPE tokenizer of {tok.vocab_size} ids on both languages in {time.perf_counter() - t0:.1f} s")
    return tok


def build_model(args, tokenizer, train_ds):
    # max_tgt_len counts the decoder's positions: BOS plus every token generated before EOS
    config = EncoderDecoderConfig(
        src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size,
        max_src_len=train_ds.max_src_len, max_tgt_len=train_ds.max_tgt_len + 1,
        n_encoder_layers=args.n_encoder_layers, n_decoder_layers=args.n_decoder_layers, n_head=args.n_head,
        d_model=args.d_model, d_ff=args.d_ff, dropout=args.dropout, label_smoothing=args.label_smoothing,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, norm_first=args.norm_first,
        pos_encoding=args.pos_encoding, share_embeddings=True)
    return EncoderDecoderTransformer(config, seed=args.seed)


# ---- evaluation -----------------------------------------------------------------------------
def translate(model, tokenizer, sources, batch_size, **generate_kwargs):
    """Translate ``sources`` (list of str) in batches of similar length; returns list of str."""
    order = sorted(range(len(sources)), key=lambda i: len(tokenizer.encode(sources[i])))
    out = [None] * len(sources)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        src_ids = tokenizer.batch_encode([sources[i] for i in rows])
        generated = model.generate(src_ids, max_new_tokens=model.config.max_tgt_len - 1, **generate_kwargs)
        for i, text in zip(rows, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            out[i] = text
    return out


def score_translations(hypotheses, references):
    """Corpus BLEU against every reference of each source, and the share of exact matches."""
    bleu = corpus_bleu(hypotheses, reference_streams(references))
    exact = float(np.mean([h in refs for h, refs in zip(hypotheses, references)]))
    return bleu, exact


def evaluate_test(model, tokenizer, test_pairs, args):
    """BLEU (greedy and beam) and exact match on at most --max-test held-out sources."""
    sources, references = group_by_source(test_pairs)
    fits = [i for i, s in enumerate(sources) if len(tokenizer.encode(s)) <= model.config.max_src_len]
    n_too_long = len(sources) - len(fits)
    fits = fits[:args.max_test]
    sources, references = [sources[i] for i in fits], [references[i] for i in fits]
    results = {"n_test_sources": len(sources), "n_test_too_long": n_too_long}
    for name, kwargs in (("greedy", {}), ("beam", {"num_beams": args.num_beams, "early_stopping": True})):
        t0 = time.perf_counter()
        hyps = translate(model, tokenizer, sources, args.eval_batch_size, **kwargs)
        bleu, exact = score_translations(hyps, references)
        results[name] = {"bleu": bleu.score, "exact_match": exact, "bleu_detail": str(bleu),
                         "decode_s": time.perf_counter() - t0}
        print(f"test, {name} ({len(sources)} sources): {bleu}; exact match {exact:.1%}")
        if name == "greedy":
            results["examples"] = [{"source": s, "output": h, "references": r}
                                   for s, h, r in list(zip(sources, hyps, references))[:5]]
    return results


def evaluate_loss(model, dataset, batch_size):
    """Mean cross-entropy per target token over the whole split (no label smoothing, no dropout)."""
    src, tgt_in, tgt_out = dataset.batch(range(len(dataset)))
    return model.evaluate(src, tgt_in, tgt_out, batch_size=batch_size)["loss"]


# ---- training (DRAFT: replaced by the shared harness) ---------------------------------------------
def draft_train(model, train_ds, val_ds, args):
    """AdamW with warmup + cosine decay and gradient clipping; a placeholder loop."""
    from tqdm.auto import tqdm

    params = model.parameters()
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))
    schedule = optim.WarmupCosineLR(opt, args.lr, args.min_lr, args.warmup_iters, args.max_iters)
    rng = np.random.default_rng([args.seed, 0])
    bar = None if args.no_progress else tqdm(total=args.max_iters, desc="training", unit="it", dynamic_ncols=True)
    model.train()
    for it in range(args.max_iters):
        if it % args.eval_interval == 0 and it:
            val_loss = evaluate_loss(model, val_ds, args.eval_batch_size)
            model.train()
            (bar.write if bar else print)(f"iter {it}: val loss {val_loss:.4f}")
        lr = schedule.set_step(it)
        _, loss = model(*train_ds.get_batch(args.batch_size, rng))
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(params, args.grad_clip)
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
    if bar is not None:
        bar.close()
    model.eval()


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.resume:
        sys.exit("error: --resume needs the shared training harness, which this draft does not use yet")
    if (out_dir / "metrics.json").exists() and not args.overwrite:
        sys.exit(f"error: {out_dir} already holds a run; pass --overwrite to start over, or choose another --out-dir")
    t_start = time.perf_counter()
    try:
        train_pairs, val_pairs, test_pairs, description = load_pairs(args)
    except (FileNotFoundError, IsADirectoryError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(description)
    tokenizer = build_tokenizer(args, train_pairs)
    train_ds = PairDataset(train_pairs, tokenizer, args.max_len, args.max_len)
    val_ds = PairDataset(val_pairs, tokenizer, train_ds.max_src_len, train_ds.max_tgt_len)
    if train_ds.n_skipped or val_ds.n_skipped:
        print(f"left out {train_ds.n_skipped} train and {val_ds.n_skipped} val pairs longer than the limits")
    model = build_model(args, tokenizer, train_ds)
    print(f"EncoderDecoderTransformer: {model.num_parameters():,} parameters; sources up to "
          f"{model.config.max_src_len} tokens, targets up to {model.config.max_tgt_len - 1}")

    t_train = time.perf_counter()
    draft_train(model, train_ds, val_ds, args)
    train_s = time.perf_counter() - t_train

    val_loss = evaluate_loss(model, val_ds, args.eval_batch_size)
    print(f"val loss {val_loss:.4f} (perplexity {perplexity(val_loss):.3f})")
    test = evaluate_test(model, tokenizer, test_pairs, args)
    metrics = {
        "task": "numbers" if args.data is None else str(args.data),
        "bleu": {"greedy": test["greedy"]["bleu"], "beam": test["beam"]["bleu"], "num_beams": args.num_beams},
        "exact_match": {"greedy": test["greedy"]["exact_match"], "beam": test["beam"]["exact_match"]},
        "val_loss": val_loss,
        "val_perplexity": perplexity(val_loss),
        "wall_s": time.perf_counter() - t_start,
        "train_s": train_s,
        "iters": args.max_iters,
        "n_params": model.num_parameters(),
        "test": test,
        "config": model.config.to_dict(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"saved the model, tokenizer and metrics.json to {out_dir}/ ({metrics['wall_s']:.0f} s in all)")
    for ex in test["examples"]:
        print(f"  {ex['source']!r} -> {ex['output']!r}" + ("" if ex["output"] in ex["references"] else
                                                           f"   (reference: {ex['references'][0]!r})"))


if __name__ == "__main__":
    main()
