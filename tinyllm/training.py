"""The training loop every tinyllm example shares: batches, AdamW with warmup + cosine, clipping,
evaluation, samples, logs, checkpoints, exact resumption and the divergence stop.

    for it in range(start, max_iters):
        every eval_interval (and at the end): estimate train/val loss on eval_iters batches,
                                              show a sample, write a checkpoint
        inputs, targets = get_batch(train_data, batch_size, batch_rng)   # the whole batch
        for each micro-batch of this rank's rows:         # (one, unless data parallel or accumulating)
            logits, loss = model(*inputs, targets=targets)    # forward
            (loss * its share of the target tokens).backward()  # gradients, added up
        [all-reduce]                                      # data parallel: sum the gradients over the ranks
        [grad hooks]                                      # yours, on the whole batch's gradients
        clip_grad_norm(params, grad_clip)                 # tame rare spikes
        optimizer.step()                                  # AdamW

A new task brings its data and its model, not another loop. What the loop asks of them:

* the model: ``model(*inputs, targets=targets) -> (logits, loss)`` with ``loss`` a scalar Tensor
  (the mean over the targets, positions equal to -100 ignored); ``parameters()``,
  ``state_dict()``, ``load_state_dict()``, ``train()``, ``eval()``; ``config.to_dict()`` (stored
  in checkpoints, compared on resume); ``set_dropout_rng(rng)`` and ``dropout_rng`` (every dropout
  draws from that one Generator, whose state the checkpoint keeps).
* ``get_batch(data, batch_size, rng) -> (inputs, targets)``: ``inputs`` a tuple of arrays passed
  positionally to the model, ``targets`` an integer array. ``data`` is whatever you passed as
  ``train_data`` / ``val_data``. Default: :func:`lm_batches` (nanoGPT's random blocks of a 1-D
  token array, ``inputs = (x,)``).
* ``evaluate(model, data) -> {"loss": ..., ...}``: a metric over a whole split (the model in eval
  mode, no gradients), used for the final numbers in ``metrics.json``. Default:
  :func:`lm_evaluate` (mean loss per token over every token of a 1-D array, and perplexity).
* ``sample(model, max_new_tokens, seed) -> str``: what to print at each evaluation. Default for a
  causal LM with a tokenizer: :func:`lm_sampler`, continuing ``cfg.sample_prompt`` (or a newline,
  or the first token of the training data: always something the tokenizer can encode).

Example, a causal LM on token ids (the CLI around it is :mod:`tinyllm.cli`)::

    cfg = TrainConfig(out_dir="out", max_iters=2000)
    trainer = Trainer(model, train_ids, val_ids, cfg, tokenizer)     # LM defaults for the rest
    result = trainer.train()                      # or trainer.train(resume=True)
    metrics = trainer.evaluate_split()            # {"loss": ..., "perplexity": ...} on val_data

and an encoder-decoder on (source, target) pairs only swaps the data functions::

    trainer = Trainer(model, train_pairs, val_pairs, cfg, tokenizer,
                      get_batch=pad_pairs, evaluate=bleu_and_loss, sample=translate_one)

Same seed, same run: batches come from a seeded Generator, dropout from another, evaluation
batches from a third; all three states are in the checkpoint, so ``resume=True`` continues bit
for bit where the run stopped, and its ``log.csv`` reads row for row as the uninterrupted run's.
Checkpoints are written atomically; a run that diverges or cannot write stops with the last good
checkpoint untouched; ``out_dir`` is locked against a second trainer while this one runs.

One batch, many ways to compute it. ``batch_size`` is always the number of examples per optimizer
step, and the loss is the mean over all of their target tokens. ``grad_accum_steps`` cuts the batch
into that many micro-batches, run one after another (less memory); under ``mpiexec -n N`` each of
the N ranks (:mod:`tinyllm.distributed`) takes a contiguous share of the rows, and an all-reduce
adds the ranks' gradients. Each micro-batch's loss is weighted by its share of the batch's target
tokens (shares differ when targets are padded with -100), so the gradient is the one-process
gradient whatever the split, up to float rounding (summation order): same losses, same run. Every
rank draws the same batches and takes the same AdamW step; rank 0 alone prints, logs, samples,
writes checkpoints and holds the lock; evaluation batches are shared out and their losses summed.
The one difference is dropout: each rank (and each micro-batch) draws its masks for its own rows
from its own Generator, so with ``dropout > 0`` the masks differ from one process's (same
distribution, same expected gradient; the run is repeatable for a given number of ranks and
micro-batches, and the checkpoint keeps every rank's dropout state).
"""
import contextlib
import csv
import json
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import distributed, optim
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, lock_out_dir, restore_rng, rng_state, save_checkpoint
from .data import get_batch as _lm_get_batch
from .data import iter_eval_windows
from .errors import CheckpointWriteError, FileFormatError
from .metrics import perplexity
from .models.io import write_atomic
from .tensor import no_grad
from .tokenizers import Tokenizer

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "configure_optimizer", "estimate_loss", "evaluate_split",
           "lm_batches", "lm_evaluate", "lm_sample_prompt", "lm_sampler"]

LOG_NAME = "log.csv"
LOG_FIELDS = ["iter", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s", "eval_train_loss", "eval_val_loss"]
_EXACT_FIELDS = ("loss", "grad_norm", "eval_train_loss", "eval_val_loss")  # logged with every digit


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm, or an evaluation loss) became NaN or infinite. The message
    names the step and the last good checkpoint, which the failed step never overwrites."""


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
    grad_clip: float = 1.0  # 0: no clipping (the norm is still computed, to catch NaN)
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    sample_tokens: int = 200  # 0: no samples
    sample_prompt: str = None  # None: a newline if the tokenizer has one, else the data's first token
    progress: bool = True
    grad_accum_steps: int = 1  # micro-batches per step (each rank's rows cut in this many); the same run

    def __post_init__(self):
        minimum = dict(max_iters=0, batch_size=1, eval_interval=1, eval_iters=1, warmup_iters=0, sample_tokens=0,
                       grad_accum_steps=1)
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                kind = "a positive integer" if low else "an integer >= 0"
                raise ValueError(f"TrainConfig: {name} must be {kind}, got {value!r}")
        if not self.learning_rate > 0 or not self.min_lr >= 0:
            raise ValueError(f"TrainConfig: need learning_rate > 0 and min_lr >= 0, got {self.learning_rate}, {self.min_lr}")
        if not self.grad_clip >= 0:
            raise ValueError(f"TrainConfig: grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if not self.weight_decay >= 0:  # (AdamW refuses it too, but only at the first step, after a checkpoint)
            raise ValueError(f"TrainConfig: weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_accum_steps > self.batch_size:
            raise ValueError(f"TrainConfig: grad_accum_steps {self.grad_accum_steps} exceeds batch_size "
                             f"{self.batch_size}: every micro-batch needs at least one example")
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


# ----------------------------------------------------------------------------------------------
# the causal-LM defaults: batches, whole-split evaluation and samples over 1-D token arrays


def lm_batches(block_size):
    """``get_batch`` for a causal LM: ``block_size`` windows of a 1-D token array at random
    offsets (:func:`tinyllm.data.get_batch`); ``inputs = (x,)``, ``targets = y``, both (B, T)."""

    def get_batch(data, batch_size, rng):
        x, y = _lm_get_batch(data, batch_size, block_size, rng)
        return (x,), y

    return get_batch


@no_grad()
def evaluate_split(model, data, block_size=None, batch_size=32, world=None):
    """Mean loss per token over the whole split, in non-overlapping ``block_size`` windows.

    Returns (mean loss, perplexity = e^loss; inf past float64, not an OverflowError). Every token of the
    split is predicted exactly once.
    With ``world`` (a :class:`tinyllm.distributed.World`) of several ranks, rank r takes every
    r-th batch of windows and the sums are added over the ranks; call it on every rank.
    """
    block_size = block_size or model.config.block_size
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(iter_eval_windows(data, block_size, batch_size)):
        if i % size == rank:
            _, loss = model(x, y)
            total += loss.item() * y.size
            count += y.size
    model.train(was_training)
    if size > 1:
        total, count = world.sum([total, count], "the whole-split evaluation")
    mean = total / count
    return mean, perplexity(mean)


def lm_evaluate(model, data, world=None):
    """``evaluate`` for a causal LM: ``{"loss", "perplexity"}`` over every token of ``data``
    (shared out over the ranks of ``world``, if given)."""
    loss, perplexity = evaluate_split(model, data, world=world)
    return {"loss": loss, "perplexity": perplexity}


def lm_sample_prompt(tokenizer, train_data, prompt=None):
    """The ids a sample starts from, always encodable: ``prompt`` if given (an error now if the
    tokenizer cannot encode it, not at the first evaluation), else a newline when the tokenizer
    has one (nanoGPT's habit), else the first token of the training data."""
    if prompt is not None:
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as e:
            raise ValueError(f"sample prompt {prompt!r} cannot be encoded by this tokenizer: {e}") from None
        if not ids:
            raise ValueError(f"sample prompt {prompt!r} encodes to no tokens; give at least one character")
        return list(ids)
    try:
        ids = tokenizer.encode("\n")
    except ValueError:  # a text without newlines: its vocabulary has none
        ids = []
    return list(ids) if ids else [int(np.asarray(train_data)[0])]


def lm_sampler(tokenizer, prompt_ids, temperature=0.8, top_k=200):
    """``sample`` for a causal LM: the decoded continuation of ``prompt_ids``."""
    prompt = np.asarray([prompt_ids], dtype=np.int64)

    def sample(model, max_new_tokens, seed):
        ids = prompt[:, -model.config.block_size:]
        out = model.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
        return tokenizer.decode(out[0])

    return sample


@no_grad()
def estimate_loss(model, get_batch, data, batch_size, eval_iters, rng, world=None):
    """Mean loss over ``eval_iters`` random batches drawn with ``rng`` (nanoGPT's estimate).

    With ``world`` of several ranks, every rank draws every batch (so that ``rng`` stays the same
    everywhere), rank r evaluates every r-th one, and the losses are summed over the ranks.
    """
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    was_training = model.training
    model.eval()
    losses = []
    for i in range(eval_iters):
        inputs, targets = get_batch(data, batch_size, rng)
        if i % size == rank:
            losses.append(model(*inputs, targets=targets)[1].item())
    model.train(was_training)
    if size > 1:
        return float(world.sum([math.fsum(losses)], "the loss estimate")[0]) / eval_iters
    return float(np.mean(losses))


# ----------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """Trains ``model`` on ``train_data`` as ``cfg`` (a :class:`TrainConfig`) says; see the module
    docstring for what ``get_batch``, ``evaluate`` and ``sample`` are (the causal-LM versions by
    default, for 1-D token arrays).

    ``grad_hooks``: callables ``hook(params)`` run on every rank after the gradients of the whole
    batch are in ``p.grad`` (after the all-reduce, when data parallel) and before clipping, in order.

    ``world``: the ranks of a data-parallel job (default :func:`tinyllm.distributed.get_world`: one
    rank, unless the script was started by ``mpiexec -n N``). With several ranks, ``train``,
    ``evaluate``, ``evaluate_split`` and ``save_checkpoint`` are collective: call them on every rank.
    ``get_batch`` must then return arrays with the batch on axis 0 (the rows are shared out).
    """

    def __init__(self, model, train_data, val_data, cfg, tokenizer=None, *, get_batch=None, evaluate=None,
                 sample=None, world=None):
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"Trainer: cfg must be a TrainConfig, got {type(cfg).__name__}")
        if not hasattr(model, "set_dropout_rng"):
            raise TypeError(f"Trainer: {type(model).__name__} needs set_dropout_rng(rng) and dropout_rng, so that "
                            "its dropout is reproducible and saved in checkpoints")
        self.world = world if world is not None else distributed.get_world()
        per_rank = cfg.batch_size // self.world.size  # the smallest share of the rows
        if per_rank < cfg.grad_accum_steps:
            raise distributed.on_every_rank(ValueError(
                f"Trainer: batch_size {cfg.batch_size} cannot be shared by {self.world.size} rank(s) x "
                f"{cfg.grad_accum_steps} micro-batch(es): each needs at least one example; use a batch_size of at "
                f"least {self.world.size * cfg.grad_accum_steps}, or fewer ranks or grad_accum_steps"))
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.train_data, self.val_data = train_data, val_data
        self.get_batch = get_batch or lm_batches(model.config.block_size)
        self.evaluate_fn = evaluate or lm_evaluate
        if sample is None and tokenizer is not None and cfg.sample_tokens and _is_token_array(train_data):
            sample = lm_sampler(tokenizer, lm_sample_prompt(tokenizer, train_data, cfg.sample_prompt))
        self.sample_fn = sample
        self.out_dir = Path(cfg.out_dir)
        self.params = model.parameters()
        self.optimizer = configure_optimizer(model, cfg)
        self.schedule = optim.WarmupCosineLR(self.optimizer, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters,
                                             cfg.lr_decay_iters)
        self.batch_rng = np.random.default_rng([cfg.seed, 0])
        self.eval_rng = np.random.default_rng([cfg.seed, 2])
        model.set_dropout_rng(self._dropout_rng_of_rank())
        self.grad_hooks = []
        self.iter_num = 0
        self.history = []  # (iter, loss) of every step, for tests and plots
        self.last_eval = {}
        self.sampled_at = None  # the step of the last sample shown (drawn with the run's seed: one text per step)
        self.last_checkpoint_iter = None  # the iteration of the newest checkpoint of this run

    @property
    def checkpoint_path(self):
        return self.out_dir / CHECKPOINT_NAME

    def _dropout_rng_of_rank(self, iter_num=None):
        """Rank 0 draws dropout masks as one process does; every other rank from a stream of its own."""
        rank = self.world.rank
        key = [self.cfg.seed, 1] + ([rank] if rank else []) + ([iter_num] if iter_num is not None else [])
        return np.random.default_rng(key)

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self):
        """Write ``out_dir/ckpt.safetensors`` (rank 0 writes; with several ranks, call it on every
        rank: the checkpoint keeps every rank's dropout state)."""
        rngs = {"batch": rng_state(self.batch_rng), "eval": rng_state(self.eval_rng),
                "dropout": rng_state(self.model.dropout_rng)}
        if self.world.size > 1:
            rngs["dropout_by_rank"] = self.world.allgather_json(rngs["dropout"], "saving a checkpoint")
        if self.world.is_main:
            self._write_checkpoint(rngs)
        self.last_checkpoint_iter = self.iter_num
        self.world.note = (f"The last checkpoint, {self.checkpoint_path} (iter {self.iter_num}), is intact: continue "
                           "with --resume.")

    def _write_checkpoint(self, rngs):
        extra = {"train_config": asdict(self.cfg), "last_eval": self.last_eval}
        if self.tokenizer is not None:
            extra["tokenizer"] = self.tokenizer.to_dict()
        try:
            save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.iter_num, rngs, extra)
        except CheckpointWriteError as e:
            if self.last_checkpoint_iter is not None:
                kept = f"the previous checkpoint (iter {self.last_checkpoint_iter}) is intact"
            else:
                kept = "no checkpoint of this run exists yet"
            raise CheckpointWriteError(f"training stopped at iter {self.iter_num}: {e}; {kept}: free some disk space "
                                       "(or raise the file-size limit), then continue with --resume") from e

    def resume(self):
        """Continue from ``out_dir/ckpt.safetensors``: weights, moments, step, RNG states.

        A checkpoint of another model configuration is refused, naming the fields that differ.
        With several ranks, rank 0 reads the file and every rank takes the same state from it
        (so the other machines need no copy of the file).
        """
        if self.world.size == 1:
            return self._resume_from_file()
        meta = self.world.on_main(self._resume_from_file, "resuming (rank 0 reads the checkpoint)")
        self._share_state_from_main(meta)
        return meta

    def _resume_from_file(self):
        path = self.checkpoint_path
        meta, model_state, opt_state = load_checkpoint(path)
        saved, mine = meta["model_config"], self.model.config.to_dict()
        if saved != mine:
            diff = "; ".join(f"{k}: {saved.get(k, '(none)')!r} there, {mine.get(k, '(none)')!r} here"
                             for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k))
            raise ValueError(f"resume: {path} holds a model config that differs from this model's ({diff}); use "
                             "the model options it was trained with, or another --out-dir")
        try:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(opt_state)
            self._restore_rngs(meta["rng_states"])
        except FileFormatError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            what = f"lacks {e}" if isinstance(e, KeyError) else str(e)
            raise FileFormatError(path, f"cannot be resumed: {what}") from None
        self._resumed(meta)
        return meta

    def _restore_rngs(self, rngs):
        path = self.checkpoint_path
        self.batch_rng = restore_rng(rngs["batch"], path)
        self.eval_rng = restore_rng(rngs["eval"], path)
        by_rank = rngs.get("dropout_by_rank")
        if by_rank is not None and len(by_rank) == self.world.size:
            self.model.set_dropout_rng(restore_rng(by_rank[self.world.rank], path))
        elif self.world.rank == 0:
            self.model.set_dropout_rng(restore_rng(rngs["dropout"], path))
        else:  # saved by another number of ranks: this rank's stream was never saved; start one afresh
            self.model.set_dropout_rng(self._dropout_rng_of_rank(iter_num=self.iter_num))

    def _resumed(self, meta):
        self.iter_num = meta["iter"]
        self.last_eval = meta.get("last_eval") or {}
        self.last_checkpoint_iter = self.iter_num
        self.world.note = (f"The last checkpoint, {self.checkpoint_path} (iter {self.iter_num}), is intact: continue "
                           "with --resume.")

    def _share_state_from_main(self, meta=None):
        """Every rank takes rank 0's weights, as PyTorch DDP does at its start (so replicas start
        equal even if a model's initialisation were not seeded); after rank 0 resumed (``meta``),
        also its AdamW moments and step counts, RNG states and iteration."""
        if self.world.size == 1:
            return
        for p in self.params:
            if not p.data.flags.c_contiguous:
                p.data = np.ascontiguousarray(p.data)
            self.world.broadcast(p.data, "sharing rank 0's weights")
        if meta is None:
            return
        opt = self.optimizer.state_dict() if self.world.is_main else None
        layout = self.world.broadcast_json(_optimizer_layout(opt) if opt is not None else None,
                                           "sharing rank 0's optimizer state")
        state = {}
        for index, entries in layout["state"].items():
            state[int(index)] = {}
            for name, (kind, value) in entries.items():
                if kind == "array":
                    array = opt["state"][int(index)][name] if opt is not None else np.empty(value[0], value[1])
                    value = self.world.broadcast(np.ascontiguousarray(array), "sharing rank 0's optimizer state")
                state[int(index)][name] = value
        if not self.world.is_main:
            groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in layout["param_groups"]]
            self.optimizer.load_state_dict({"param_groups": groups, "state": state})
            self._resumed(meta)
            self._restore_rngs(meta["rng_states"])

    def _check_ranks_agree(self):
        """Stop at once if the ranks were given different training data (on several machines,
        every machine must hold the same files): they would silently train different models."""
        if self.world.size == 1:
            return
        prints = self.world.allgather_json([_fingerprint(self.train_data), _fingerprint(self.val_data)],
                                           "comparing the ranks' data")
        differ = [r for r, fp in enumerate(prints) if fp != prints[0]]
        if differ:
            raise distributed.on_every_rank(ValueError(
                f"the ranks do not hold the same data (rank {differ[0]}: {prints[differ[0]]}; rank 0: {prints[0]}, "
                "as [train, val] sizes and checksums): every rank must read the same files (on several machines, "
                "copy them to each) with the same options"))

    def _check_replicas_agree(self):
        """Every rank must hold bit-identical weights (each took the same AdamW step from the same
        summed gradients); a checksum compared at each evaluation proves it, cheaply."""
        if self.world.size == 1:
            return
        crc = 0
        for p in self.params:
            crc = zlib.crc32(np.ascontiguousarray(p.data), crc)
        crcs = self.world.allgather_json(crc, "comparing the ranks' weights")
        differ = [r for r, c in enumerate(crcs) if c != crcs[0]]
        if differ:
            raise distributed.on_every_rank(RuntimeError(
                f"after step {self.iter_num} the weights of rank {differ[0]} differ from rank 0's: the ranks no "
                "longer train one model (did the all-reduce give them different sums?); please report this"))

    # --- one step -----------------------------------------------------------------------------
    def train_step(self):
        """One optimizer step on one batch; returns (loss, grad_norm, lr, n_tokens) of the whole batch
        (all ranks and micro-batches together)."""
        cfg = self.cfg
        lr = self.schedule.set_step(self.iter_num)
        inputs, targets = self.get_batch(self.train_data, cfg.batch_size, self.batch_rng)  # the same on every rank
        targets = np.asarray(targets)
        n_tokens = _count_targets(targets)
        if n_tokens == 0:
            raise distributed.on_every_rank(ValueError(
                f"the batch of iter {self.iter_num} has no target to learn from (every target is -100): check the "
                "data and get_batch"))
        self.optimizer.zero_grad()
        loss = 0.0
        for start, stop in self._micro_batches(len(targets)):
            part = _rows(targets, start, stop, len(targets))
            share = _count_targets(part) / n_tokens  # the loss is a mean over tokens: weigh by tokens, not rows
            if share == 0:
                continue  # only ignored targets: no loss and no gradient to add
            part_loss, _ = self.forward_backward(_rows(inputs, start, stop, len(targets)), part, lr, scale=share)
            loss += part_loss * share
            if not math.isfinite(part_loss):
                break  # (data parallel) the NaN reaches every rank in the summed loss below; all stop together
        # over the ranks: the whole batch's loss and gradients
        loss = self.world.reduce_gradients(self.params, loss, f"the gradient all-reduce of iter {self.iter_num}")
        if not math.isfinite(loss):
            self._diverged(f"the loss is {loss}", lr)
        for hook in self.grad_hooks:
            hook(self.params)
        # With grad_clip 0 the norm is still measured (max_norm inf scales nothing): NaN is caught either way.
        grad_norm = optim.clip_grad_norm(self.params, cfg.grad_clip or math.inf)
        if not math.isfinite(grad_norm):
            self._diverged(f"the gradient norm is {grad_norm}", lr)
        self.optimizer.step()
        self.iter_num += 1
        return loss, grad_norm, lr, n_tokens

    def _micro_batches(self, n_rows):
        """This rank's (start, stop) row ranges of a batch of ``n_rows``: its contiguous share of the
        rows, cut into ``grad_accum_steps`` pieces."""
        start, stop = distributed.split_rows(n_rows, self.world.size)[self.world.rank]
        return [(start + a, start + b) for a, b in distributed.split_rows(stop - start, self.cfg.grad_accum_steps)]

    def forward_backward(self, inputs, targets, lr=float("nan"), scale=1.0):
        """Loss of one (micro-)batch, and the gradients of ``scale * loss`` added into ``p.grad``;
        returns (loss, targets counted). ``scale``: the micro-batch's share of the step's target
        tokens, so that the added-up gradients are those of the mean over all of them.

        A NaN loss stops here, before its backward pass; with several ranks it returns instead
        (every rank must reach the all-reduce, which carries the NaN to all, and all stop together).
        """
        _, loss = self.model(*inputs, targets=targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            if self.world.size == 1:
                self._diverged(f"the loss is {loss_value}", lr)
        else:
            (loss if scale == 1.0 else loss * scale).backward()
        return loss_value, _count_targets(targets)

    def _diverged(self, what, lr):
        path = self.checkpoint_path
        if self.last_checkpoint_iter is not None:
            where = (f"the last good checkpoint, {path} (iter {self.last_checkpoint_iter}), is untouched; continue "
                     "from it with --resume (perhaps with a lower learning rate)")
        elif path.exists():
            where = f"no checkpoint of this run was written yet ({path} still holds the earlier run's)"
        else:
            where = "no checkpoint was written yet"
        # every rank gets here at the same step: the loss, gradient norm and evaluation are the summed ones
        raise distributed.on_every_rank(
            TrainingDiverged(f"training stopped at iter {self.iter_num}: {what} (lr {lr:.3g}); {where}"))

    # --- evaluation and samples ---------------------------------------------------------------
    def evaluate(self):
        """Estimate train and val loss on ``eval_iters`` random batches each (shared out over the ranks).

        At a multiple of ``eval_interval`` the batches come from the run's evaluation Generator;
        an evaluation anywhere else (the end of a run that stops between intervals) draws from a
        Generator of its own, seeded by (seed, iteration), so that stopping and resuming a run
        leaves every later evaluation exactly as in the uninterrupted run.
        """
        cfg = self.cfg
        on_schedule = self.iter_num % cfg.eval_interval == 0
        rng = self.eval_rng if on_schedule else np.random.default_rng([cfg.seed, 3, self.iter_num])
        losses = {split: estimate_loss(self.model, self.get_batch, data, cfg.batch_size, cfg.eval_iters, rng,
                                       world=self.world)
                  for split, data in (("train", self.train_data), ("val", self.val_data))}
        self.last_eval = {"iter": self.iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}
        return self.last_eval

    @no_grad()
    def evaluate_split(self, split="val"):
        """``evaluate(model, data)`` over a whole split: the final numbers of a run.

        With several ranks the causal-LM default shares the windows out; a task's own ``evaluate``
        runs on rank 0 alone (a metric such as BLEU is not a sum over examples), and every rank
        gets its result.
        """
        was_training = self.model.training
        self.model.eval()
        data = self.val_data if split == "val" else self.train_data
        try:
            if self.world.size == 1:
                return self.evaluate_fn(self.model, data)
            if self.evaluate_fn is lm_evaluate:
                return lm_evaluate(self.model, data, world=self.world)
            return self.world.on_main(lambda: self.evaluate_fn(self.model, data),
                                      f"the final evaluation of the {split} split (rank 0 runs the task's evaluate)",
                                      timeout=None)
        finally:
            self.model.train(was_training)

    def sample(self, max_new_tokens=None, seed=None):
        """A sample from the model (None without a sampler, with ``sample_tokens`` 0, or on ranks other than 0)."""
        n = self.cfg.sample_tokens if max_new_tokens is None else max_new_tokens
        if self.sample_fn is None or not n or not self.world.is_main:
            return None
        return self.sample_fn(self.model, n, self.cfg.seed if seed is None else seed)

    # --- the run ------------------------------------------------------------------------------
    def train(self, resume=False, log=print):
        """Run to ``max_iters``; returns the last evaluation and throughput figures.

        ``resume=True`` continues from the checkpoint in ``out_dir`` (which must exist). The output
        directory is locked while this runs (by rank 0, the only rank that writes): a second
        trainer on it fails with :class:`~tinyllm.errors.OutDirLocked`, naming this process.
        """
        lock = lock_out_dir(self.out_dir) if self.world.is_main else contextlib.nullcontext()
        with lock:
            return self._train(resume, log if self.world.is_main else _silent)

    def _train(self, resume, log):
        cfg = self.cfg
        if self.world.size > 1:
            log(self.world.describe())  # mpiexec names a rank that was killed by its pid: this maps it
            sys.stdout.flush()
        self._check_ranks_agree()
        if resume:
            meta = self.resume()
            log(f"resumed from {self.checkpoint_path} at iter {meta['iter']}")
        else:
            self._share_state_from_main()
            self.world.note = "No checkpoint of this run was written yet."
        # An evaluation the previous run made at its stopping point, off the eval_interval grid, is
        # not part of the uninterrupted run: its log row goes if this run continues past it.
        off_grid = self.iter_num % cfg.eval_interval != 0 and self.iter_num < cfg.max_iters
        if self.world.is_main:
            logger = _CsvLog(self.out_dir / LOG_NAME, keep_through=self.iter_num if resume else None,
                             drop_eval_at=self.iter_num if off_grid else None)
            bar = _progress(cfg, self.iter_num)
        else:
            logger, bar = _NoLog(), None
        start, step_time, tokens_timed = time.perf_counter(), 0.0, 0
        try:
            while True:
                if self.iter_num % cfg.eval_interval == 0 or self.iter_num == cfg.max_iters:
                    if not (resume and self.last_eval.get("iter") == self.iter_num):
                        self._eval_and_checkpoint(logger, bar, log, time.perf_counter() - start)
                if self.iter_num >= cfg.max_iters:
                    break
                t0 = time.perf_counter()
                loss, grad_norm, lr, n_tokens = self.train_step()
                dt = time.perf_counter() - t0
                step_time, tokens_timed = step_time + dt, tokens_timed + n_tokens
                self.history.append((self.iter_num, loss))
                tps = n_tokens / dt
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
        return {**self.last_eval, "tokens_per_sec": tokens_timed / step_time if step_time else None,
                "wall_s": wall, "iter": self.iter_num}

    def _eval_and_checkpoint(self, logger, bar, log, elapsed):
        ev = self.evaluate()
        if not (math.isfinite(ev["train_loss"]) and math.isfinite(ev["val_loss"])):
            self._diverged(f"the evaluation loss is {ev['train_loss']} (train) / {ev['val_loss']} (val)",
                           self.optimizer.param_groups[0]["lr"])
        logger.write(iter=self.iter_num, eval_train_loss=ev["train_loss"], eval_val_loss=ev["val_loss"],
                     elapsed_s=elapsed)
        msg = f"iter {self.iter_num}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}"
        text = self.sample()
        if text is not None:
            msg += "\n--- sample ---\n" + text + "\n--------------"
            self.sampled_at = self.iter_num
        (bar.write if bar is not None else log)(msg)
        self._check_replicas_agree()
        if self.iter_num > 0:
            self.save_checkpoint()


def _count_targets(targets):
    """Target positions that count in the loss (-100 marks one to ignore, as in PyTorch)."""
    return int(np.count_nonzero(np.asarray(targets) != -100))


def _rows(arrays, start, stop, n_rows):
    """Rows ``start:stop`` of every array in ``arrays`` (one array, or a tuple) whose first axis is
    the batch (``n_rows`` long); anything else passes unchanged. The whole batch is returned as is."""
    if (start, stop) == (0, n_rows):
        return arrays
    if isinstance(arrays, tuple):
        return tuple(_rows(a, start, stop, n_rows) for a in arrays)
    if isinstance(arrays, np.ndarray) and arrays.ndim and arrays.shape[0] == n_rows:
        return arrays[start:stop]
    return arrays


def _optimizer_layout(opt_state):
    """An optimizer state dict as JSON: arrays as ("array", [shape, dtype]), numbers as ("value", x)."""
    state = {str(i): {k: (("array", [list(v.shape), v.dtype.str]) if isinstance(v, np.ndarray) else ("value", v))
                      for k, v in s.items()}
             for i, s in opt_state["state"].items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt_state["param_groups"]]
    return {"state": state, "param_groups": groups}


def _fingerprint(data):
    """A split's size and, for an array, a checksum of its bytes: what must agree across ranks."""
    if isinstance(data, np.ndarray):
        return [int(data.size), zlib.crc32(np.ascontiguousarray(data))]
    try:
        return [len(data)]
    except TypeError:
        return [type(data).__name__]


def _silent(*args, **kwargs):
    pass


class _NoLog:
    """The log of ranks other than 0: they write nothing."""

    def write(self, **row):
        pass

    def close(self):
        pass


def _is_token_array(data):
    return isinstance(data, np.ndarray) and data.ndim == 1 and data.dtype.kind in "iu" and data.size > 0


def _progress(cfg, start):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_iters, initial=start, desc="training", unit="it", dynamic_ncols=True)


class _CsvLog:
    """``log.csv``: one row per step (``iter`` counts steps done) and one per evaluation.

    A fresh run starts it empty. A resumed run keeps the rows up to the checkpoint's iteration
    (``keep_through``; the steps after it are done again) and drops ``drop_eval_at``'s evaluation
    row, so the log reads as one uninterrupted run. The kept rows are written to a temporary file
    and renamed over the old log (a kill at that moment loses nothing); a last line without its
    newline (a write cut short) is not kept. Losses and gradient norms are written with every
    digit (``repr``), so logs of two runs compare exactly.
    """

    def __init__(self, path, keep_through=None, drop_eval_at=None):
        rows = []
        if keep_through is not None and path.exists():
            rows = [r for r in _read_log_rows(path) if int(r["iter"]) <= keep_through
                    and not (int(r["iter"]) == drop_eval_at and r.get("eval_val_loss"))]

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
                writer.writeheader()
                writer.writerows(rows)

        write_atomic(path, write)
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS)

    def write(self, **row):
        self.writer.writerow({k: _format(k, v) for k, v in row.items()})
        self.file.flush()

    def close(self):
        self.file.close()


def _format(name, value):
    if not isinstance(value, float):
        return value
    return repr(value) if name in _EXACT_FIELDS else f"{value:.6g}"


def _read_log_rows(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # a row cut short by a crash
    rows = []
    for r in csv.DictReader(text.splitlines(keepends=True)):
        try:
            int(r["iter"])
        except (TypeError, ValueError):
            continue  # not a row this log writes
        rows.append({k: r.get(k, "") for k in LOG_FIELDS})
    return rows


def load_tokenizer_from_meta(meta, source="checkpoint"):
    """The tokenizer stored in a checkpoint's metadata (or None)."""
    d = meta.get("tokenizer")
    if d is None:
        return None
    return Tokenizer.from_dict(d, source=f"{source} (its tokenizer)")


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically (a crash leaves the old file or the new one)."""

    def write(tmp):
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

    write_atomic(str(path), write)

