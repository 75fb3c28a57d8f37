"""The command line: `python -m tinyllm.serve` in a real subprocess, the loopback rule, the missing
extra, and examples/chat.py holding a dialogue (in process and through the server)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serve_helpers import free_port, save_char_model

from tinyllm.serve.cli import check_bind, is_loopback, main

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-cli-test"


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TINYLLM_API_KEY", None)
    env.update(extra)
    return env


def _run(args, env=None, timeout=120, **kwargs):
    return subprocess.run([sys.executable, *args], env=env or _env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def test_loopback_rule():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and check_bind(host, None) is None
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        assert not is_loopback(host)
        assert "refusing to bind" in check_bind(host, None) and "TINYLLM_API_KEY" in check_bind(host, None)
        assert check_bind(host, "a-key") is None


def test_non_loopback_without_key_is_refused(tmp_path):
    r = _run(["-m", "tinyllm.serve", "--model-dir", str(tmp_path), "--host", "0.0.0.0"])
    assert r.returncode != 0 and "refusing to bind 0.0.0.0 without an API key" in r.stderr


def test_missing_extra_is_a_clear_message(tmp_path):
    """With starlette and uvicorn unimportable: tinyllm imports, and the server names the pip install."""
    code = ("import sys; sys.modules['starlette'] = sys.modules['uvicorn'] = None\n"
            "import tinyllm, tinyllm.serve, tinyllm.serve.engine\n"
            "from tinyllm.serve.cli import serve_main\n"
            f"serve_main(['--model-dir', {str(tmp_path)!r}])\n")
    r = _run(["-c", code])
    assert r.returncode != 0 and 'pip install "tinyllm[serve]"' in r.stderr, r.stderr


def test_bad_model_dir_is_a_clear_message(tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    r = _run(["-m", "tinyllm.serve", "--model-dir", str(tmp_path / "nothing")])
    assert r.returncode != 0 and "holds no model (config.json not found)" in r.stderr


def test_tinyllm_command_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "tinyllm serve --model-dir DIR" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["train"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "tinyllm: unknown command 'train'" in err and "commands:" in err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--api-key" in capsys.readouterr().out


def test_bad_serve_options_are_errors_naming_them(tmp_path):
    """Checked before uvicorn starts: no traceback from the engine or from asyncio's bind."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    import numba

    model_dir = save_char_model(tmp_path / "model")
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    for options, message in [(["--port", "99999"], "error: --port must be in 0..65535, got 99999"),
                             (["--max-active", "0"], "error: Engine: max_active and max_waiting must be >= 1, got 0"),
                             (["--num-threads", str(too_many)], f"error: Engine: num_threads={too_many} is outside")]:
        with pytest.raises(SystemExit) as e:
            main(["serve", "--model-dir", str(model_dir), *options])
        assert str(e.value.code).startswith(message), (options, e.value.code)


def _get(url, key=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def served(tmp_path):
    """`python -m tinyllm.serve` in a subprocess, with the key from TINYLLM_API_KEY."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    model_dir = save_char_model(tmp_path / "model")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinyllm.serve", "--model-dir", str(model_dir), "--port",
                             str(port), "--model-name", "shakespeare", "--log-level", "warning"],
                            env=_env(TINYLLM_API_KEY=KEY), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if _get(url + "/health", KEY)[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.communicate()}")
        time.sleep(0.1)
    yield url, model_dir, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_server_subprocess_answers_openai_and_stops_on_ctrl_c(served):
    openai = pytest.importorskip("openai")
    url, _, proc = served
    assert _get(url + "/health")[0] == 401  # the key came from TINYLLM_API_KEY
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    r = client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=5, seed=0)
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].text) == 5
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "serving 'shakespeare' (with a chat template, context 64 tokens)" in out and "API key required" in out


def test_chat_example_through_the_server(served):
    pytest.importorskip("openai")
    url, _, _ = served
    r = _run([str(ROOT / "examples" / "chat.py"), "--server", url + "/v1", "--api-key", KEY, "--max-tokens", "12",
              "--assistant-name", "Tom"], input="a bag\nab\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("TOM:\n") == 2, r.stdout


def test_chat_example_in_process_matches_the_template(tmp_path):
    """Local mode: each answer is model.generate on the rendered template, cut at the blank line."""
    pytest.importorskip("jinja2")
    from serve_helpers import reference

    from tinyllm import AutoModelForCausalLM, AutoTokenizer

    model_dir = save_char_model(tmp_path)
    r = _run([str(ROOT / "examples" / "chat.py"), "--model-dir", str(model_dir), "--max-tokens", "12",
              "--seed", "5", "--temperature", "1.0", "--top-p", "1.0"], input="a bag\n")
    assert r.returncode == 0, r.stderr
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "a bag"}], add_generation_prompt=True,
                                     tokenize=False)
    expected = reference(model, tok, prompt, 12, seed=5)[0].split("\n\n")[0]
    assert r.stdout == f"JULIET:\n{expected}\n\n"


def _chat_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_chat", ROOT / "examples" / "chat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chat_example_mistakes_are_errors_not_tracebacks(tmp_path, monkeypatch):
    """Bad options, a model of the wrong kind, a character outside the vocabulary, a server that is not
    there: one `error: ...` line each (the local --max-tokens at the context used to crash in generate)."""
    pytest.importorskip("jinja2")
    import io

    chat = _chat_example()
    model_dir = save_char_model(tmp_path / "char", block_size=64)
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "config.json").write_text('{"model_type": "tinyllm-gpt"}')  # and no weights
    cases = [
        (["--model-dir", str(model_dir), "--max-tokens", "64"],
         "error: --max-tokens 64 leaves no room for the conversation in the model's context of 64 tokens; "
         "pass at most 63"),
        (["--model-dir", str(model_dir), "--max-tokens", "0"], "error: --max-tokens must be at least 1, got 0"),
        (["--model-dir", str(model_dir), "--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--model-dir", str(tmp_path / "wrong")], "wrong/model.safetensors not found"),
    ]
    for args, message in cases:
        monkeypatch.setattr("sys.stdin", io.StringIO("a bag\n"))
        with pytest.raises(SystemExit) as err:
            chat.main(args)
        assert str(err.value.code).startswith("error: ") and message in str(err.value.code), (args, err.value.code)
    monkeypatch.setattr("sys.stdin", io.StringIO("\u263a\n"))  # not in the char vocabulary
    with pytest.raises(SystemExit, match=r"^error: .*'\u263a'.* is not in the vocabulary"):
        chat.main(["--model-dir", str(model_dir), "--max-tokens", "4"])
    monkeypatch.setattr("builtins.input", lambda prompt="": (_ for _ in ()).throw(KeyboardInterrupt))
    try:  # Ctrl-C at the prompt ends the scene quietly
        assert chat.main(["--model-dir", str(model_dir)]) is None
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C at chat.py's prompt escaped as KeyboardInterrupt (a traceback)")
    pytest.importorskip("openai")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(SystemExit, match=rf"^error: cannot reach a server at {url} "):
        chat.main(["--server", url])
