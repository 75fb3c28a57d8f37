"""Text generation: ``model.generate(...)`` with Hugging Face's arguments and meanings.

One step of generation turns the logits of the last position into the next token:

    logits --/ temperature--> --top-k--> --top-p--> softmax --sample--> token
                                                      \\--argmax (greedy)--> token

The model is anything with ``forward(idx, kv_cache=..., last_only=True)``, ``new_kv_cache(B)``
and ``config.block_size``.
"""
import inspect

import numpy as np

__all__ = ["generate", "apply_top_k", "apply_top_p", "sample_from_logits"]


def apply_top_k(logits, k):
    """Keep the ``k`` largest logits of each row, set the rest to -inf. logits (B, V)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]  # (B, 1): the k-th largest value
    return np.where(logits < kth, -np.inf, logits)


def apply_top_p(logits, p):
    """Nucleus filtering: keep the most likely tokens whose probabilities add up to ``p``.

    Tokens are taken from the most likely down until the running total reaches ``p``; the token
    that crosses the threshold is kept (so at least one token always survives), the rest get -inf.
    Equal logits are taken in index order.
    """
    if p is None or p >= 1.0:
        return logits
    order = _descending_order(logits)  # (B, V) most likely first
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    probs = _softmax(sorted_logits)
    before = np.cumsum(probs, axis=-1) - probs  # probability mass of the tokens ranked above
    drop_sorted = before >= p  # already reached p without this token
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def _descending_order(logits):
    """``np.argsort(-logits, axis=-1, kind="stable")``: the most likely first, equal logits in index
    order. NumPy's default sort is several times faster than its stable one (a vocabulary of 50k
    per row per step adds up), so it sorts unstably and then puts the runs of equal logits back
    in index order (only where there are any, e.g. the -inf of a top-k)."""
    order = np.argsort(-logits, axis=-1)
    ranked = np.take_along_axis(logits, order, axis=-1)
    ties = ranked[..., 1:] == ranked[..., :-1]
    if ties.any():
        run = np.zeros(order.shape, np.int64)  # run[i]: which run of equal logits position i is in
        np.cumsum(~ties, axis=-1, out=run[..., 1:])
        order = np.take_along_axis(order, np.argsort(run * logits.shape[-1] + order, axis=-1), axis=-1)
    return order


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sample_from_logits(logits, rng, do_sample=True, temperature=1.0, top_k=None, top_p=None):
    """Next token ids (B,) from last-position logits (B, V)."""
    if not do_sample or temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits.astype(np.float64)
    logits = apply_top_p(apply_top_k(logits / temperature, top_k), top_p)
    probs = _softmax(logits)
    # inverse-CDF sampling: one uniform number per row, so the draw depends only on the seed
    u = rng.random((logits.shape[0], 1))
    cdf = np.cumsum(probs, axis=-1)
    picks = (cdf <= u * cdf[:, -1:]).sum(axis=-1)  # tokens of probability 0 are never picked
    return np.minimum(picks, logits.shape[-1] - 1)


def _check_args(idx, max_new_tokens, max_length, temperature, top_k, top_p, vocab_size):
    if idx.dtype.kind not in "iu":
        raise TypeError(f"generate: input ids must be integers, got dtype {idx.dtype}")
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"generate: input ids must have shape (batch, time) with time >= 1, got {idx.shape}")
    if idx.min() < 0 or idx.max() >= vocab_size:
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise ValueError(f"generate: token id {int(bad)} is out of range for vocab_size {vocab_size}")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0):
        raise ValueError(f"generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 1):
        raise ValueError(f"generate: max_length must be a positive integer, got {max_length!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0 and np.isfinite(temperature)):
        raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"generate: top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")


def generate(model, idx, max_new_tokens=None, max_length=None, do_sample=True, temperature=1.0, top_k=None,
             top_p=None, eos_token_id=None, seed=None, use_cache=True, pad_token_id=None):
    """Prompt (B, T) or (T,) -> prompt + new tokens, see ``GPT.generate``."""
    idx = np.asarray(idx)
    one_d = idx.ndim == 1
    if one_d:
        idx = idx[None, :]
    _check_args(idx, max_new_tokens, max_length, temperature, top_k, top_p, model.config.vocab_size)
    if max_new_tokens is None:
        max_new_tokens = max((max_length if max_length is not None else 20) - idx.shape[1], 0)
    rng = np.random.default_rng(seed)
    pad = eos_token_id if pad_token_id is None else pad_token_id
    was_training = model.training
    model.eval()
    try:
        out = _generate_loop(model, idx.astype(np.int64), max_new_tokens, rng, do_sample, temperature, top_k, top_p,
                             eos_token_id, pad, use_cache)
    finally:
        model.train(was_training)
    return out[0] if one_d else out


def _generate_loop(model, idx, max_new_tokens, rng, do_sample, temperature, top_k, top_p, eos, pad, use_cache):
    block = model.config.block_size
    batch, prompt_len = idx.shape
    out = np.empty((batch, prompt_len + max_new_tokens), np.int64)  # prompt + every token to come
    out[:, :prompt_len] = idx
    done = np.zeros(batch, dtype=bool)
    cache, fed = None, 0  # fed: how many tokens of out the cache holds
    for length in range(prompt_len, prompt_len + max_new_tokens):  # out[:, :length] is known
        if use_cache and length <= block:
            if cache is None:
                cache = _new_cache(model, batch, min(block, prompt_len + max_new_tokens))
            logits, _ = model(out[:, fed:length], kv_cache=cache, last_only=True)
            fed = length
        else:
            # Past block_size the positions shift every step, so the window is recomputed: exactly
            # what the uncached path does, which keeps cached and uncached outputs identical.
            logits, _ = model(out[:, max(0, length - block):length], last_only=True)
        next_ids = sample_from_logits(logits.data[:, -1, :], rng, do_sample, temperature, top_k, top_p)
        if eos is not None:
            next_ids = np.where(done, pad, next_ids)
            done |= next_ids == eos
        out[:, length] = next_ids
        if eos is not None and done.all():
            return out[:, :length + 1]
    return out


def _new_cache(model, batch, max_len):
    """A KV cache for ``batch`` sequences of at most ``max_len`` positions (no more memory than the
    generation needs), or of the model's default length if its new_kv_cache takes no max_len."""
    if "max_len" in inspect.signature(model.new_kv_cache).parameters:
        return model.new_kv_cache(batch, max_len=max_len)
    return model.new_kv_cache(batch)
