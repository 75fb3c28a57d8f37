"""Model adapters: what the server needs from a model, whatever kind of model it is.

A backend turns a prompt into a stream of tokens. The engine (engine.py) and the request checks
(protocol.py) know only this protocol::

    backend.context_length          the longest prompt, plus (causal LM) the completion after it
    backend.vocab_size              a prompt's ids run over range(vocab_size)
    backend.supports_logprobs       True if steps() yields each step's logits
    backend.is_encoder_decoder      True: the prompt is a source, not the beginning of the text
    backend.length_error(n_prompt, max_tokens)
        -> None if a prompt of n_prompt tokens and a completion of max_tokens fit the model, else
           the message that refuses the request
    backend.max_completion_tokens(n_prompt)  the most a completion may hold after such a prompt
    backend.steps(prompt_ids, sampling, rng)
        -> an iterator of (token_id, logits) pairs, one per new token, without end (the engine
           stops asking); logits (V,) are the scores the token was drawn from, or None
    backend.prompt_logits(prompt_ids) -> (T, V) logits at every prompt position (for echo +
           logprobs, which protocol.py refuses for an encoder-decoder: it does not predict its source)
    backend.embedding_size          the length of an embedding vector (n_embd / d_model)
    backend.embed(ids) -> (embedding_size,) float32, unit length: /v1/embeddings' vector of a
           prompt of at most context_length ids (see :func:`pool_embedding`)

:class:`CausalLMBackend` serves a decoder-only model (tinyllm's GPT, a GPT-2 directory): the
prompt is the beginning of the text, and each step runs ``model.forward`` on the new token with
the KV cache. :class:`Seq2SeqLMBackend` serves an encoder-decoder (``AutoModelForSeq2SeqLM``,
e.g. examples/train_translation.py's): the prompt is the source, the encoder reads it once, and
the decoder steps from its start token with its own KV cache; the completion is the target.
:func:`load_backend` picks the class from config.json's ``model_type``.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..generation import sample_from_logits
from ..models import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from ..tokenizers import AutoTokenizer

__all__ = ["SamplingParams", "CausalLMBackend", "Seq2SeqLMBackend", "load_backend", "pool_embedding"]


def pool_embedding(states, keep=None):
    """/v1/embeddings' vector: the mean of a sequence's final hidden states (T, C) over its
    positions (those where ``keep`` (T,) bool is True, if given), scaled to unit L2 norm -> (C,)
    float32 (a zero mean stays zero).

    Why this pooling: llama.cpp's server, which serves causal LMs as embedders too, pools with
    ``--pooling mean`` (its embedding example's) and normalises with ``embd_normalize`` = 2 (the
    Euclidean norm) by default, and OpenAI's vectors are unit length, so a cosine similarity is
    a dot product. The mean (rather than llama.cpp's ``last``, the one state that has seen every
    token) weighs the whole text, and is what an encoder's output is pooled with (Sentence-T5).
    Computed in float64, returned as float32 (no position kept: zeros).
    """
    states = np.asarray(states, dtype=np.float64)
    if keep is not None:
        states = states[np.asarray(keep, dtype=bool)]
    mean = states.mean(axis=0) if len(states) else np.zeros(states.shape[1:])  # (C,)
    norm = np.sqrt(mean @ mean)
    return (mean / norm if norm > 0 else mean).astype(np.float32)


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated (the request's fields after validation).

    ``temperature`` 0 means greedy; ``top_p`` 1 and ``top_k`` None keep every token, so the
    defaults sample from the model's own distribution, as OpenAI's API does. ``seed`` None draws
    fresh entropy. ``logprobs`` None reports none; k >= 0 reports the chosen token's log-probability
    and the k most likely alternatives.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = None
    seed: int = None
    stop: tuple = ()  # strings that end the completion (not included in its text)
    stop_token_ids: tuple = ()  # ids that end it (e.g. GPT-2's <|endoftext|>)
    logprobs: int = None
    echo_logprobs: bool = False  # also score the prompt's tokens (completions' echo + logprobs)
    frequency_penalty: float = 0.0  # OpenAI's penalties on the tokens generated so far (adjusted_logits)
    presence_penalty: float = 0.0
    logit_bias: tuple = ()  # ((token_id, bias), ...): added to those tokens' logits at every step


def adjusted_logits(logits, counts, sampling):
    """OpenAI's logit adjustments before sampling, on (1, V) logits:

        logit[j] + bias[j] - counts[j] * frequency_penalty - (counts[j] > 0) * presence_penalty

    with ``counts`` (V,) the times each token was generated so far in this completion (not the
    prompt, as OpenAI defines them and vLLM applies them). The logprobs a response reports stay
    the model's own. Returns ``logits`` itself when every knob is neutral (the tokens are then
    ``model.generate``'s, bit for bit).
    """
    if not (sampling.frequency_penalty or sampling.presence_penalty or sampling.logit_bias):
        return logits
    out = logits.astype(np.float64)
    for token_id, bias in sampling.logit_bias:
        out[:, token_id] += bias
    out -= counts * sampling.frequency_penalty + (counts > 0) * sampling.presence_penalty
    return out.astype(logits.dtype)


class CausalLMBackend:
    """A decoder-only language model: ``forward(idx, kv_cache=..., last_only=True)``, ``new_kv_cache(B)``,
    ``config.block_size`` and ``config.vocab_size``."""

    supports_logprobs = True
    is_encoder_decoder = False

    def __init__(self, model):
        self.model = model
        model.eval()  # dropout off; the server never trains
        self.context_length = int(model.config.block_size)
        self.vocab_size = int(model.config.vocab_size)
        self.embedding_size = int(model.config.n_embd)

    def length_error(self, n_prompt, max_tokens):
        limit = self.context_length
        if n_prompt + max_tokens <= limit:
            return None
        return (f"This model's maximum context length is {limit} tokens, however you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in your prompt; {max_tokens} for the "
                "completion). Please reduce your prompt; or completion length.")

    def max_completion_tokens(self, n_prompt):
        return self.context_length - n_prompt

    def steps(self, prompt_ids, sampling, rng):
        """Yield (token_id, logits) for ever.

        The same calls in the same order as ``tinyllm.generation`` for a batch of one (the whole
        prompt through the empty cache, then each new token), and the same sampling helper with
        the same Generator, so ``model.generate(prompt, seed=s, ...)`` gives these tokens bit for
        bit. The server never runs past the context (it refuses such requests), so the cache
        always holds the whole sequence.
        """
        do_sample = sampling.temperature > 0
        cache = self.model.new_kv_cache(1)
        idx = np.asarray(prompt_ids, dtype=np.int64)[None, :]  # (1, T), then (1, 1) per step
        counts = np.zeros(self.model.config.vocab_size)  # how often each token was generated
        while True:
            logits, _ = self.model(idx, kv_cache=cache, last_only=True)
            last = logits.data[:, -1, :]  # (1, V)
            next_ids = sample_from_logits(adjusted_logits(last, counts, sampling), rng, do_sample,
                                          sampling.temperature, sampling.top_k, sampling.top_p)
            counts[next_ids[0]] += 1
            yield int(next_ids[0]), last[0]
            idx = next_ids[:, None].astype(np.int64)

    def prompt_logits(self, prompt_ids):
        """(T, V) logits at every prompt position: row t scores token t + 1."""
        logits, _ = self.model(np.asarray(prompt_ids, dtype=np.int64)[None, :])
        return logits.data[0]

    def embed(self, prompt_ids):
        """The mean of the last hidden states (after ``ln_f``, what ``lm_head`` reads), unit length:
        ``pool_embedding(model(ids, output_hidden_states=True).hidden_states[-1][0])`` -> (C,).
        ``last_only`` spares the (T, V) logits nobody reads here."""
        idx = np.asarray(prompt_ids, dtype=np.int64)[None, :]  # (1, T)
        out = self.model(idx, last_only=True, output_hidden_states=True)
        return pool_embedding(out.hidden_states[-1].data[0])  # (T, C) -> (C,)


class Seq2SeqLMBackend:
    """An encoder-decoder: ``encode(src_ids)``, ``decode(tgt_ids, memory, memory_mask, kv_cache=...,
    last_only=True)``, ``new_kv_cache(B)``, ``source_mask(src_ids)`` and a config with
    ``max_src_len``, ``max_tgt_len``, the vocabulary sizes and ``bos_token_id``.

    The prompt is the source (its ids as the tokenizer encodes them, EOS included), the completion
    the target the decoder writes after its start token. A source may hold ``max_src_len`` tokens
    and a completion ``max_tgt_len`` (the decoder reads BOS and every token but the last); the two
    limits are separate, as the encoder and decoder have their own positions.
    """

    supports_logprobs = True
    is_encoder_decoder = True

    def __init__(self, model):
        self.model = model
        model.eval()
        c = model.config
        self.context_length = int(c.max_src_len)  # the longest prompt (GET /v1/models' max_model_len)
        self.max_target_length = int(c.max_tgt_len)
        self.vocab_size = int(c.src_vocab_size)  # the prompt is a source
        self.target_vocab_size = int(c.tgt_vocab_size)
        self.embedding_size = int(c.d_model)

    def length_error(self, n_prompt, max_tokens):
        if n_prompt > self.context_length:
            return (f"This model reads sources of at most {self.context_length} tokens, however your prompt (the "
                    f"source) has {n_prompt} tokens. Please shorten it, or split it into sentences.")
        if max_tokens > self.max_target_length:
            return (f"This model writes at most {self.max_target_length} tokens, however you requested "
                    f"{max_tokens} for the completion. Please reduce the completion length.")
        return None

    def max_completion_tokens(self, n_prompt):
        return self.max_target_length

    def steps(self, prompt_ids, sampling, rng):
        """Yield (token_id, logits) for ever: the encoder once, then the decoder token by token.

        The same calls and sampling helper as ``model.generate(src_ids, do_sample=..., seed=...)``
        for one source (its greedy or sampled path), so the tokens are the same bit for bit.
        """
        model = self.model
        do_sample = sampling.temperature > 0
        src_ids = np.asarray(prompt_ids, dtype=np.int64)[None, :]  # (1, S)
        memory = model.encode(src_ids)  # (1, S, C), once
        memory_mask = model.source_mask(src_ids)
        cache = model.new_kv_cache(1)
        ids = np.full((1, 1), model.config.bos_token_id, dtype=np.int64)  # BOS, then (1, 1) per step
        counts = np.zeros(self.target_vocab_size)  # how often each token was generated
        while True:
            logits = model.decode(ids, memory, memory_mask, kv_cache=cache, last_only=True)
            last = logits.data[:, -1, :]  # (1, V)
            next_ids = sample_from_logits(adjusted_logits(last, counts, sampling), rng, do_sample,
                                          sampling.temperature, sampling.top_k, sampling.top_p)
            counts[next_ids[0]] += 1
            yield int(next_ids[0]), last[0]
            ids = next_ids[:, None].astype(np.int64)

    def embed(self, prompt_ids):
        """The mean of the encoder's output over the source's real (not padding) tokens, unit length
        -> (d_model,). The encoder reads the whole source in both directions, so its output is the
        model's own summary of the text (the decoder only ever sees it through cross-attention);
        mean-pooled, as Sentence-T5 pools T5's encoder."""
        src_ids = np.asarray(prompt_ids, dtype=np.int64)[None, :]  # (1, S)
        memory = self.model.encode(src_ids)  # (1, S, C)
        return pool_embedding(memory.data[0], keep=self.model.source_mask(src_ids)[0])

    def prompt_logits(self, prompt_ids):
        raise ValueError("an encoder-decoder reads its source without predicting it: the prompt's tokens have no "
                         "log-probabilities (the server refuses echo with logprobs for this model)")


_CAUSAL_TYPES = (None, "tinyllm-gpt", "gpt2")
_SEQ2SEQ_TYPES = ("tinyllm-encoder-decoder",)


def load_backend(model_dir):
    """(backend, tokenizer) for a model directory: tinyllm's save_pretrained (GPT or encoder-decoder) or a
    GPT-2 directory.

    Raises ValueError / FileNotFoundError with a message for the command line.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} holds no model (config.json not found); pass a directory written by "
                                "save_pretrained (e.g. by examples/train_shakespeare.py) or a GPT-2 directory")
    with open(config_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type in _SEQ2SEQ_TYPES:
        backend = Seq2SeqLMBackend(AutoModelForSeq2SeqLM.from_pretrained(model_dir))
    elif model_type in _CAUSAL_TYPES:
        backend = CausalLMBackend(AutoModelForCausalLM.from_pretrained(model_dir))
    else:
        raise ValueError(f"{config_path}: model_type {model_type!r} cannot be served yet (served: tinyllm's GPT, "
                         "GPT-2 directories and tinyllm's encoder-decoder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{model_dir} holds a model but no tokenizer: save one next to it with "
                                f"tokenizer.save_pretrained(dir) ({e})") from None
    model_ids = min(backend.vocab_size, getattr(backend, "target_vocab_size", backend.vocab_size))
    if tokenizer.vocab_size > model_ids:
        raise ValueError(f"{model_dir}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{model_ids}: they do not belong together")
    return backend, tokenizer
