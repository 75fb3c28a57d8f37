"""OpenAI's API as data: request validation and the response objects, with no web framework in sight.

Every request field is checked by hand here (rather than by a schema library) so that each
mistake gets OpenAI's own error body, naming the field::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_type"}}

Fields OpenAI defines that tinyllm does not implement (penalties, logit_bias, tools, ...) are
accepted at their neutral value and refused otherwise; a field OpenAI does not define is refused,
as OpenAI does ("Unrecognized request argument supplied").
"""
import base64
import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from .backend import SamplingParams

__all__ = ["APIError", "ServedModel", "parse_json", "parse_completion", "parse_chat", "parse_embeddings",
           "embeddings_response", "SYSTEM_FINGERPRINT"]

SYSTEM_FINGERPRINT = f"tinyllm-{__version__}"
MAX_N = 16  # choices per prompt
MAX_SEQUENCES = 64  # prompts x choices in one request
MAX_LOGPROBS = 5  # legacy completions, as OpenAI
MAX_TOP_LOGPROBS = 20  # chat, as OpenAI
MAX_STOP = 4  # stop strings, as OpenAI
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_EMBEDDING_INPUTS = 2048  # inputs in one /v1/embeddings request, as OpenAI


class APIError(Exception):
    """An error the client caused (or a server limit), sent as OpenAI's error body."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ServedModel:
    """The one model a server answers for."""

    name: str
    backend: object
    tokenizer: object
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self):
        """The model object of GET /v1/models (``max_model_len`` as vLLM reports it)."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "tinyllm",
                "max_model_len": self.backend.context_length}


@dataclass
class Job:
    """A validated request: the prompts as ids and how to sample each of their ``n`` choices."""

    prompts: list  # [(prompt_text, prompt_ids)]
    sampling: list  # SamplingParams per prompt (max_tokens may differ by prompt length)
    n: int
    stream: bool
    include_usage: bool
    echo: bool = False


# ----------------------------------------------------------------------------------------------
# fields

_JSON_TYPES = {"integer": "an integer", "number": "a number", "boolean": "a boolean", "string": "a string",
               "array": "an array", "object": "an object"}


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _invalid(param, message, code="invalid_value"):
    return APIError(400, message, param=param, code=code)


def _get(body, name, kinds, default=None):
    """``body[name]`` if it has one of the JSON types ``kinds`` (null means ``default``)."""
    value = body.get(name)
    if value is None:
        return default
    kind = _json_type(value)
    if kind not in kinds and not (kind == "integer" and "number" in kinds):
        expected = " or ".join(_JSON_TYPES[k] for k in kinds)
        raise _invalid(name, f"Invalid type for '{name}': expected {expected}, but got {_JSON_TYPES.get(kind, kind)} "
                             "instead.", code="invalid_type")
    return value


def _in_range(name, value, lo=None, hi=None, lo_open=False):
    if value is None:
        return value
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        lo_text = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_text = "" if hi is None else f"<= {hi}"
        bounds = " and ".join(t for t in (lo_text, hi_text) if t)
        raise _invalid(name, f"Invalid value for '{name}': {value!r}; it must be {bounds}.")
    return value


def _check_fields(body, known, neutral):
    """Refuse unknown fields, and known-but-unimplemented ones unless at their neutral value."""
    for name, value in body.items():
        if name in neutral:
            if value not in neutral[name]:
                raise _invalid(name, f"'{name}' is not supported by tinyllm's server (only {neutral[name][0]!r}).",
                               code="unsupported_parameter")
        elif name not in known:
            raise _invalid(name, f"Unrecognized request argument supplied: {name}", code="unknown_parameter")


_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop",
           "seed", "user", "presence_penalty", "frequency_penalty", "logit_bias"}
_NEUTRAL = {}
_COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "logprobs"}
_COMPLETION_NEUTRAL = {**_NEUTRAL, "suffix": (None, ""), "best_of": (None, 1)}
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "metadata", "store",
                          "service_tier", "parallel_tool_calls", "chat_template_kwargs"}  # the last: vLLM's
_CHAT_NEUTRAL = {**_NEUTRAL, "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
                 "response_format": (None, {"type": "text"}), "modalities": (None, ["text"]), "audio": (None,),
                 "prediction": (None,), "reasoning_effort": (None,)}


def _not_json(constant):
    raise ValueError(f"{constant} is not a JSON value (JSON numbers are finite)")


def parse_json(raw):
    """The request body as a JSON object, or a 400 that says what is wrong with it. Python's json
    module would also read NaN and Infinity, which JSON does not have (a NaN temperature passed
    every range check and silently meant greedy decoding); they are refused, as OpenAI does."""
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}). The body must be a JSON "
                            "object, sent with Content-Type: application/json.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"The request body must be a JSON object, got {_json_type(body)}.", code="invalid_json")
    return body


def _check_model(body, served):
    name = body.get("model")
    if name is None:
        raise _invalid("model", "you must provide a model parameter", code="missing_required_parameter")
    if not isinstance(name, str):
        _get(body, "model", ("string",))
    if name != served.name:
        raise APIError(404, f"The model `{name}` does not exist. This server serves `{served.name}`.",
                       param="model", code="model_not_found")


def _common_sampling(body, served):
    """Fields shared by both endpoints -> (SamplingParams keywords, n, stream, include_usage)."""
    n = _in_range("n", _get(body, "n", ("integer",), 1), 1, MAX_N)
    stream = _get(body, "stream", ("boolean",), False)
    options = _get(body, "stream_options", ("object",))
    if options is not None and not stream:
        raise _invalid("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
    include_usage = bool(_get(options or {}, "include_usage", ("boolean",), False))
    temperature = _in_range("temperature", _get(body, "temperature", ("number",), 1.0), 0, 2)
    top_p = _in_range("top_p", _get(body, "top_p", ("number",), 1.0), 0, 1, lo_open=True)
    top_k = _get(body, "top_k", ("integer",))  # vLLM's extension (extra_body); 0 or -1 = off, as vLLM
    if top_k is not None and top_k < -1:
        raise _invalid("top_k", f"Invalid value for 'top_k': {top_k}; it must be >= 1, or 0 (or -1) for no top-k "
                                "filtering.")
    top_k = None if top_k in (0, -1) else top_k
    seed = _get(body, "seed", ("integer",))
    if seed is not None and seed < 0:
        raise _invalid("seed", f"Invalid value for 'seed': {seed}; tinyllm seeds NumPy's Generator, which needs a "
                               "seed >= 0.")
    stop = _get(body, "stop", ("string", "array"))
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise _invalid("stop", f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings.")
    eos = getattr(served.tokenizer, "eos_token_id", None)
    sampling = dict(temperature=float(temperature), top_p=float(top_p), top_k=top_k, seed=seed, stop=tuple(stop),
                    stop_token_ids=() if eos is None else (eos,), **_penalties(body, served))
    return sampling, n, stream, include_usage


def _penalties(body, served):
    """OpenAI's ``frequency_penalty``, ``presence_penalty`` (each in [-2, 2]) and ``logit_bias``
    ({token id as a string: bias in [-100, 100]}) -> SamplingParams keywords."""
    out = {name: float(_in_range(name, _get(body, name, ("number",), 0.0), -2, 2))
           for name in ("frequency_penalty", "presence_penalty")}
    bias = _get(body, "logit_bias", ("object",), {})
    vocab = getattr(served.backend, "target_vocab_size", None) or served.backend.vocab_size
    pairs = []
    for key, value in bias.items():
        if not (isinstance(key, str) and key.lstrip("-").isdigit() and 0 <= int(key) < vocab):
            raise _invalid("logit_bias", f"Invalid key in 'logit_bias': {key!r}; keys are token ids from 0 to "
                                         f"{vocab - 1}.")
        if _json_type(value) not in ("number", "integer") or not -100 <= value <= 100:
            raise _invalid("logit_bias", f"Invalid value in 'logit_bias' for token {key}: {value!r}; it must be a "
                                         "number from -100 to 100.")
        pairs.append((int(key), float(value)))
    out["logit_bias"] = tuple(pairs)
    return out


def _max_tokens(body, name):
    return _in_range(name, _get(body, name, ("integer",)), 1)


def _check_context(served, n_prompt, max_tokens, param):
    message = served.backend.length_error(n_prompt, max_tokens)
    if message is not None:
        raise APIError(400, message, param=param, code="context_length_exceeded")


# ----------------------------------------------------------------------------------------------
# /v1/completions


def _prompts(body, served):
    """``prompt`` in any of OpenAI's four forms -> [(text, ids)]."""
    return [_one_prompt(p, served) for p in _four_forms(body, "prompt", "prompts", MAX_SEQUENCES)]


def _four_forms(body, name, plural, limit):
    """``body[name]`` in OpenAI's four forms (a string, strings, token ids, lists of token ids) as a
    list of items, each a string or a list of ids; at most ``limit`` of them."""
    value = body.get(name)
    if value is None:
        raise _invalid(name, f"you must provide {'an' if name[0] in 'aeiou' else 'a'} {name} parameter",
                       code="missing_required_parameter")
    if isinstance(value, str) or (isinstance(value, list) and value and _is_ids(value)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _invalid(name, f"'{name}' must be a string, a list of strings, a list of token ids or a list of "
                             "lists of token ids, and not empty.", code="invalid_type")
    if len(value) > limit:
        raise _invalid(name, f"At most {limit} {plural} in one request, got {len(value)}.")
    return value


def _is_ids(value):
    return all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _one_prompt(prompt, served):
    tokenizer, vocab_size = served.tokenizer, served.backend.vocab_size
    if isinstance(prompt, list) and prompt and _is_ids(prompt):
        bad = next((i for i in prompt if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise _invalid("prompt", f"Token id {bad} in 'prompt' is out of range (the vocabulary has {vocab_size}).")
        return tokenizer.decode(prompt), list(prompt)
    if not isinstance(prompt, str):
        raise _invalid("prompt", "each prompt must be a string or a non-empty list of token ids.", code="invalid_type")
    ids = _encode(tokenizer, prompt, "prompt")
    if not ids:  # as OpenAI: an empty prompt starts from the start-of-text token, if there is one
        if tokenizer.bos_token is None:
            raise _invalid("prompt", "The prompt is empty and this model's tokenizer has no start-of-text token; "
                                     "give at least one character.")
        ids = _encode(tokenizer, tokenizer.bos_token, "prompt")
    return prompt, ids


def _encode(tokenizer, text, param):
    try:
        ids = tokenizer.encode(text)
    except ValueError as e:  # e.g. a character the char-level vocabulary lacks
        raise _invalid(param, f"The {param} cannot be tokenized: {e}") from None
    return ids


def parse_completion(body, served):
    """A /v1/completions body -> Job."""
    _check_fields(body, _COMPLETION_FIELDS, _COMPLETION_NEUTRAL)
    _check_model(body, served)
    common, n, stream, include_usage = _common_sampling(body, served)
    echo = _get(body, "echo", ("boolean",), False)
    logprobs = _in_range("logprobs", _get(body, "logprobs", ("integer",)), 0, MAX_LOGPROBS)
    _check_logprobs_supported(served, logprobs is not None, "logprobs")
    if echo and logprobs is not None and served.backend.is_encoder_decoder:
        raise _invalid("echo", f"The model `{served.name}` is an encoder-decoder: it reads the prompt as its source "
                               "without predicting it, so the prompt's tokens have no log-probabilities. Drop 'echo' "
                               "or 'logprobs'.", code="unsupported_parameter")
    max_tokens = _completion_max_tokens(body, echo)
    prompts = _prompts(body, served)
    if len(prompts) * n > MAX_SEQUENCES:
        raise _invalid("n", f"{len(prompts)} prompts x n={n} is more than {MAX_SEQUENCES} completions in one request.")
    for _, ids in prompts:
        _check_context(served, len(ids), max_tokens, "max_tokens")
    sampling = SamplingParams(max_tokens=max_tokens, logprobs=logprobs, echo_logprobs=echo and logprobs is not None,
                              **common)
    return Job(prompts, [sampling] * len(prompts), n, stream, include_usage, echo)


def _completion_max_tokens(body, echo):
    """``max_tokens`` of a completion: 16 if unset, as OpenAI; 0 only with ``echo``, which scores a
    prompt without generating (the prompt, with its logprobs, is the answer: OpenAI's legacy models,
    vLLM and lm-evaluation-harness's loglikelihood requests)."""
    max_tokens = _get(body, "max_tokens", ("integer",))
    if max_tokens is None:
        return DEFAULT_COMPLETION_TOKENS
    if max_tokens == 0 and not echo:
        raise _invalid("max_tokens", "Invalid value for 'max_tokens': 0; it must be >= 1 (0 only with 'echo': true, "
                                     "to get the prompt back without a completion).")
    return _in_range("max_tokens", max_tokens, 0 if echo else 1)


def _check_logprobs_supported(served, wanted, param):
    if wanted and not served.backend.supports_logprobs:
        raise _invalid(param, f"The model `{served.name}` cannot report log-probabilities.",
                       code="unsupported_parameter")


# ----------------------------------------------------------------------------------------------
# /v1/chat/completions


def _messages(body):
    """OpenAI's messages -> the plain dicts a chat template sees (text content only)."""
    messages = body.get("messages")
    if messages is None:
        raise _invalid("messages", "you must provide a messages parameter", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "'messages' must be a non-empty array of message objects.", code="invalid_type")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(message, i):
    param = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _invalid(param, f"Invalid type for '{param}': expected an object.", code="invalid_type")
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise _invalid(f"{param}.role", f"Invalid value for '{param}.role': {role!r}; supported roles are 'system', "
                                        "'developer', 'user' and 'assistant'.")
    extra = sorted(set(message) - {"role", "content", "name"})
    if extra:
        raise _invalid(f"{param}.{extra[0]}", f"'{param}.{extra[0]}' is not supported by tinyllm's server "
                                              "(messages have role, content and name).",
                       code="unsupported_parameter")
    out = {"role": "system" if role == "developer" else role, "content": _text_content(message.get("content"), param)}
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str) or not name:
            raise _invalid(f"{param}.name", f"'{param}.name' must be a non-empty string.", code="invalid_type")
        out["name"] = name
    return out


def _text_content(content, param):
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise _invalid(f"{param}.content", f"'{param}.content' must be a string or a list of text parts "
                                       "({'type': 'text', 'text': ...}); tinyllm's models read text only.",
                   code="invalid_type")


def _render_chat(messages, served, template_kwargs):
    """The conversation through the tokenizer's chat template, ending with the assistant's cue.
    ``template_kwargs``: extra template variables (vLLM's ``chat_template_kwargs``)."""
    tokenizer = served.tokenizer
    reserved = sorted(set(template_kwargs) & {"messages", "add_generation_prompt", "tokenize", "return_tensors",
                                              "chat_template", "conversation"})
    if reserved:
        raise _invalid("chat_template_kwargs", f"'chat_template_kwargs' cannot set {reserved[0]!r}.")
    if tokenizer.chat_template is None and served.backend.is_encoder_decoder:
        return _last_user_message(messages, served)
    if tokenizer.chat_template is None:
        raise APIError(400, f"The model `{served.name}` has no chat template (its tokenizer config holds no "
                            "'chat_template'), so it cannot hold a chat: use /v1/completions, or attach a template "
                            "with tokenizer.set_chat_template(...) and save_pretrained it into the model directory.",
                       param="messages", code="chat_template_missing")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kwargs)
    except Exception as e:  # noqa: BLE001  (jinja2's TemplateError, raise_exception in the template, ...)
        raise _invalid("messages", f"The chat template could not render these messages: {e}") from None
    return text, _encode(tokenizer, text, "messages")


def _last_user_message(messages, served):
    """An encoder-decoder without a chat template (a translator) translates the last user message:
    the conversation before it is not part of its source."""
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise _invalid("messages", f"The model `{served.name}` reads the last user message as its source, and "
                                   "'messages' holds none: add one with role 'user'.")
    text = users[-1]["content"]
    return text, _encode(served.tokenizer, text, "messages")


def parse_chat(body, served):
    """A /v1/chat/completions body -> Job."""
    _check_fields(body, _CHAT_FIELDS, _CHAT_NEUTRAL)
    _check_model(body, served)
    common, n, stream, include_usage = _common_sampling(body, served)
    logprobs = _get(body, "logprobs", ("boolean",), False)
    top = _in_range("top_logprobs", _get(body, "top_logprobs", ("integer",)), 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise _invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true.")
    _check_logprobs_supported(served, logprobs, "logprobs")
    max_tokens, param = _max_tokens(body, "max_completion_tokens"), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = _max_tokens(body, "max_tokens"), "max_tokens"
    text, ids = _render_chat(_messages(body), served, _get(body, "chat_template_kwargs", ("object",), {}))
    if max_tokens is None:  # as vLLM: whatever room the context leaves (none: the messages are too long)
        max_tokens, param = max(served.backend.max_completion_tokens(len(ids)), 1), "messages"
    _check_context(served, len(ids), max_tokens, param)
    stop = common.pop("stop")  # the request's, then where the template says a turn ends
    stop += tuple(s for s in served.tokenizer.chat_stop_strings if s not in stop)
    sampling = SamplingParams(max_tokens=max_tokens, logprobs=(top or 0) if logprobs else None, stop=stop, **common)
    return Job([(text, ids)], [sampling], n, stream, include_usage)


# ----------------------------------------------------------------------------------------------
# /tokenize and /detokenize (vLLM's; no model runs)

_TOKENIZE_FIELDS = {"model", "prompt", "messages", "chat_template_kwargs"}


def tokenize_response(body, served):
    """A /tokenize body -> vLLM's answer ``{"tokens", "count", "max_model_len"}``: the ids the model
    would read for ``prompt`` (a string), or for ``messages`` rendered by the chat template as
    /v1/chat/completions renders them. ``model`` may be left out, as in vLLM."""
    _check_fields(body, _TOKENIZE_FIELDS, {})
    if body.get("model") is not None:
        _check_model(body, served)
    if (body.get("prompt") is None) == (body.get("messages") is None):
        raise _invalid("prompt", "give either 'prompt' (a string) or 'messages' (a conversation)",
                       code="missing_required_parameter")
    if "messages" in body:
        _, ids = _render_chat(_messages(body), served, _get(body, "chat_template_kwargs", ("object",), {}))
    else:
        ids = _encode(served.tokenizer, _get(body, "prompt", ("string",)), "prompt")
    return {"tokens": list(ids), "count": len(ids), "max_model_len": served.backend.context_length}


def detokenize_response(body, served):
    """A /detokenize body ``{"tokens": [ids]}`` -> ``{"prompt": text}`` (vLLM's)."""
    _check_fields(body, {"model", "tokens"}, {})
    if body.get("model") is not None:
        _check_model(body, served)
    tokens = _get(body, "tokens", ("array",))
    if tokens is None or not _is_ids(tokens):
        raise _invalid("tokens", "'tokens' must be a list of token ids", code="invalid_type")
    vocab_size = getattr(served.backend, "target_vocab_size", None) or served.backend.vocab_size
    bad = next((i for i in tokens if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise _invalid("tokens", f"Token id {bad} in 'tokens' is out of range (the vocabulary has {vocab_size}).")
    return {"prompt": served.tokenizer.decode(tokens)}


# ----------------------------------------------------------------------------------------------
# /v1/embeddings

_EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}


@dataclass
class EmbeddingJob:
    """A validated /v1/embeddings request: each input's token ids, in the request's order."""

    inputs: list  # [[id, ...]]
    encoding_format: str  # "float" or "base64"


def parse_embeddings(body, served):
    """A /v1/embeddings body -> EmbeddingJob. ``input``: a string, a list of strings, a list of token ids
    or a list of lists of them (OpenAI's four forms); each at most the model's context length."""
    _check_fields(body, _EMBEDDING_FIELDS, {})
    _check_model(body, served)
    _get(body, "user", ("string",))
    encoding_format = _get(body, "encoding_format", ("string",), "float")
    if encoding_format not in ("float", "base64"):
        raise _invalid("encoding_format", f"Invalid value for 'encoding_format': {encoding_format!r}; it must be "
                                          "'float' or 'base64'.")
    size = served.backend.embedding_size
    dimensions = _in_range("dimensions", _get(body, "dimensions", ("integer",)), 1)
    if dimensions is not None and dimensions != size:
        raise _invalid("dimensions", f"Invalid value for 'dimensions': {dimensions}; the model `{served.name}` makes "
                                     f"vectors of {size} dimensions only (it was not trained for shorter ones).",
                       code="unsupported_parameter")
    inputs = [_embedding_input(item, i, served) for i, item in enumerate(_embedding_inputs(body))]
    return EmbeddingJob(inputs, encoding_format)


def _embedding_inputs(body):
    """``input`` as a list of items (strings or lists of ids)."""
    return _four_forms(body, "input", "inputs", MAX_EMBEDDING_INPUTS)


def _embedding_input(item, i, served):
    """One input -> its ids, checked against the vocabulary and the context length."""
    backend = served.backend
    if isinstance(item, list) and item and _is_ids(item):
        bad = next((t for t in item if not 0 <= t < backend.vocab_size), None)
        if bad is not None:
            raise _invalid("input", f"Token id {bad} in input {i} is out of range (the vocabulary has "
                                    f"{backend.vocab_size}).")
        ids = list(item)
    elif isinstance(item, str) and item:
        ids = _encode(served.tokenizer, item, "input")
    else:
        raise _invalid("input", f"Input {i} must be a non-empty string or a non-empty list of token ids, got "
                                f"{_JSON_TYPES.get(_json_type(item), _json_type(item))} {item!r:.40}.",
                       code="invalid_type")
    if not ids:
        raise _invalid("input", f"Input {i} has no tokens once tokenized; give at least one character the model's "
                                "vocabulary holds.")
    if len(ids) > backend.context_length:
        raise APIError(400, f"This model's maximum context length is {backend.context_length} tokens, however input "
                            f"{i} has {len(ids)} tokens. Please reduce the length of the input.", param="input",
                       code="context_length_exceeded")
    return ids


def embeddings_response(job, vectors, model):
    """OpenAI's embeddings list: one entry per input, in order; a vector (C,) float32 as a list of
    floats, or as base64 of its little-endian float32 bytes (what OpenAI's client decodes)."""
    def encode(vector):
        if job.encoding_format == "base64":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        return np.asarray(vector, dtype=np.float32).tolist()

    n_tokens = sum(len(ids) for ids in job.inputs)
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


# ----------------------------------------------------------------------------------------------
# responses


def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def legacy_logprobs(entries, base_offset=0):
    """OpenAI's completions logprobs object: tokens, token_logprobs, top_logprobs, text_offset.
    ``top_logprobs`` holds the k most likely tokens and, if it is not among them, the chosen one."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.text)
        out["token_logprobs"].append(e.logprob)
        top = None
        if e.logprob is not None:
            top = dict(e.top)
            top.setdefault(e.text, e.logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(base_offset + e.offset)
    return out


def _token_info(text, logprob, raw):
    return {"token": text, "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(entries):
    """The chat logprobs object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``. ``bytes`` are
    the token's own: a token holding part of a character shows as U+FFFD, and only its bytes, joined
    with its neighbours', give the character back (what OpenAI's ``bytes`` field is for)."""
    return {"content": [{**_token_info(e.text, e.logprob, e.bytes),
                         "top_logprobs": [_token_info(t, lp, raw) for (t, lp), raw in zip(e.top, e.top_bytes)]}
                        for e in entries], "refusal": None}
