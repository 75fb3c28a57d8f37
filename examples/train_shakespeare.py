"""Train a small GPT on tiny-shakespeare (or any UTF-8 text) on a CPU.

    python examples/train_shakespeare.py                      # nanoGPT's CPU recipe, a few minutes
    python examples/train_shakespeare.py --data my_text.txt   # your own text
    python examples/train_shakespeare.py --resume             # continue the run in --out-dir

Writes into --out-dir: ckpt.safetensors (full training state, for --resume), log.csv, the final
model (config.json, model.safetensors, tokenizer) for examples/sample.py, and metrics.json.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tinyllm.checkpoint import CHECKPOINT_NAME, read_checkpoint_meta
from tinyllm.data import load_text, train_val_split
from tinyllm.models import GPT, GPTConfig
from tinyllm.tokenizers import BPETokenizer, CharTokenizer
from tinyllm.training import TrainConfig, Trainer, evaluate_split, load_tokenizer_from_meta, write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="a UTF-8 text file to train on (default: tiny-shakespeare, found or downloaded)")
    p.add_argument("--out-dir", default="out-shakespeare", help="where checkpoints, logs and the model go")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out-dir")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out-dir holds a checkpoint")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
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
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=int, default=12)
    t.add_argument("--max-iters", type=int, default=2000)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--min-lr", type=float, default=1e-4)
    t.add_argument("--warmup-iters", type=int, default=100)
    t.add_argument("--lr-decay-iters", type=int, default=None,
                   help="where the cosine reaches --min-lr (default: --max-iters; set it when resuming "
                        "with a larger --max-iters to keep the original schedule)")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--eval-interval", type=int, default=250)
    t.add_argument("--eval-iters", type=int, default=20)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--sample-tokens", type=int, default=300, help="length of the final sample")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    return p.parse_args(argv)


def build_tokenizer(args, text, out_dir):
    if args.resume:
        return load_tokenizer_from_meta(read_checkpoint_meta(out_dir / CHECKPOINT_NAME))
    if args.tokenizer == "bpe":
        t0 = time.perf_counter()
        tok = BPETokenizer.train(text, args.vocab_size)
        print(f"trained a BPE tokenizer of {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f} s")
        return tok
    return CharTokenizer.from_text(text)


def check_out_dir(args, out_dir):
    """Never overwrite a run by accident: nothing already saved is lost."""
    ckpt = out_dir / CHECKPOINT_NAME
    if args.resume and not ckpt.exists():
        sys.exit(f"error: --resume, but {ckpt} does not exist (nothing to continue)")
    if ckpt.exists() and not (args.resume or args.overwrite):
        sys.exit(f"error: {out_dir} already holds a training run ({ckpt}); pass --resume to continue it, "
                 "--overwrite to start over, or choose another --out-dir")


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    check_out_dir(args, out_dir)
    try:
        text = load_text(args.data)
    except (FileNotFoundError, RuntimeError, UnicodeDecodeError, ValueError) as e:
        sys.exit(f"error: {e}")
    tokenizer = build_tokenizer(args, text, out_dir)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids)
    print(f"{len(text):,} characters -> {len(ids):,} tokens (vocab {tokenizer.vocab_size}); "
          f"train {len(train_ids):,}, val {len(val_ids):,}")

    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, pos_encoding=args.pos_encoding,
                       bias=args.bias, activation=args.activation)
    model = GPT(config, seed=args.seed)
    print(f"GPT: {model.num_parameters():,} parameters")
    cfg = TrainConfig(out_dir=str(out_dir), max_iters=args.max_iters, batch_size=args.batch_size,
                      learning_rate=args.lr, min_lr=args.min_lr, warmup_iters=args.warmup_iters,
                      lr_decay_iters=args.lr_decay_iters,
                      weight_decay=args.weight_decay, grad_clip=args.grad_clip, eval_interval=args.eval_interval,
                      eval_iters=args.eval_iters, seed=args.seed, progress=not args.no_progress)
    trainer = Trainer(model, train_ids, val_ids, cfg, tokenizer)
    result = trainer.train(resume=args.resume)

    val_loss, val_ppl = evaluate_split(model, val_ids, args.block_size)
    metrics = {
        "iter": result["iter"],
        "train_loss": result.get("train_loss"),
        "val_loss": val_loss,
        "val_perplexity": val_ppl,
        "val_loss_estimate": result.get("val_loss"),
        "tokens_per_sec": result["tokens_per_sec"],
        "wall_s": result["wall_s"],
        "n_params": model.num_parameters(),
        "config": config.to_dict(),
    }
    write_json(out_dir / "metrics.json", metrics)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"\nval loss {val_loss:.4f} (perplexity {val_ppl:.2f}) on the whole validation split; "
          f"{metrics['tokens_per_sec']:,.0f} tokens/s; {metrics['wall_s']:.0f} s" if metrics["tokens_per_sec"] else "")
    print(f"saved the model and metrics.json to {out_dir}/\n--- sample ---")
    print(trainer.sample(max_new_tokens=args.sample_tokens))


if __name__ == "__main__":
    main()
