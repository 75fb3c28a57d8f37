"""What every training script shares: its command-line options, the rules for ``--out-dir``, and
the whole job around :class:`~tinyllm.training.Trainer` (train or resume, evaluate the whole
validation split, write ``metrics.json``, save the model and its tokenizer, print a sample).

A script brings its data and its model, nothing else::

    import argparse
    from tinyllm import cli

    def main(argv=None):
        parser = argparse.ArgumentParser()
        parser.add_argument("--data", ...)                          # the task's own options
        cli.add_training_args(parser, out_dir="out-mytask", max_iters=3000)   # the shared ones
        args = parser.parse_args(argv)
        with cli.exit_on_error(), cli.TrainingRun(args) as run:    # lock --out-dir, fresh or resume
            train_data, val_data = ...                             # an error here touches nothing saved
            tokenizer = run.saved_tokenizer() or MyTokenizer(...)  # resuming: the checkpoint's own
            model = MyModel(MyConfig(...), seed=args.seed)
            run.train(model, train_data, val_data, tokenizer,      # get_batch / evaluate / sample:
                      get_batch=..., evaluate=..., sample=...)     # see tinyllm.training (LM defaults)

The rules, for every script alike:

* ``--out-dir`` holding a checkpoint is refused unless ``--resume`` (continue it) or
  ``--overwrite`` (start over) is given; nothing saved is touched before training begins.
* ``--resume`` with no checkpoint yet starts a fresh run and says so (a preemptible job can run
  the same command every time); a checkpoint of another model configuration is an error.
* One trainer per ``--out-dir``: a second one fails at once, naming the first one's process id.
  The lock dies with its process, so a killed run never leaves the directory locked.
* Errors a user can cause (bad data, a corrupt file, a full disk, divergence) end the program with
  ``error: ...`` and exit status 1 instead of a traceback (``TINYLLM_TRACEBACK=1`` shows it).
* ``mpiexec -n N python script.py ...`` trains data-parallel on N ranks, the same run as one
  process (:mod:`tinyllm.training`). Rank 0 alone takes the lock, decides about ``--out-dir``,
  prints and writes files; the other ranks' standard output is silenced. An error on one rank
  stops every rank, naming the rank (:mod:`tinyllm.distributed`).
"""
import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path

from . import distributed
from .checkpoint import CHECKPOINT_NAME, lock_out_dir, read_checkpoint_meta
from .errors import FileFormatError, OutDirLocked, RunExistsError
from .tensor import no_grad
from .training import Trainer, TrainConfig, TrainingDiverged, load_tokenizer_from_meta, write_json

__all__ = ["TrainingRun", "add_training_args", "exit_on_error", "train_config_from_args"]

METRICS_NAME = "metrics.json"

# dest name -> (flag, type, the TrainConfig field it sets, help)
_OPTIONS = {
    "out_dir": ("--out-dir", str, "out_dir", "where checkpoints, log.csv, metrics.json and the final model go"),
    "max_iters": ("--max-iters", int, "max_iters", "optimizer steps in all (a resumed run continues to this)"),
    "batch_size": ("--batch-size", int, "batch_size", "examples per step"),
    "lr": ("--lr", float, "learning_rate", "peak learning rate, reached after the warmup"),
    "min_lr": ("--min-lr", float, "min_lr", "learning rate at the end of the cosine decay"),
    "warmup_iters": ("--warmup-iters", int, "warmup_iters", "steps of linear warmup"),
    "lr_decay_iters": ("--lr-decay-iters", int, "lr_decay_iters",
                       "where the cosine reaches --min-lr (default: --max-iters; set it when resuming with a "
                       "larger --max-iters to keep the original schedule)"),
    "weight_decay": ("--weight-decay", float, "weight_decay", "AdamW weight decay on the 2-D weights"),
    "grad_clip": ("--grad-clip", float, "grad_clip", "clip the gradients' joint norm to this (0: no clipping)"),
    "eval_interval": ("--eval-interval", int, "eval_interval", "evaluate, sample and checkpoint every this many steps"),
    "eval_iters": ("--eval-iters", int, "eval_iters", "batches per loss estimate"),
    "seed": ("--seed", int, "seed", "one seed for init, batches, dropout and samples"),
    "sample_tokens": ("--sample-tokens", int, "sample_tokens", "length of the samples shown (0: no samples)"),
    "sample_prompt": ("--sample-prompt", str, "sample_prompt",
                      "text the samples start from (default: a newline, or the data's first token)"),
    "grad_accum_steps": ("--grad-accum-steps", int, "grad_accum_steps",
                         "cut each step's batch into this many micro-batches run one after another (less memory, "
                         "the same run; --batch-size stays the examples per step)"),
}


def add_training_args(parser, **defaults):
    """Add the options every training script shares to ``parser`` (an ``argparse.ArgumentParser``);
    ``defaults`` overrides :class:`TrainConfig`'s default of any of them by its dest name
    (``out_dir``, ``max_iters``, ``batch_size``, ``lr``, ``min_lr``, ``warmup_iters``,
    ``lr_decay_iters``, ``weight_decay``, ``grad_clip``, ``eval_interval``, ``eval_iters``,
    ``seed``, ``sample_tokens``, ``sample_prompt``, ``grad_accum_steps``). Also adds ``--resume``,
    ``--overwrite`` and ``--no-progress``. Returns the argument group."""
    unknown = set(defaults) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"add_training_args: unknown defaults {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    base = TrainConfig()
    group = parser.add_argument_group("training (shared by every tinyllm training script)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out-dir (a fresh start if there is none yet)")
    group.add_argument("--overwrite", action="store_true", help="start afresh even if --out-dir holds a run")
    for dest, (flag, kind, field, help_text) in _OPTIONS.items():
        # (TrainConfig() has already turned its lr_decay_iters None into max_iters: keep the None)
        default = defaults.get(dest, getattr(base, field) if field != "lr_decay_iters" else None)
        if "(default: " not in help_text:  # (--lr-decay-iters and --sample-prompt say theirs in words)
            help_text += " (default: %(default)s)"
        group.add_argument(flag, dest=dest, type=kind, default=default, help=help_text)
    group.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. when logging to a file)")
    return group


def add_encoder_decoder_args(parser, dropout=0.1):
    """The options of an :class:`~tinyllm.models.EncoderDecoderTransformer` shared by the
    sequence-to-sequence examples (sizes, dropout, label smoothing, positions, pre- or post-LN)."""
    m = parser.add_argument_group("model")
    m.add_argument("--n-encoder-layers", type=int, default=2)
    m.add_argument("--n-decoder-layers", type=int, default=2)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--d-model", type=int, default=128)
    m.add_argument("--d-ff", type=int, default=512)
    m.add_argument("--dropout", type=float, default=dropout)
    m.add_argument("--label-smoothing", type=float, default=0.0)
    m.add_argument("--pos-encoding", choices=["sinusoidal", "learned"], default="sinusoidal")
    m.add_argument("--norm-first", action=argparse.BooleanOptionalAction, default=True,
                   help="pre-LN (default, trains without care) or the paper's post-LN")
    return m


def encoder_decoder_from_args(args, tokenizer, max_src_len, max_tgt_len):
    """The model those options describe, over ``tokenizer``'s shared vocabulary (one embedding
    for sources and targets, tied to the output layer), seeded by ``--seed``."""
    from .models import EncoderDecoderConfig, EncoderDecoderTransformer

    config = EncoderDecoderConfig(
        src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size,
        max_src_len=max_src_len, max_tgt_len=max_tgt_len,
        n_encoder_layers=args.n_encoder_layers, n_decoder_layers=args.n_decoder_layers, n_head=args.n_head,
        d_model=args.d_model, d_ff=args.d_ff, dropout=args.dropout, label_smoothing=args.label_smoothing,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, norm_first=args.norm_first,
        pos_encoding=args.pos_encoding, share_embeddings=True)
    return EncoderDecoderTransformer(config, seed=args.seed)


def train_config_from_args(args, **overrides):
    """The :class:`TrainConfig` the shared options describe (``overrides`` replace fields)."""
    fields = {field: getattr(args, dest) for dest, (_, _, field, _) in _OPTIONS.items()}
    fields["progress"] = not args.no_progress
    fields.update(overrides)
    return TrainConfig(**fields)


INTERRUPTED_TRAINING = ("interrupted: what --out-dir already holds is intact; continue with --resume (a fresh start "
                        "if no checkpoint was saved yet)")


def stops_on_ctrl_c(main):
    """Decorate the ``main`` of a script that trains nothing (translate, summarize, complete a
    line, generate): Ctrl-C ends it with ``interrupted`` and exit status 1, not a traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit("interrupted")

    return wrapped


@contextlib.contextmanager
def exit_on_error(on_interrupt=INTERRUPTED_TRAINING):
    """Turn the errors a user can cause into ``error: <message>`` and exit status 1.

    Covers bad values and files (``ValueError``, including :class:`~tinyllm.errors.FileFormatError`
    and :class:`~tinyllm.errors.DataError`), failed reads and writes (``OSError``, including
    :class:`~tinyllm.errors.CheckpointWriteError`), a busy or already used ``--out-dir``, and
    :class:`~tinyllm.training.TrainingDiverged`. Set ``TINYLLM_TRACEBACK=1`` to see the traceback.
    Ctrl-C exits with status 1 and ``on_interrupt`` (by default what a training run keeps: a script
    that does not train passes its own).

    Under ``mpiexec``: an error every rank meets at the same point (divergence, a refused
    ``--out-dir``) is printed by rank 0 and every rank exits; any other error, or an exit, on one
    rank is printed naming that rank and ends every rank (``MPI_Abort``), so none is left waiting.
    """
    try:
        yield
    except (ValueError, OSError, RunExistsError, OutDirLocked, TrainingDiverged, distributed.ErrorOnMainRank) as e:
        if os.environ.get("TINYLLM_TRACEBACK"):
            raise
        prefix = "TrainingDiverged: " if isinstance(e, TrainingDiverged) else ""
        _exit(f"{prefix}{e}", getattr(e, "tinyllm_on_every_rank", False))
    except KeyboardInterrupt:
        # (the training message is true whether or not a checkpoint was saved before the Ctrl-C: a write
        # it cut short is discarded)
        _exit(on_interrupt, False, prefix="")
    except SystemExit as e:
        world = distributed.current_world()
        if world is None or world.size == 1 or e.code in (None, 0):
            raise
        world.abort(f"exited with {e.code!r}" if not isinstance(e.code, str) else e.code)


def _exit(message, on_every_rank, prefix="error: "):
    """Exit with ``message``; under MPI see :func:`exit_on_error`."""
    world = distributed.current_world()
    if world is None or world.size == 1:
        sys.exit(f"{prefix}{message}")
    if on_every_rank:
        sys.exit(f"{prefix}{message}" if world.is_main else 1)
    world.abort(message)


class TrainingRun:
    """One training job in ``args.out_dir``, as a context manager (see the module docstring).

    On entry it locks the directory and decides: continue the checkpoint there (``--resume``),
    start afresh (no checkpoint, or ``--overwrite``), or refuse (a checkpoint and neither flag).
    ``resuming`` says which; ``meta`` is the checkpoint's metadata when resuming.
    """

    def __init__(self, args, log=print):
        self.args = args
        self.world = distributed.get_world()  # under mpiexec -n N (N > 1), MPI starts here
        self.log = log if self.world.is_main else _silent
        self.out_dir = Path(args.out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.resuming, self.meta = False, None
        self._lock = lock_out_dir(self.out_dir)
        self._quiet = contextlib.ExitStack()

    @property
    def is_main(self):
        """True on the process that writes (rank 0 under mpiexec; always, run without it). A script's
        own files in ``--out-dir`` are written ``if run.is_main``: ranks writing one file together
        would race."""
        return self.world.is_main

    def __enter__(self):
        decision = self.world.on_main(self._lock_and_decide, "deciding what to do with --out-dir (rank 0)")
        self.resuming, self.meta = decision["resuming"], decision["meta"]
        if not self.world.is_main:  # one copy of the script's own prints: rank 0's
            self._quiet.enter_context(contextlib.redirect_stdout(self._quiet.enter_context(open(os.devnull, "w"))))
        return self

    def __exit__(self, *exc):
        self._quiet.close()
        if self.world.is_main:
            self._lock.__exit__(*exc)
        return False

    def _lock_and_decide(self):
        if self.args.resume and self.args.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: pass one of them")
        self._lock.__enter__()
        try:
            self._decide()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return {"resuming": self.resuming, "meta": self.meta}

    def _decide(self):
        ckpt = self.checkpoint_path
        if not ckpt.exists():
            if self.args.resume:
                self.log(f"--resume: no checkpoint in {self.out_dir} yet ({ckpt}); starting a fresh run")
            return
        if self.args.overwrite:
            self.log(f"--overwrite: starting afresh; the run in {self.out_dir} is replaced as this one saves")
            return
        if not self.args.resume:
            raise RunExistsError(f"{self.out_dir} already holds a training run ({ckpt}); pass --resume to continue "
                                 "it, --overwrite to start over, or choose another --out-dir")
        try:
            self.meta = read_checkpoint_meta(ckpt)
        except FileFormatError as e:
            raise FileFormatError(e.path, f"{e.problem}. It cannot be resumed: move it away to keep it, or pass "
                                          "--overwrite to start over") from None
        self.resuming = True

    def saved_tokenizer(self):
        """The tokenizer stored in the checkpoint being resumed (None when starting fresh)."""
        return load_tokenizer_from_meta(self.meta, source=str(self.checkpoint_path)) if self.resuming else None

    def train(self, model, train_data, val_data, tokenizer=None, *, get_batch=None, evaluate=None, sample=None,
              extra_metrics=None):
        """Train (or resume) to ``--max-iters``, then evaluate the whole validation split, write
        ``metrics.json`` and save the model (``save_pretrained``) and tokenizer into ``--out-dir``.

        ``get_batch``, ``evaluate``, ``sample``: as for :class:`~tinyllm.training.Trainer`.
        ``extra_metrics``: more entries for ``metrics.json``: a dict, or ``extra_metrics(model) -> dict``
        called on the trained model (in eval mode, without gradients) before anything is written,
        e.g. BLEU on a test split, which only means something once training is over (it may also
        write its own files into ``--out-dir``). Returns the metrics.
        """
        cfg = train_config_from_args(self.args)
        trainer = Trainer(model, train_data, val_data, cfg, tokenizer, get_batch=get_batch, evaluate=evaluate,
                          sample=sample, world=self.world)
        result = trainer.train(resume=self.resuming, log=self.log)
        final = trainer.evaluate_split("val")  # (shared out over the ranks, or rank 0's broadcast)
        if callable(extra_metrics):
            extra_metrics = _evaluate_trained(extra_metrics, model)
        metrics = {
            "iter": result["iter"],
            "train_loss": result.get("train_loss"),
            **{f"val_{k}": v for k, v in final.items()},
            "val_loss_estimate": result.get("val_loss"),
            "tokens_per_sec": result["tokens_per_sec"],
            "wall_s": result["wall_s"],
            "n_params": _num_parameters(model),
            "config": model.config.to_dict(),
            **(extra_metrics or {}),
        }
        if self.world.size > 1:
            metrics["world_size"] = self.world.size
        if not self.world.is_main:
            return metrics
        write_json(self.out_dir / METRICS_NAME, metrics)
        model.save_pretrained(self.out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.out_dir)
        self._report(metrics, trainer)
        return metrics

    def _report(self, metrics, trainer):
        final = {k[4:]: v for k, v in metrics.items() if k.startswith("val_") and k != "val_loss_estimate"}
        line = f"\nval loss {final.pop('loss'):.4f}"
        if "perplexity" in final:
            line += f" (perplexity {final.pop('perplexity'):.2f})"
        line += "".join(f", {k} {v:.4f}" for k, v in final.items() if isinstance(v, float))
        line += " on the whole validation split"
        if metrics["tokens_per_sec"]:
            line += f"; {metrics['tokens_per_sec']:,.0f} tokens/s; {metrics['wall_s']:.0f} s"
        self.log(line)
        self.log(f"saved the model and {METRICS_NAME} to {self.out_dir}/")
        if trainer.sampled_at != trainer.iter_num:  # (else the last evaluation just showed this very sample)
            text = trainer.sample()
            if text is not None:
                self.log(f"--- sample ---\n{text}")


@no_grad()
def _evaluate_trained(fn, model):
    was_training = model.training
    model.eval()
    try:
        return fn(model)
    finally:
        model.train(was_training)


def _silent(*args, **kwargs):
    pass


def _num_parameters(model):
    if hasattr(model, "num_parameters"):
        return model.num_parameters()
    return sum(p.size for p in model.parameters())

