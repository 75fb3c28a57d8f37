"""Growing or shrinking a model's token embedding, as transformers' ``resize_token_embeddings``
(after ``tokenizer.add_tokens(...)``): the sizes, the rows kept, and how the new rows are drawn."""
import numpy as np

__all__ = ["new_embedding_rows", "resize_rows", "resized_vocab_size"]


def resized_vocab_size(current, new_num_tokens, pad_to_multiple_of):
    """The number of rows ``resize_token_embeddings`` makes (None: leave the table as it is):
    ``new_num_tokens`` (or ``current``) rounded up to a multiple of ``pad_to_multiple_of``."""
    for name, value in (("new_num_tokens", new_num_tokens), ("pad_to_multiple_of", pad_to_multiple_of)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"resize_token_embeddings: {name} must be a positive integer or None, got {value!r}")
    if pad_to_multiple_of is None:
        return None if new_num_tokens is None else int(new_num_tokens)
    size = current if new_num_tokens is None else int(new_num_tokens)
    return -(-size // int(pad_to_multiple_of)) * int(pad_to_multiple_of)  # round up


def resize_rows(weight, num_rows, mean_resizing, rng, std=0.02):
    """Give the Parameter ``weight`` (V, C) ``num_rows`` rows in place of its data (its gradient is
    dropped): the old rows first, then :func:`new_embedding_rows` (``std``: the model's own init)."""
    old = weight.data
    keep = min(old.shape[0], num_rows)
    rows = np.empty((num_rows, old.shape[1]), dtype=old.dtype)
    rows[:keep] = old[:keep]
    if num_rows > old.shape[0]:
        rows[keep:] = new_embedding_rows(old, num_rows - old.shape[0], mean_resizing, rng, std)
    weight.data, weight.grad = rows, None


def new_embedding_rows(old, n_new, mean_resizing, rng, std=0.02, epsilon=1e-9):
    """``n_new`` rows (n_new, C) for an embedding table ``old`` (V, C), as transformers'
    ``_init_added_embeddings_weights_with_mean``: with ``mean_resizing``, samples of
    N(mu, epsilon * Sigma), mu = mean of the rows, Sigma = (old - mu)^T (old - mu) / V, drawn as
    mu + z L^T with z ~ N(0, I) and L L^T = epsilon * Sigma (Cholesky); every row is mu when that
    matrix is not positive definite. Without: N(0, ``std``). Computed in float64, returned in old's dtype."""
    if not mean_resizing:
        return (rng.standard_normal((n_new, old.shape[1])) * std).astype(old.dtype)
    rows = old.astype(np.float64)
    mu = rows.mean(axis=0)
    centred = rows - mu
    try:
        chol = np.linalg.cholesky(epsilon * (centred.T @ centred) / len(rows))  # (C, C), lower
    except np.linalg.LinAlgError:
        return np.broadcast_to(mu, (n_new, old.shape[1])).astype(old.dtype)
    return (mu + rng.standard_normal((n_new, old.shape[1])) @ chol.T).astype(old.dtype)
