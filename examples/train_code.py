"""Train a small GPT to complete Python code, on the Python standard library's own source.

    python examples/train_code.py                        # the standard library, ~15 minutes on 2 cores
    python examples/train_code.py --data ~/my_repo       # any folder of code (the same by-file split)
    python examples/train_code.py --resume               # continue the run in --out-dir

Files are split into train / val / test by a hash of their path (tinyllm.code_data), so the
test files are never seen in training. A byte-level BPE is trained on the training files, a GPT
on their tokens; then, on sampled line starts of the test files, the model completes each line
greedily and is scored as CodeXGLUE scores line completion (exact match, edit similarity),
beside two baselines on the same lines: "repeat the previous non-blank line" and an n-gram
model of the same tokens (tinyllm.code_eval).

Writes into --out-dir: manifest.json (every file with its sha256 and split), ckpt.safetensors
(for --resume), log.csv, the model and tokenizer (for examples/complete_code.py), metrics.json
(model and baselines) and completions.jsonl (every scored line with each system's prediction).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import tinyllm  # noqa: F401  (before NumPy: see tinyllm/_runtime.py)
import numpy as np

from tinyllm.checkpoint import CHECKPOINT_NAME, read_checkpoint_meta
from tinyllm.code_data import (CODE_SPLIT_PATTERN, code_corpus, compare_manifests, describe_manifest_diff,
                               load_manifest, stdlib_corpus)
from tinyllm.code_eval import (LineEnds, NGramLM, encode_text, line_prompts, model_line_predictions,
                               repeat_previous_line, sample_positions, score_lines, stream_ids, token_metrics)
from tinyllm.models import GPT, GPTConfig
from tinyllm.tokenizers import AutoTokenizer, BPETokenizer
from tinyllm.training import TrainConfig, Trainer, load_tokenizer_from_meta, write_json

EOT = "<|endoftext|>"
MANIFEST_NAME = "manifest.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="a directory of code to train on (default: this Python's standard library)")
    p.add_argument("--ext", nargs="+", default=[".py"], help="file name endings to read with --data")
    p.add_argument("--include-tests", action="store_true", help="with --data: keep test files and directories")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--out-dir", default="out-code", help="where checkpoints, logs, the model and metrics go")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out-dir")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out-dir holds a checkpoint")
    p.add_argument("--eval-only", action="store_true",
                   help="no training: score the model saved in --out-dir again (e.g. with other --eval-lines)")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size, the end-of-text token included")
    p.add_argument("--tokenizer-max-chars", type=int, default=None,
                   help="train the BPE on a seeded sample of training files of about this many characters "
                        "(default: all of them)")
    m = p.add_argument_group("model")
    m.add_argument("--n-layer", type=int, default=4)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--n-embd", type=int, default=192)
    m.add_argument("--block-size", type=int, default=128)
    m.add_argument("--dropout", type=float, default=0.0)
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--max-iters", type=int, default=2000)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--min-lr", type=float, default=2e-4)
    t.add_argument("--warmup-iters", type=int, default=100)
    t.add_argument("--lr-decay-iters", type=int, default=None)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--eval-interval", type=int, default=250)
    t.add_argument("--eval-iters", type=int, default=20)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    e = p.add_argument_group("evaluation (line completion on the test files)")
    e.add_argument("--eval-lines", type=int, default=1500,
                   help="non-blank line starts sampled from the test files (about 2/3 are code lines: the "
                        "rest are comments and docstrings, scored apart)")
    e.add_argument("--max-line-tokens", type=int, default=64, help="stop a completion after this many tokens")
    e.add_argument("--prompt-reserve", type=int, default=32,
                   help="the prompt is the last block_size - this many tokens, so most lines complete "
                        "inside one window with the KV cache")
    e.add_argument("--ngram-order", type=int, default=None,
                   help="order of the n-gram baseline (default: the best of 4, 8, 16 on the val files)")
    return p.parse_args(argv)


def check_out_dir(args, out_dir):
    """Never overwrite a run by accident: nothing already saved is lost."""
    ckpt = out_dir / CHECKPOINT_NAME
    if args.resume and not ckpt.exists():
        sys.exit(f"error: --resume, but {ckpt} does not exist (nothing to continue)")
    if ckpt.exists() and not (args.resume or args.overwrite):
        sys.exit(f"error: {out_dir} already holds a training run ({ckpt}); pass --resume to continue it, "
                 "--overwrite to start over, or choose another --out-dir")


def load_corpus(args, out_dir):
    """The corpus and its manifest; on --resume, the files must be the ones the run started on."""
    try:
        if args.data is None:
            corpus = stdlib_corpus(args.val_fraction, args.test_fraction)
        else:
            corpus = code_corpus(args.data, extensions=args.ext, exclude_tests=not args.include_tests,
                                 val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    manifest_path = out_dir / MANIFEST_NAME
    if args.resume and manifest_path.exists():
        diff = compare_manifests(load_manifest(manifest_path), corpus)
        if any(diff.values()):
            sys.exit(f"error: the corpus differs from the one this run started on ({manifest_path}):\n"
                     f"{describe_manifest_diff(diff)}\nstart a new run with --out-dir, or restore the files")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume or not manifest_path.exists():
        corpus.save_manifest(manifest_path)
    counts = corpus.counts()
    skipped = ", ".join(f"{len(v)} {k}" for k, v in corpus.skipped.items() if v) or "none"
    print(f"{len(corpus.files)} files ({corpus.info.get('source')}): "
          + ", ".join(f"{s} {c['files']} ({c['bytes'] / 1e6:.2f} MB)" for s, c in counts.items())
          + f"; skipped: {skipped}; left out by the rules: {corpus.excluded}; manifest: {manifest_path}")
    return corpus, manifest_path


def build_tokenizer(args, corpus, out_dir):
    if args.resume:
        return load_tokenizer_from_meta(read_checkpoint_meta(out_dir / CHECKPOINT_NAME))
    files = corpus.split("train")
    sample_note = "all training files"
    if args.tokenizer_max_chars is not None and sum(f.size for f in files) > args.tokenizer_max_chars:
        order = np.random.default_rng([args.seed, 3]).permutation(len(files))
        picked, total = [], 0
        for i in order:
            if total >= args.tokenizer_max_chars:
                break
            picked.append(files[i])
            total += len(files[i].text)
        files = sorted(picked, key=lambda f: f.path)
        sample_note = f"a seeded sample of {len(files)} training files"
    t0 = time.perf_counter()
    tok = BPETokenizer.train("".join(f.text for f in files), args.vocab_size, pattern=CODE_SPLIT_PATTERN,
                             special_tokens=[EOT])
    print(f"trained a BPE tokenizer of {tok.vocab_size} tokens on {sample_note} in {time.perf_counter() - t0:.1f} s")
    return tok


def check_round_trip(tokenizer, corpus, split, ids):
    """decode(encode(x)) == x for every file, checked on the whole stream (cheap: one decode)."""
    if tokenizer.decode(ids) == "".join(EOT + f.text for f in corpus.split(split)):
        return
    bad = next(f.path for f in corpus.split(split) if tokenizer.decode(encode_text(tokenizer, f.text)) != f.text)
    sys.exit(f"error: the tokenizer does not give back {bad} exactly (decode(encode(x)) != x); "
             "train a new one with --overwrite")


def make_model(args, tokenizer):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
    return GPT(config, seed=args.seed)


def pick_ngram_order(train_ids, val_files, tokenizer, eot, line_ends, args, prompt_len, orders=(4, 8, 16)):
    """The n-gram order with the best edit similarity on code lines of the val files (never
    the test files), so the baseline is tuned as fairly as the model."""
    positions = sample_positions(val_files, 500, np.random.default_rng([args.seed, 5]), kinds=("code",))
    prompts = line_prompts(positions, val_files, tokenizer, eot, prompt_len)
    truths = [p.truth for p in positions]
    best = None
    for order in orders:
        lm = NGramLM(train_ids, tokenizer.vocab_size, order)
        score = score_lines(lm.line_predictions(tokenizer, prompts, line_ends, args.max_line_tokens), truths)
        print(f"  n-gram order {order}: val code lines edit similarity {score['edit_similarity']:.1f}, "
              f"exact match {score['exact_match']:.1f}%")
        if best is None or score["edit_similarity"] > best[1]:
            best = (order, score["edit_similarity"], lm)
    return best[0], best[2]


def line_scores(predictions, positions):
    """Scores on the code lines (CodeXGLUE's kind: no comments, no docstrings) and on all lines."""
    truths = [p.truth for p in positions]
    code = [k for k, p in enumerate(positions) if p.kind == "code"]
    out = {"all_lines": score_lines(predictions, truths)}
    if code:
        out["code_lines"] = score_lines([predictions[k] for k in code], [truths[k] for k in code])
    return out


def evaluate(args, model, tokenizer, corpus, train_ids, test_ids, out_dir):
    """Line completion on the test files: model, n-gram and repeat-the-previous-line, on the same
    lines; token accuracy and perplexity of the model and the n-gram on the test stream."""
    eot = tokenizer.special_tokens[EOT]
    line_ends = LineEnds.for_tokenizer(tokenizer, tokenizer.vocab_size, [eot])
    prompt_len = model.config.block_size - args.prompt_reserve
    if not 0 <= args.prompt_reserve < model.config.block_size:
        sys.exit(f"error: --prompt-reserve {args.prompt_reserve} must be in [0, block_size = "
                 f"{model.config.block_size})")
    test_files = [(f.path, f.text) for f in corpus.split("test")]
    val_files = [(f.path, f.text) for f in corpus.split("val")]
    positions = sample_positions(test_files, args.eval_lines, np.random.default_rng([args.seed, 4]))
    prompts = line_prompts(positions, test_files, tokenizer, eot, prompt_len)

    t0 = time.perf_counter()
    model_lines = model_line_predictions(model, tokenizer, prompts, line_ends, args.max_line_tokens)
    model_scores = {**line_scores(model_lines, positions), **token_metrics(model, test_ids)}
    print(f"model: {time.perf_counter() - t0:.0f} s")

    t0 = time.perf_counter()
    if args.ngram_order is None:
        order, ngram = pick_ngram_order(train_ids, val_files, tokenizer, eot, line_ends, args, prompt_len)
    else:
        order, ngram = args.ngram_order, NGramLM(train_ids, tokenizer.vocab_size, args.ngram_order)
    ngram_lines = ngram.line_predictions(tokenizer, prompts, line_ends, args.max_line_tokens)
    ngram_scores = {**line_scores(ngram_lines, positions), **ngram.token_metrics(test_ids), "order": order}
    print(f"n-gram baseline (order {order}): {time.perf_counter() - t0:.0f} s")

    repeat_lines = [repeat_previous_line(p) for p in positions]
    repeat_scores = line_scores(repeat_lines, positions)

    with open(out_dir / "completions.jsonl", "w", encoding="utf-8") as f:
        for p, a, b, c in zip(positions, model_lines, ngram_lines, repeat_lines):
            f.write(json.dumps({**p.to_dict(), "model": a, "ngram": b, "repeat_previous_line": c}) + "\n")
    return {"model": model_scores, "ngram": ngram_scores, "repeat_previous_line": repeat_scores}


def eval_only(args, out_dir):
    """Score the saved model again on the same files (the manifest must match)."""
    if not (out_dir / "config.json").is_file() or not (out_dir / MANIFEST_NAME).is_file():
        sys.exit(f"error: --eval-only, but {out_dir} holds no finished run (config.json and {MANIFEST_NAME})")
    args.resume = True  # the corpus must be the manifest's
    corpus, _ = load_corpus(args, out_dir)
    model = GPT.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    eot = tokenizer.special_tokens[EOT]
    train_ids, test_ids = (stream_ids(corpus.texts(s), tokenizer, eot) for s in ("train", "test"))
    results = evaluate(args, model, tokenizer, corpus, train_ids, test_ids, out_dir)
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics.update(results, eval=eval_settings(args, model, results))
    write_json(metrics_path, metrics)
    print_table(results)


def eval_settings(args, model, results):
    return {"lines": results["model"]["all_lines"]["n"],
            "code_lines": results["model"].get("code_lines", {}).get("n", 0),
            "max_line_tokens": args.max_line_tokens,
            "prompt_tokens": model.config.block_size - args.prompt_reserve, "seed": args.seed}


def print_table(results):
    head = ("", "code lines: EM %", "edit sim", "all lines: EM %", "edit sim", "token acc %", "perplexity")
    print("\n{:24s}{:>18s}{:>10s}{:>17s}{:>10s}{:>13s}{:>12s}".format(*head))
    for name, r in results.items():
        code = r.get("code_lines", {"exact_match": float("nan"), "edit_similarity": float("nan")})
        acc = f"{r['token_accuracy']:.1f}" if "token_accuracy" in r else "-"
        ppl = f"{r['perplexity']:.2f}" if "perplexity" in r else "-"
        label = f"n-gram (order {r['order']})" if name == "ngram" else name
        print(f"{label:24s}{code['exact_match']:18.1f}{code['edit_similarity']:10.1f}"
              f"{r['all_lines']['exact_match']:17.1f}{r['all_lines']['edit_similarity']:10.1f}{acc:>13s}{ppl:>12s}")


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.eval_only:
        return eval_only(args, out_dir)
    check_out_dir(args, out_dir)
    t_start = time.perf_counter()
    corpus, manifest_path = load_corpus(args, out_dir)
    tokenizer = build_tokenizer(args, corpus, out_dir)
    eot = tokenizer.special_tokens[EOT]
    t0 = time.perf_counter()
    train_ids, val_ids, test_ids = (stream_ids(corpus.texts(s), tokenizer, eot) for s in ("train", "val", "test"))
    for split, ids in zip(("train", "val", "test"), (train_ids, val_ids, test_ids)):
        check_round_trip(tokenizer, corpus, split, ids)
    print(f"tokens: train {len(train_ids):,}, val {len(val_ids):,}, test {len(test_ids):,} "
          f"({time.perf_counter() - t0:.1f} s)")

    model = make_model(args, tokenizer)
    print(f"GPT: {model.num_parameters():,} parameters")
    cfg = TrainConfig(out_dir=str(out_dir), max_iters=args.max_iters, batch_size=args.batch_size,
                      learning_rate=args.lr, min_lr=args.min_lr, warmup_iters=args.warmup_iters,
                      lr_decay_iters=args.lr_decay_iters, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                      eval_interval=args.eval_interval, eval_iters=args.eval_iters, seed=args.seed,
                      sample_prompt=EOT, progress=not args.no_progress)
    trainer = Trainer(model, train_ids, val_ids, cfg, tokenizer)
    result = trainer.train(resume=args.resume)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    results = evaluate(args, model, tokenizer, corpus, train_ids, test_ids, out_dir)
    metrics = {
        "iter": result["iter"],
        "train_loss_estimate": result.get("train_loss"),
        "val_loss_estimate": result.get("val_loss"),
        "tokens_per_sec": result["tokens_per_sec"],
        "train_wall_s": result["wall_s"],
        "total_wall_s": time.perf_counter() - t_start,
        "n_params": model.num_parameters(),
        "config": model.config.to_dict(),
        "manifest": str(manifest_path),
        "split_digest": corpus.manifest()["split_digest"],
        "splits": corpus.counts(),
        "tokens": {"train": len(train_ids), "val": len(val_ids), "test": len(test_ids)},
        "eval": eval_settings(args, model, results),
        **results,
    }
    write_json(out_dir / "metrics.json", metrics)
    print_table(results)
    print(f"\n{metrics['total_wall_s']:.0f} s in all; metrics.json, completions.jsonl and the model in {out_dir}/")


if __name__ == "__main__":
    main()
