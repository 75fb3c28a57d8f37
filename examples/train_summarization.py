"""Train an encoder-decoder Transformer to write the one-line summary of a Python function.

    python examples/train_summarization.py                   # the standard library, < 15 minutes on 2 cores
    python examples/train_summarization.py --data ~/my_repo  # any folder of Python code
    python examples/train_summarization.py --resume          # continue the run in --out-dir
    python examples/summarize.py --model-dir out-summarization --file some_module.py

The pairs are real and written by people: every documented function and method of the
standard library, its code (docstring removed) as the source and its docstring's first sentence
as the target (tinyllm.code_data.extract_functions; CodeXGLUE's code-to-text task). Files are
split into train / val / test by a hash of their path, so no function of a test file is ever
trained on. The encoder reads the function's name in words on a first line ("Get size chunk"
for Chunk.get_size: the tokens a summary is written in, to copy), then its code
(tinyllm.summarization.model_source; --source-format code for the code alone). One BPE serves
code and summaries; a source longer than --max-src-len tokens is cut at a line boundary, keeping
the name line, the signature and the first lines (tinyllm.summarization.truncate_code).

After training, every function of the test files (--eval-split val: the validation files, to
choose settings without looking at the test) is summarized, greedily and with beam search,
and scored with ROUGE-1/2/L F-measure (rouge-score's definition) and corpus BLEU (sacrebleu's),
beside two baselines on the same functions: the function's name split into words, and the first
line of its body.

Writes into --out-dir: manifest.json (every file, its sha256 and split), ckpt.safetensors (for
--resume), log.csv, the model and tokenizer and summarization.json (the source format; all three
for examples/summarize.py), metrics.json (model and baselines) and test_summaries.jsonl (every
test function with each system's summary; val_summaries.jsonl with --eval-split val). The loop,
checkpoints, resuming and the shared options are tinyllm.training and tinyllm.cli.
"""
import argparse
import json
import time
from pathlib import Path

import tinyllm  # noqa: F401  (before NumPy: see tinyllm/_runtime.py)

from tinyllm import cli
from tinyllm.code_data import CODE_SPLIT_PATTERN, code_corpus, extract_functions, stdlib_corpus
from tinyllm.datasets import PairDataset, pair_batches, pair_evaluator
from tinyllm.metrics import rouge
from tinyllm.summarization import (SOURCE_FORMATS, baseline_summaries, model_source, score_summaries, summarize,
                                   truncate_code)
from tinyllm.tokenizers import Seq2SeqTokenizer
from tinyllm.training import write_json

MANIFEST_NAME = "manifest.json"
PREDICTIONS_NAME = "{split}_summaries.jsonl"
# What examples/summarize.py must know to read a function as training did.
SOURCE_CONFIG_NAME = "summarization.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="a directory of Python code (default: this Python's standard library)")
    p.add_argument("--include-tests", action="store_true", help="with --data: keep test files and directories")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of files for validation")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of files held out for the test")
    # Threads: this model spends its time in many small kernel calls, where numba's thread pool
    # costs more than it gains on a 2-core machine shared with other jobs; measured by
    # `python benchmarks/bench_translation_threads.py --preset summarization`.
    p.add_argument("--num-threads", type=int, default=1,
                   help="threads for the kernels (default: %(default)s; 0: tinyllm's default, all cores)")
    d = p.add_argument_group("data")
    d.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary (code and summaries, 3 special ids)")
    d.add_argument("--source-format", choices=sorted(SOURCE_FORMATS), default="name+code",
                   help="what the encoder reads: " + "; ".join(f"{k}: {v}" for k, v in SOURCE_FORMATS.items())
                   + " (default: %(default)s)")
    d.add_argument("--max-src-len", type=int, default=64,
                   help="source tokens (EOS included); a longer function keeps its first lines that fit")
    d.add_argument("--max-tgt-len", type=int, default=48,
                   help="summary tokens (EOS included); longer summaries are not trained on (but are scored)")
    d.add_argument("--length-buckets", type=int, default=8,
                   help="a batch holds sources of similar length, from a pool this many batches large (1: none)")
    cli.add_encoder_decoder_args(p, dropout=0.1)
    e = p.add_argument_group("evaluation (every function of the test files)")
    e.add_argument("--eval-split", choices=("test", "val"), default="test",
                   help="the files summarized and scored at the end: choose settings on val, report test "
                        "(default: %(default)s)")
    e.add_argument("--num-beams", type=int, default=4, help="beams for the beam-search scores")
    e.add_argument("--length-penalty", type=float, default=2.0,
                   help="beam search: score / length ** this (default: %(default)s, chosen on val: 1.0 made "
                        "summaries too short)")
    e.add_argument("--eval-batch-size", type=int, default=64, help="functions decoded at once")
    e.add_argument("--n-examples", type=int, default=12, help="test functions shown at the end")
    cli.add_training_args(p, out_dir="out-summarization", max_iters=3000, batch_size=32, lr=1e-3, min_lr=1e-4,
                          warmup_iters=100, weight_decay=0.1, eval_interval=250, eval_iters=10, sample_tokens=32)
    args = p.parse_args(argv)
    # checked now: the test functions are scored after training, too late to fail
    for flag, value in (("--num-beams", args.num_beams), ("--eval-batch-size", args.eval_batch_size)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    return args


# ---- data -----------------------------------------------------------------------------------
def load_corpus(args):
    if args.data is None:
        return stdlib_corpus(args.val_fraction, args.test_fraction)
    return code_corpus(args.data, (".py",), exclude_tests=not args.include_tests,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction)


def load_functions(corpus):
    """``{split: [FunctionDoc]}`` and what was skipped, from the corpus's files (by absolute path,
    found under its roots; FunctionDoc.path is then made relative again)."""
    roots = [Path(r) for r in corpus.info["roots"]]
    functions, skipped = {}, {"skipped_empty": 0, "skipped_long": 0, "syntax_errors": []}
    for split in ("train", "val", "test"):
        where = {}
        for f in corpus.split(split):
            where[str(next((r / f.path for r in roots if (r / f.path).is_file()), roots[0] / f.path))] = f.path
        found, report = extract_functions(list(where))
        for fn in found:
            fn.path = where[fn.path]
        functions[split] = found
        skipped["skipped_empty"] += report["skipped_empty"]
        skipped["skipped_long"] += report["skipped_long"]
        skipped["syntax_errors"] += [(where.get(p, p), msg) for p, msg in report["syntax_errors"] + report["unreadable"]]
    for path, msg in skipped["syntax_errors"]:
        print(f"skipped {path}: {msg}")
    if not functions["train"] or not functions["test"]:
        empty = [s for s in ("train", "test") if not functions[s]]
        raise ValueError(f"no documented function in the {' and '.join(empty)} files; summarization needs "
                         "functions with docstrings in every split (try a larger --data folder)")
    return functions, skipped


def build_tokenizer(args, train_functions, run):
    saved = run.saved_tokenizer()
    if saved is not None:  # resuming: the vocabulary the checkpoint was trained with
        if not isinstance(saved, Seq2SeqTokenizer):
            raise ValueError(f"--resume: {run.checkpoint_path} holds a {type(saved).__name__}, not the "
                             "Seq2SeqTokenizer of a summarization run; choose another --out-dir")
        return saved
    t0 = time.perf_counter()
    texts = [model_source(f.qualname, f.code, args.source_format) for f in train_functions] + \
        [f.summary for f in train_functions]
    # CODE_SPLIT_PATTERN: every line starts on a token boundary, so truncate_code can count lines.
    tok = Seq2SeqTokenizer.train(texts, vocab_size=args.vocab_size, pattern=CODE_SPLIT_PATTERN)
    print(f"trained a BPE tokenizer of {tok.vocab_size} ids on code and summaries in {time.perf_counter() - t0:.1f} s")
    return tok


def sources(functions, tokenizer, args):
    """(texts, ids) of what the encoder reads of each function, cut to the model's source length."""
    cut = [truncate_code(model_source(f.qualname, f.code, args.source_format), tokenizer, args.max_src_len)
           for f in functions]
    return [t for t, _ in cut], [i for _, i in cut]


def build_model(args, tokenizer):
    return cli.encoder_decoder_from_args(args, tokenizer, args.max_src_len, args.max_tgt_len)


def sampler(tokenizer, functions, src_ids, n=3):
    """``sample`` for the loop: the first ``n`` validation functions, summarized greedily."""
    functions, src_ids = functions[:n], src_ids[:n]

    def sample(model, max_new_tokens, seed):
        outs = summarize(model, tokenizer, src_ids, batch_size=n, max_new_tokens=max_new_tokens)
        return "\n".join(f"{f.name}: {o!r}   (docstring: {f.summary!r})" for f, o in zip(functions, outs))

    return sample


# ---- the test --------------------------------------------------------------------------------
def evaluate_test(model, tokenizer, functions, src_ids, args):
    """Every test function summarized (greedy and beam) and scored beside the baselines."""
    references = [f.summary for f in functions]
    outputs = baseline_summaries(functions)
    scores = {name: score_summaries(preds, references) for name, preds in outputs.items()}
    timing = {}
    for name, kwargs in (("greedy", {}), ("beam", {"num_beams": args.num_beams, "early_stopping": True,
                                                   "length_penalty": args.length_penalty})):
        t0 = time.perf_counter()
        outputs[name] = summarize(model, tokenizer, src_ids, args.eval_batch_size, **kwargs)
        timing[name] = time.perf_counter() - t0
        scores[name] = score_summaries(outputs[name], references)
    return outputs, scores, timing


def write_predictions(path, functions, outputs):
    """One JSON line per test function: where it is, its docstring summary, each system's."""
    per_pair = {name: [rouge([p], [f.summary], ("rougeL",))["rougeL"].fmeasure for p, f in zip(preds, functions)]
                for name, preds in outputs.items()}
    with open(path, "w", encoding="utf-8") as out:
        for i, f in enumerate(functions):
            row = {"path": f.path, "lineno": f.lineno, "qualname": f.qualname, "summary": f.summary,
                   **{name: outputs[name][i] for name in outputs},
                   "rougeL": {name: per_pair[name][i] for name in outputs}}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def print_table(scores, n, split="test"):
    print(f"\n{split} files: {n} functions; ROUGE F-measure (x100), corpus BLEU")
    print(f"{'system':<24}{'ROUGE-1':>9}{'ROUGE-2':>9}{'ROUGE-L':>9}{'BLEU':>8}")
    names = {"greedy": "model, greedy", "beam": "model, beam search", "name_words": "baseline: name words",
             "first_line": "baseline: first line"}
    for key, label in names.items():
        s = scores[key]
        print(f"{label:<24}{100 * s['rouge1']:>9.1f}{100 * s['rouge2']:>9.1f}{100 * s['rougeL']:>9.1f}"
              f"{s['bleu']:>8.2f}")


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    with cli.exit_on_error():  # (--num-threads 99 is a ValueError naming the pool's size)
        if args.num_threads:
            tinyllm.set_num_threads(args.num_threads)
    with cli.exit_on_error(), cli.TrainingRun(args) as run:
        corpus = load_corpus(args)
        functions, skipped = load_functions(corpus)
        counts = {s: len(functions[s]) for s in functions}
        print(f"{len(corpus.files)} files -> documented functions: {counts['train']:,} train, {counts['val']:,} "
              f"val, {counts['test']:,} test (skipped: {skipped['skipped_empty']} empty and "
              f"{skipped['skipped_long']} over-long summaries, {len(skipped['syntax_errors'])} unparsable files)")
        tokenizer = build_tokenizer(args, functions["train"], run)
        src = {s: sources(functions[s], tokenizer, args) for s in functions}
        n_cut = {s: sum(t != model_source(f.qualname, f.code, args.source_format)
                        for t, f in zip(src[s][0], functions[s])) for s in functions}
        train_ds = PairDataset(list(zip(src["train"][0], (f.summary for f in functions["train"]))), tokenizer,
                               args.max_src_len, args.max_tgt_len)
        val_ds = PairDataset(list(zip(src["val"][0], (f.summary for f in functions["val"]))), tokenizer,
                             args.max_src_len, args.max_tgt_len) if functions["val"] else train_ds
        print(f"sources cut to {args.max_src_len} tokens: {n_cut['train']} train, {n_cut['test']} test functions; "
              f"summaries over {args.max_tgt_len} tokens left out of training: {train_ds.n_skipped}")
        model = build_model(args, tokenizer)
        print(f"EncoderDecoderTransformer: {model.num_parameters():,} parameters")
        if run.is_main:  # (under mpiexec, rank 0 alone writes)
            corpus.save_manifest(run.out_dir / MANIFEST_NAME)
            write_json(run.out_dir / SOURCE_CONFIG_NAME, {"source_format": args.source_format})
        metrics = run.train(model, train_ds, val_ds, tokenizer, get_batch=pair_batches(args.length_buckets),
                            evaluate=pair_evaluator(args.eval_batch_size),
                            sample=sampler(tokenizer, functions["val"] or functions["train"],
                                           src["val"][1] or src["train"][1]))
        t0 = time.perf_counter()
        split = args.eval_split
        if not functions[split]:
            raise ValueError(f"--eval-split {split}: the {split} files hold no documented function")
        outputs, scores, timing = evaluate_test(model, tokenizer, functions[split], src[split][1], args)
        if run.is_main:
            write_predictions(run.out_dir / PREDICTIONS_NAME.format(split=split), functions[split], outputs)
        metrics.update({
            "task": "summarize Python functions (docstring first sentence)",
            "data": str(args.data) if args.data else "stdlib",
            "functions": counts, "sources_cut": n_cut, "skipped": {k: v if isinstance(v, int) else len(v)
                                                                   for k, v in skipped.items()},
            "source_format": args.source_format,
            split: {"n_functions": counts[split], **scores, "num_beams": args.num_beams,
                     "length_penalty": args.length_penalty, "decode_s": timing, "eval_s": time.perf_counter() - t0},
            "baselines": {"name_words": "the function's name split into words (get_user_name -> 'get user name')",
                          "first_line": "the first line of the function's body"},
            "examples": [{"qualname": f.qualname, "path": f.path, "summary": f.summary,
                          **{k: outputs[k][i] for k in outputs}}
                         for i, f in enumerate(functions[split][:args.n_examples])],
            "num_threads": tinyllm.get_num_threads(),
            "total_s": time.perf_counter() - t_start,
        })
        if run.is_main:
            write_json(run.out_dir / cli.METRICS_NAME, metrics)
        print_table(scores, counts[split], split)
        for ex in metrics["examples"]:
            print(f"  {ex['qualname']}: {ex['greedy']!r}\n    docstring: {ex['summary']!r}")
        print(f"{metrics['total_s']:.0f} s in all; summarize a file with: python examples/summarize.py "
              f"--model-dir {args.out_dir} --file some_module.py")
    return metrics


if __name__ == "__main__":
    main()
