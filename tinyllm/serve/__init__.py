"""Serve a tinyllm model over OpenAI's API (the optional ``[serve]`` extra).

    tinyllm serve --model-dir out-shakespeare            # or: python -m tinyllm.serve --model-dir ...

then any OpenAI client talks to it::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="out-shakespeare", prompt="ROMEO:", max_tokens=50)

The layers, top down: ``cli.py`` (the command), ``app.py`` (HTTP: Starlette routes, streaming,
authentication), ``protocol.py`` (OpenAI's request fields and response objects, no framework),
``engine.py`` (one worker thread that owns the model and steps every request a token at a time),
``backend.py`` (what the engine needs from a model: a GPT, or an encoder-decoder such as
examples/train_translation.py's, whose prompt is the source). Only ``app.py`` and ``cli.py``'s
server start need the extra; the rest is plain tinyllm. Nothing in tinyllm imports this package.
"""
__all__ = ["create_app", "main"]


def create_app(*args, **kwargs):
    """See :func:`tinyllm.serve.app.create_app` (imported here lazily: it needs the serve extra)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def main(argv=None):
    """``tinyllm serve ...`` / ``python -m tinyllm.serve ...``: see :mod:`tinyllm.serve.cli`."""
    from .cli import main as _main

    return _main(argv)
