"""transformers' further generate knobs: logits processors, sampling warpers and stop strings.

:mod:`tinyllm.generation` applies them in transformers' order (``_get_logits_processor``):

    sequence_bias, (encoder_)repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_length,
    min_new_tokens, forced_bos_token_id, forced_eos_token_id, exponential_decay_length_penalty,
    suppress_tokens, begin_suppress_tokens        -- processors: greedy, sampling and beam search
    temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff
                                                  -- warpers: sampling only

A processor is ``process(input_ids (N, L), scores (N, V)) -> scores``; a warper is
``warp(scores (N, V)) -> scores`` with -inf where it filters. ``stop_strings`` is a stopping
criterion, ``stopped(input_ids (N, L)) -> (N,) bool``.
"""
import json

import numpy as np

__all__ = ["sequence_bias_processor", "bad_words_processor", "forced_bos_processor", "forced_eos_processor",
           "exponential_decay_processor", "suppress_tokens_processor", "begin_suppress_processor",
           "min_p_warper", "typical_warper", "epsilon_warper", "eta_warper", "stop_strings_criterion",
           "check_knobs", "KNOB_DEFAULTS"]

# the knobs of this module, off at these values (transformers' GenerationConfig defaults them to None
# or, for typical_p / epsilon_cutoff / eta_cutoff, to 1.0 / 0.0 / 0.0, which are off too)
KNOB_DEFAULTS = dict(min_p=None, typical_p=None, epsilon_cutoff=None, eta_cutoff=None, bad_words_ids=None,
                     suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
                     forced_eos_token_id=None, sequence_bias=None, exponential_decay_length_penalty=None,
                     stop_strings=None)


def _softmax(scores):
    z = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(scores):
    z = scores - scores.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _entropy(log_probs):
    """H = -sum p log p per row (N, 1); a token of probability 0 adds 0 (its 0 * -inf is left out)."""
    with np.errstate(invalid="ignore"):
        return -np.nansum(np.exp(log_probs) * log_probs, axis=-1, keepdims=True)


# --- processors -------------------------------------------------------------------------------------


def sequence_bias_processor(sequence_bias):
    """transformers' ``SequenceBiasLogitsProcessor``: ``sequence_bias`` {(t_1, ..., t_n): b} adds b
    to token t_n's score when the ids end with t_1 .. t_{n-1} (always, for n = 1); the biases of one
    token add up. Single tokens first, then the longer ones grouped by length, as transformers sums."""
    singles = [(ids[0], b) for ids, b in sequence_bias.items() if len(ids) == 1]
    groups = {}
    for ids, b in sequence_bias.items():
        if len(ids) > 1:
            groups.setdefault(len(ids) - 1, []).append((np.array(ids[:-1]), ids[-1], b))

    def process(input_ids, scores):
        bias = np.zeros(scores.shape, scores.dtype)
        for token, b in singles:
            bias[:, token] = b
        for prefix_len, group in groups.items():
            if prefix_len > input_ids.shape[1]:  # the prefix is longer than the ids so far
                continue
            for prefix, token, b in group:
                matching = (input_ids[:, -prefix_len:] == prefix).all(axis=1)  # (N,)
                bias[matching, token] += b
        return scores + bias

    return process


def bad_words_processor(bad_words_ids, eos_token_id=None):
    """transformers' ``NoBadWordsLogitsProcessor``: a token that would complete one of the
    ``bad_words_ids`` sequences gets -inf (a one-token ban: always). A one-token ban of an EOS id
    is dropped, as transformers drops it (EOS is what ends a sequence)."""
    eos = set() if eos_token_id is None else {int(e) for e in np.atleast_1d(eos_token_id)}
    banned = [tuple(ids) for ids in bad_words_ids if not (len(ids) == 1 and ids[0] in eos)]
    return sequence_bias_processor({ids: -np.inf for ids in banned}) if banned else (lambda ids, s: s)


def _force(scores, token_ids):
    """Every score -inf but those of ``token_ids``, 0."""
    forced = np.full_like(scores, -np.inf)
    forced[:, token_ids] = 0
    return forced


def forced_bos_processor(bos_token_id):
    """transformers' ``ForcedBOSTokenLogitsProcessor``: when the ids are one token long (an
    encoder-decoder's start token), only ``bos_token_id`` can come next."""
    return lambda input_ids, scores: _force(scores, bos_token_id) if input_ids.shape[1] == 1 else scores


def forced_eos_processor(max_length, eos_token_id):
    """transformers' ``ForcedEOSTokenLogitsProcessor``: the token at position ``max_length - 1``
    (the last one, prompt counted) can only be one of ``eos_token_id``."""
    eos = np.atleast_1d(eos_token_id)
    return lambda input_ids, scores: _force(scores, eos) if input_ids.shape[1] == max_length - 1 else scores


def exponential_decay_processor(start_index, decay_factor, eos_token_id, prompt_len):
    """transformers' ``ExponentialDecayLengthPenalty``: once k = L - (prompt_len + start_index) > 0
    (L: the ids so far), each EOS score s becomes s + |s| (decay_factor ** k - 1), a push towards
    ending that grows exponentially (a non-finite s stays)."""
    start, eos = prompt_len + start_index, np.atleast_1d(eos_token_id)

    def process(input_ids, scores):
        if input_ids.shape[1] <= start:
            return scores
        eos_scores = scores[:, eos]
        penalty = np.abs(eos_scores) * (decay_factor ** (input_ids.shape[1] - start) - 1)
        scores = scores.copy()
        scores[:, eos] += np.where(np.isfinite(eos_scores), penalty, 0).astype(scores.dtype)
        return scores

    return process


def suppress_tokens_processor(token_ids):
    """transformers' ``SuppressTokensLogitsProcessor``: ``token_ids`` get -inf at every step."""
    token_ids = np.asarray(token_ids, np.int64)

    def process(input_ids, scores):
        scores = scores.copy()
        scores[:, token_ids] = -np.inf
        return scores

    return process


def begin_suppress_processor(token_ids, begin_index):
    """transformers' ``SuppressTokensAtBeginLogitsProcessor``: ``token_ids`` get -inf only while the
    ids are ``begin_index`` long (the first generated position)."""
    suppress = suppress_tokens_processor(token_ids)
    return lambda input_ids, scores: suppress(input_ids, scores) if input_ids.shape[1] == begin_index else scores


# --- warpers (sampling only, after temperature, top-k and top-p) ----------------------------------------


def _keep_top(scores, drop, min_tokens_to_keep):
    """``drop`` (N, V) except for the ``min_tokens_to_keep`` largest scores of each row (all tied
    at the k-th kept), then -inf where dropped."""
    k = min(min_tokens_to_keep, scores.shape[-1])
    kth = -np.sort(-scores, axis=-1)[:, k - 1:k]  # (N, 1) the k-th largest score
    return np.where(drop & (scores < kth), -np.inf, scores)


def min_p_warper(min_p, min_tokens_to_keep=1):
    """transformers' ``MinPLogitsWarper``: a token whose probability is below
    min_p * (the top token's probability) is filtered."""

    def warp(scores):
        probs = _softmax(scores)
        return _keep_top(scores, probs < min_p * probs.max(axis=-1, keepdims=True), min_tokens_to_keep)

    return warp


def typical_warper(mass, min_tokens_to_keep=1):
    """transformers' ``TypicalLogitsWarper`` (locally typical sampling): tokens are ranked by
    |-log p - H| (how far their information is from the entropy H), and the closest ones are kept
    until their probabilities add up to ``mass`` (the one that reaches it included)."""

    def warp(scores):
        log_probs = _log_softmax(scores)
        distance = np.abs(-log_probs - _entropy(log_probs))  # (N, V)
        order = np.argsort(distance, axis=-1, kind="stable")
        sorted_distance = np.take_along_axis(distance, order, axis=-1)
        cumulative = np.cumsum(_softmax(np.take_along_axis(scores, order, axis=-1)), axis=-1)
        last = np.minimum((cumulative < mass).sum(axis=-1), scores.shape[-1] - 1)  # (N,) last kept rank
        drop_sorted = sorted_distance > np.take_along_axis(sorted_distance, last[:, None], axis=-1)
        drop_sorted[:, :min_tokens_to_keep] = False
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        return np.where(drop, -np.inf, scores)

    return warp


def epsilon_warper(epsilon, min_tokens_to_keep=1):
    """transformers' ``EpsilonLogitsWarper`` (epsilon sampling): a token of probability below
    ``epsilon`` is filtered."""
    return lambda scores: _keep_top(scores, _softmax(scores) < epsilon, min_tokens_to_keep)


def eta_warper(epsilon, min_tokens_to_keep=1):
    """transformers' ``EtaLogitsWarper`` (eta sampling): a token of probability below
    eta = min(epsilon, sqrt(epsilon) * exp(-H)) is filtered, H the entropy of the distribution."""

    def warp(scores):
        eta = np.minimum(epsilon, np.sqrt(epsilon) * np.exp(-_entropy(_log_softmax(scores))))  # (N, 1)
        return _keep_top(scores, _softmax(scores) < eta, min_tokens_to_keep)

    return warp


# --- stop strings ---------------------------------------------------------------------------------------


def stop_strings_criterion(stop_strings, tokenizer, vocab_size):
    """transformers' ``StopStringCriteria``: ``stopped(input_ids (N, L)) -> (N,) bool``, True for a
    row whose text (its tokens' bytes, prompt included) holds a stop string that ends inside its
    last token; a stop string that is there but could be cut off by removing the last token no
    longer stops anything (it was checked when that string was made). Tokens are read as
    transformers reads them: a byte-level BPE (GPT-2's) token as its bytes, another one as the
    UTF-8 of its text; the stop strings as UTF-8."""
    targets = [s.encode("utf-8") for s in stop_strings]
    table = _token_bytes(tokenizer, vocab_size)
    longest = max(len(t) for t in targets)

    def stopped(input_ids):
        return np.array([_ends_with_stop(row, table, targets, longest) for row in input_ids], dtype=bool)

    return stopped


def _ends_with_stop(row, table, targets, longest):
    last = table[row[-1]]
    tail, i = last, len(row) - 1
    while len(tail) < longest + len(last) and i > 0:  # enough text before the last token
        i -= 1
        tail = table[row[i]] + tail
    last_start = len(tail) - len(last)
    # an occurrence that starts at or after last_start - len(t) + 1 ends inside the last token
    return any(tail.find(t, max(0, last_start - len(t) + 1)) >= 0 for t in targets)


def _token_bytes(tokenizer, vocab_size):
    """Each token id's bytes (a list of vocab_size bytes objects, b"" for an id without a token)."""
    byte_level = _is_byte_level(tokenizer)
    table = [b""] * vocab_size
    for token, token_id in tokenizer.get_vocab().items():
        if 0 <= token_id < vocab_size:
            raw = _byte_level_bytes(token) if byte_level else None
            table[token_id] = raw if raw is not None else tokenizer.convert_tokens_to_string([token]).encode("utf-8")
    return table


def _byte_level_bytes(token):
    from .tokenizers import _str_to_token

    return _str_to_token(token)


def _is_byte_level(tokenizer):
    """A tinyllm byte-level BPE, or a transformers tokenizer whose decoder is byte-level (GPT-2's)."""
    if getattr(tokenizer, "_byte_level_bpe", False):
        return True
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return False
    if type(decoder).__name__ == "ByteLevel":
        return True
    try:
        return '"ByteLevel"' in json.dumps(json.loads(decoder.__getstate__()))
    except (TypeError, ValueError, AttributeError):
        return False


# --- checking the knobs -----------------------------------------------------------------------------------


def check_knobs(knobs, vocab_size):
    """The knobs of :data:`KNOB_DEFAULTS` checked and put in one form (token lists as lists of ints,
    ``sequence_bias`` as {tuple: float}), a ValueError naming the offending value otherwise."""
    k = dict(KNOB_DEFAULTS, **knobs)
    _check_fraction("min_p", k["min_p"], 0, 1, "[0, 1]")
    _check_fraction("typical_p", k["typical_p"], 0, 1, "(0, 1] (1: off)", low_open=True)
    for name in ("epsilon_cutoff", "eta_cutoff"):
        _check_fraction(name, k[name], 0, 1, "[0, 1) (0: off)", high_open=True)
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        k[name] = None if k[name] is None else _token_list(name, k[name], vocab_size)
    if k["forced_bos_token_id"] is not None:
        k["forced_bos_token_id"] = _token_list("forced_bos_token_id", [k["forced_bos_token_id"]], vocab_size)[0]
    if k["forced_eos_token_id"] is not None:
        k["forced_eos_token_id"] = _token_list("forced_eos_token_id", np.atleast_1d(k["forced_eos_token_id"]).tolist(),
                                               vocab_size)
    if k["bad_words_ids"] is not None:
        k["bad_words_ids"] = _token_lists("bad_words_ids", k["bad_words_ids"], vocab_size)
    if k["sequence_bias"] is not None:
        k["sequence_bias"] = _sequence_bias(k["sequence_bias"], vocab_size)
    if k["exponential_decay_length_penalty"] is not None:
        k["exponential_decay_length_penalty"] = _decay(k["exponential_decay_length_penalty"])
    if k["stop_strings"] is not None:
        k["stop_strings"] = _stop_strings(k["stop_strings"])
    _check_forced_not_suppressed(k)
    return k


def _check_forced_not_suppressed(k):
    """transformers' check: a forced token that is also suppressed leaves no token at all to choose."""
    suppressed = set(k["suppress_tokens"] or ())
    for name in ("forced_bos_token_id", "forced_eos_token_id"):
        forced = set(np.atleast_1d(k[name]).tolist()) if k[name] is not None else set()
        if forced and forced <= suppressed:
            raise ValueError(f"generate: every token of {name}={k[name]!r} is also in suppress_tokens; forcing a "
                             "token while suppressing it leaves nothing to choose")


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_fraction(name, value, low, high, interval, low_open=False, high_open=False):
    if value is None:
        return
    ok = _is_number(value) and (low < value if low_open else low <= value) and (value < high if high_open
                                                                                 else value <= high)
    if not ok:
        raise ValueError(f"generate: {name} must be a number in {interval}, got {value!r}")


def _token_list(name, value, vocab_size):
    """A list / tuple / 1-D array of token ids in 0 .. vocab_size - 1 -> list of ints."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(f"generate: {name} must be a list of token ids, got {value!r}")
    ids = list(value)
    for token in ids:
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool) or not 0 <= token < vocab_size:
            raise ValueError(f"generate: {name} holds {token!r}, not a token id in 0..{vocab_size - 1} "
                             f"(vocab_size {vocab_size})")
    return [int(t) for t in ids]


def _token_lists(name, value, vocab_size):
    """transformers' list of non-empty lists of token ids -> list of lists of ints."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"generate: {name} must be a non-empty list of lists of token ids, got {value!r}")
    lists = [_token_list(name, ids, vocab_size) for ids in value]
    if any(not ids for ids in lists):
        raise ValueError(f"generate: {name} holds an empty list of token ids: {value!r}")
    return lists


def _sequence_bias(value, vocab_size):
    """transformers 5's two forms, ``{(ids...): bias}`` or ``[[[ids...], bias], ...]`` -> {tuple: float}."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [(ids, bias) for ids, bias in value]
    else:
        raise ValueError(f"generate: sequence_bias must be a dict {{(token ids): bias}} or a list of "
                         f"[[token ids], bias] pairs, got {value!r}")
    if not pairs:
        raise ValueError("generate: sequence_bias must not be empty")
    out = {}
    for ids, bias in pairs:
        if not _is_number(bias) or np.isnan(bias):
            raise ValueError(f"generate: sequence_bias gives {ids!r} the bias {bias!r}, not a number")
        ids = tuple(_token_list("sequence_bias", ids, vocab_size))
        if not ids:
            raise ValueError(f"generate: sequence_bias holds an empty sequence of token ids: {value!r}")
        out[ids] = float(bias)
    return out


def _decay(value):
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (int, np.integer))
            and not isinstance(value[0], bool) and value[0] >= 0 and _is_number(value[1])
            and np.isfinite(value[1]) and value[1] > 0):
        raise ValueError(f"generate: exponential_decay_length_penalty must be (start_index >= 0, decay_factor > 0), "
                         f"got {value!r}")
    return int(value[0]), float(value[1])


def _stop_strings(value):
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, (list, tuple)) or not strings or not all(isinstance(s, str) and s for s in strings):
        raise ValueError(f"generate: stop_strings must be a non-empty string or a list of them, got {value!r}")
    return list(strings)
