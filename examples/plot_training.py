"""Draw a training run's loss curves, learning rate and gradient norm from its log.csv into a PNG.

    python examples/plot_training.py --run-dir out-shakespeare            # writes out-shakespeare/training.png
    python examples/plot_training.py --run-dir out-shakespeare --out curves.png

log.csv (written by tinyllm.training) has one row per optimizer step (iter, loss, lr, grad_norm,
tokens_per_sec, elapsed_s) and one per evaluation (iter, eval_train_loss, eval_val_loss,
elapsed_s). Needs matplotlib: pip install "tinyllm[plot]".
"""
import argparse
import csv
import math
import sys
from pathlib import Path

LOG_NAME = "log.csv"
STEP_COLUMNS = ("iter", "loss", "lr", "grad_norm")
EVAL_COLUMNS = ("eval_train_loss", "eval_val_loss")


def import_pyplot():
    """matplotlib's pyplot on a file-only backend, or a clear error naming the install."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('error: drawing needs matplotlib, which is not installed: pip install "tinyllm[plot]" '
                         '(or pip install matplotlib)') from None
    matplotlib.use("Agg")  # draw into files; no display needed
    import matplotlib.pyplot as plt

    return plt


def read_log(path):
    """The series of a log.csv: ``{"step": {"iter", "loss", "lr", "grad_norm"}, "eval": {"iter",
    "train", "val"}}``, each a list of floats in the order of the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; train first (python examples/train_shakespeare.py --out-dir DIR), "
                         "then pass --run-dir DIR")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: the file is empty, not a tinyllm training log")
        missing = [c for c in STEP_COLUMNS + EVAL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a tinyllm training log: it lacks the columns {missing} "
                             f"(it has {reader.fieldnames})")
        step = {k: [] for k in STEP_COLUMNS}
        evals = {"iter": [], "train": [], "val": []}
        for line, row in enumerate(reader, start=2):
            try:
                if row["loss"]:
                    for k in STEP_COLUMNS:
                        step[k].append(float(row[k]))
                if row["eval_val_loss"]:
                    evals["iter"].append(float(row["iter"]))
                    evals["train"].append(float(row["eval_train_loss"]))
                    evals["val"].append(float(row["eval_val_loss"]))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}, line {line}: cannot read the row {row}: {e}") from None
    if not step["iter"] and not evals["iter"]:
        raise ValueError(f"{path}: the log has no rows yet (the run has not finished a step)")
    return {"step": step, "eval": evals}


def moving_average(values, window):
    """The mean of the last ``window`` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(series, title, out_path):
    """Three panels sharing the step axis: losses, learning rate, gradient norm."""
    plt = import_pyplot()
    step, evals = series["step"], series["eval"]
    fig, (ax_loss, ax_lr, ax_norm) = plt.subplots(3, 1, figsize=(7, 6.5), sharex=True,
                                                  gridspec_kw={"height_ratios": [3, 1, 1]})
    if step["iter"]:
        ax_loss.plot(step["iter"], step["loss"], color="tab:blue", alpha=0.25, linewidth=0.6,
                     label="training loss, each step")
        window = max(1, len(step["loss"]) // 50)
        ax_loss.plot(step["iter"], moving_average(step["loss"], window), color="tab:blue", linewidth=1.2,
                     label=f"training loss, mean of {window} steps")
    if evals["iter"]:
        ax_loss.plot(evals["iter"], evals["train"], "o-", color="tab:green", markersize=3,
                     label="train split (estimate)")
        ax_loss.plot(evals["iter"], evals["val"], "o-", color="tab:red", markersize=3,
                     label="validation split (estimate)")
        ax_loss.annotate(f"{evals['val'][-1]:.3f}", (evals["iter"][-1], evals["val"][-1]),
                         textcoords="offset points", xytext=(4, 6), color="tab:red", fontsize=8)
    ax_loss.set_ylabel("loss (nats per token)")
    ax_loss.set_title(title, fontsize=10)
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(step["iter"], step["lr"], color="tab:purple")
    ax_lr.set_ylabel("learning rate", fontsize=8)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax_lr.grid(alpha=0.3)
    ax_norm.plot(step["iter"], step["grad_norm"], color="tab:gray", linewidth=0.6)
    ax_norm.set_ylabel("gradient norm\n(before clipping)", fontsize=8)
    ax_norm.set_xlabel("optimizer step")
    finite = [v for v in step["grad_norm"] if math.isfinite(v)]
    if finite and max(finite) > 10 * sorted(finite)[len(finite) // 2]:
        ax_norm.set_yscale("log")  # a few early spikes would flatten the rest
    ax_norm.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("out-shakespeare"),
                   help="a training run's --out-dir (it holds log.csv)")
    p.add_argument("--out", type=Path, default=None, help="the PNG to write (default: RUN_DIR/training.png)")
    p.add_argument("--title", default=None, help="the title above the plot (default: the run directory)")
    args = p.parse_args(argv)
    try:
        series = read_log(args.run_dir / LOG_NAME)
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = args.out or args.run_dir / "training.png"
    try:
        plot(series, args.title or f"training run {args.run_dir}", out)
    except OSError as e:  # --out in a directory that does not exist, or that we may not write
        sys.exit(f"error: cannot write {out}: {e.strerror or e}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
