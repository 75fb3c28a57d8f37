"""Beam search with Hugging Face's meaning of every knob (``transformers`` ``_beam_search``).

Per source, ``num_beams`` running hypotheses are extended token by token. At each step every
running beam proposes every token; a candidate's score is its running sum of log-probabilities.
The ``2 * num_beams`` best candidates are kept (so that at least ``num_beams`` do not end here):

* a candidate that ends (its token is EOS, the sequence reached ``max_length``, or a stopping
  criterion such as ``stop_strings`` says it is done) and ranks in
  the first ``num_beams`` joins the finished hypotheses with the score
  ``sum_logprobs / generated_len ** length_penalty`` (generated_len counts the tokens after the
  prompt, EOS included), and the ``num_beams`` best finished ones are kept;
* the ``num_beams`` best candidates that do not end are the next running beams.

A source is done when it cannot improve any more:

* ``early_stopping=True``: as soon as it has ``num_beams`` finished hypotheses;
* ``early_stopping=False`` (the default): when the best running beam, scored as if it ended now
  (``running_score / (cur_len - prompt_len) ** length_penalty``), is no better than the worst
  finished one (a heuristic, as in Hugging Face);
* ``early_stopping="never"``: the same, but with a positive length_penalty the best running beam
  is scored at the longest possible length ``max_length - prompt_len`` (the exact bound).

The search stops when every source is done or the sequences reach ``max_length``. The result is
each source's ``num_return_sequences`` best finished hypotheses, best first, padded with
``pad_token_id`` to a common length. Scores are computed in float64.
"""
import numpy as np

__all__ = ["beam_search", "log_softmax"]

_NEG = -1.0e9  # a score that keeps a candidate out (Hugging Face's constant)


def log_softmax(logits):
    """log softmax over the last axis, in float64.   (N, V) -> (N, V)"""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _top(scores, k):
    """Indices (B, k) of the k largest scores per row, largest first (ties: lower index first)."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _take(a, idx):
    """a[b, idx[b, j], ...] for each row b: gathers beams along axis 1."""
    idx = idx.reshape(idx.shape + (1,) * (a.ndim - 2))
    return np.take_along_axis(a, idx, axis=1)


def beam_search(step, input_ids, num_beams, max_length, eos_token_id, pad_token_id=None, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1, logits_processor=None, stopping=None):
    """Beam search over a next-token model. Returns ``(sequences, scores)``.

    step(sequences, parents) -> logits (B * num_beams, V) for the next token of each flat row of
        ``sequences`` (B * num_beams, cur_len), row ``b * num_beams + j`` being beam j of source b.
        ``parents`` (B * num_beams,) says which row of the previous step each row continues
        (None at the first step), so a model with a KV cache can reorder it.
    input_ids (B, P): the prompt of each source (for an encoder-decoder: the start token).
    max_length: the longest sequence, prompt included.
    logits_processor(sequences, log_probs) -> log_probs (B * num_beams, V), optional: applied to
        the log-probabilities of each step before they are added to the beams' scores, as Hugging
        Face applies its logits processors in beam search (e.g. a repetition penalty).
    stopping(sequences (N, cur_len + 1)) -> (N,) bool, optional: a candidate it says is done ends
        as one with EOS does (transformers' stopping criteria, e.g. its stop strings).
    Returns sequences (B * num_return_sequences, L) int64 with L <= max_length, source b's
    hypotheses in rows b * num_return_sequences ..., best first, and their scores (same rows).
    """
    input_ids = np.asarray(input_ids, dtype=np.int64)
    batch, prompt_len = input_ids.shape
    nb = num_beams
    if max_length <= prompt_len:
        raise ValueError(f"beam_search: max_length={max_length} leaves no room after a prompt of {prompt_len}")
    if not 1 <= num_return_sequences <= nb:
        raise ValueError(f"beam_search: num_return_sequences={num_return_sequences} must be in 1..num_beams={nb}")
    keep = 2 * nb  # candidates kept per step: at most nb of them can end with EOS
    in_top_beams = np.arange(keep) < nb  # (keep,) only these ranks may finish
    fill = pad_token_id if pad_token_id is not None else (
        int(np.atleast_1d(eos_token_id)[0]) if eos_token_id is not None else -1)

    running = np.full((batch, nb, max_length), fill, dtype=np.int64)
    running[:, :, :prompt_len] = input_ids[:, None, :]
    running_scores = np.zeros((batch, nb))
    running_scores[:, 1:] = _NEG  # all beams start equal: only beam 0's candidates count at first
    finished = running.copy()
    finished_scores = np.full((batch, nb), _NEG)
    finished_len = np.full((batch, nb), prompt_len)
    is_finished = np.zeros((batch, nb), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)  # can a source's finished set still improve?
    parents, cur_len = None, prompt_len
    while True:
        flat = running[:, :, :cur_len].reshape(batch * nb, cur_len)
        logits = step(flat, parents)
        vocab = logits.shape[-1]
        log_probs = log_softmax(logits)
        if logits_processor is not None:
            log_probs = logits_processor(flat, log_probs)
        scores = log_probs.reshape(batch, nb, vocab) + running_scores[:, :, None]
        scores = scores.reshape(batch, nb * vocab)

        # the 2 * num_beams best continuations over all beams of a source
        top = _top(scores, keep)  # (B, keep)
        top_scores = np.take_along_axis(scores, top, axis=1)
        top_beam, top_token = top // vocab, top % vocab
        top_seqs = _take(running, top_beam)  # (B, keep, max_length), a copy
        top_seqs[:, :, cur_len] = top_token
        ends = np.full(top_token.shape, cur_len + 1 >= max_length)
        if eos_token_id is not None:
            ends |= np.isin(top_token, eos_token_id)  # one id or several
        if stopping is not None:
            ends |= stopping(top_seqs[:, :, :cur_len + 1].reshape(batch * keep, cur_len + 1)).reshape(batch, keep)

        # the num_beams best that go on are the next running beams
        go_on_scores = top_scores + _NEG * ends
        chosen = _top(go_on_scores, nb)
        running = _take(top_seqs, chosen)
        running_scores = np.take_along_axis(go_on_scores, chosen, axis=1)
        parents = (np.take_along_axis(top_beam, chosen, axis=1) + nb * np.arange(batch)[:, None]).reshape(-1)

        # those that end among the first num_beams ranks join the finished hypotheses
        just_finished = ends & in_top_beams
        candidate = top_scores / float(cur_len + 1 - prompt_len) ** length_penalty
        full = is_finished.all(axis=1, keepdims=True) & (early_stopping is True)
        candidate = candidate + _NEG * full + _NEG * ~improvable + _NEG * ~just_finished
        merged_scores = np.concatenate([finished_scores, candidate], axis=1)
        best = _top(merged_scores, nb)
        finished = _take(np.concatenate([finished, top_seqs], axis=1), best)
        finished_scores = np.take_along_axis(merged_scores, best, axis=1)
        finished_len = np.take_along_axis(
            np.concatenate([finished_len, np.full((batch, keep), cur_len + 1)], axis=1), best, axis=1)
        is_finished = np.take_along_axis(np.concatenate([is_finished, just_finished], axis=1), best, axis=1)
        cur_len += 1

        improvable &= _may_improve(running_scores, finished_scores, is_finished, cur_len, max_length, prompt_len,
                                   early_stopping, length_penalty)
        if not improvable.any() or (is_finished.all() and early_stopping is True) or ends.all():
            break

    out_len = finished_len[:, :num_return_sequences].max()
    sequences = finished[:, :num_return_sequences, :out_len].reshape(batch * num_return_sequences, out_len)
    return sequences, finished_scores[:, :num_return_sequences].reshape(-1)


def _may_improve(running_scores, finished_scores, is_finished, cur_len, max_length, prompt_len, early_stopping,
                 length_penalty):
    """(B, 1) bool: could the best running beam still beat the worst finished hypothesis?
    (Always True while a source has fewer than num_beams finished: its worst is then -1e9.)"""
    if early_stopping == "never" and length_penalty > 0.0:
        best_length = max_length - prompt_len
    else:
        best_length = cur_len - prompt_len
    best_running = running_scores[:, :1] / float(best_length) ** length_penalty
    worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), _NEG)
    return (best_running > worst_finished).any(axis=1, keepdims=True)
