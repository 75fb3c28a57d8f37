"""Where does the nanoGPT CPU recipe land: tinyllm's run and its PyTorch twin, seed by seed.

For each seed, PyTorch trains nanoGPT's GPT (benchmarks/_common.torch_gpt) from *tinyllm's* initial
weights for that seed, on *the same batches* tinyllm's Trainer draws for that seed, with the same
AdamW groups, clipping and warmup + cosine schedule; both are then scored on the whole validation
split of tiny-shakespeare in non-overlapping 64-token windows. The two runs differ only in float
rounding, so their gap shows what tinyllm itself adds, and the spread over seeds shows the noise
any single run carries.

    for s in 1337 1 2; do python examples/train_shakespeare.py --seed $s --out-dir runs/out-seed$s; done
    python benchmarks/bench_convergence.py --seeds 1337 1 2 --runs-dir runs

The tinyllm side is read from ``<runs-dir>/out-seed<N>/metrics.json`` (what train_shakespeare.py
writes); the PyTorch twins are trained here (about 1.5 minutes each on 2 cores).
"""
import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from tinyllm.data import get_batch, iter_eval_windows, load_text, train_val_split  # noqa: E402
from tinyllm.models import GPT, GPTConfig  # noqa: E402
from tinyllm.optim import cosine_lr  # noqa: E402
from tinyllm.tokenizers import CharTokenizer  # noqa: E402

RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4,
              warmup=100, betas=(0.9, 0.99), weight_decay=0.1, clip=1.0)


def torch_twin(seed, train_ids, val_ids, vocab_size, init_path):
    """Train the PyTorch model exactly as tinyllm's Trainer would for ``seed``; whole-split val loss."""
    import torch

    r = RECIPE
    model = C.torch_gpt(vocab_size, r["block_size"], r["n_layer"], r["n_head"], r["n_embd"], init_from=init_path)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": r["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=r["lr"], betas=r["betas"])
    batch_rng = np.random.default_rng([seed, 0])  # the Trainer's batch stream for this seed
    for it in range(r["max_iters"]):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(it, r["lr"], r["min_lr"], r["warmup"], r["max_iters"])
        x, y = get_batch(train_ids, r["batch_size"], r["block_size"], batch_rng)
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r["clip"])
        opt.step()
    return whole_split_loss_torch(torch, model, val_ids)


def whole_split_loss_torch(torch, model, val_ids):
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in iter_eval_windows(val_ids, RECIPE["block_size"], 32):
            _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
            total += loss.item() * y.size
            count += y.size
    return total / count


def tinyllm_init(seed, vocab_size, path):
    r = RECIPE
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=r["block_size"], n_layer=r["n_layer"],
                          n_head=r["n_head"], n_embd=r["n_embd"]), seed=seed)
    np.savez(path, **model.state_dict())


def tinyllm_result(seed, args):
    if args.runs_dir is None:
        return None
    path = Path(args.runs_dir) / f"out-seed{seed}" / "metrics.json"
    return json.loads(path.read_text())["val_loss"] if path.is_file() else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--runs-dir", default=None, help="where out-seed<N>/metrics.json of tinyllm runs are")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError as e:
        sys.exit(f"torch is needed for the PyTorch twin ({e}); pip install torch==2.13.0")
    torch.set_num_threads(2)
    text = load_text(args.data)
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(np.asarray(tok.encode(text), dtype=np.int64))
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            init_path = Path(tmp) / f"init-{seed}.npz"
            tinyllm_init(seed, tok.vocab_size, init_path)
            t0 = time.perf_counter()
            torch_loss = torch_twin(seed, train_ids, val_ids, tok.vocab_size, init_path)
        rows.append(dict(seed=seed, torch_val_loss=torch_loss, tinyllm_val_loss=tinyllm_result(seed, args),
                         torch_wall_s=time.perf_counter() - t0))
        ours = rows[-1]["tinyllm_val_loss"]
        print(f"seed {seed}: torch twin val loss {torch_loss:.4f} (whole split, ppl {math.exp(torch_loss):.2f}), "
              f"tinyllm {'not given' if ours is None else f'{ours:.4f}'}, {rows[-1]['torch_wall_s']:.0f} s", flush=True)
    torch_losses = [r["torch_val_loss"] for r in rows]
    print(f"torch twins: mean {np.mean(torch_losses):.4f}, min {min(torch_losses):.4f}, max {max(torch_losses):.4f}")
    if args.json:
        C.write_json(args.json, dict(recipe=RECIPE, rows=rows))


if __name__ == "__main__":
    main()
