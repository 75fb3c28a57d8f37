"""Draw every layer's and head's attention map over the tokens of a prompt into a PNG.

    python examples/show_attention.py --model-dir out-shakespeare --prompt "ROMEO:"
    python examples/show_attention.py --model-dir out-shakespeare --prompt "ROMEO:\\nO, she doth teach" --out attn.png

Row i of a map is query i's softmax over keys 0..i (a causal model sees no later token): which
earlier tokens that head, in that layer, reads when it processes token i.

How the maps are obtained, without changing the model: the model runs its ordinary forward
pass once, with each layer's attention module wrapped for that call so that it records its
input (the block's ``ln_1(x)``) and its output. From the recorded input the script recomputes
the heads' queries and keys with the layer's own ``c_attn`` weights and the reference math,
``softmax(q k^T / sqrt(head_dim) + causal mask)``, and then checks that these probabilities,
applied to the values and passed through ``c_proj``, give back the output the layer produced:
the maps are the ones the model used. Needs matplotlib: pip install "tinyllm[plot]".
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from tinyllm import no_grad
from tinyllm.kernels.attention import causal_mask
from tinyllm.models import GPT
from tinyllm.tokenizers import AutoTokenizer


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


def _record_attention_io(model, ids):
    """Run ``model(ids)`` once; return each layer's attention input and output (arrays (B, T, C)).

    Each block's ``attn`` gets, for this call only, an instance attribute ``forward`` that records
    and then calls the class's own forward; the model's code is unchanged, and so is its result.
    """
    records = []
    attns = [block.attn for block in model.transformer.h]
    for attn in attns:
        def recording_forward(x, *args, _attn=attn, **kwargs):
            y = type(_attn).forward(_attn, x, *args, **kwargs)
            records.append((x.data.copy(), y.data.copy()))
            return y

        attn.forward = recording_forward
    try:
        with no_grad():
            model(ids)
    finally:
        for attn in attns:
            del attn.forward  # back to the class's forward
    return records


def _softmax_rows(scores):
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def attention_maps(model, ids):
    """The attention probabilities of every layer and head for the prompt ``ids`` (1, T):
    an array (n_layer, n_head, T, T) whose row i sums to 1 over keys 0..i.

    Recomputed from each layer's recorded input with the reference math (see the module
    docstring), and checked against the output the layer actually produced.
    """
    maps = []
    for attn, (x, y) in zip([b.attn for b in model.transformer.h], _record_attention_io(model, ids)):
        H, D = attn.n_head, attn.head_dim
        T = x.shape[1]
        with no_grad():
            qkv = attn.c_attn(x).data[0]  # (T, 3C): q | k | v, each head's D columns side by side
        q, k, v = (qkv[:, i * H * D:(i + 1) * H * D].reshape(T, H, D).transpose(1, 0, 2) for i in range(3))
        scores = (q @ k.transpose(0, 2, 1)).astype(np.float64) / np.sqrt(D)  # (H, T, T)
        probs = _softmax_rows(np.where(causal_mask(T, T), scores, -np.inf))
        heads = (probs @ v).transpose(1, 0, 2).reshape(1, T, H * D).astype(x.dtype)  # (1, T, C)
        with no_grad():
            rebuilt = attn.c_proj(heads).data
        if not np.allclose(rebuilt, y, rtol=1e-3, atol=1e-4):
            raise RuntimeError(f"the recomputed attention of layer {len(maps)} does not reproduce the model's "
                               f"output (max difference {np.abs(rebuilt - y).max():.3g}): this script needs "
                               "updating for the model's attention")
        maps.append(probs)
    return np.stack(maps)


def token_labels(tokenizer, ids):
    """A short printable label per token: newline as \\n, space as a visible mark."""
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)])
        labels.append(text.replace("\n", "\\n").replace(" ", "\u2423") or "?")
    return labels


def plot(maps, labels, title, out_path):
    """A grid of maps: one row per layer, one column per head."""
    plt = import_pyplot()
    n_layer, n_head, T, _ = maps.shape
    side = 1.6 + 0.09 * T
    fig, axes = plt.subplots(n_layer, n_head, figsize=(side * n_head + 0.6, side * n_layer + 0.8), squeeze=False,
                             constrained_layout=True)  # room for the titles of the figure and of each map
    show_labels = T <= 48
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            ax.imshow(maps[layer, head], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            if show_labels:
                ax.set_xticks(range(T))
                ax.set_yticks(range(T))
                ax.set_xticklabels(labels, fontsize=6, rotation=90)
                ax.set_yticklabels(labels, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            ax.tick_params(length=0)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("key: the earlier token read", fontsize=9)
    fig.supylabel("query: the token being processed", fontsize=9)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("out-shakespeare"))
    p.add_argument("--prompt", default="ROMEO:", help="the text whose attention is drawn (\\n for a newline)")
    p.add_argument("--out", type=Path, default=None, help="the PNG to write (default: MODEL_DIR/attention.png)")
    p.add_argument("--title", default=None, help="the title above the maps (default: the model directory and prompt)")
    args = p.parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        sys.exit(f"error: {args.model_dir} holds no saved model (config.json); train one first with "
                 "`python examples/train_shakespeare.py --out-dir DIR`, then pass --model-dir DIR")
    prompt = args.prompt.replace("\\n", "\n")
    try:
        model = GPT.from_pretrained(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        ids = list(tokenizer.encode(prompt))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if not ids:
        sys.exit("error: the prompt encodes to no tokens; give at least one character with --prompt")
    block = model.config.block_size
    if len(ids) > block:
        print(f"the prompt has {len(ids)} tokens; drawing its last {block} (the model's block_size)")
        ids = ids[-block:]
    model.eval()
    maps = attention_maps(model, np.asarray([ids], dtype=np.int64))
    out = args.out or args.model_dir / "attention.png"
    try:
        plot(maps, token_labels(tokenizer, ids), args.title or f"attention of {args.model_dir} over {prompt!r}", out)
    except OSError as e:  # --out in a directory that does not exist, or that we may not write
        sys.exit(f"error: cannot write {out}: {e.strerror or e}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
