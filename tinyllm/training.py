"""The training loop: batches, AdamW with warmup + cosine, clipping, evaluation, samples, logs,
checkpoints and exact resumption.

    for it in range(start, max_iters):
        every eval_interval: mean train/val loss over eval_iters batches, a sample, a checkpoint
        x, y = get_batch(train)          # (B, T) ids and the same shifted by one
        loss = model(x, y)               # forward
        loss.backward()                  # gradients
        clip_grad_norm(params, 1.0)      # tame rare spikes
        optimizer.step()                 # AdamW

Same seed, same run: batches come from a seeded Generator, dropout from another, and both
states are in the checkpoint, so ``resume=True`` continues bit for bit where the run stopped.
"""
import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import optim
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, restore_rng, rng_state, save_checkpoint
from .data import get_batch, iter_eval_windows
from .tensor import no_grad
from .tokenizers import Tokenizer

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "configure_optimizer", "estimate_loss", "evaluate_split"]

LOG_NAME = "log.csv"
LOG_FIELDS = ["iter", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s", "eval_train_loss", "eval_val_loss"]


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite."""


@dataclass
class TrainConfig:
    """nanoGPT's shakespeare-char CPU recipe by default."""

    out_dir: str = "out-shakespeare"
    max_iters: int = 2000
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = None  # None: max_iters
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    sample_tokens: int = 200
    sample_prompt: str = "\n"
    progress: bool = True

    def __post_init__(self):
        for name in ("max_iters", "batch_size", "eval_interval", "eval_iters"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < (0 if name == "max_iters" else 1):
                raise ValueError(f"TrainConfig: {name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0 or not self.min_lr >= 0:
            raise ValueError(f"TrainConfig: need learning_rate > 0 and min_lr >= 0, got {self.learning_rate}, {self.min_lr}")
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters


def configure_optimizer(model, cfg):
    """AdamW with weight decay on the 2-D weights (matmuls and embeddings) only, as nanoGPT:
    decaying biases and LayerNorm gains toward 0 would only hurt."""
    params = model.parameters()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


@no_grad()
def estimate_loss(model, data, batch_size, block_size, eval_iters, rng):
    """Mean loss over ``eval_iters`` random batches (nanoGPT's estimate)."""
    was_training = model.training
    model.eval()
    losses = [model(*get_batch(data, batch_size, block_size, rng))[1].item() for _ in range(eval_iters)]
    model.train(was_training)
    return float(np.mean(losses))


@no_grad()
def evaluate_split(model, data, block_size=None, batch_size=32):
    """Mean loss per token over the whole split, in non-overlapping ``block_size`` windows.

    Returns (mean loss, perplexity = e^loss). Every token of the split is predicted exactly once.
    """
    block_size = block_size or model.config.block_size
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in iter_eval_windows(data, block_size, batch_size):
        _, loss = model(x, y)
        total += loss.item() * y.size
        count += y.size
    model.train(was_training)
    mean = total / count
    return mean, math.exp(mean)


class Trainer:
    """Trains ``model`` on token arrays ``train_data`` / ``val_data`` (1-D int) as ``cfg`` says."""

    def __init__(self, model, train_data, val_data, cfg, tokenizer=None):
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.train_data, self.val_data = train_data, val_data
        self.block_size = model.config.block_size
        self.out_dir = Path(cfg.out_dir)
        self.params = model.parameters()
        self.optimizer = configure_optimizer(model, cfg)
        self.schedule = optim.WarmupCosineLR(self.optimizer, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters,
                                             cfg.lr_decay_iters)
        self.batch_rng = np.random.default_rng([cfg.seed, 0])
        self.eval_rng = np.random.default_rng([cfg.seed, 2])
        model.set_dropout_rng(np.random.default_rng([cfg.seed, 1]))
        self.iter_num = 0
        self.history = []  # (iter, loss) of every step, for tests and plots
        self.last_eval = {}

    @property
    def checkpoint_path(self):
        return self.out_dir / CHECKPOINT_NAME

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self):
        rngs = {"batch": rng_state(self.batch_rng), "eval": rng_state(self.eval_rng),
                "dropout": rng_state(self.model.dropout_rng)}
        extra = {"train_config": asdict(self.cfg), "last_eval": self.last_eval}
        if self.tokenizer is not None:
            extra["tokenizer"] = self.tokenizer.to_dict()
        save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.iter_num, rngs, extra)

    def resume(self):
        """Continue from ``out_dir/ckpt.safetensors``: weights, moments, step, RNG states."""
        meta, model_state, opt_state = load_checkpoint(self.checkpoint_path)
        if meta["model_config"] != self.model.config.to_dict():
            raise ValueError(f"resume: the checkpoint's model config {meta['model_config']} differs from this "
                             f"model's {self.model.config.to_dict()}")
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(opt_state)
        self.batch_rng = restore_rng(meta["rng_states"]["batch"])
        self.eval_rng = restore_rng(meta["rng_states"]["eval"])
        self.model.set_dropout_rng(restore_rng(meta["rng_states"]["dropout"]))
        self.iter_num = meta["iter"]
        self.last_eval = meta.get("last_eval", {})
        return meta

    # --- the loop -----------------------------------------------------------------------------
    def train_step(self):
        """One optimizer step on one batch; returns (loss, grad_norm, lr)."""
        cfg, model = self.cfg, self.model
        lr = self.schedule.set_step(self.iter_num)
        x, y = get_batch(self.train_data, cfg.batch_size, self.block_size, self.batch_rng)
        _, loss = model(x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            self._diverged(f"loss is {loss_value}", lr)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = optim.clip_grad_norm(self.params, cfg.grad_clip) if cfg.grad_clip else float("nan")
        if cfg.grad_clip and not math.isfinite(grad_norm):
            self._diverged(f"gradient norm is {grad_norm}", lr)
        self.optimizer.step()
        self.iter_num += 1
        return loss_value, grad_norm, lr

    def _diverged(self, what, lr):
        where = (f"the last good checkpoint, {self.checkpoint_path}, is untouched; continue from it with --resume "
                 "(perhaps with a lower learning rate)") if self.checkpoint_path.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(f"training stopped at iter {self.iter_num}: {what} (lr {lr:.3g}); {where}")

    def evaluate(self):
        cfg = self.cfg
        self.last_eval = {
            "iter": self.iter_num,
            "train_loss": estimate_loss(self.model, self.train_data, cfg.batch_size, self.block_size, cfg.eval_iters,
                                        self.eval_rng),
            "val_loss": estimate_loss(self.model, self.val_data, cfg.batch_size, self.block_size, cfg.eval_iters,
                                      self.eval_rng),
        }
        return self.last_eval

    def sample(self, max_new_tokens=None, seed=None):
        if self.tokenizer is None:
            return None
        prompt = np.asarray([self.tokenizer.encode(self.cfg.sample_prompt)], dtype=np.int64)
        out = self.model.generate(prompt, max_new_tokens=max_new_tokens or self.cfg.sample_tokens, temperature=0.8,
                                  top_k=200, seed=self.cfg.seed if seed is None else seed)
        return self.tokenizer.decode(out[0])

    def train(self, resume=False, log=print):
        """Run to ``max_iters``; returns the last evaluation and throughput figures."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            meta = self.resume()
            log(f"resumed from {self.checkpoint_path} at iter {meta['iter']}")
        logger = _CsvLog(self.out_dir / LOG_NAME, truncate_from=self.iter_num)
        bar = _progress(cfg, self.iter_num)
        tokens_per_step = cfg.batch_size * self.block_size
        start, step_time, steps_timed = time.perf_counter(), 0.0, 0
        try:
            while True:
                if self.iter_num % cfg.eval_interval == 0 or self.iter_num == cfg.max_iters:
                    if not (resume and self.last_eval.get("iter") == self.iter_num):
                        self._eval_and_checkpoint(logger, bar, log, time.perf_counter() - start)
                if self.iter_num >= cfg.max_iters:
                    break
                t0 = time.perf_counter()
                loss, grad_norm, lr = self.train_step()
                dt = time.perf_counter() - t0
                step_time, steps_timed = step_time + dt, steps_timed + 1
                self.history.append((self.iter_num, loss))
                tps = tokens_per_step / dt
                logger.write(iter=self.iter_num, loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_sec=tps,
                             elapsed_s=time.perf_counter() - start)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
        finally:
            logger.close()
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - start
        return {**self.last_eval, "tokens_per_sec": tokens_per_step * steps_timed / step_time if steps_timed else None,
                "wall_s": wall, "iter": self.iter_num}

    def _eval_and_checkpoint(self, logger, bar, log, elapsed):
        ev = self.evaluate()
        if not (math.isfinite(ev["train_loss"]) and math.isfinite(ev["val_loss"])):
            self._diverged(f"evaluation loss is {ev['train_loss']} (train) / {ev['val_loss']} (val)",
                           self.optimizer.param_groups[0]["lr"])
        logger.write(iter=self.iter_num, eval_train_loss=ev["train_loss"], eval_val_loss=ev["val_loss"],
                     elapsed_s=elapsed)
        msg = f"iter {self.iter_num}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}"
        text = self.sample()
        if text is not None:
            msg += "\n--- sample ---\n" + text + "\n--------------"
        (bar.write if bar is not None else log)(msg)
        if self.iter_num > 0:
            self.save_checkpoint()


def _progress(cfg, start):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_iters, initial=start, desc="training", unit="it", dynamic_ncols=True)


class _CsvLog:
    """``log.csv``: one row per step (``iter`` counts steps done) and one per evaluation. On resume,
    rows after the checkpoint's iteration are dropped first, so the log reads as one uninterrupted run."""

    def __init__(self, path, truncate_from=0):
        rows = []
        if truncate_from > 0 and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iter"]) <= truncate_from]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)

    def write(self, **row):
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self):
        self.file.close()


def load_tokenizer_from_meta(meta):
    """The tokenizer stored in a checkpoint's metadata (or None)."""
    d = meta.get("tokenizer")
    if d is None:
        return None
    return Tokenizer.from_dict(d)


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
