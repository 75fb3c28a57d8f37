"""A small encoder-decoder run on padded pairs, for tests/test_mpi*.py: run in one process, with
gradient accumulation, or on the ranks of ``mpiexec -n 2``, it must follow the same losses.

    python tests/mpi_scenarios.py OUT_DIR [--accum K] [--steps N]
    mpiexec -n 2 python tests/mpi_scenarios.py OUT_DIR

The pairs have 1 to 9 tokens, so the rows of a batch carry very different numbers of target
tokens (the rest is padding, -100): a data-parallel or accumulated step that weighed its parts by
rows instead of tokens would not follow the one-batch run. Label smoothing is on. Rank 0 prints
one line ``RESULT {json}``: every step's loss, the evaluations, and the final (task) evaluation,
which runs on rank 0 alone under MPI.
"""
import argparse
import json
import sys

import tinyllm  # noqa: F401  (before NumPy)
import numpy as np

from tinyllm.datasets.pairs import collate_pairs
from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer
from tinyllm.training import TrainConfig, Trainer

PAD, BOS, EOS, VOCAB = 0, 1, 2, 12


def pairs(n, seed):
    """(source, target) id lists: the target is the source reversed, then EOS."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        src = rng.integers(3, VOCAB, rng.integers(1, 10)).tolist()
        out.append((src, src[::-1] + [EOS]))
    return out


def get_batch(data, batch_size, rng):
    rows = rng.integers(0, len(data), batch_size)
    src, tgt_in, tgt_out = collate_pairs([data[i][0] for i in rows], [data[i][1] for i in rows], PAD, BOS)
    return (src, tgt_in), tgt_out


def evaluate(model, data):
    (src, tgt_in), tgt_out = get_batch(data, len(data), np.random.default_rng(0))
    _, loss = model(src, tgt_in, targets=tgt_out)
    return {"loss": loss.item(), "pairs": len(data)}


def make_trainer(out_dir, accum=1, steps=30, **cfg):
    config = EncoderDecoderConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, max_src_len=16, max_tgt_len=16,
                                  n_encoder_layers=1, n_decoder_layers=1, n_head=2, d_model=16, d_ff=32, dropout=0.0,
                                  label_smoothing=0.1, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    settings = dict(out_dir=str(out_dir), max_iters=steps, batch_size=12, learning_rate=3e-3, min_lr=3e-4,
                    warmup_iters=3, eval_interval=10, eval_iters=3, sample_tokens=0, progress=False, seed=5,
                    grad_accum_steps=accum)
    settings.update(cfg)
    model = EncoderDecoderTransformer(config, seed=0)
    return Trainer(model, pairs(300, 1), pairs(40, 2), TrainConfig(**settings), get_batch=get_batch,
                   evaluate=evaluate)


def run(out_dir, accum=1, steps=30):
    trainer = make_trainer(out_dir, accum, steps)
    evals = []

    def log(msg):
        evals.append(msg)

    result = trainer.train(log=log)
    final = trainer.evaluate_split("val")
    return {"losses": [loss for _, loss in trainer.history], "train_loss": result["train_loss"],
            "val_loss": result["val_loss"], "final": final, "world_size": trainer.world.size}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    result = run(args.out_dir, args.accum, args.steps)
    from tinyllm.distributed import get_world

    if get_world().is_main:
        print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
