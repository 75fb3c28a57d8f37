"""Helpers shared by the tests that compare tinyllm's tokenizers with transformers'
(tests/test_tokenizer_call.py, tests/test_tokenizer_parity_audit.py). The fixtures ``gpt2_files``,
``ours`` and ``hf`` (GPT-2's real files; tinyllm's BPE and transformers' GPT2Tokenizer on them) are in
conftest.py. Import as ``from tokenizer_helpers import ...`` (see kernel_helpers.py for why that works).
"""
import warnings

import numpy as np


def configure(tok, pad_token, padding_side, truncation_side):
    """Set the same padding settings on either library's tokenizer."""
    tok.pad_token = pad_token
    tok.padding_side = padding_side
    tok.truncation_side = truncation_side


def call(tok, text, kwargs):
    """(outcome, value) of ``tok(text, **kwargs)``: ("ok", {name: list or array}) or ("error", the
    exception type)."""
    return outcome(tok, text, **kwargs)


def outcome(function, *args, **kwargs):
    """(outcome, value) of ``function(*args, **kwargs)``, which returns a dict: ("ok", the dict) or
    ("error", the type of the ValueError / TypeError raised); warnings are ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = function(*args, **kwargs)
        except (ValueError, TypeError) as e:
            return "error", type(e)
    return "ok", dict(out)


def assert_same(mine, theirs, context):
    """Two :func:`call` outcomes are equal: the same error, or the same names holding equal lists or
    equal int64 arrays of the same shape."""
    assert mine[0] == theirs[0], (context, mine, theirs)
    if mine[0] == "error":
        return
    mine, theirs = mine[1], theirs[1]
    assert sorted(mine) == sorted(theirs), context
    for name in theirs:
        a, b = mine[name], theirs[name]
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == np.int64 == b.dtype, (context, name, a, b)
            assert a.shape == b.shape, (context, name, a.shape, b.shape)
            np.testing.assert_array_equal(a, b, err_msg=f"{context} {name}")
        else:
            assert a == b, (context, name, a, b)
