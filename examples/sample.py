"""Generate text from a model saved by train_shakespeare.py (or any save_pretrained directory).

    python examples/sample.py --model-dir out-shakespeare --prompt "ROMEO:" --max-new-tokens 300
    python examples/sample.py --model-dir out-shakespeare --temperature 0      # greedy
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from tinyllm.cli import exit_on_error
from tinyllm.models import GPT
from tinyllm.tokenizers import AutoTokenizer
from tinyllm.training import lm_sample_prompt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("out-shakespeare"))
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a newline, or the first token when the vocabulary has none)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every token")
    args = p.parse_args(argv)

    with exit_on_error(on_interrupt="interrupted"):
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}")
        if not (args.model_dir / "config.json").is_file():
            sys.exit(f"error: {args.model_dir} holds no saved model (config.json); train one first with "
                     "`python examples/train_shakespeare.py --out-dir DIR`, or pass --model-dir")
        model = GPT.from_pretrained(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        prompt_ids = lm_sample_prompt(tokenizer, [0], args.prompt)  # [0]: id 0 if there is no newline
        prompt = np.asarray([prompt_ids] * args.num_samples, dtype=np.int64)[:, -model.config.block_size:]
        out = model.generate(prompt, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                             use_cache=not args.no_cache)
        check_decodable(tokenizer, out)
        for row in out:
            print(tokenizer.decode(row))
            print("-" * 40)


def check_decodable(tokenizer, out):
    """decode skips an id its tokenizer lacks, as transformers' does; here such an id means a model and a
    tokenizer that do not belong together (e.g. a hand-edited one), so say so rather than print less text."""
    bad = next((int(i) for i in np.unique(out) if tokenizer.convert_ids_to_tokens(int(i)) is None), None)
    if bad is not None:
        raise ValueError(f"sample: the model emitted id {bad}, which its tokenizer lacks (vocab_size "
                         f"{tokenizer.vocab_size}): are the model and the tokenizer from the same run?")


if __name__ == "__main__":
    main()
