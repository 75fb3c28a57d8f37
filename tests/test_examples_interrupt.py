"""Ctrl-C in a script that trains nothing ends with "interrupted" and exit status 1, not a
KeyboardInterrupt traceback (sample.py says it through exit_on_error, and the training scripts
say what --out-dir keeps: tests/test_training.py)."""
import argparse

import pytest

from code_helpers import load_example

SCRIPTS = ["translate", "summarize", "complete_code", "generate_gpt2"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_ctrl_c_says_interrupted(name, monkeypatch):
    script = load_example(name)

    def ctrl_c(*args, **kwargs):  # the first thing every main does: read its command line
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", ctrl_c)
    try:
        script.main([])
    except KeyboardInterrupt:  # (caught here: escaping, it would stop the whole test session)
        pytest.fail(f"Ctrl-C escaped {name}.py's main as a KeyboardInterrupt")
    except SystemExit as e:
        assert e.code == "interrupted"  # (printed to stderr; status 1)
    else:
        pytest.fail(f"{name}.py's main returned after Ctrl-C")
