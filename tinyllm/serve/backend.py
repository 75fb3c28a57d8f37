"""Model adapters: what the server needs from a model, whatever kind of model it is.

A backend turns a prompt into a stream of tokens. The engine (engine.py) knows only this protocol::

    backend.context_length          how many tokens the prompt and the completion may hold together
    backend.vocab_size              ids run over range(vocab_size)
    backend.supports_logprobs       True if steps() yields each step's logits
    backend.steps(prompt_ids, sampling, rng)
        -> an iterator of (token_id, logits) pairs, one per new token, without end (the engine
           stops asking); logits (V,) are the scores the token was drawn from, or None
    backend.prompt_logits(prompt_ids) -> (T, V) logits at every prompt position (for echo + logprobs)

:class:`CausalLMBackend` serves a decoder-only model (tinyllm's GPT, a GPT-2 directory): the
prompt is the beginning of the text, and each step runs ``model.forward`` on the new token with
the KV cache. An encoder-decoder (``AutoModelForSeq2SeqLM``) would be a second class here: the
prompt is the source, the encoder runs once, the decoder steps from its start token (or, until
the model offers a step function, ``model.generate(src_ids, ...)`` yields its tokens at the
end, with ``supports_logprobs = False``); :func:`load_backend` would pick it from config.json's
``model_type``. Nothing else in the server changes.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..generation import sample_from_logits
from ..models import AutoModelForCausalLM
from ..tokenizers import AutoTokenizer

__all__ = ["SamplingParams", "CausalLMBackend", "load_backend"]


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


class CausalLMBackend:
    """A decoder-only language model: ``forward(idx, kv_cache=..., last_only=True)``, ``new_kv_cache(B)``,
    ``config.block_size`` and ``config.vocab_size``."""

    supports_logprobs = True

    def __init__(self, model):
        self.model = model
        model.eval()  # dropout off; the server never trains
        self.context_length = int(model.config.block_size)
        self.vocab_size = int(model.config.vocab_size)

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
        while True:
            logits, _ = self.model(idx, kv_cache=cache, last_only=True)
            last = logits.data[:, -1, :]  # (1, V)
            next_ids = sample_from_logits(last, rng, do_sample, sampling.temperature, sampling.top_k, sampling.top_p)
            yield int(next_ids[0]), last[0]
            idx = next_ids[:, None].astype(np.int64)

    def prompt_logits(self, prompt_ids):
        """(T, V) logits at every prompt position: row t scores token t + 1."""
        logits, _ = self.model(np.asarray(prompt_ids, dtype=np.int64)[None, :])
        return logits.data[0]


def load_backend(model_dir):
    """(backend, tokenizer) for a model directory: tinyllm's save_pretrained or a GPT-2 directory.

    Raises ValueError / FileNotFoundError with a message for the command line.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} holds no model (config.json not found); pass a directory written by "
                                "save_pretrained (e.g. by examples/train_shakespeare.py) or a GPT-2 directory")
    with open(config_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type not in (None, "tinyllm-gpt", "gpt2"):
        raise ValueError(f"{config_path}: model_type {model_type!r} cannot be served yet "
                         "(served: tinyllm's GPT and GPT-2 directories)")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{model_dir} holds a model but no tokenizer: save one next to it with "
                                f"tokenizer.save_pretrained(dir) ({e})") from None
    backend = CausalLMBackend(model)
    if tokenizer.vocab_size > backend.vocab_size:
        raise ValueError(f"{model_dir}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{backend.vocab_size}: they do not belong together")
    return backend, tokenizer
