"""OpenAI's frequency_penalty, presence_penalty and logit_bias on the server, through the official
``openai`` client, against the formula applied to the model's own logits step by step."""
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from serve_helpers import char_dir, client, ref, server  # noqa: E402,F401  (fixtures)


def penalised_greedy(model, prompt_ids, n, frequency=0.0, presence=0.0, bias=None):
    """Greedy decoding on logit + bias - count * frequency - (count > 0) * presence, counts of the
    generated tokens only (OpenAI's definition), written out here independently of the server."""
    cache = model.new_kv_cache(1)
    idx = np.asarray([prompt_ids], dtype=np.int64)
    counts = np.zeros(model.config.vocab_size)
    out = []
    for _ in range(n):
        logits, _ = model(idx, kv_cache=cache, last_only=True)
        scores = logits.data[0, -1].astype(np.float64) - counts * frequency - (counts > 0) * presence
        for token_id, b in (bias or {}).items():
            scores[token_id] += b
        token = int(np.argmax(scores))
        counts[token] += 1
        out.append(token)
        idx = np.asarray([[token]])
    return out


def _completion_ids(client, tok, **kwargs):
    text = client.completions.create(model="tiny", prompt="ab", max_tokens=12, temperature=0, **kwargs).choices[0].text
    return tok.encode(text)


@pytest.mark.parametrize("kwargs", [dict(frequency_penalty=2.0), dict(presence_penalty=2.0),
                                    dict(frequency_penalty=1.0, presence_penalty=0.5)])
def test_penalties_follow_openais_formula_and_change_greedy(client, ref, kwargs):
    model, tok = ref
    prompt = tok.encode("ab")
    want = penalised_greedy(model, prompt, 12, kwargs.get("frequency_penalty", 0.0), kwargs.get("presence_penalty", 0.0))
    assert _completion_ids(client, tok, **kwargs) == want
    assert want != penalised_greedy(model, prompt, 12)  # the penalty changed the text: not a vacuous pass
    assert len(set(want)) > len(set(penalised_greedy(model, prompt, 12)))  # and repeated less


def test_logit_bias_forces_and_bans_tokens(client, ref):
    model, tok = ref
    a = tok.encode("a")[0]
    assert client.completions.create(model="tiny", prompt="ab", max_tokens=6, temperature=0.7, seed=1,
                                     logit_bias={str(a): 100}).choices[0].text == "a" * 6
    plain = penalised_greedy(model, tok.encode("ab"), 12)
    banned = {plain[0]: -100.0}
    got = _completion_ids(client, tok, logit_bias={str(k): v for k, v in banned.items()})
    assert got == penalised_greedy(model, tok.encode("ab"), 12, bias=banned) and plain[0] not in got


def test_chat_takes_the_same_knobs(client):
    a = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "ab"}], max_tokens=8,
                                       temperature=0, frequency_penalty=2.0)
    b = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "ab"}], max_tokens=8,
                                       temperature=0)
    assert a.choices[0].message.content != b.choices[0].message.content
