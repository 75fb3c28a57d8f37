"""``tinyllm.pipeline(task, model=...)``: Hugging Face's one-line entry point, for the tasks tinyllm's
models do.

    generator = pipeline("text-generation", model="out-shakespeare")
    generator("ROMEO:", max_new_tokens=40, do_sample=False)     # [{"generated_text": "ROMEO:..."}]

* ``"text-generation"`` (a GPT): transformers 5's pipeline. A string gives a list of
  ``{"generated_text": ...}`` (one per returned sequence: the prompt and its continuation, or
  the continuation alone with ``return_full_text=False``; ``return_tensors=True`` gives
  ``generated_token_ids``); a list of strings, a list of such lists; a conversation (a list of
  ``{"role", "content"}`` messages) goes through the tokenizer's chat template and comes back with
  the reply appended as an ``assistant`` message. Unset generation knobs take the pipeline's
  defaults, as transformers': ``max_new_tokens=256, do_sample=True, temperature=0.7``; every other
  keyword goes to :meth:`GPT.generate` (``seed=`` too).
* ``"feature-extraction"``: the last hidden states (after the final LayerNorm), a nested list
  (1, T, C) per text, or ndarrays with ``return_tensors=True``.
* ``"translation"``, ``"summarization"``, ``"text2text-generation"`` (an encoder-decoder):
  transformers 4's pipelines (version 5 dropped them), answering ``translation_text``,
  ``summary_text`` or ``generated_text``.

``model`` is a directory (or a name in the Hugging Face cache, never downloaded) or a loaded
model; with a loaded model pass its ``tokenizer=`` too.
"""
import numpy as np

from .models.auto import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from .tensor import no_grad
from .tokenizers import AutoTokenizer

__all__ = ["pipeline", "TextGenerationPipeline", "FeatureExtractionPipeline", "Text2TextGenerationPipeline"]

GENERATION_DEFAULTS = dict(max_new_tokens=256, do_sample=True, temperature=0.7)  # transformers 5's


class _Pipeline:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, str) or _is_chat(inputs):
            return self._one(inputs, **kwargs)
        if isinstance(inputs, (list, tuple)) and inputs:
            return [self._one(x, **kwargs) for x in inputs]
        raise TypeError(f"{type(self).__name__}: give a string, a conversation or a non-empty list of them, got "
                        f"{type(inputs).__name__}")

    def _encode(self, text):
        return np.asarray([self.tokenizer.encode(text)], dtype=np.int64)  # (1, T)


class TextGenerationPipeline(_Pipeline):
    """``"text-generation"``: a prompt (or a conversation) in, generated text out (module docstring)."""

    def _one(self, prompt, return_full_text=True, return_tensors=False, skip_special_tokens=True,
             clean_up_tokenization_spaces=None, **generate_kwargs):
        chat = _is_chat(prompt)
        ids = self._chat_ids(prompt) if chat else self._encode(prompt)
        generate_kwargs = {**GENERATION_DEFAULTS, **self._pad_default(), **generate_kwargs}
        out = np.atleast_2d(self.model.generate(ids, **generate_kwargs))  # (num_return_sequences, T + new)
        records = []
        for row in out:
            if return_tensors:
                records.append({"generated_token_ids": row.tolist()})
                continue
            text = self.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=skip_special_tokens,
                                         clean_up_tokenization_spaces=clean_up_tokenization_spaces)
            if return_full_text:
                text = list(prompt) + [{"role": "assistant", "content": text}] if chat else prompt + text
            records.append({"generated_text": text})
        return records

    def _chat_ids(self, messages):
        ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return np.asarray([ids], dtype=np.int64)

    def _pad_default(self):
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return {} if pad is None else {"pad_token_id": pad}


class FeatureExtractionPipeline(_Pipeline):
    """``"feature-extraction"``: each text's last hidden states (1, T, C), after the final LayerNorm."""

    def __call__(self, inputs, return_tensors=False):
        if _is_chat(inputs):
            raise TypeError("FeatureExtractionPipeline: give a string or a list of strings")
        return super().__call__(inputs, return_tensors=return_tensors)

    def _one(self, text, return_tensors=False):
        with no_grad():
            states = self.model(self._encode(text), output_hidden_states=True).hidden_states[-1].data  # (1, T, C)
        return states if return_tensors else states.tolist()


class Text2TextGenerationPipeline(_Pipeline):
    """An encoder-decoder's ``"translation"`` / ``"summarization"`` / ``"text2text-generation"``:
    ``[{key: text}]`` per input, one per returned sequence."""

    def __init__(self, model, tokenizer, key):
        super().__init__(model, tokenizer)
        self.key = key

    def _one(self, text, skip_special_tokens=True, **generate_kwargs):
        if not isinstance(text, str):
            raise TypeError(f"{self.key}: each input must be a string, got {type(text).__name__}")
        out = np.atleast_2d(self.model.generate(self._encode(text), **generate_kwargs))
        return [{self.key: self.tokenizer.decode(row, skip_special_tokens=skip_special_tokens)} for row in out]


_TASKS = {
    "text-generation": (AutoModelForCausalLM, lambda m, t: TextGenerationPipeline(m, t)),
    "feature-extraction": (AutoModelForCausalLM, lambda m, t: FeatureExtractionPipeline(m, t)),
    "translation": (AutoModelForSeq2SeqLM, lambda m, t: Text2TextGenerationPipeline(m, t, "translation_text")),
    "summarization": (AutoModelForSeq2SeqLM, lambda m, t: Text2TextGenerationPipeline(m, t, "summary_text")),
    "text2text-generation": (AutoModelForSeq2SeqLM, lambda m, t: Text2TextGenerationPipeline(m, t, "generated_text")),
}


def pipeline(task, model=None, tokenizer=None):
    """The pipeline for ``task`` (``"text-generation"``, ``"feature-extraction"``, ``"translation"``
    (also ``"translation_xx_to_yy"``), ``"summarization"``, ``"text2text-generation"``) on ``model``."""
    name = "translation" if isinstance(task, str) and task.startswith("translation_") else task
    if name not in _TASKS:
        raise ValueError(f"pipeline: unknown task {task!r}; tinyllm has {sorted(_TASKS)}")
    if model is None:
        raise ValueError(f"pipeline: pass model= (a model directory, or a loaded model with its tokenizer=); "
                         f"tinyllm has no default model to download for {task!r}")
    auto, build = _TASKS[name]
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model)
        model = auto.from_pretrained(model)
    elif tokenizer is None:
        raise ValueError("pipeline: with a loaded model, pass its tokenizer= too")
    elif isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return build(model, tokenizer)


def _is_chat(value):
    """A conversation: a non-empty list of {"role": ..., "content": ...} dicts."""
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value)
