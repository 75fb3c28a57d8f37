"""Tiny models and an in-process server for tests/test_serve*.py (no corpus, no network).

The models have random weights: their distributions are close to uniform, which is all these
tests need (they compare the server with ``model.generate``, not judge the text).
"""
import socket
import threading
import time

import numpy as np
import pytest

from tinyllm import GPT, GPTConfig
from tinyllm.tokenizers import BPETokenizer, CharTokenizer, shakespeare_chat_template

CHARS = "ROMEO JULIET:\nabcdefg.,?!"  # enough for the Shakespeare template's speakers and a dialogue
EOT = "<|endoftext|>"


def char_tokenizer(chat=True):
    tok = CharTokenizer.from_text(CHARS)
    if chat:
        tok.set_chat_template(shakespeare_chat_template(), stop_strings=["\n\n"])
    return tok


def tiny_gpt(vocab_size, block_size=64, n_layer=2, n_embd=32, seed=0):
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd),
               seed=seed)


def save_char_model(directory, block_size=64, chat=True, seed=0):
    """A tinyllm-format model directory (what train_shakespeare.py writes), char-level."""
    tok = char_tokenizer(chat)
    tiny_gpt(tok.vocab_size, block_size, seed=seed).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def bpe_tokenizer():
    text = "the cat sat on the mat. the dog ate the hat! " * 20 + "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e " * 5
    return BPETokenizer.train(text, vocab_size=300, special_tokens=[EOT])


def save_gpt2_model(directory, seed=0):
    """A Hugging Face GPT-2 directory (config.json with model_type gpt2, vocab.json, merges.txt)."""
    tok = bpe_tokenizer()
    tiny_gpt(tok.vocab_size, block_size=128, seed=seed).save_pretrained(directory, format="huggingface")
    tok.save_pretrained(directory)
    return directory


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``create_app(...)`` on a free loopback port, in a thread of this process."""

    def __init__(self, model_dir, model_name="tiny", api_key=None, **app_kwargs):
        import uvicorn

        from tinyllm.serve import create_app
        from tinyllm.serve.backend import load_backend

        backend, tokenizer = load_backend(model_dir)
        self.app = create_app(backend, tokenizer, model_name, api_key=api_key, **app_kwargs)
        self.engine = self.app.state.engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_name = model_name
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, api_key="unused", **kwargs):
        from openai import OpenAI

        kwargs.setdefault("timeout", 60)
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def wait_idle(self, timeout=30):
        """Wait until the engine has no sequence left (so the test may use the model's kernels itself)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.engine.stats()
            if stats["active"] == 0 and stats["waiting"] == 0:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine is still busy after {timeout} s: {stats}")
            time.sleep(0.01)


def reference(model, tokenizer, prompt, max_tokens, temperature=1.0, top_p=1.0, seed=None, top_k=None):
    """What ``model.generate`` produces for a completion request (text of the new tokens, ids)."""
    ids = np.asarray([tokenizer.encode(prompt)], dtype=np.int64)
    out = model.generate(ids, max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature,
                         top_p=top_p, top_k=top_k or model.config.vocab_size, seed=seed)
    new = out[0, ids.shape[1]:]
    return tokenizer.decode(new), new.tolist()


# --- module-scoped fixtures a test file imports (``from serve_helpers import char_dir, server, ...``):
# a char-level model directory, a server on it, an openai client, and the model loaded beside it

@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    return save_char_model(tmp_path_factory.mktemp("char"))


@pytest.fixture(scope="module")
def server(char_dir):
    with ServerThread(char_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def ref(char_dir):
    """The model and tokenizer loaded separately (for model.generate while the server is idle)."""
    from tinyllm import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(char_dir), AutoTokenizer.from_pretrained(char_dir)
