"""Summarize every function of a Python file with a model trained by examples/train_summarization.py.

    python examples/summarize.py --model-dir out-summarization --file some_module.py
    python examples/summarize.py --model-dir out-summarization --file some_module.py --num-beams 4 --docstrings

Prints one line per function and method (documented or not, nested ones too): its qualified
name and the generated summary. The file is parsed, never run. Each function is read as in
training: its code without the docstring, after its qualified name in words if the model was
trained so (the model directory's summarization.json says which), cut to the model's source
length at a line boundary.
With --docstrings, the function's own docstring summary (if any) follows on the next line.
"""
import argparse
import json
import sys
from pathlib import Path

import tinyllm  # noqa: F401  (before NumPy: see tinyllm/_runtime.py)

from tinyllm import AutoModelForSeq2SeqLM, AutoTokenizer, cli
from tinyllm.summarization import SOURCE_FORMATS, functions_in_file, model_source, summarize, truncate_code

SOURCE_CONFIG_NAME = "summarization.json"  # written by train_summarization.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a directory written by train_summarization.py")
    p.add_argument("--file", required=True, help="the Python file whose functions to summarize")
    p.add_argument("--num-beams", type=int, default=1, help="1: greedy; more: beam search")
    p.add_argument("--length-penalty", type=float, default=2.0,
                   help="beam search: score / length ** this (default: %(default)s, as train_summarization.py)")
    p.add_argument("--docstrings", action="store_true", help="also print each function's own docstring summary")
    p.add_argument("--num-threads", type=int, default=1,
                   help="threads for the kernels (default: %(default)s, fastest for small models on a busy machine)")
    return p.parse_args(argv)


def source_format(model_dir):
    """How the model read a function in training: ``summarization.json``'s ``source_format``;
    "code" for a model directory trained before the file existed."""
    path = Path(model_dir) / SOURCE_CONFIG_NAME
    if not path.is_file():
        return "code"
    try:
        fmt = json.loads(path.read_text(encoding="utf-8"))["source_format"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a summarization config ({e!r}); it should hold "
                         '{"source_format": ...}, as train_summarization.py writes it') from None
    if fmt not in SOURCE_FORMATS:
        raise ValueError(f"{path}: unknown source_format {fmt!r}; known: {sorted(SOURCE_FORMATS)}")
    return fmt


@cli.stops_on_ctrl_c
def main(argv=None):
    args = parse_args(argv)
    if args.num_beams < 1:  # (0 used to mean greedy, silently)
        sys.exit(f"error: --num-beams must be at least 1 (1: greedy), got {args.num_beams}")
    try:
        if args.num_threads:
            tinyllm.set_num_threads(args.num_threads)
        functions = functions_in_file(args.file)
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        if not hasattr(tokenizer, "pad_token_id") or not hasattr(model.config, "max_src_len"):
            raise ValueError(f"{args.model_dir} does not hold an encoder-decoder and its Seq2SeqTokenizer "
                             "(train one with examples/train_summarization.py)")
        if not functions:
            print(f"{args.file}: no function to summarize")
            return []
        fmt = source_format(args.model_dir)
        src_ids = [truncate_code(model_source(f.qualname, f.code, fmt), tokenizer, model.config.max_src_len)[1]
                   for f in functions]
        kwargs = {"num_beams": args.num_beams, "early_stopping": True, "length_penalty": args.length_penalty} \
            if args.num_beams > 1 else {}
        summaries = summarize(model, tokenizer, src_ids, **kwargs)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    for f, summary in zip(functions, summaries):
        print(f"{f.qualname}: {summary}")
        if args.docstrings:
            print(f"    docstring: {f.docstring_summary or '(none)'}")
    return list(zip((f.qualname for f in functions), summaries))


if __name__ == "__main__":
    main()
