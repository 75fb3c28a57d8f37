"""An adversarial parity audit of the server against OpenAI's API reference and vLLM's / llama.cpp's
OpenAI-compatible servers, driven by the official openai client on a free loopback port.

tests/test_serve_api.py holds the server to ``model.generate``. This file pins where tinyllm
answered differently from the reference servers, each test failing on the code before the fix:

* chat logprobs' ``bytes`` were the UTF-8 of the token's *text*, so a token holding part of a
  character (byte-level BPE) gave the bytes of U+FFFD; OpenAI defines them as the token's own
  bytes, which joined over the tokens give the character back;
* ``echo`` with ``max_tokens: 0`` (score a prompt without generating: OpenAI's legacy models,
  vLLM, lm-evaluation-harness's loglikelihood requests) was refused;
* ``top_k: 0`` (vLLM's and llama.cpp's "no top-k filtering") was refused;
* a chat whose messages fill the context, with no max_tokens given, blamed ``param: max_tokens``,
  a field the client never sent (OpenAI names ``messages``);
* a body with ``NaN`` (which Python's json reads, but JSON does not have) was served: a NaN
  temperature passed every range check and meant greedy decoding;
* special tokens an encoder-decoder generated (``<pad>``, ``<s>``) were written into the text
  ("<pad><pad>ec-ab"); vLLM skips them by default, as tinyllm's own translate.py does.
* echo's ``text_offset`` drifted past the prompt's text after a character cut across tokens
  (each piece counted as one U+FFFD), unlike the completion's offsets.

It also checks, on a byte-level BPE model, what the other tests check on a character model: stop
strings (a string and a list) that are a character cut across tokens, streamed and not.
"""
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serve_helpers import ServerThread, reference, save_char_model, save_gpt2_model  # noqa: E402
from test_serve_seq2seq import save_seq2seq_model  # noqa: E402

from tinyllm import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

PROMPT = "caf\u00e9"
NON_ASCII = ("\u00e9", "\u00ef", "\u65e5", "\u672c", "\u8a9e")
# The whole conversation, as written: no stop string, so a chat's content is every token it generated.
PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    directory = save_gpt2_model(tmp_path_factory.mktemp("bpe"))
    tok = AutoTokenizer.from_pretrained(directory)
    tok.set_chat_template(PLAIN_TEMPLATE)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ref(bpe_dir):
    return AutoModelForCausalLM.from_pretrained(bpe_dir), AutoTokenizer.from_pretrained(bpe_dir)


@pytest.fixture(scope="module")
def split_char(ref):
    """(seed, character, text): a sampled completion of PROMPT (no <|endoftext|> in it) holding a
    character whose bytes are spread over several tokens. Found before any server runs."""
    model, tok = ref
    for seed in range(300):
        text, ids = reference(model, tok, PROMPT, 30, seed=seed)
        if tok.eos_token_id in ids:
            continue
        pieces = "".join(tok.decode([i]) for i in ids)
        for ch in NON_ASCII:
            if ch in text and ch not in pieces:
                return seed, ch, text
    pytest.fail("no seed made the tiny BPE model write a character cut across tokens")


@pytest.fixture(scope="module")
def server(bpe_dir, split_char):
    with ServerThread(bpe_dir, model_name="bpe") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


# ---- chat logprobs: the bytes of each token -------------------------------------------------------

def test_chat_logprob_bytes_are_the_tokens_own_bytes(client, ref, split_char):
    _, tok = ref
    seed, ch, text = split_char
    r = client.chat.completions.create(model="bpe", messages=[{"role": "user", "content": PROMPT}], max_tokens=30,
                                       seed=seed, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    assert choice.message.content == text and choice.finish_reason == "length"
    content = choice.logprobs.content
    assert len(content) == 30
    joined = b"".join(bytes(t.bytes) for t in content)
    # the bytes put the cut character back together (a random model also writes bytes that are no
    # UTF-8 at all: decode() shows those as U+FFFD, and so does the content)
    assert joined.decode("utf-8", errors="replace") == text and ch in text
    assert any(t.token == "\ufffd" and bytes(t.bytes) != "\ufffd".encode() for t in content)
    for t in content:
        assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token
        for alt in t.top_logprobs:
            assert bytes(alt.bytes).decode("utf-8", errors="replace") == alt.token
            if alt.token == t.token and alt.logprob == t.logprob:
                assert alt.bytes == t.bytes
    # the same bytes, chunk by chunk, when streamed
    chunks = client.chat.completions.create(model="bpe", messages=[{"role": "user", "content": PROMPT}],
                                            max_tokens=30, seed=seed, logprobs=True, stream=True)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.bytes for t in streamed] == [t.bytes for t in content]


# ---- echo with max_tokens 0 -----------------------------------------------------------------------

def test_echo_with_zero_max_tokens_returns_the_scored_prompt(client, ref):
    _, tok = ref
    scored = client.completions.create(model="bpe", prompt=PROMPT + " the cat", max_tokens=0, echo=True, logprobs=1)
    (choice,) = scored.choices
    assert choice.text == PROMPT + " the cat" and choice.finish_reason == "length"
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == len(tok.encode(PROMPT + " the cat"))
    ids = tok.encode(PROMPT + " the cat")
    lp = choice.logprobs
    assert lp.tokens == [tok.decode([i]) for i in ids] and lp.token_logprobs[0] is None
    # the same prompt logprobs a one-token completion reports before its token (lm-eval's request today)
    one = client.completions.create(model="bpe", prompt=PROMPT + " the cat", max_tokens=1, echo=True, logprobs=1,
                                    temperature=0).choices[0].logprobs
    assert lp.token_logprobs == one.token_logprobs[:len(ids)] and lp.top_logprobs == one.top_logprobs[:len(ids)]
    assert lp.text_offset == one.text_offset[:len(ids)]
    # streamed, batched as token ids (lm-eval sends lists of ids), and without logprobs
    streamed = list(client.completions.create(model="bpe", prompt=PROMPT, max_tokens=0, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == PROMPT and streamed[-1].choices[0].finish_reason == "length"
    batch = client.completions.create(model="bpe", prompt=[tok.encode("the cat"), tok.encode("a dog")], max_tokens=0,
                                      echo=True, logprobs=2)
    assert [c.text for c in batch.choices] == ["the cat", "a dog"] and batch.usage.completion_tokens == 0
    assert all(c.logprobs.token_logprobs[0] is None and None not in c.logprobs.token_logprobs[1:]
               for c in batch.choices)


def test_zero_max_tokens_without_echo_is_still_an_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="bpe", prompt=PROMPT, max_tokens=0)
    assert e.value.body["param"] == "max_tokens" and "echo" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="bpe", prompt=PROMPT, max_tokens=-1, echo=True)
    assert e.value.body["param"] == "max_tokens"


# ---- top_k 0 --------------------------------------------------------------------------------------

def test_top_k_zero_means_no_top_k_filtering(client):
    def text(**extra):
        return client.completions.create(model="bpe", prompt=PROMPT, max_tokens=12, seed=5,
                                         extra_body=extra).choices[0].text

    plain = text()
    assert text(top_k=0) == plain and text(top_k=-1) == plain
    with pytest.raises(openai.BadRequestError) as e:
        text(top_k=-2)
    assert e.value.body["param"] == "top_k" and e.value.body["code"] == "invalid_value"


# ---- a chat that fills the context ----------------------------------------------------------------

def test_messages_too_long_for_the_context_blame_the_messages(tmp_path):
    with ServerThread(save_char_model(tmp_path)) as s:  # context 64, the Shakespeare template
        long = [{"role": "user", "content": "ab" * 40}]
        with pytest.raises(openai.BadRequestError) as e:
            s.client().chat.completions.create(model="tiny", messages=long)
        assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "messages"
        with pytest.raises(openai.BadRequestError) as e:  # a max_tokens the client did send is still the one named
            s.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "ab"}],
                                               max_tokens=60)
        assert e.value.body["param"] == "max_tokens"


# ---- found equal: stop strings that are a character cut across tokens --------------------------------

def test_a_stop_string_cut_across_tokens_ends_the_text_before_it(client, split_char):
    seed, ch, text = split_char
    cut = text[:text.index(ch)]
    for stop in (ch, [ch, "zzz"], text[text.index(ch) - 1:text.index(ch) + 1]):
        expected = text[:text.index(stop if isinstance(stop, str) else ch)]
        whole = client.completions.create(model="bpe", prompt=PROMPT, max_tokens=30, seed=seed, stop=stop).choices[0]
        chunks = [c.choices[0] for c in client.completions.create(model="bpe", prompt=PROMPT, max_tokens=30,
                                                                   seed=seed, stop=stop, stream=True)]
        assert whole.text == expected and whole.finish_reason == "stop"
        assert "".join(c.text for c in chunks) == expected and chunks[-1].finish_reason == "stop"
        assert expected.startswith(cut[:len(expected)])


# ---- JSON that is not JSON ------------------------------------------------------------------------

@pytest.mark.parametrize("field, literal", [("temperature", "NaN"), ("top_p", "NaN"), ("temperature", "-Infinity")])
def test_nan_and_infinity_literals_are_not_json(server, field, literal):
    data = f'{{"model": "bpe", "prompt": "the", "max_tokens": 3, "{field}": {literal}}}'.encode()
    req = urllib.request.Request(server.url + "/v1/completions", data=data, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    body = json.loads(e.value.read())
    assert e.value.code == 400 and body["error"]["code"] == "invalid_json" and literal.lstrip("-") in body["error"]["message"]


# ---- special tokens in an encoder-decoder's text ----------------------------------------------------

def test_special_tokens_add_no_text(tmp_path):
    """Random weights at temperature 2 write <pad> and <s> now and then; the text leaves them out
    (what translate.py prints for the same tokens), the logprobs still name them."""
    directory = save_seq2seq_model(tmp_path)
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    raw, expected = [], []
    for c in range(12):
        out = model.generate(np.asarray([tok.encode("hag")]), max_new_tokens=10, do_sample=True, temperature=2.0,
                             seed=5 + c)[0, 1:].tolist()  # after BOS
        out = out[:out.index(tok.eos_token_id)] if tok.eos_token_id in out else out
        raw.append(tok.decode(out))
        expected.append(tok.decode(out, skip_special_tokens=True))
    assert any("<pad>" in t or "<s>" in t for t in raw)  # the case is exercised
    with ServerThread(directory) as s:
        r = s.client().completions.create(model="tiny", prompt="hag", max_tokens=10, n=12, seed=5, temperature=2.0,
                                          logprobs=0)
    assert [c.text for c in r.choices] == expected
    named = [t for c in r.choices for t in c.logprobs.tokens]
    assert "<pad>" in named or "<s>" in named


# ---- echo's text offsets across a character cut into tokens ------------------------------------------

def test_echoed_prompt_offsets_point_at_each_tokens_text(client, ref):
    """text_offset[i] is where token i's text starts in the echoed text. A prompt character cut
    across tokens (here 日: 1 byte + 2 bytes) used to advance the offset once per piece (each
    decodes alone to U+FFFD), so every later prompt token pointed past its text."""
    _, tok = ref
    prompt = "\u65e5 the cat"
    assert "\u65e5" not in "".join(tok.decode([i]) for i in tok.encode(prompt))  # the case is exercised
    choice = client.completions.create(model="bpe", prompt=prompt, max_tokens=3, echo=True, logprobs=0,
                                       temperature=0).choices[0]
    lp, n_prompt = choice.logprobs, len(tok.encode(prompt))
    assert lp.text_offset[:n_prompt] == [0, 0, 1, 5]  # both pieces of 日 start where it does
    assert lp.text_offset[n_prompt] == len(prompt)
    for token, offset in zip(lp.tokens, lp.text_offset):
        if "\ufffd" not in token:
            assert choice.text[offset:].startswith(token), (token, offset)
