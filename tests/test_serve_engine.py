"""The serving engine without HTTP: the same tokens as model.generate, stop strings, logprobs,
UTF-8 in streams, round-robin scheduling and cancellation. Needs no serve extra."""
import threading
import time

import numpy as np
import pytest
from serve_helpers import EOT, bpe_tokenizer, char_tokenizer, reference, tiny_gpt

from tinyllm.serve.backend import CausalLMBackend, SamplingParams
from tinyllm.serve.engine import Engine, EngineBusy, Sequence


class Collector:
    """A sink that records deltas (called from the worker thread) and knows when a sequence is done."""

    def __init__(self, n=1):
        self.deltas, self.n, self.done = [], n, threading.Event()
        self._finished = 0

    def __call__(self, delta):
        self.deltas.append(delta)
        if delta.finish_reason is not None or delta.error is not None:
            self._finished += 1
            if self._finished == self.n:
                self.done.set()

    def wait(self, timeout=60):
        assert self.done.wait(timeout), "the engine did not finish in time"
        return self.deltas

    def text(self, index=0):
        return "".join(d.text for d in self.deltas if d.index == index)

    def final(self, index=0):
        return next(d for d in self.deltas if d.index == index and d.finish_reason is not None)


@pytest.fixture(scope="module")
def char_setup():
    tok = char_tokenizer()
    model = tiny_gpt(tok.vocab_size)
    engine = Engine(CausalLMBackend(tiny_gpt(tok.vocab_size)))  # its own copy: same seed, same weights
    yield model, tok, engine
    engine.close()


def run(engine, tok, prompt, n=1, **sampling):
    sink = Collector(n)
    params = SamplingParams(**sampling)
    seqs = [Sequence(c, tok.encode(prompt), params, tok, choice=c, sink=sink) for c in range(n)]
    engine.submit(seqs)
    sink.wait()
    return sink


@pytest.mark.parametrize("settings", [
    dict(seed=0), dict(seed=7, temperature=0.7), dict(seed=3, top_p=0.5), dict(seed=5, top_k=3, temperature=1.3),
    dict(temperature=0.0),
])
def test_same_tokens_as_model_generate(char_setup, settings):
    model, tok, engine = char_setup
    sink = run(engine, tok, "ROMEO:\n", max_tokens=30, **settings)
    expected, _ = reference(model, tok, "ROMEO:\n", 30, **settings)
    assert sink.text() == expected and len(expected) == 30
    assert sink.final().finish_reason == "length" and sink.final().completion_tokens == 30


def test_choices_use_consecutive_seeds(char_setup):
    model, tok, engine = char_setup
    sink = run(engine, tok, "JULIET:", n=3, max_tokens=12, seed=10)
    for c in range(3):
        assert sink.text(c) == reference(model, tok, "JULIET:", 12, seed=10 + c)[0]
    assert len({sink.text(c) for c in range(3)}) == 3


def _seed_whose_output_contains(model, tok, prompt, needle, max_tokens=40):
    for seed in range(400):
        text, _ = reference(model, tok, prompt, max_tokens, seed=seed)
        if needle in text[1:]:
            return seed, text
    pytest.fail(f"no seed in 0..399 makes the tiny model write {needle!r}")


def test_stop_string_cuts_the_text_and_streams_never_show_it(char_setup):
    model, tok, engine = char_setup
    seed, full = _seed_whose_output_contains(model, tok, "ab", "a:")
    sink = run(engine, tok, "ab", max_tokens=40, seed=seed, stop=("a:", "zzz"))
    assert sink.text() == full[:full.index("a:")]
    assert sink.final().finish_reason == "stop"
    # text is only sent once it cannot be the start of a stop string: the "a" of "a:" is held back
    seq = Sequence(0, [0], SamplingParams(max_tokens=40, stop=("a:",)), tok)
    shown = [seq.add_token(tok.encode(ch)[0], None) for ch in "ba.aa:"]
    assert [d.text if d else None for d in shown[:5]] == ["b", None, "a.", None, "a"]
    assert shown[5].text == "" and shown[5].finish_reason == "stop" and seq.text == "ba.a"


def test_eos_token_stops_with_reason_stop():
    tok = bpe_tokenizer()
    model = tiny_gpt(tok.vocab_size, block_size=128)
    engine = Engine(CausalLMBackend(tiny_gpt(tok.vocab_size, block_size=128)))
    try:
        for seed in range(300):  # find a sample that ends with <|endoftext|> (p ~ 1/300 per token)
            text, ids = reference(model, tok, "the cat", 100, seed=seed)
            if tok.eos_token_id in ids:
                break
        else:
            pytest.fail("no seed made the tiny model write <|endoftext|>")
        sink = Collector()
        engine.submit([Sequence(0, tok.encode("the cat"), SamplingParams(
            max_tokens=100, seed=seed, stop_token_ids=(tok.eos_token_id,)), tok, sink=sink)])
        sink.wait()
        stop_at = ids.index(tok.eos_token_id)
        assert sink.text() == tok.decode(ids[:stop_at]) and EOT not in sink.text()
        assert sink.final().finish_reason == "stop" and sink.final().completion_tokens == stop_at + 1
    finally:
        engine.close()


class _SplitBytes:
    """A tokenizer whose tokens are single bytes, so a 3-byte character takes three tokens."""

    def __init__(self):
        self.vocab_size = 256

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="replace")


def test_a_character_cut_across_tokens_waits_for_its_last_byte():
    tok = _SplitBytes()
    seq = Sequence(0, [0], SamplingParams(max_tokens=10), tok)
    deltas = [seq.add_token(b, None) for b in "a\u65e5b".encode("utf-8")]
    assert [d.text if d else None for d in deltas] == ["a", None, None, "\u65e5", "b"]
    cut = Sequence(0, [0], SamplingParams(max_tokens=2), tok)
    assert cut.add_token(0x61, None).text == "a"
    last = cut.add_token(0xE6, None)  # max_tokens reached mid-character: shown as U+FFFD, as decode does
    assert last.text == "\ufffd" and last.finish_reason == "length"


def test_logprobs_are_the_models_log_softmax(char_setup):
    model, tok, engine = char_setup
    prompt = "ROMEO:"
    sink = run(engine, tok, prompt, max_tokens=6, seed=2, logprobs=3, echo_logprobs=True)
    entries = [e for d in sink.deltas for e in d.logprobs]
    prompt_entries = [e for d in sink.deltas for e in (d.prompt_logprobs or [])]
    full = tok.encode(prompt + sink.text())
    logits, _ = model(np.asarray([full]))
    z = logits.data[0].astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))  # (T, V)
    assert [e.token_id for e in prompt_entries + entries] == full
    assert prompt_entries[0].logprob is None and prompt_entries[0].top == []
    for t, e in enumerate(prompt_entries + entries):
        if t == 0:
            continue
        # the generated tokens' logits came from the cached path: equal to the full pass within float32 rounding
        np.testing.assert_allclose(e.logprob, logp[t - 1, full[t]], rtol=0, atol=1e-5)
        best = np.argsort(-logp[t - 1], kind="stable")[:3]
        assert [tok.decode([int(i)]) for i in best] == [text for text, _ in e.top]
        np.testing.assert_allclose([lp for _, lp in e.top], logp[t - 1, best], rtol=0, atol=1e-5)
    assert [e.offset for e in prompt_entries] == list(range(len(prompt)))
    assert [e.offset for e in entries] == list(range(6))


def test_sequences_take_turns_token_by_token(char_setup):
    _, tok, engine = char_setup
    sink = Collector(2)
    params = SamplingParams(max_tokens=20, seed=0)
    engine.submit([Sequence(i, tok.encode("ab"), params, tok, sink=sink) for i in range(2)])
    sink.wait()
    order = [d.index for d in sink.deltas if d.text]
    assert order[:6] == [0, 1, 0, 1, 0, 1]  # round robin: neither waits for the other to finish


def test_a_cancelled_sequence_frees_its_place():
    tok = char_tokenizer()
    engine = Engine(CausalLMBackend(tiny_gpt(tok.vocab_size, block_size=1024, n_layer=1, n_embd=16)), max_active=1)
    try:
        first = Collector()
        seq = Sequence(0, tok.encode("ab"), SamplingParams(max_tokens=1000, seed=0), tok, sink=first)
        second = Collector()
        engine.submit([seq, Sequence(0, tok.encode("ab"), SamplingParams(max_tokens=5, seed=0), tok, sink=second)])
        while not first.deltas:
            time.sleep(0.001)
        seq.cancelled = True  # what the server does when the client disconnects
        second.wait()  # with max_active=1, the second starts only once the first left
        assert seq.n_generated < 500 and not any(d.finish_reason for d in first.deltas)
        deadline = time.monotonic() + 10
        while engine.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats() == {"active": 0, "waiting": 0, "tokens_generated": seq.n_generated + 5}
    finally:
        engine.close()


def test_full_queue_refuses_new_sequences(char_setup):
    _, tok, _ = char_setup
    engine = Engine(CausalLMBackend(tiny_gpt(tok.vocab_size)), max_active=1, max_waiting=2)
    try:
        params = SamplingParams(max_tokens=3)
        with pytest.raises(EngineBusy, match="limit 2"):
            engine.submit([Sequence(i, [0], params, tok, sink=lambda d: None) for i in range(3)])
        assert engine.stats()["waiting"] == 0  # all or nothing
    finally:
        engine.close()


def test_model_errors_reach_the_client_and_the_engine_goes_on(char_setup):
    _, tok, engine = char_setup
    sink = Collector()
    bad = Sequence(0, [tok.vocab_size + 5], SamplingParams(max_tokens=3), tok, sink=sink)  # id out of range
    engine.submit([bad])
    (delta,) = sink.wait()
    assert "generation failed" in delta.error and "out of range" in delta.error
    assert run(engine, tok, "ab", max_tokens=3, seed=0).final().finish_reason == "length"


def test_a_call_runs_between_the_tokens_of_a_long_sequence_and_reports_its_result(char_setup):
    """An embeddings request is one Call: the worker runs it whole, without waiting for the
    sequences it is stepping, and hands back its result or its error."""
    model, tok, engine = char_setup
    submitted = threading.Event()

    class Gated(Collector):  # holds the worker at the first token until the call is queued (no race)
        def __call__(self, delta):
            super().__call__(delta)
            if len(self.deltas) == 1:
                assert submitted.wait(60)

    sink = Gated()
    engine.submit([Sequence(0, tok.encode("ab"), SamplingParams(max_tokens=60, seed=0), tok, sink=sink)])
    answers, done = [], threading.Event()

    def keep(result, error):
        answers.append((result, error, len(sink.deltas)))
        done.set()

    engine.call(lambda backend: backend.embed(tok.encode("ROMEO:")), keep)
    submitted.set()
    assert done.wait(60)
    (vector, error, deltas_then), = answers
    sink.wait()
    assert error is None and deltas_then < len(sink.deltas)  # the sequence was still going
    states = model(np.asarray([tok.encode("ROMEO:")]), output_hidden_states=True).hidden_states[-1].data[0]
    mean = states.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-6)
    done.clear()
    engine.call(lambda backend: backend.embed([tok.vocab_size + 5]), keep)  # an id out of range
    assert done.wait(60)
    assert answers[-1][0] is None and "out of range" in str(answers[-1][1])
    assert run(engine, tok, "ab", max_tokens=3, seed=0).final().finish_reason == "length"


def test_a_full_queue_refuses_a_call(char_setup):
    _, tok, _ = char_setup
    engine = Engine(CausalLMBackend(tiny_gpt(tok.vocab_size)), max_active=1, max_waiting=1)
    try:
        gate = threading.Event()
        engine.call(lambda backend: gate.wait(60), lambda result, error: None)  # holds the worker
        deadline = time.monotonic() + 10
        while engine.stats()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.001)
        engine.call(lambda backend: None, lambda result, error: None)  # waits: the queue is now full
        with pytest.raises(EngineBusy, match="limit 1"):
            engine.call(lambda backend: None, lambda result, error: None)
        gate.set()
    finally:
        engine.close()
