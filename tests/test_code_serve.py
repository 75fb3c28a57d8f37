"""`tinyllm serve` serves the code model of examples/train_code.py: /v1/completions with
stop=["\\n"] returns the completed line (the official openai client, uvicorn in a thread)."""
import contextlib
import io

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

from code_helpers import load_example, make_repo, module_source  # noqa: E402
from serve_helpers import EOT, ServerThread, reference  # noqa: E402

from tinyllm import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from tinyllm.code_eval import complete_code  # noqa: E402

# A model small enough to train in seconds that still learns the generated modules' lines.
TRAIN = ["--vocab-size", "300", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "96",
         "--batch-size", "8", "--max-iters", "150", "--eval-interval", "150", "--eval-iters", "2",
         "--warmup-iters", "5", "--lr", "1e-2", "--sample-tokens", "0", "--eval-lines", "8",
         "--max-line-tokens", "8", "--prompt-reserve", "16", "--ngram-order", "3", "--no-progress"]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def code_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("code_serve")
    out = root / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        load_example("train_code").main(["--data", str(make_repo(root / "repo")), "--out-dir", str(out), *TRAIN])
    return out


@pytest.fixture(scope="module")
def server(code_model_dir):
    with ServerThread(code_model_dir, model_name="code") as s:
        yield s


@pytest.fixture(scope="module")
def ref(code_model_dir):
    return AutoModelForCausalLM.from_pretrained(code_model_dir), AutoTokenizer.from_pretrained(code_model_dir)


# A module the model has not seen (module 20; it trained on modules 0-11), cut at line starts.
LINES = module_source(20).split("\n")
EASY = {4: '    """Scale x."""', 5: "    total = 0", 13: "    def get(self):"}  # line index -> the true line


def prefix(n):
    return "".join(line + "\n" for line in LINES[:n])


@pytest.mark.parametrize("n", [1, 4, 5, 6, 8, 12, 13])
def test_completion_with_a_newline_stop_is_the_greedy_line(server, ref, n):
    """Each file starts after the end-of-text token in training, so the prompt does too (its text
    becomes the special id); the answer is the model's greedy continuation up to its first
    newline, as model.generate gives it, and, when it starts with content, complete_code's line."""
    model, tok = ref
    prompt = EOT + prefix(n)
    assert len(tok.encode(prompt)) + MAX_TOKENS <= model.config.block_size
    client = server.client()
    choice = client.completions.create(model="code", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                       stop=["\n"]).choices[0]
    streamed = client.completions.create(model="code", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                         stop=["\n"], stream=True)
    server.wait_idle()
    full, _ = reference(model, tok, prompt, MAX_TOKENS, temperature=0)
    assert "\n" in full, "the model should end this line within MAX_TOKENS tokens"
    line = full[:full.index("\n")]
    assert choice.text == line and choice.finish_reason == "stop"
    assert "".join(c.choices[0].text for c in streamed) == line
    if line.strip():
        assert complete_code(model, tok, prefix(n), max_line_tokens=MAX_TOKENS) == line


def test_the_served_code_model_completes_lines_it_has_learned(server, ref):
    client = server.client()
    got = {n: client.completions.create(model="code", prompt=EOT + prefix(n), max_tokens=MAX_TOKENS, temperature=0,
                                        stop=["\n"]).choices[0].text for n in EASY}
    server.wait_idle()
    right = [n for n in EASY if got[n] == EASY[n]]
    assert len(right) >= 2, got  # the trained model, not noise (a little slack for other kernels' rounding)
