"""Translate with a model trained by examples/train_translation.py.

    python examples/translate.py --model-dir out-translation "three hundred five"
    python examples/translate.py --model-dir out-translation --num-beams 4 "seventy-one" "eighty thousand"
    echo "twenty-one thousand" | python examples/translate.py --model-dir out-translation

Each source is encoded as the model was trained (its ids, then </s>), translated by
``model.generate`` (greedy by default, beam search with --num-beams) and decoded without the
special tokens: the Hugging Face workflow, in NumPy.
"""
import argparse
import sys

import tinyllm  # noqa: F401  (before NumPy: see tinyllm/_runtime.py)

from tinyllm import AutoModelForSeq2SeqLM, AutoTokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="sentences to translate (default: one per line from stdin)")
    p.add_argument("--model-dir", required=True, help="a directory written by train_translation.py")
    p.add_argument("--num-beams", type=int, default=1, help="1: greedy; more: beam search")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: as long as the model allows")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        sys.exit("error: nothing to translate; pass sentences as arguments or on stdin")
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    max_new_tokens = args.max_new_tokens or model.config.max_tgt_len - 1
    try:
        input_ids = tokenizer.batch_encode(texts)  # (B, S), padded with <pad>
        output = model.generate(input_ids, max_new_tokens=max_new_tokens, num_beams=args.num_beams,
                                early_stopping=args.num_beams > 1)
    except ValueError as e:  # e.g. a source longer than the model's max_src_len
        sys.exit(f"error: {e}")
    for translation in tokenizer.batch_decode(output, skip_special_tokens=True):
        print(translation)


if __name__ == "__main__":
    main()
