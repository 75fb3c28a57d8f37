"""Text generation: ``model.generate(...)`` with Hugging Face's arguments and meanings.

One step of generation turns the logits of the last position into the next token:

    logits --/ temperature--> --top-k--> --top-p--> --min-p, typical, epsilon, eta--> softmax --sample--> token
                                                      \\--argmax (greedy)--> token

Before that, Hugging Face's logits processors change the logits when their knobs ask for it, in
Hugging Face's order: ``sequence_bias``, ``encoder_repetition_penalty`` (an encoder-decoder's),
``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``, ``min_length``,
``min_new_tokens``, ``forced_bos_token_id``, ``forced_eos_token_id``,
``exponential_decay_length_penalty``, ``suppress_tokens``, ``begin_suppress_tokens`` (the newer
ones and the warpers in :mod:`tinyllm.logits_process`). They see the ids so far: the prompt
and the new tokens, or an encoder-decoder's decoder ids (its start token and the new tokens).
``stop_strings`` ends a row as EOS does. ``num_beams > 1`` runs beam search
(:mod:`tinyllm.beam_search`) instead, with the processors applied to each step's
log-probabilities, as Hugging Face does.

The model is anything with ``forward(idx, kv_cache=..., last_only=True)``, ``new_kv_cache(B)``
and ``config.block_size`` (and ``attention_mask=`` in forward, for padded prompts).
"""
import inspect

import numpy as np

from . import logits_process as lp

__all__ = ["generate", "greedy_or_sample", "output_record", "generate_output", "check_decoding_strategy", "left_pad",
           "apply_top_k", "apply_top_p", "sample_from_logits", "repetition_penalty_processor",
           "no_repeat_ngram_processor", "min_length_processor", "min_new_tokens_processor",
           "encoder_repetition_penalty_processor", "check_sampling_args", "TextStreamer", "sampling_warpers",
           "stopping_criterion"]


def left_pad(sequences, pad_token_id):
    """Prompts of different lengths as one batch for ``generate``: ``(input_ids, attention_mask)``,
    each (B, longest) int64, the prompts right-aligned after ``pad_token_id`` and the mask 1 at
    their tokens, 0 at the padding (what a Hugging Face tokenizer gives with
    ``padding_side="left"``). ``sequences``: a list of lists (or 1-D arrays) of token ids."""
    sequences = [np.asarray(seq, dtype=np.int64).reshape(-1) for seq in sequences]
    if not sequences or min(len(seq) for seq in sequences) == 0:
        raise ValueError("left_pad: needs at least one prompt, and no empty prompt")
    width = max(len(seq) for seq in sequences)
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq):] = seq
        attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


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


def sample_from_logits(logits, rng, do_sample=True, temperature=1.0, top_k=None, top_p=None, warpers=()):
    """Next token ids (B,) from last-position logits (B, V); ``warpers``: see :func:`warp_logits`."""
    if not do_sample or temperature == 0:
        return logits.argmax(axis=-1)
    logits = warp_logits(logits, temperature, top_k, top_p, warpers)
    probs = _softmax(logits)
    # inverse-CDF sampling: one uniform number per row, so the draw depends only on the seed
    u = rng.random((logits.shape[0], 1))
    cdf = np.cumsum(probs, axis=-1)
    picks = (cdf <= u * cdf[:, -1:]).sum(axis=-1)  # tokens of probability 0 are never picked
    return np.minimum(picks, logits.shape[-1] - 1)


class TextStreamer:
    """Prints the text as it is generated: ``model.generate(ids, streamer=TextStreamer(tokenizer))``.

    generate calls ``put(ids)`` with the prompt (1, T), then with each new token (1,), and
    ``end()`` (transformers' streamer protocol, so its own ``TextStreamer`` works here too). The
    ids so far are decoded together and the new part printed once it is whole: not while it
    ends in an incomplete UTF-8 character (decoded as U+FFFD). ``skip_prompt``: print only the
    continuation; ``decode_kwargs`` go to ``tokenizer.decode`` (``skip_special_tokens=True``)."""

    def __init__(self, tokenizer, skip_prompt=False, file=None, **decode_kwargs):
        self.tokenizer, self.skip_prompt, self.file, self.decode_kwargs = tokenizer, skip_prompt, file, decode_kwargs
        self.ids, self.printed, self.prompt_next = [], 0, True

    def put(self, value):
        value = np.asarray(value)
        if value.ndim > 1 and value.shape[0] > 1:
            raise ValueError(f"TextStreamer: one sequence at a time, got ids of shape {value.shape}")
        if self.skip_prompt and self.prompt_next:
            self.prompt_next = False
            return
        self.prompt_next = False
        self.ids.extend(int(i) for i in value.reshape(-1))
        text = self.tokenizer.decode(self.ids, **self.decode_kwargs)
        if not text.endswith("\ufffd"):
            self._print(text[self.printed:])
            self.printed = len(text)

    def end(self):
        text = self.tokenizer.decode(self.ids, **self.decode_kwargs) if self.ids else ""
        self._print(text[self.printed:] + "\n")
        self.ids, self.printed, self.prompt_next = [], 0, True

    def _print(self, text):
        print(text, end="", flush=True, file=self.file)


def warp_logits(logits, temperature, top_k, top_p, warpers=()):
    """What sampling draws from, float64 (B, V): logits / temperature, then the top-k and top-p
    filters (-inf where filtered), then ``warpers`` (min-p, typical, epsilon, eta: see
    :func:`sampling_warpers`), Hugging Face's warpers in their order."""
    logits = apply_top_p(apply_top_k(logits.astype(np.float64) / temperature, top_k), top_p)
    for warp in warpers:
        logits = warp(logits)
    return logits


def _chosen_from(logits, do_sample, temperature, top_k, top_p, warpers=()):
    """The scores a token is chosen from, as Hugging Face's ``output_scores`` reports them, (B, V)
    float32: the processed logits, warped (:func:`warp_logits`) when sampling."""
    if do_sample and temperature != 0:
        logits = warp_logits(logits, temperature, top_k, top_p, warpers)
    return np.array(logits, dtype=np.float32)


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
    check_sampling_args(temperature, top_k, top_p)


def check_sampling_args(temperature, top_k, top_p):
    """temperature >= 0, top_k >= 0 (0 or None: off), top_p in (0, 1] (decoder-only and encoder-decoder alike)."""
    if not (isinstance(temperature, (int, float)) and temperature >= 0 and np.isfinite(temperature)):
        raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 0):
        raise ValueError(f"generate: top_k must be an integer >= 0 (0 or None: no top-k), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_hf_args(num_beams, length_penalty, early_stopping, num_return_sequences, repetition_penalty,
                   no_repeat_ngram_size, min_length, min_new_tokens, sampling, per="prompt",
                   encoder_repetition_penalty=1.0):
    """The checks of transformers' knobs that decoder-only and encoder-decoder generate share; ``per``
    names one input in the messages ("prompt", "source")."""
    if not _is_int(num_beams) or num_beams < 1:
        raise ValueError(f"generate: num_beams must be an integer >= 1, got {num_beams!r}")
    if not _is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"generate: num_return_sequences must be an integer >= 1, got {num_return_sequences!r}")
    check_decoding_strategy(num_beams, num_return_sequences, sampling, per)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not np.isfinite(length_penalty):
        raise ValueError(f"generate: length_penalty must be a finite number, got {length_penalty!r}")
    if not any(early_stopping is v for v in (True, False)) and early_stopping != "never":
        raise ValueError(f"generate: early_stopping must be True, False or 'never', got {early_stopping!r}")
    for name, value in (("repetition_penalty", repetition_penalty),
                        ("encoder_repetition_penalty", encoder_repetition_penalty)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (np.isfinite(value) and value > 0):
            raise ValueError(f"generate: {name} must be a finite number > 0 (1.0: no penalty), got {value!r}")
    for name, value in (("no_repeat_ngram_size", no_repeat_ngram_size), ("min_length", min_length),
                        ("min_new_tokens", min_new_tokens)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"generate: {name} must be an integer >= 0, got {value!r}")


def check_decoding_strategy(num_beams, num_return_sequences, sampling, per):
    """The combinations generate refuses (decoder-only and encoder-decoder alike), for integers
    num_beams, num_return_sequences >= 1; ``per``: what one input is called ("prompt", "source")."""
    if num_beams > 1 and sampling:
        raise ValueError("generate: beam sampling (num_beams > 1 with do_sample=True) is not supported; "
                         "pass do_sample=False for beam search, or num_beams=1 to sample")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"generate: num_return_sequences={num_return_sequences} must be <= num_beams={num_beams} "
                         f"(beam search returns the best of its num_beams hypotheses)")
    if num_beams == 1 and not sampling and num_return_sequences != 1:
        raise ValueError(f"generate: greedy decoding gives one sequence per {per}; num_return_sequences="
                         f"{num_return_sequences} needs do_sample=True or num_beams >= {num_return_sequences}")


def _new_token_budget(prompt_len, max_new_tokens, max_length, block_size):
    """How many tokens to generate, as transformers 5: ``max_new_tokens`` wins; else ``max_length``
    (prompt counted), a ValueError when the prompt already fills it; with neither, 20 new tokens
    (transformers' model-agnostic default), capped at ``block_size`` positions."""
    if max_new_tokens is not None:
        return max_new_tokens
    if max_length is None:
        return max(min(prompt_len + 20, block_size) - prompt_len, 0)
    if prompt_len >= max_length:
        raise ValueError(f"generate: the prompt has {prompt_len} tokens, but max_length is {max_length} (it counts "
                         "the prompt); increase max_length or set max_new_tokens")
    return max_length - prompt_len


def _eos_ids(eos_token_id):
    """``eos_token_id`` (an id, a list of ids as transformers allows, or None) -> int64 array (n,) or None."""
    if eos_token_id is None:
        return None
    ids = np.atleast_1d(np.asarray(eos_token_id))
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"generate: eos_token_id must be a token id or a non-empty list of them, got {eos_token_id!r}")
    return ids.astype(np.int64)


def _prompt_attention_mask(idx, attention_mask):
    """The prompt's attention mask (B, T) as int64, or None when there is no padding (the fast path).

    Unlike Hugging Face, a ``pad_token_id`` in a prompt without a mask is taken as a token: the
    padding is what ``attention_mask`` says, never guessed from the ids."""
    if attention_mask is None:
        return None
    from .models.gpt import check_attention_mask

    mask = check_attention_mask(attention_mask, idx.shape, "generate")
    return None if mask.all() else mask.astype(np.int64)


def generate(model, idx, max_new_tokens=None, max_length=None, do_sample=True, temperature=1.0, top_k=None,
             top_p=None, eos_token_id=None, seed=None, use_cache=True, pad_token_id=None, num_beams=1,
             length_penalty=1.0, early_stopping=False, num_return_sequences=1, repetition_penalty=1.0,
             no_repeat_ngram_size=0, min_length=0, min_new_tokens=0, attention_mask=None,
             return_dict_in_generate=False, output_scores=False, output_logits=False, streamer=None, tokenizer=None,
             **knobs):
    """Prompt (B, T) or (T,) -> prompt + new tokens, see ``GPT.generate``; with
    ``return_dict_in_generate`` a :class:`~tinyllm.models.outputs.GenerateOutput`. ``knobs``: those
    of :data:`tinyllm.logits_process.KNOB_DEFAULTS` (``stop_strings`` with ``tokenizer``)."""
    unknown = sorted(set(knobs) - set(lp.KNOB_DEFAULTS))
    if unknown:
        raise TypeError(f"generate: unknown argument(s) {unknown}")
    idx = np.asarray(idx)
    one_d = idx.ndim == 1
    if one_d:
        idx = idx[None, :]
    _check_args(idx, max_new_tokens, max_length, temperature, top_k, top_p, model.config.vocab_size)
    top_k = top_k or None  # as transformers, top_k=0 turns the filter off
    sampling = bool(do_sample) and temperature != 0
    _check_hf_args(num_beams, length_penalty, early_stopping, num_return_sequences, repetition_penalty,
                   no_repeat_ngram_size, min_length, min_new_tokens, sampling)
    max_new_tokens = _new_token_budget(idx.shape[1], max_new_tokens, max_length, model.config.block_size)
    eos_token_id = _eos_ids(eos_token_id)
    attention_mask = _prompt_attention_mask(idx, attention_mask)
    if attention_mask is not None and idx.shape[1] + max_new_tokens > model.config.block_size:
        raise ValueError(f"generate: with padding in attention_mask, prompt ({idx.shape[1]}) + max_new_tokens "
                         f"({max_new_tokens}) must fit in block_size {model.config.block_size}")
    rng = np.random.default_rng(seed)
    pad = (None if eos_token_id is None else int(eos_token_id[0])) if pad_token_id is None else pad_token_id
    idx = idx.astype(np.int64)
    # as Hugging Face: each prompt repeated for its beams, or for its samples, next to each other
    copies = num_beams if num_beams > 1 else num_return_sequences
    if copies > 1:
        idx = np.repeat(idx, copies, axis=0)
        attention_mask = None if attention_mask is None else np.repeat(attention_mask, copies, axis=0)
    knobs = lp.check_knobs(knobs, model.config.vocab_size)
    processors = _logits_processors(idx.shape[1], attention_mask, eos_token_id, repetition_penalty,
                                    no_repeat_ngram_size, min_length, min_new_tokens, knobs,
                                    idx.shape[1] + max_new_tokens)
    stopping = stopping_criterion(knobs, tokenizer, model.config.vocab_size)
    record = output_record(idx.shape[0], num_beams, output_scores, output_logits, streamer)
    was_training = model.training
    model.eval()
    try:
        if num_beams > 1:
            out, beam_scores = _beam_generate(model, idx, attention_mask, processors, num_beams, max_new_tokens,
                                              eos_token_id, pad, length_penalty, early_stopping,
                                              num_return_sequences, use_cache, stopping)
        else:
            step = _model_step(model, idx.shape[0], idx.shape[1] + max_new_tokens, use_cache, attention_mask)
            out, beam_scores = greedy_or_sample(step, idx, max_new_tokens, rng, do_sample, temperature, top_k, top_p,
                                                eos_token_id, pad, processors, record, streamer,
                                                sampling_warpers(knobs), stopping), None
    finally:
        model.train(was_training)
    if return_dict_in_generate:
        return generate_output(out, record, beam_scores if output_scores else None)
    return out[0] if one_d and out.shape[0] == 1 else out


def output_record(rows, num_beams, output_scores, output_logits, streamer):
    """The lists :func:`greedy_or_sample` records each step's (scores, raw logits) in, None where not
    asked for (with beams: no per-step scores, the final sequences_scores only); refuses what
    generate cannot give (decoder-only and encoder-decoder alike). ``rows``: sequences decoded at once."""
    if num_beams > 1 and output_logits:
        raise ValueError("generate: output_logits is given for greedy and sampled decoding; with num_beams > 1, "
                         "output_scores gives each hypothesis's sequences_scores")
    if streamer is not None and (rows != 1 or num_beams > 1):
        raise ValueError(f"generate: a streamer takes one sequence, greedy or sampled (as transformers'), got "
                         f"{rows} rows and num_beams={num_beams}")
    return ([] if output_scores and num_beams == 1 else None), ([] if output_logits else None)


def generate_output(sequences, record, sequences_scores=None):
    """The :class:`~tinyllm.models.outputs.GenerateOutput` of ``return_dict_in_generate``: the
    ``record`` lists of :func:`output_record` as tuples of one (N, V) array per new token."""
    from .models.outputs import GenerateOutput

    scores, logits = (None if r is None else tuple(r) for r in record)
    return GenerateOutput(sequences, scores, logits, sequences_scores)


def _new_cache(model, batch, max_len):
    """A KV cache for ``batch`` sequences of at most ``max_len`` positions (no more memory than the
    generation needs), or of the model's default length if its new_kv_cache takes no max_len."""
    if "max_len" in inspect.signature(model.new_kv_cache).parameters:
        return model.new_kv_cache(batch, max_len=max_len)
    return model.new_kv_cache(batch)


# --- logits processors: Hugging Face's, in its order ---------------------------------------------
# Each is processor(input_ids (N, L), scores (N, V)) -> scores, where input_ids is every token so
# far (prompt included) and scores the next token's logits (or, in beam search, log-probabilities).


def repetition_penalty_processor(penalty, prompt_ignore_lengths=None):
    """Hugging Face's ``RepetitionPenaltyLogitsProcessor``: a token already in the sequence gets
    ``score * penalty`` if its score is < 0, else ``score / penalty`` (penalty > 1 makes repeats
    less likely). ``prompt_ignore_lengths`` (N,): the first positions of each row not to count
    (its left padding). Ids outside the scores' vocabulary (an encoder's, see
    :func:`encoder_repetition_penalty_processor`) count for nothing, as Hugging Face's."""

    def process(input_ids, scores):
        seen = np.zeros(scores.shape, dtype=bool)  # (N, V): token v occurs in row n
        counted = input_ids < scores.shape[1]
        if prompt_ignore_lengths is not None:
            counted &= np.arange(input_ids.shape[1]) >= prompt_ignore_lengths[:, None]
        rows = np.broadcast_to(np.arange(input_ids.shape[0])[:, None], input_ids.shape)
        seen[rows[counted], input_ids[counted]] = True
        penalized = np.where(scores < 0, scores * penalty, scores / penalty).astype(scores.dtype)
        return np.where(seen, penalized, scores)

    return process


def encoder_repetition_penalty_processor(penalty, encoder_ids):
    """Hugging Face's ``EncoderRepetitionPenaltyLogitsProcessor`` (an encoder-decoder's
    ``encoder_repetition_penalty``): a token of the source gets the inverse of the repetition
    penalty, ``score / penalty`` if its score is < 0, else ``score * penalty`` (penalty > 1 makes
    copying the source more likely). ``encoder_ids`` (N, S): each row's source, its padding
    included, as transformers passes the padded input ids."""
    inverse = repetition_penalty_processor(1.0 / penalty)

    def process(input_ids, scores):
        return inverse(encoder_ids, scores)

    return process


def no_repeat_ngram_processor(ngram_size):
    """Hugging Face's ``NoRepeatNGramLogitsProcessor``: a token that would complete an n-gram
    (n = ``ngram_size``) already present in the sequence gets -inf."""

    def process(input_ids, scores):
        length = input_ids.shape[1]
        if length < ngram_size:  # no complete n-gram yet
            return scores
        prefix = input_ids[:, length + 1 - ngram_size:]  # (N, n - 1): what the next token would extend
        windows = np.lib.stride_tricks.sliding_window_view(input_ids, ngram_size, axis=1)  # (N, L - n + 1, n)
        matches = (windows[:, :, :-1] == prefix[:, None, :]).all(axis=-1)  # window starts like the prefix
        rows, starts = np.nonzero(matches)
        scores = scores.copy()
        scores[rows, windows[rows, starts, -1]] = -np.inf  # the token that followed it is banned
        return scores

    return process


def min_length_processor(min_length, eos_token_id):
    """Hugging Face's ``MinLengthLogitsProcessor``: EOS gets -inf while the sequence (prompt
    included) is shorter than ``min_length``. ``eos_token_id``: an id or an array of them; one
    outside the scores' vocabulary is never produced and is passed over, as Hugging Face's."""
    eos = np.atleast_1d(eos_token_id)

    def process(input_ids, scores):
        if input_ids.shape[1] >= min_length:
            return scores
        scores = scores.copy()
        scores[:, eos[eos < scores.shape[1]]] = -np.inf
        return scores

    return process


def min_new_tokens_processor(prompt_len, min_new_tokens, eos_token_id):
    """Hugging Face's ``MinNewTokensLengthLogitsProcessor``: EOS gets -inf until ``min_new_tokens``
    tokens follow the prompt."""
    return min_length_processor(prompt_len + min_new_tokens, eos_token_id)


def _logits_processors(prompt_len, attention_mask, eos_token_id, repetition_penalty, no_repeat_ngram_size,
                       min_length, min_new_tokens, knobs=None, max_length=None, encoder_processor=None):
    """The processors the knobs ask for, in Hugging Face's order (``_get_logits_processor``); each
    knob at its neutral value (penalty 1.0, sizes and lengths 0, None) adds nothing, and the
    lengths need an EOS to act on. ``knobs``: :func:`tinyllm.logits_process.check_knobs`'s;
    ``max_length``: the ids' final length (prompt counted), for ``forced_eos_token_id``;
    ``encoder_processor``: an encoder-decoder's ``encoder_repetition_penalty``."""
    knobs = knobs or {}
    processors = []
    if knobs.get("sequence_bias") is not None:
        processors.append(lp.sequence_bias_processor(knobs["sequence_bias"]))
    if encoder_processor is not None:
        processors.append(encoder_processor)
    if repetition_penalty != 1.0:
        # HF skips each row's left padding: the index of its first real token
        ignore = None if attention_mask is None else (attention_mask != 0).argmax(axis=1)
        processors.append(repetition_penalty_processor(float(repetition_penalty), ignore))
    if no_repeat_ngram_size > 0:
        processors.append(no_repeat_ngram_processor(no_repeat_ngram_size))
    if knobs.get("bad_words_ids") is not None:
        processors.append(lp.bad_words_processor(knobs["bad_words_ids"], eos_token_id))
    if eos_token_id is not None and min_length > 0 and min_new_tokens == 0:
        # given both, transformers replaces min_length by prompt_len + min_new_tokens
        processors.append(min_length_processor(min_length, eos_token_id))
    if eos_token_id is not None and min_new_tokens > 0:
        processors.append(min_new_tokens_processor(prompt_len, min_new_tokens, eos_token_id))
    return processors + _forcing_processors(prompt_len, eos_token_id, knobs, max_length)


def _forcing_processors(prompt_len, eos_token_id, knobs, max_length):
    """The processors after the minimum lengths, in transformers' order: forced BOS / EOS, the
    exponential length penalty, suppressed tokens. ``begin_suppress_tokens`` act at the first
    generated position (the second when a forced BOS takes the first of a one-token prompt)."""
    processors = []
    if knobs.get("forced_bos_token_id") is not None:
        processors.append(lp.forced_bos_processor(knobs["forced_bos_token_id"]))
    if knobs.get("forced_eos_token_id") is not None:
        processors.append(lp.forced_eos_processor(max_length, knobs["forced_eos_token_id"]))
    if knobs.get("exponential_decay_length_penalty") is not None:
        if eos_token_id is None:
            raise ValueError("generate: exponential_decay_length_penalty raises the EOS score; it needs an eos_token_id")
        processors.append(lp.exponential_decay_processor(*knobs["exponential_decay_length_penalty"], eos_token_id,
                                                         prompt_len))
    if knobs.get("suppress_tokens") is not None:
        processors.append(lp.suppress_tokens_processor(knobs["suppress_tokens"]))
    if knobs.get("begin_suppress_tokens") is not None:
        begin = prompt_len + (1 if prompt_len == 1 and knobs.get("forced_bos_token_id") is not None else 0)
        processors.append(lp.begin_suppress_processor(knobs["begin_suppress_tokens"], begin))
    return processors


def sampling_warpers(knobs):
    """The warpers after temperature, top-k and top-p, in transformers' order: min_p, typical_p
    (< 1), epsilon_cutoff, eta_cutoff (in (0, 1)); each keeps at least one token (transformers'
    min_tokens_to_keep for num_beams 1)."""
    warpers = []
    if knobs.get("min_p") is not None:
        warpers.append(lp.min_p_warper(knobs["min_p"]))
    if knobs.get("typical_p") is not None and knobs["typical_p"] < 1.0:
        warpers.append(lp.typical_warper(knobs["typical_p"]))
    if knobs.get("epsilon_cutoff") is not None and 0.0 < knobs["epsilon_cutoff"] < 1.0:
        warpers.append(lp.epsilon_warper(knobs["epsilon_cutoff"]))
    if knobs.get("eta_cutoff") is not None and 0.0 < knobs["eta_cutoff"] < 1.0:
        warpers.append(lp.eta_warper(knobs["eta_cutoff"]))
    return warpers


def stopping_criterion(knobs, tokenizer, vocab_size):
    """``stop_strings`` as a criterion (see :func:`tinyllm.logits_process.stop_strings_criterion`), or None."""
    if knobs.get("stop_strings") is None:
        return None
    if tokenizer is None:
        raise ValueError(f"generate: stop_strings={knobs['stop_strings']!r} need the tokenizer that reads them: pass "
                         "tokenizer=")
    return lp.stop_strings_criterion(knobs["stop_strings"], tokenizer, vocab_size)


def _apply(processors, input_ids, scores):
    for process in processors:
        scores = process(input_ids, scores)
    return scores


def chain(processors):
    """One processor that applies ``processors`` in order (what beam search takes), None for none."""
    return (lambda input_ids, scores: _apply(processors, input_ids, scores)) if processors else None


# --- the loops ------------------------------------------------------------------------------------


def _model_step(model, rows, total_len, use_cache, attention_mask=None):
    """step(sequences (N, t), parents (N,) or None) -> next-token logits (N, V), for ``rows``
    sequences that grow to ``total_len`` tokens.

    With the cache, only the tokens it has not seen are fed; ``parents[i]``, the row of the
    previous step that row i continues (beam search), reorders the cached keys and values first.
    Past block_size the window is recomputed. ``attention_mask``
    (N, P) covers the prompt; every generated token is real (1). With it, positions count the
    real tokens only (GPT-2's ``cumsum(mask) - 1``, as transformers' generate), so a left-padded
    prompt continues as the unpadded one would."""
    block = model.config.block_size
    full_mask = full_pos = None
    if attention_mask is not None:
        full_mask = np.concatenate([attention_mask, np.ones((rows, total_len - attention_mask.shape[1]),
                                                            attention_mask.dtype)], axis=1)
        real = full_mask != 0
        full_pos = np.where(real, np.cumsum(real, axis=1) - 1, 0)  # (N, total_len), 0 at padding
    state = {"cache": None, "fed": 0}  # fed: how many tokens of each sequence the cache holds

    def masked(start, length):  # the mask and the positions of tokens start .. length - 1
        return {} if full_mask is None else {"attention_mask": full_mask[:, :length],
                                             "position_ids": full_pos[:, start:length]}

    def step(sequences, parents=None):
        length = sequences.shape[1]
        if use_cache and length <= block:
            cache = state["cache"]
            if state["fed"] == 0:
                cache = state["cache"] = _new_cache(model, rows, min(block, total_len))
            elif parents is not None:
                cache.reorder(parents)
            logits, _ = model(sequences[:, state["fed"]:], kv_cache=cache, last_only=True,
                              **masked(state["fed"], length))
            state["fed"] = length
        else:
            # Past block_size the positions shift every step, so the window is recomputed: exactly
            # what the uncached path does, which keeps cached and uncached outputs identical.
            # (With a mask, generate keeps total_len <= block_size.)
            logits, _ = model(sequences[:, max(0, length - block):], last_only=True, **masked(0, length))
        return logits.data[:, -1, :]

    return step


def greedy_or_sample(step, idx, max_new_tokens, rng, do_sample, temperature, top_k, top_p, eos, pad,
                     processors=(), record=(None, None), streamer=None, warpers=(), stopping=None):
    """Greedy or sampling, token by token, for a decoder-only model and an encoder-decoder alike:
    the next token's logits (N, V) from ``step(sequences (N, t))`` (e.g. :func:`_model_step`, the
    KV cache fed only the tokens it has not seen), through the logits ``processors`` (none unless
    asked for), picked by :func:`sample_from_logits`; a sequence that produced an ``eos`` id
    (int64 array, or None) is padded with ``pad``. ``idx`` (N, T): the prompts (an encoder-decoder:
    the decoder's start token). ``record`` (scores, logits): lists to append each step's
    chosen-from scores / raw logits to (:func:`output_record`). ``streamer``: told ``idx``, each
    new token and the end (``put`` / ``end``, transformers'). ``warpers``: the sampling warpers after
    top-p (:func:`sampling_warpers`); ``stopping(ids (N, t)) -> (N,) bool``: a criterion that ends
    a row as EOS does (padded after it when there is an ``eos``, as transformers pads only then)."""
    scores, raw = record
    if streamer is not None:
        streamer.put(idx.copy())  # (1, T)
    batch, prompt_len = idx.shape
    out = np.empty((batch, prompt_len + max_new_tokens), np.int64)
    out[:, :prompt_len] = idx
    done = np.zeros(batch, dtype=bool)
    for length in range(prompt_len, prompt_len + max_new_tokens):
        model_logits = step(out[:, :length])  # (B, V)
        logits = _apply(processors, out[:, :length], model_logits)
        if raw is not None:
            raw.append(np.array(model_logits, dtype=np.float32))
        if scores is not None:
            scores.append(_chosen_from(logits, do_sample, temperature, top_k, top_p, warpers))
        next_ids = sample_from_logits(logits, rng, do_sample, temperature, top_k, top_p, warpers)
        if eos is not None:
            next_ids = np.where(done, pad, next_ids)
            done |= np.isin(next_ids, eos)
        out[:, length] = next_ids
        if stopping is not None:
            done |= stopping(out[:, :length + 1])
        if streamer is not None:
            streamer.put(next_ids.copy())  # (1,)
        if (eos is not None or stopping is not None) and done.all():
            out = out[:, :length + 1]
            break
    if streamer is not None:
        streamer.end()
    return out


def _beam_generate(model, idx, attention_mask, processors, num_beams, max_new_tokens, eos, pad, length_penalty,
                   early_stopping, num_return_sequences, use_cache, stopping=None):
    """Beam search (see :mod:`tinyllm.beam_search`) over prompts already repeated num_beams times:
    idx (B * num_beams, P) -> (B * num_return_sequences, L), prompts included, best first."""
    from .beam_search import beam_search

    rows, prompt_len = idx.shape
    prompts = idx[::num_beams]  # (B, P)
    if max_new_tokens == 0:
        return np.repeat(prompts, num_return_sequences, axis=0), np.zeros(len(prompts) * num_return_sequences)
    step = _model_step(model, rows, prompt_len + max_new_tokens, use_cache, attention_mask)
    return beam_search(step, prompts, num_beams, max_length=prompt_len + max_new_tokens, eos_token_id=eos,
                       pad_token_id=pad, length_penalty=length_penalty, early_stopping=early_stopping,
                       num_return_sequences=num_return_sequences, logits_processor=chain(processors), stopping=stopping)
