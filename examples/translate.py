"""Translate with a model trained by examples/train_translation.py.

    python examples/translate.py --model-dir out-translation "three hundred five"
    python examples/translate.py --model-dir out-translation --num-beams 4 "seventy-one" "eighty thousand"
    echo "twenty-one thousand" | python examples/translate.py --model-dir out-translation

Each source is encoded as the model was trained (its ids, then </s>), translated by
``model.generate`` (greedy by default, beam search with --num-beams) and decoded without the
special tokens: the Hugging Face workflow, in NumPy. Prints one translation a line, in order.
"""
import argparse
import sys

import numpy as np

import tinyllm
from tinyllm import AutoModelForSeq2SeqLM, AutoTokenizer, cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="sentences to translate (default: one per line from stdin)")
    p.add_argument("--model-dir", required=True, help="a directory written by train_translation.py")
    p.add_argument("--num-beams", type=int, default=1, help="1: greedy; more: beam search")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: as long as the model allows")
    p.add_argument("--batch-size", type=int, default=64, help="sources translated at once")
    # small models run faster on one thread each kernel (see train_translation.py)
    p.add_argument("--num-threads", type=int, default=1, help="threads for the kernels (0: tinyllm's default)")
    return p.parse_args(argv)


def check_lengths(texts, tokenizer, model, model_dir):
    """Encode every text; a source longer than the model reads is an error that names it."""
    limit = model.config.max_src_len
    encoded = []
    for i, text in enumerate(texts, 1):
        ids = tokenizer.encode(text)
        if len(ids) > limit:
            clipped = text if len(text) <= 60 else text[:60] + "..."
            raise ValueError(f"source {i} ({clipped!r}) is {len(ids)} tokens long (with </s>), but this model reads "
                             f"at most {limit} (max_src_len in {model_dir}/config.json); shorten or split it")
        encoded.append(ids)
    return encoded


@cli.stops_on_ctrl_c
def main(argv=None):
    args = parse_args(argv)
    if args.batch_size < 1:
        sys.exit(f"error: --batch-size must be at least 1, got {args.batch_size}")
    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        sys.exit("error: nothing to translate; pass sentences as arguments or on stdin")
    try:
        if args.num_threads:
            tinyllm.set_num_threads(args.num_threads)
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        encoded = check_lengths(texts, tokenizer, model, args.model_dir)
        max_new_tokens = model.config.max_tgt_len if args.max_new_tokens is None else args.max_new_tokens
        for start in range(0, len(texts), args.batch_size):
            batch = encoded[start:start + args.batch_size]
            input_ids = np.full((len(batch), max(map(len, batch))), tokenizer.pad_token_id, dtype=np.int64)
            for row, ids in enumerate(batch):  # (B, S), padded with <pad> after each source
                input_ids[row, :len(ids)] = ids
            output = model.generate(input_ids, max_new_tokens=max_new_tokens, num_beams=args.num_beams)
            for translation in tokenizer.batch_decode(output, skip_special_tokens=True):
                print(translation, flush=True)
    except (OSError, ValueError) as e:  # a missing or broken model directory, a source too long, a bad option
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
