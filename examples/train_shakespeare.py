"""Train a small GPT on tiny-shakespeare (or any UTF-8 text) on a CPU.

    python examples/train_shakespeare.py                      # nanoGPT's CPU recipe, a few minutes
    python examples/train_shakespeare.py --data my_text.txt   # your own text
    python examples/train_shakespeare.py --resume             # continue the run in --out-dir

Writes into --out-dir: ckpt.safetensors (full training state, for --resume), log.csv, the final
model (config.json, model.safetensors, tokenizer) for examples/sample.py, and metrics.json.
This file holds only what is particular to it, the text and the GPT; the loop, checkpoints,
resuming and the shared options are tinyllm.training and tinyllm.cli.
"""
import argparse
import time
from pathlib import Path

import numpy as np

from tinyllm import cli
from tinyllm.data import lm_train_val_split, load_text
from tinyllm.models import GPT, GPTConfig
from tinyllm.tokenizers import BPETokenizer, CharTokenizer, shakespeare_chat_template

TOKENIZERS = {"char": CharTokenizer, "bpe": BPETokenizer}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="a UTF-8 text file to train on (default: tiny-shakespeare, found or downloaded)")
    p.add_argument("--tokenizer", choices=sorted(TOKENIZERS), default="char")
    p.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (with --tokenizer bpe)")
    m = p.add_argument_group("model (nanoGPT's shakespeare-char CPU recipe by default)")
    m.add_argument("--n-layer", type=int, default=4)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--n-embd", type=int, default=128)
    m.add_argument("--block-size", type=int, default=64)
    m.add_argument("--dropout", type=float, default=0.0)
    m.add_argument("--pos-encoding", choices=["learned", "sinusoidal"], default="learned")
    # GPT-2's choices by default, so the trained model also exports to Hugging Face GPT-2 format;
    # nanoGPT's train.py runs this recipe with --no-bias --activation gelu (the same loss, within
    # seed-to-seed noise: see the README).
    m.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True,
                   help="biases in Linear and LayerNorm layers (GPT-2 has them)")
    m.add_argument("--activation", choices=["gelu", "gelu_tanh"], default="gelu_tanh",
                   help="GPT-2's tanh-approximated GELU, or the exact one")
    cli.add_training_args(p, out_dir="out-shakespeare")
    return p.parse_args(argv)


def build_tokenizer(args, text, run):
    saved = run.saved_tokenizer()
    if saved is not None:  # resuming: the vocabulary the checkpoint was trained with
        if not isinstance(saved, TOKENIZERS[args.tokenizer]):
            raise ValueError(f"--resume: {run.checkpoint_path} was trained with a {type(saved).__name__}, "
                             f"not --tokenizer {args.tokenizer}")
        return saved
    if args.tokenizer == "bpe":
        t0 = time.perf_counter()
        tok = BPETokenizer.train(text, args.vocab_size)
        print(f"trained a BPE tokenizer of {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f} s")
        return tok
    return CharTokenizer.from_text(text)


def main(argv=None):
    args = parse_args(argv)
    with cli.exit_on_error(), cli.TrainingRun(args) as run:
        text = load_text(args.data)
        tokenizer = build_tokenizer(args, text, run)
        tokenizer.set_chat_template(shakespeare_chat_template(), stop_strings=["\n\n"])  # examples/chat.py, tinyllm serve
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        train_ids, val_ids = lm_train_val_split(ids, args.block_size, source=str(args.data or "tiny-shakespeare"))
        print(f"{len(text):,} characters -> {len(ids):,} tokens (vocab {tokenizer.vocab_size}); "
              f"train {len(train_ids):,}, val {len(val_ids):,}")
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout,
                           pos_encoding=args.pos_encoding, bias=args.bias, activation=args.activation)
        model = GPT(config, seed=args.seed)
        print(f"GPT: {model.num_parameters():,} parameters")
        return run.train(model, train_ids, val_ids, tokenizer)


if __name__ == "__main__":
    main()
