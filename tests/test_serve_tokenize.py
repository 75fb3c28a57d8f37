"""/tokenize and /detokenize (vLLM's endpoints) on a server started on a loopback port."""
import json
import urllib.error
import urllib.request

import pytest

pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from serve_helpers import char_dir, server  # noqa: E402,F401  (fixtures)

from tinyllm import AutoTokenizer  # noqa: E402


def post(server, path, body):
    client = server.client()  # for its base URL
    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_tokenize_and_detokenize_round_trip(server, char_dir):
    tok = AutoTokenizer.from_pretrained(char_dir)
    status, out = post(server, "/tokenize", {"model": "tiny", "prompt": "ROMEO: abc"})
    assert status == 200 and out["tokens"] == tok.encode("ROMEO: abc") and out["count"] == len("ROMEO: abc")
    assert out["max_model_len"] == 64
    status, back = post(server, "/detokenize", {"tokens": out["tokens"]})  # model may be left out
    assert status == 200 and back == {"prompt": "ROMEO: abc"}


def test_tokenize_messages_renders_the_chat_template(server, char_dir):
    tok = AutoTokenizer.from_pretrained(char_dir)
    messages = [{"role": "user", "content": "abc"}]
    status, out = post(server, "/tokenize", {"messages": messages})
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert status == 200 and out["tokens"] == list(want) and out["count"] > len("abc")


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"prompt": "xyz"}, "prompt"),  # characters the vocabulary lacks
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "ab", "messages": []}, "prompt"),
    ("/tokenize", {"prompt": "ab", "frobnicate": 1}, "frobnicate"),
    ("/detokenize", {"tokens": [999]}, "tokens"),
    ("/detokenize", {"tokens": "ab"}, "tokens"),
])
def test_bad_requests_are_openai_shaped_400s(server, path, body, param):
    status, out = post(server, path, body)
    assert status == 400 and out["error"]["param"] == param and "Traceback" not in out["error"]["message"]


def test_another_model_is_404(server):
    status, out = post(server, "/tokenize", {"model": "gpt-5", "prompt": "ab"})
    assert status == 404 and out["error"]["code"] == "model_not_found"
