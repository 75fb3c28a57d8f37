"""POST /v1/embeddings driven by the official openai client: OpenAI's four input forms, both
encodings, usage, and errors; each vector held to the mean of the model's own last hidden states
(a GPT's after ln_f, an encoder-decoder's encoder output), scaled to unit length."""
import base64
import threading

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serve_helpers import ServerThread, save_char_model  # noqa: E402
from test_serve_api import raw  # noqa: E402
from test_serve_seq2seq import MAX_SRC, save_seq2seq_model  # noqa: E402

from tinyllm import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

BLOCK = 64


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    return save_char_model(tmp_path_factory.mktemp("char-embed"), block_size=BLOCK)


@pytest.fixture(scope="module")
def server(char_dir):
    with ServerThread(char_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def ref(char_dir):
    return AutoModelForCausalLM.from_pretrained(char_dir), AutoTokenizer.from_pretrained(char_dir)


def pooled(states):
    """The mean over positions of (T, C) states, over its L2 norm, in float64."""
    mean = np.asarray(states, dtype=np.float64).mean(axis=0)
    return mean / np.linalg.norm(mean)


def direct(model, ids):
    """The vector computed here from the GPT's hidden states (the last: after ln_f)."""
    return pooled(model(np.asarray([ids]), output_hidden_states=True).hidden_states[-1].data[0])


def create(client, **kwargs):
    return client.embeddings.create(model="tiny", **{"encoding_format": "float", **kwargs})


def test_a_text_is_the_unit_mean_of_the_last_hidden_states(client, ref):
    model, tok = ref
    r = create(client, input="ROMEO: bad face")
    assert r.object == "list" and r.model == "tiny" and len(r.data) == 1
    item = r.data[0]
    assert item.object == "embedding" and item.index == 0
    vector = np.asarray(item.embedding)
    assert vector.shape == (model.config.n_embd,) and np.isfinite(vector).all()
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, atol=1e-6)
    ids = tok.encode("ROMEO: bad face")
    np.testing.assert_allclose(vector, direct(model, ids), atol=1e-6)
    assert r.usage.prompt_tokens == len(ids) and r.usage.total_tokens == len(ids)


def test_a_batch_keeps_its_order_and_token_ids_equal_their_text(client, ref):
    model, tok = ref
    texts = ["JULIET:", "a", "ROMEO: abc. def?", "JULIET:"]
    r = create(client, input=texts)
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    for text, d in zip(texts, r.data):
        np.testing.assert_allclose(d.embedding, direct(model, tok.encode(text)), atol=1e-6, err_msg=text)
        assert d.embedding == create(client, input=text).data[0].embedding  # alone: the same numbers
    assert r.data[0].embedding == r.data[3].embedding and r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == sum(len(tok.encode(t)) for t in texts)
    ids = [tok.encode(t) for t in texts[:3]]
    assert create(client, input=ids[2]).data[0].embedding == r.data[2].embedding  # list[int]
    by_ids = create(client, input=ids)  # list[list[int]]
    assert [d.embedding for d in by_ids.data] == [d.embedding for d in r.data[:3]]
    assert by_ids.usage.total_tokens == sum(map(len, ids))


def test_base64_is_the_little_endian_float32_bytes_of_the_floats(client, server):
    texts = ["ROMEO:", "abc"]
    floats = create(client, input=texts)
    status, body = raw(server, "/v1/embeddings", {"model": "tiny", "input": texts, "encoding_format": "base64"})
    assert status == 200
    for d, f in zip(body["data"], floats.data):
        decoded = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f.embedding, dtype=np.float32))
    # without encoding_format the client asks for base64 and decodes it itself
    default = client.embeddings.create(model="tiny", input=texts)
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    explicit = create(client, input="abc", encoding_format="base64").data[0].embedding
    assert isinstance(explicit, str) and base64.b64decode(explicit) == np.float32(floats.data[1].embedding).tobytes()


def test_dimensions_must_be_the_models(client, ref):
    n_embd = ref[0].config.n_embd
    assert len(create(client, input="abc", dimensions=n_embd).data[0].embedding) == n_embd
    with pytest.raises(openai.BadRequestError) as e:
        create(client, input="abc", dimensions=8)
    assert e.value.body["param"] == "dimensions" and e.value.body["code"] == "unsupported_parameter"
    assert str(n_embd) in e.value.body["message"]


@pytest.mark.parametrize("body, param, code", [
    ({"input": "a" * (BLOCK + 1)}, "input", "context_length_exceeded"),
    ({"input": ["abc", "b" * (BLOCK + 5)]}, "input", "context_length_exceeded"),
    ({"input": ""}, "input", "invalid_type"),
    ({"input": []}, "input", "invalid_type"),
    ({"input": ["abc", ""]}, "input", "invalid_type"),
    ({"input": [1, 2, 10_000]}, "input", "invalid_value"),
    ({"input": "xyz\u00e9"}, "input", "invalid_value"),  # characters the vocabulary lacks
    ({"input": {"text": "abc"}}, "input", "invalid_type"),
    ({}, "input", "missing_required_parameter"),
    ({"input": "abc", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
    ({"input": "abc", "dimensions": 0}, "dimensions", "invalid_value"),
    ({"input": "abc", "temperature": 1}, "temperature", "unknown_parameter"),
])
def test_bad_requests_are_openai_errors_and_the_server_goes_on(server, client, body, param, code):
    status, answer = raw(server, "/v1/embeddings", {"model": "tiny", **body})
    assert status == 400 and set(answer) == {"error"}, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code, error
    assert len(create(client, input="abc").data) == 1


def test_a_long_input_names_its_length_and_the_limit(client):
    with pytest.raises(openai.BadRequestError) as e:
        create(client, input=["abc", "a" * 100])
    message = e.value.body["message"]
    assert "input 1 has 100 tokens" in message and f"maximum context length is {BLOCK}" in message
    assert len(create(client, input="a" * BLOCK).data[0].embedding) == 32  # the limit itself fits


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="other", input="abc")
    assert e.value.body["code"] == "model_not_found"


def test_a_model_failure_is_a_500_and_the_worker_lives_on(server, client, monkeypatch):
    backend = server.app.state.served.backend

    def broken(ids):
        raise FloatingPointError("overflow in layer 1")

    monkeypatch.setattr(backend, "embed", broken)
    with pytest.raises(openai.InternalServerError) as e:
        create(client, input="abc")
    assert e.value.body["code"] == "embedding_failed" and "overflow in layer 1" in e.value.body["message"]
    monkeypatch.undo()
    assert len(create(client, input="abc").data) == 1


def test_embeddings_while_a_completion_streams(server, client, ref):
    model, tok = ref
    chunks = []
    stream = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=40, seed=0, stream=True)
    worker = threading.Thread(target=lambda: chunks.extend(stream))
    worker.start()
    r = create(client, input="JULIET:")
    worker.join(60)
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    server.wait_idle()
    np.testing.assert_allclose(r.data[0].embedding, direct(model, tok.encode("JULIET:")), atol=1e-6)


# the encoder-decoder: its encoder's output, mean-pooled over the source ------------------------
def test_an_encoder_decoder_embeds_with_its_encoder(tmp_path):
    directory = save_seq2seq_model(tmp_path / "seq2seq")
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    with ServerThread(directory) as s:
        client = s.client()
        r = create(client, input=["abc", "hg fe"])
        for text, d in zip(["abc", "hg fe"], r.data):
            ids = np.asarray([tok.encode(text)])
            assert len(d.embedding) == model.config.d_model
            np.testing.assert_allclose(d.embedding, pooled(model.encode(ids).data[0]), atol=1e-6)
        assert r.usage.prompt_tokens == sum(len(tok.encode(t)) for t in ["abc", "hg fe"])
        with pytest.raises(openai.BadRequestError) as e:
            create(client, input="a" * (MAX_SRC + 1))
        assert e.value.body["code"] == "context_length_exceeded"
