"""`tinyllm serve` with an encoder-decoder (a translation model), driven by the official openai client.

The prompt is the source, the completion the target; chat translates the last user message (or
renders the tokenizer's chat template, if it has one). Every answer is held to
``model.generate`` on the same source with the same settings, bit for bit.
"""
import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serve_helpers import ServerThread  # noqa: E402

from tinyllm import AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402
from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer  # noqa: E402
from tinyllm.serve.backend import CausalLMBackend, Seq2SeqLMBackend, load_backend  # noqa: E402
from tinyllm.tokenizers import CharTokenizer, Seq2SeqTokenizer  # noqa: E402

MAX_SRC, MAX_TGT = 12, 10


def save_seq2seq_model(directory, chat_template=None, seed=0):
    """A tinyllm encoder-decoder directory (what train_translation.py writes), char-level: one id a
    character, so text pieces never cut a UTF-8 character and the texts compare exactly."""
    tok = Seq2SeqTokenizer(CharTokenizer.from_text("abcdefgh ->:"))
    if chat_template is not None:
        tok.set_chat_template(chat_template)
    config = EncoderDecoderConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, max_src_len=MAX_SRC,
                                  max_tgt_len=MAX_TGT, n_encoder_layers=1, n_decoder_layers=1, n_head=2, d_model=16,
                                  d_ff=32, dropout=0.0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, share_embeddings=True)
    EncoderDecoderTransformer(config, seed=seed).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def reference(model, tok, source, max_tokens, temperature=1.0, top_p=1.0, seed=None):
    """(text, finish_reason, completion tokens, ids) that ``model.generate`` gives for a completion
    request (ids: the tokens generated, </s> included if it came; the text without special tokens,
    as translate.py decodes it)."""
    src = np.asarray([tok.encode(source)])
    out = model.generate(src, max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature,
                         top_p=top_p, seed=seed)
    new = out[0, 1:].tolist()  # after BOS
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id) + 1]
        return tok.decode(new[:-1], skip_special_tokens=True), "stop", len(new), new
    return tok.decode(new, skip_special_tokens=True), "length", len(new), new


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_seq2seq_model(tmp_path_factory.mktemp("seq2seq"))


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerThread(model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def ref(model_dir):
    return AutoModelForSeq2SeqLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def test_load_backend_picks_the_encoder_decoder(model_dir, server, client):
    backend, tok = load_backend(model_dir)
    assert isinstance(backend, Seq2SeqLMBackend) and not isinstance(backend, CausalLMBackend)
    assert backend.is_encoder_decoder and isinstance(tok, Seq2SeqTokenizer)
    assert backend.length_error(MAX_SRC, MAX_TGT) is None
    assert "at most 12 tokens" in backend.length_error(MAX_SRC + 1, 1)
    assert "at most 10 tokens" in backend.length_error(1, MAX_TGT + 1)
    assert backend.max_completion_tokens(MAX_SRC) == MAX_TGT  # the limits are separate
    (card,) = client.models.list().data
    assert card.model_extra["max_model_len"] == MAX_SRC


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(seed=1), dict(seed=2, temperature=0.7, top_p=0.9)])
def test_completion_is_the_translation_model_generate_gives(server, client, ref, settings):
    r = client.completions.create(model="tiny", prompt="abc def", max_tokens=MAX_TGT, **settings)
    server.wait_idle()
    text, finish, n, _ = reference(*ref, "abc def", MAX_TGT, **settings)
    (choice,) = r.choices
    assert (choice.text, choice.finish_reason) == (text, finish)
    assert r.usage.prompt_tokens == 8 and r.usage.completion_tokens == n  # the source's 7 characters and </s>


def test_eos_ends_the_completion(server, client, ref):
    """Sampled choices of random weights: some meet </s> before max_tokens, some do not; each
    equals model.generate with its seed (choice c: seed + c), </s> never in the text."""
    r = client.completions.create(model="tiny", prompt="hag", max_tokens=MAX_TGT, n=12, seed=5, temperature=2.0)
    server.wait_idle()
    expected = [reference(*ref, "hag", MAX_TGT, temperature=2.0, seed=5 + c) for c in range(12)]
    assert [(c.text, c.finish_reason) for c in r.choices] == [e[:2] for e in expected]
    assert {"stop", "length"} <= {c.finish_reason for c in r.choices}
    assert r.usage.completion_tokens == sum(e[2] for e in expected)
    assert all("</s>" not in c.text for c in r.choices)


def test_stream_and_logprobs(server, client, ref):
    settings = dict(model="tiny", prompt="bad cafe", max_tokens=6, seed=3)
    whole = client.completions.create(logprobs=2, **settings).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **settings)]
    assert "".join(c.text for c in chunks) == whole.text
    server.wait_idle()
    model, tok = ref
    text, finish, n, new = reference(model, tok, "bad cafe", 6, seed=3)
    assert whole.text == text
    ids = [tok.bos_token_id] + new[:len(whole.logprobs.token_logprobs)]  # a closing </s> is not reported
    logits, _ = model(np.asarray([tok.encode("bad cafe")]), np.asarray([ids[:-1]]))  # teacher forcing
    z = logits.data[0].astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    assert len(ids) > 1 and np.isfinite(whole.logprobs.token_logprobs).all()
    np.testing.assert_allclose(whole.logprobs.token_logprobs, [logp[t, ids[t + 1]] for t in range(len(ids) - 1)],
                               atol=1e-5)
    top = whole.logprobs.top_logprobs[0]
    assert list(top)[:2] == [tok.decode([int(i)]) for i in np.argsort(-logp[0], kind="stable")[:2]]


def test_chat_translates_the_last_user_message(server, client, ref):
    messages = [{"role": "system", "content": "translate"}, {"role": "user", "content": "ab"},
                {"role": "assistant", "content": "cd"}, {"role": "user", "content": "fed cab"}]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0)  # max_tokens: max_tgt_len
    server.wait_idle()
    text, finish, n, _ = reference(*ref, "fed cab", MAX_TGT, temperature=0)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, finish)
    assert r.usage.prompt_tokens == len("fed cab") + 1 and r.usage.completion_tokens == n
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "ab"}])
    assert e.value.body["param"] == "messages" and "user" in e.value.body["message"]


def test_chat_uses_the_template_when_the_tokenizer_has_one(tmp_path):
    pytest.importorskip("jinja2")
    template = "{% for m in messages %}{{ m['content'] }}:{% endfor %}"
    model_dir = save_seq2seq_model(tmp_path, chat_template=template)
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "ab"}, {"role": "user", "content": "cd"}]
    with ServerThread(model_dir) as s:
        r = s.client().chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
        s.wait_idle()
        assert r.usage.prompt_tokens == len("ab:cd:") + 1
        assert r.choices[0].message.content == reference(model, tok, "ab:cd:", 5, temperature=0)[0]


@pytest.mark.parametrize("kwargs, param", [
    (dict(prompt="abcdefgh abcdefgh"), "max_tokens"),  # 18 source tokens > max_src_len 12
    (dict(max_tokens=MAX_TGT + 1), "max_tokens"),
])
def test_lengths_past_the_model_are_openai_errors(client, kwargs, param):
    args = dict(model="tiny", prompt="abc", max_tokens=5)
    args.update(kwargs)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**args)
    err = e.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == param
    assert ("sources of at most 12" if "prompt" in kwargs else "at most 10 tokens") in err["message"]


def test_echo_with_logprobs_is_refused_and_echo_alone_works(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="abc", max_tokens=3, echo=True, logprobs=1)
    assert e.value.body["param"] == "echo" and "encoder-decoder" in e.value.body["message"]
    r = client.completions.create(model="tiny", prompt="abc", max_tokens=3, echo=True, temperature=0)
    plain = client.completions.create(model="tiny", prompt="abc", max_tokens=3, temperature=0)
    assert r.choices[0].text == "abc" + plain.choices[0].text
