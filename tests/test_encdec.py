"""The encoder-decoder Transformer: config checks, masking of padding, bad input, gradcheck of the
whole model in float64, a PyTorch twin built from the same weights, generation (cached ==
uncached, batched == one by one), saving and loading, evaluation, and a toy task it must learn."""
import json
import re

import numpy as np
import pytest

import tinyllm
from tinyllm import GradcheckError, Tensor, gradcheck, optim
from tinyllm.kernels import attention as A
from tinyllm.kernels.dispatch import is_reference, use_reference
from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(autouse=True)
def one_thread():
    """This file's models are tiny, and so are their kernels: on one thread they skip the
    parallel launch overhead (on a busy 2-core machine, the wait for a second core: the whole
    model's gradcheck took 160 s on two threads, 5 s on one). The kernels' tests cover the
    parallel paths."""
    before = tinyllm.get_num_threads()
    tinyllm.set_num_threads(1)
    yield
    tinyllm.set_num_threads(before)


def tiny_config(**overrides):
    kw = dict(src_vocab_size=11, tgt_vocab_size=13, max_src_len=8, max_tgt_len=9, n_encoder_layers=2,
              n_decoder_layers=2, n_head=2, d_model=8, d_ff=16, dropout=0.0, label_smoothing=0.0)
    kw.update(overrides)
    return EncoderDecoderConfig(**kw)


def batch(rng, cfg, B=3, S=6, T=5, src_lengths=(6, 2, 4), tgt_lengths=(5, 3, 1)):
    """Right-padded source and target arrays of the given lengths; targets are tgt_in shifted
    left with EOS at the end (pad after)."""
    src = np.full((B, S), PAD)
    tgt_in = np.full((B, T), PAD)
    tgt_out = np.full((B, T), PAD)
    for b in range(B):
        src[b, :src_lengths[b]] = rng.integers(3, cfg.src_vocab_size, src_lengths[b])
        body = rng.integers(3, cfg.tgt_vocab_size, tgt_lengths[b] - 1)
        tgt_in[b, :tgt_lengths[b]] = np.concatenate([[BOS], body])
        tgt_out[b, :tgt_lengths[b]] = np.concatenate([body, [EOS]])
    return src, tgt_in, tgt_out


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("d_model", 10, "d_model=10 is not divisible by n_head=4"),
    ("n_head", 0, "n_head must be a positive integer, got 0"),
    ("src_vocab_size", 2.5, "src_vocab_size must be a positive integer, got 2.5"),
    ("max_tgt_len", 1, "max_tgt_len must be >= 2 (BOS and one token), got 1"),
    ("dropout", 1.0, "dropout must be a number in [0.0, 1.0), got 1.0"),
    ("label_smoothing", -0.1, "label_smoothing must be a number in [0.0, 1.0), got -0.1"),
    ("bos_token_id", 40, "bos_token_id=40 is outside the vocabulary (0..29)"),
    ("eos_token_id", 0, "pad, bos and eos must be three different tokens"),
    ("pos_encoding", "rotary", "pos_encoding must be 'sinusoidal' or 'learned', got 'rotary'"),
    ("activation", "tanh", "activation must be 'relu', 'gelu' or 'gelu_tanh', got 'tanh'"),
    ("norm_first", "yes", "norm_first must be True or False, got 'yes'"),
    ("share_embeddings", True, "share_embeddings needs one vocabulary, but src_vocab_size=20 != tgt_vocab_size=30"),
])
def test_config_errors_name_the_value(field, value, message):
    kw = dict(src_vocab_size=20, tgt_vocab_size=30, n_head=4, d_model=16)
    kw[field] = value
    with pytest.raises(ValueError, match=re.escape(f"EncoderDecoderConfig: {message}")):
        EncoderDecoderConfig(**kw)


def test_config_round_trips_through_a_dict():
    cfg = tiny_config(norm_first=False, pos_encoding="learned", label_smoothing=0.1)
    assert EncoderDecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=re.escape("unknown keys ['n_layer']")):
        EncoderDecoderConfig.from_dict({**cfg.to_dict(), "n_layer": 3})


# --------------------------------------------------------------------------------------------
# forward, masking, bad input
# --------------------------------------------------------------------------------------------

def test_forward_shapes_and_loss_counts_only_real_targets():
    cfg = tiny_config()
    model = EncoderDecoderTransformer(cfg)
    src, tgt_in, tgt_out = batch(np.random.default_rng(0), cfg)
    logits, loss = model(src, tgt_in, targets=tgt_out)
    assert logits.shape == (3, 5, cfg.tgt_vocab_size) and logits.dtype == np.float32
    z = logits.data.astype(np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    real = tgt_out != PAD
    expected = -np.take_along_axis(logp, tgt_out[..., None], -1)[..., 0][real].mean()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-5)
    assert model(src, tgt_in)[1] is None
    # -100 counts as padding too
    np.testing.assert_array_equal(model(src, tgt_in, targets=np.where(real, tgt_out, -100))[1].data, loss.data)


@pytest.mark.parametrize("norm_first", [True, False])
def test_padding_changes_nothing(norm_first):
    """More padding on the source or the target leaves the real positions' logits unchanged:
    padded keys are masked out of every attention over the source, and causal masking keeps
    target padding (always at the end) out of the real positions."""
    cfg = tiny_config(norm_first=norm_first, dropout=0.0)
    model = EncoderDecoderTransformer(cfg, seed=1)
    src, tgt_in, _ = batch(np.random.default_rng(1), cfg, S=6, T=5)
    logits = model(src, tgt_in)[0].data
    more_src = np.concatenate([src, np.full((3, 2), PAD)], axis=1)
    more_tgt = np.concatenate([tgt_in, np.full((3, 3), PAD)], axis=1)
    logits2 = model(more_src, more_tgt)[0].data
    for b, length in enumerate((5, 3, 1)):
        np.testing.assert_allclose(logits2[b, :length], logits[b, :length], rtol=1e-5, atol=1e-6)
    # a source alone gives what it gives in the padded batch
    alone = model(src[1:2, :2], tgt_in[1:2, :3])[0].data
    np.testing.assert_allclose(alone[0], logits[1, :3], rtol=1e-5, atol=1e-6)


def test_an_empty_source_gives_finite_outputs():
    cfg = tiny_config()
    model = EncoderDecoderTransformer(cfg)
    src = np.array([[PAD, PAD, PAD], [4, 5, PAD]])
    logits, loss = model(src, np.array([[BOS, 3], [BOS, 4]]), targets=np.array([[3, EOS], [4, EOS]]))
    assert np.isfinite(logits.data).all() and np.isfinite(loss.item())
    loss.backward()
    assert all(np.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_input_is_named():
    cfg = tiny_config()
    model = EncoderDecoderTransformer(cfg)
    src, tgt_in, tgt_out = batch(np.random.default_rng(2), cfg)

    def raises(message, exc=ValueError):
        return pytest.raises(exc, match=re.escape(message))

    with raises("src_ids has length 9, longer than max_src_len=8"):
        model(np.full((1, 9), 3), tgt_in[:1])
    with raises("src_ids[1, 3] = 11 is outside the vocabulary of 11 (valid ids 0..10)"):
        bad = src.copy()
        bad[1, 3] = 11
        model(bad, tgt_in)
    with raises("src_ids[0, 0] = -1 is outside the vocabulary"):
        model(np.array([[-1, 3]]), tgt_in[:1])
    with raises("tgt_in_ids[2, 0] = 13 is outside the vocabulary of 13"):
        bad = tgt_in.copy()
        bad[2, 0] = 13
        model(src, bad)
    with raises("tgt_in_ids[1] starts with 5, not bos_token_id=1"):
        bad = tgt_in.copy()
        bad[1, 0] = 5
        model(src, bad)
    with raises("tgt_in_ids has length 10, longer than max_tgt_len=9"):
        model(src, np.full((3, 10), BOS))
    with raises("targets have shape (3, 4), but tgt_in_ids (3, 5)"):
        model(src, tgt_in, targets=tgt_out[:, :4])
    with raises("targets[0, 2] = 20 is outside the vocabulary of 13"):
        bad = tgt_out.copy()
        bad[0, 2] = 20
        model(src, tgt_in, targets=bad)
    with raises("src_ids must be integer token ids, got dtype float64", TypeError):
        model(src.astype(float), tgt_in)
    with raises("src_ids must have shape (batch, length) with length >= 1, got shape (6,)"):
        model.encode(src[0])
    with raises("generate: max_new_tokens=10 exceeds max_tgt_len=9: the decoder reads at most 9 positions"):
        model.generate(src, max_new_tokens=10)
    with raises("generate: greedy decoding gives one sequence per source"):
        model.generate(src, num_return_sequences=2)
    with raises("generate: num_return_sequences=3 must be <= num_beams=2"):
        model.generate(src, num_beams=2, num_return_sequences=3)
    with raises("generate: beam sampling (num_beams > 1 with do_sample=True) is not supported"):
        model.generate(src, num_beams=2, do_sample=True)
    with raises("generate: early_stopping must be True, False or 'never', got 'sometimes'"):
        model.generate(src, num_beams=2, early_stopping="sometimes")
    with raises("src_ids has length 9, longer than max_src_len=8"):
        model.generate(np.full((1, 9), 3))


# --------------------------------------------------------------------------------------------
# gradients: finite differences of the whole model, every parameter
# --------------------------------------------------------------------------------------------

def with_parameters(model, fn):
    """fn(model) as a function of all (unique) parameters, for tinyllm.gradcheck: the tensors
    passed in take the parameters' places (tied weights stay tied) while fn runs."""
    params = [p for _, p in model.named_parameters()]
    index = {id(p): i for i, p in enumerate(params)}
    slots = [(m, name, index[id(p)]) for m in model.modules() for name, p in m._parameters.items()]

    def run(*tensors):
        try:
            for m, name, i in slots:
                object.__setattr__(m, name, tensors[i])
            return fn(model)
        finally:
            for m, name, i in slots:
                object.__setattr__(m, name, params[i])

    return run, [Tensor(p.data, requires_grad=True) for p in params]


GRADCHECK_CONFIGS = {
    "pre-LN": dict(norm_first=True),
    "post-LN learned positions": dict(norm_first=False, pos_encoding="learned"),
    "pre-LN shared, untied, label smoothing, gelu": dict(norm_first=True, share_embeddings=True,
                                                        tie_word_embeddings=False, label_smoothing=0.1,
                                                        src_vocab_size=7, tgt_vocab_size=7, activation="gelu"),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CONFIGS))
def test_whole_model_gradcheck(name):
    sizes = dict(src_vocab_size=7, tgt_vocab_size=6, d_model=4, d_ff=6, n_encoder_layers=1, n_decoder_layers=2,
                 max_src_len=5, max_tgt_len=4)
    cfg = tiny_config(**{**sizes, **GRADCHECK_CONFIGS[name]})
    model = EncoderDecoderTransformer(cfg, seed=3).double()
    rng = np.random.default_rng(3)
    src, tgt_in, tgt_out = batch(rng, cfg, B=2, S=4, T=3, src_lengths=(4, 2), tgt_lengths=(3, 2))
    fn, params = with_parameters(model, lambda m: m(src, tgt_in, targets=tgt_out))
    assert sum(p.size for p in params) == model.num_parameters() > 200
    assert gradcheck(fn, params, rtol=1e-6, atol=1e-7)


def test_whole_model_gradcheck_can_fail():
    """The same check catches a backward that is wrong in one place: cross-attention's backward
    that ignores the source padding (the forward masks it)."""
    cfg = tiny_config(src_vocab_size=7, tgt_vocab_size=6, d_model=4, d_ff=6, n_encoder_layers=1,
                      n_decoder_layers=1, max_src_len=5, max_tgt_len=4)
    model = EncoderDecoderTransformer(cfg, seed=4).double()
    src, tgt_in, tgt_out = batch(np.random.default_rng(4), cfg, B=2, S=4, T=3, src_lengths=(4, 2),
                                 tgt_lengths=(3, 2))
    fn, params = with_parameters(model, lambda m: m(src, tgt_in, targets=tgt_out))
    real_backward = A.attention_backward

    def unmasked_backward(q, k, v, out, lse, dout, causal=False, scale=None, key_lengths=None):
        return real_backward(q, k, v, out, lse, dout, causal, scale)

    A.attention_backward = unmasked_backward
    use_reference(is_reference())  # the Functions reach kernels through dispatch(): make it look again
    try:
        with pytest.raises(GradcheckError, match="analytic gradient"):
            gradcheck(fn, params, rtol=1e-6, atol=1e-7)
    finally:
        A.attention_backward = real_backward
        use_reference(is_reference())


# --------------------------------------------------------------------------------------------
# the PyTorch twin: the same weights in torch.nn.functional, logits, loss and every gradient
# --------------------------------------------------------------------------------------------

def torch_twin(model, src, tgt_in, tgt_out, torch):
    """The model written again with torch.nn.functional, from the model's own weights (float32).
    Returns (logits, loss, {parameter name: torch leaf})."""
    tF = torch.nn.functional
    c = model.config
    H, d = c.n_head, c.d_model
    leaves = {n: torch.tensor(p.data, requires_grad=True) for n, p in model.named_parameters()}
    first = {id(p): n for n, p in model.named_parameters()}
    alias = {n: first[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}

    def W(name):
        return leaves[alias[name]]

    def linear(x, prefix, bias=True):
        return tF.linear(x, W(prefix + ".weight"), W(prefix + ".bias") if bias else None)

    def norm(x, prefix):
        return tF.layer_norm(x, (d,), W(prefix + ".weight"), W(prefix + ".bias"), c.layer_norm_epsilon)

    def heads(x, n):  # (B, T, n*C) -> n tensors (B, H, T, D)
        B, T, _ = x.shape
        return x.view(B, T, n, H, d // H).permute(2, 0, 3, 1, 4)

    def merge(y):
        B, _, T, _ = y.shape
        return y.transpose(1, 2).reshape(B, T, d)

    def self_attn(x, prefix, mask):
        q, k, v = heads(linear(x, prefix + ".c_attn"), 3)
        return linear(merge(tF.scaled_dot_product_attention(q, k, v, attn_mask=mask)), prefix + ".c_proj")

    def cross_attn(x, memory, prefix, mask):
        (q,) = heads(linear(x, prefix + ".q_attn"), 1)
        k, v = heads(linear(memory, prefix + ".c_attn"), 2)
        return linear(merge(tF.scaled_dot_product_attention(q, k, v, attn_mask=mask)), prefix + ".c_proj")

    def mlp(x, prefix):
        h = linear(x, prefix + ".c_fc")
        h = tF.relu(h) if c.activation == "relu" else tF.gelu(h, approximate="tanh" if c.activation == "gelu_tanh" else "none")
        return linear(h, prefix + ".c_proj")

    def residual(x, sublayer, ln):
        return x + sublayer(norm(x, ln)) if c.norm_first else norm(x + sublayer(x), ln)

    def embed(side, ids):
        table = torch.tensor(getattr(model, side).wpe.table) if c.pos_encoding == "sinusoidal" else W(side + ".wpe.weight")
        return tF.embedding(torch.tensor(ids), W(side + ".wte.weight")) * (d ** 0.5 if c.scale_embedding else 1.0) \
            + table[: ids.shape[1]]

    src_mask = torch.tensor(src != c.pad_token_id)[:, None, None, :]  # (B, 1, 1, S)
    x = embed("encoder", src)
    for i in range(c.n_encoder_layers):
        p = f"encoder.h.{i}"
        x = residual(x, lambda h: self_attn(h, p + ".attn", src_mask), p + ".ln_1")
        x = residual(x, lambda h: mlp(h, p + ".mlp"), p + ".ln_2")
    memory = norm(x, "encoder.ln_f") if c.norm_first else x
    T = tgt_in.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    y = embed("decoder", tgt_in)
    for i in range(c.n_decoder_layers):
        p = f"decoder.h.{i}"
        y = residual(y, lambda h: self_attn(h, p + ".attn", causal), p + ".ln_1")
        y = residual(y, lambda h: cross_attn(h, memory, p + ".crossattention", src_mask), p + ".ln_cross_attn")
        y = residual(y, lambda h: mlp(h, p + ".mlp"), p + ".ln_2")
    if c.norm_first:
        y = norm(y, "decoder.ln_f")
    logits = tF.linear(y, W("lm_head.weight"))
    targets = torch.tensor(np.where(tgt_out == c.pad_token_id, -100, tgt_out))
    loss = tF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                            label_smoothing=c.label_smoothing)
    return logits, loss, leaves


TWIN_CONFIGS = {
    "pre-LN, sinusoidal, tied": dict(norm_first=True),
    "post-LN, learned, untied": dict(norm_first=False, pos_encoding="learned", tie_word_embeddings=False),
    "pre-LN, shared vocabulary, label smoothing, gelu": dict(norm_first=True, share_embeddings=True,
                                                            src_vocab_size=13, label_smoothing=0.1,
                                                            activation="gelu_tanh"),
}


@pytest.mark.parametrize("name", sorted(TWIN_CONFIGS))
def test_matches_a_pytorch_twin(name):
    torch = pytest.importorskip("torch")
    cfg = tiny_config(**{**dict(d_model=32, d_ff=48, n_head=4, max_src_len=12, max_tgt_len=10), **TWIN_CONFIGS[name]})
    model = EncoderDecoderTransformer(cfg, seed=5)
    src, tgt_in, tgt_out = batch(np.random.default_rng(5), cfg, B=4, S=11, T=9, src_lengths=(11, 3, 7, 1),
                                 tgt_lengths=(9, 2, 5, 7))
    logits, loss = model(src, tgt_in, targets=tgt_out)
    loss.backward()
    logits_t, loss_t, leaves = torch_twin(model, src, tgt_in, tgt_out, torch)
    loss_t.backward()

    def close(ours, theirs, what):
        theirs = theirs.detach().numpy()
        assert np.isfinite(ours).all(), what
        scale = max(1.0, float(np.abs(theirs).max()))
        err = float(np.abs(ours - theirs).max()) / scale
        assert err <= 1e-5, f"{what}: max |difference| / scale {err:.2e}"  # measured: <= 4e-7

    close(logits.data, logits_t, "logits")
    close(loss.data, loss_t, "loss")
    params = dict(model.named_parameters())
    assert set(params) == set(leaves)
    for n, p in params.items():
        assert leaves[n].grad is not None, n
        close(p.grad, leaves[n].grad, f"d loss / d {n}")


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------

def trained_ish_model(seed=6, **overrides):
    """A random model that decodes varied tokens and sometimes EOS. (A random model with tied
    embeddings just repeats its input token, BOS, forever: untied and sharpened instead, with
    a nudge towards EOS through the final LayerNorm's bias.)"""
    cfg = tiny_config(**{**dict(d_model=16, d_ff=32, n_head=2, max_tgt_len=9, tie_word_embeddings=False),
                         **overrides})
    model = EncoderDecoderTransformer(cfg, seed=seed)
    head = model.lm_head.weight.data
    head *= 3
    if cfg.norm_first:
        model.decoder.ln_f.bias.data = (0.6 * head[EOS] / np.linalg.norm(head[EOS])).astype(np.float32)
    return model


def assert_varied(out):
    """Decoding produced more than a repeated token, and EOS in some row but not in all."""
    assert len(np.unique(out[:, 1:])) >= 3
    has_eos = (out == EOS).any(axis=1)
    assert has_eos.any() and not has_eos.all()


GENERATE_CASES = {
    "greedy": dict(),
    "beam": dict(num_beams=3),
    "beam, 2 returned, length penalty 2, early stopping": dict(num_beams=3, num_return_sequences=2,
                                                               length_penalty=2.0, early_stopping=True),
    "beam never": dict(num_beams=2, early_stopping="never", length_penalty=0.5),
    "sample": dict(do_sample=True, seed=3, temperature=1.3, top_k=5, top_p=0.9),
    "sample, 3 returned": dict(do_sample=True, seed=4, num_return_sequences=3),
}


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
def test_cached_decoding_equals_uncached(case):
    model = trained_ish_model()
    src, _, _ = batch(np.random.default_rng(7), model.config, B=3, S=6)
    kwargs = GENERATE_CASES[case]
    cached = model.generate(src, **kwargs)
    uncached = model.generate(src, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, uncached)
    assert_varied(cached)
    rows = 3 * kwargs.get("num_return_sequences", 1)
    assert cached.shape[0] == rows and cached.dtype == np.int64
    assert (cached[:, 0] == BOS).all()


@pytest.mark.parametrize("case", ["greedy", "beam", "beam never"])
def test_batched_sources_of_different_lengths_equal_one_by_one(case):
    model = trained_ish_model(seed=9)
    lengths = (6, 2, 4, 1)
    src, _, _ = batch(np.random.default_rng(9), model.config, B=4, S=6, src_lengths=lengths, tgt_lengths=(1,) * 4)
    kwargs = GENERATE_CASES[case]
    together = model.generate(src, **kwargs)
    assert_varied(together)
    for b, length in enumerate(lengths):
        alone = model.generate(src[b:b + 1, :length], **kwargs)[0]
        row = together[b]
        np.testing.assert_array_equal(row[:len(alone)], alone)
        assert (row[len(alone):] == PAD).all()


def test_generate_takes_hugging_face_names_and_checks_the_mask():
    """generate(input_ids=..., attention_mask=...) as a tokenizer's output gives it: the same
    tokens as src_ids; a mask that disagrees with the pad ids, or ids given twice, is an error."""
    model = trained_ish_model(seed=9)
    src, _, _ = batch(np.random.default_rng(9), model.config, B=3, S=6, src_lengths=(6, 2, 4), tgt_lengths=(1,) * 3)
    mask = (src != PAD).astype(np.int64)
    np.testing.assert_array_equal(model.generate(input_ids=src, attention_mask=mask), model.generate(src))
    wrong = mask.copy()
    wrong[1, 3] = 1  # row 1 has 2 real tokens: position 3 is padding
    with pytest.raises(ValueError, match="attention_mask row 1 .*pad_token_id=0"):
        model.generate(src, attention_mask=wrong)
    with pytest.raises(ValueError, match=r"shape \(3, 5\)"):
        model.generate(src, attention_mask=mask[:, :5])
    with pytest.raises(TypeError, match="generate: pass src_ids or input_ids, not both"):
        model.generate(src, input_ids=src)
    with pytest.raises(TypeError, match="got neither"):
        model.generate()


def test_forward_takes_hugging_face_names_and_shifts_labels_right():
    """model(input_ids=, attention_mask=, labels=) as Hugging Face's seq2seq models: the decoder
    reads BOS + the labels but the last (-100 as padding); the same logits and loss as tinyllm's
    names; decoder_input_ids given explicitly win; conflicting or missing arguments are named."""
    model = trained_ish_model(seed=9)
    model.eval()
    src, tgt_in, tgt_out = batch(np.random.default_rng(3), model.config, B=3, S=6, T=5)
    labels = np.where(tgt_out == PAD, -100, tgt_out)  # what a Hugging Face collator passes
    shifted = model.shift_right(labels)
    np.testing.assert_array_equal(shifted[:, 0], BOS)
    np.testing.assert_array_equal(shifted[:, 1:], np.where(labels == -100, PAD, labels)[:, :-1])
    # (where a label is real, its decoder input is tgt_in's; after a row's EOS the shift feeds EOS
    # where tgt_in has padding: a position whose label is ignored)
    real = labels != -100
    np.testing.assert_array_equal(shifted[real], tgt_in[real])
    ours = model(src, tgt_in, tgt_out)
    theirs = model(input_ids=src, attention_mask=(src != PAD).astype(np.int64), labels=labels)
    np.testing.assert_array_equal(theirs.logits.data[real], ours.logits.data[real])  # causal: later inputs unseen
    assert float(theirs.loss.data) == float(ours.loss.data)
    explicit = model(input_ids=src, decoder_input_ids=tgt_in[:, :3], labels=labels[:, :3])
    np.testing.assert_array_equal(explicit.logits.data, model(src, tgt_in[:, :3]).logits.data)
    with pytest.raises(TypeError, match="forward: pass targets or labels, not both"):
        model(src, tgt_in, tgt_out, labels=labels)
    with pytest.raises(TypeError, match=r"forward: tgt_in_ids \(or decoder_input_ids\) is required"):
        model(src)
    with pytest.raises(ValueError, match="forward: attention_mask row 0"):
        model(input_ids=src, attention_mask=np.zeros_like(src), labels=labels)


def test_greedy_output_format_and_equals_step_by_step_argmax():
    """Starts with BOS, stops at EOS, pads finished rows; each token is the argmax of the
    decoder's logits given the tokens before it (no cache involved)."""
    model = trained_ish_model(seed=9)
    src, _, _ = batch(np.random.default_rng(9), model.config, B=3, S=6)
    out = model.generate(src)  # up to max_tgt_len = 9 new tokens
    assert out.shape[1] <= 10
    saw_eos = False
    for b in range(3):
        row = list(out[b])
        end = row.index(EOS) + 1 if EOS in row else len(row)
        saw_eos |= EOS in row
        assert all(t == PAD for t in row[end:])
        for t in range(1, end):
            logits = model(src[b:b + 1], np.array([row[:t]]))[0].data[0, -1]
            assert row[t] == int(np.argmax(logits))
    assert saw_eos
    one = model.generate(src[0])  # a 1-D source gives a 1-D result
    assert one.ndim == 1 and np.array_equal(one, out[0][:len(one)])
    short = model.generate(src, max_new_tokens=2)
    assert short.shape[1] <= 3 and np.array_equal(short, out[:, :short.shape[1]])
    np.testing.assert_array_equal(model.generate(src, max_length=3), short)


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
    """With length_penalty 0 beam search ranks by total log-probability; with early_stopping
    "never" it stops only when no running beam can beat its finished ones, so its best
    hypothesis is at least as likely as greedy's."""
    model = trained_ish_model(seed=9)
    src, _, _ = batch(np.random.default_rng(9), model.config, B=3, S=6)

    def logprob(row, b):
        row = list(row)
        end = row.index(EOS) + 1 if EOS in row else len(row)
        logits = model(src[b:b + 1], np.array([row[:end - 1]]))[0].data[0].astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return sum(logp[t - 1, row[t]] for t in range(1, end))

    greedy = model.generate(src)
    beam = model.generate(src, num_beams=4, length_penalty=0.0, early_stopping="never")
    assert not np.array_equal(beam, greedy)  # the search found something greedy did not
    for b in range(3):
        assert logprob(beam[b], b) >= logprob(greedy[b], b) - 1e-6


def test_sampling_is_reproducible_and_seeded():
    model = trained_ish_model(seed=11)
    src, _, _ = batch(np.random.default_rng(11), model.config, B=3, S=6)
    a = model.generate(src, do_sample=True, seed=1)
    np.testing.assert_array_equal(a, model.generate(src, do_sample=True, seed=1))
    assert any(not np.array_equal(a, model.generate(src, do_sample=True, seed=s)) for s in range(2, 6))
    np.testing.assert_array_equal(model.generate(src, do_sample=True, temperature=0), model.generate(src))


def test_cross_attention_keys_are_projected_once():
    """With the cache, the encoder output's keys/values are computed at the first step only."""
    model = trained_ish_model(seed=12)
    src, _, _ = batch(np.random.default_rng(12), model.config, B=2, S=6)
    calls = []
    cross = model.decoder.h[0].crossattention
    real = cross.memory_kv
    cross.memory_kv = lambda memory: calls.append(memory.shape) or real(memory)
    out = model.generate(src, max_new_tokens=6)
    assert len(calls) == 1 and out.shape[1] > 2
    calls.clear()
    model.generate(src, max_new_tokens=6, use_cache=False)
    assert len(calls) == out.shape[1] - 1


def test_kv_cache_reorder():
    cache = tinyllm.nn.KVCache(n_layer=2, batch_size=3, n_head=1, max_len=4, head_dim=2)
    rows = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 1, 2, 2), np.float32)
    for layer in range(2):
        cache.update(layer, rows, rows + 10)
        cache.cross[layer] = (rows[:, :, :1], rows[:, :, :1] + 10)
    cache.advance(2)
    cache.reorder(np.array([2, 2, 0]), cross=False)
    np.testing.assert_array_equal(cache.k[:, :, 0, :2, 0], [[[2, 2], [2, 2], [0, 0]]] * 2)  # (layer, row, position)
    np.testing.assert_array_equal(cache.v[:, :, 0, :2, 0], [[[12, 12], [12, 12], [10, 10]]] * 2)
    assert (cache.k[:, :, :, 2:] == 0).all()  # positions not stored yet are not touched
    np.testing.assert_array_equal(cache.cross[0][0][:, 0, 0, 0], [0, 1, 2])  # left alone
    cache.reorder(np.array([1, 0, 2]))
    np.testing.assert_array_equal(cache.k[0, :, 0, 0, 0], [2, 2, 0])
    np.testing.assert_array_equal(cache.cross[1][1][:, 0, 0, 0], [11, 10, 12])


# --------------------------------------------------------------------------------------------
# saving, loading, evaluation, dropout
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [dict(), dict(share_embeddings=True, src_vocab_size=13, norm_first=False,
                                                     pos_encoding="learned", tie_word_embeddings=True)])
def test_save_and_load(tmp_path, overrides):
    model = trained_ish_model(seed=13, **overrides)
    src, tgt_in, tgt_out = batch(np.random.default_rng(13), model.config)
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "tinyllm-encoder-decoder" and raw["d_model"] == 16
    for loaded in (EncoderDecoderTransformer.from_pretrained(tmp_path),
                   tinyllm.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path))):
        assert loaded.config == model.config
        np.testing.assert_array_equal(loaded(src, tgt_in, targets=tgt_out)[0].data,
                                      model(src, tgt_in, targets=tgt_out)[0].data)
        np.testing.assert_array_equal(loaded.generate(src, num_beams=2), model.generate(src, num_beams=2))
        if model.config.share_embeddings:
            assert loaded.decoder.wte.weight is loaded.encoder.wte.weight
        assert (loaded.lm_head.weight is loaded.decoder.wte.weight) == model.config.tie_word_embeddings


def test_loading_the_wrong_kind_of_model_is_named(tmp_path):
    gpt = tinyllm.GPT(tinyllm.GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    gpt.save_pretrained(tmp_path / "gpt")
    with pytest.raises(ValueError, match=re.escape("has model_type 'tinyllm-gpt' (a causal LM: load it with AutoModelForCausalLM)")):
        tinyllm.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "gpt")
    with pytest.raises(ValueError, match="holds a model of type 'tinyllm-gpt', but EncoderDecoderTransformer"):
        EncoderDecoderTransformer.from_pretrained(tmp_path / "gpt")
    trained_ish_model().save_pretrained(tmp_path / "encdec")
    with pytest.raises(ValueError, match="holds a model of type 'tinyllm-encoder-decoder', but GPT reads"):
        tinyllm.GPT.from_pretrained(tmp_path / "encdec")
    with pytest.raises(FileNotFoundError):
        tinyllm.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "nowhere")


def test_evaluate_and_perplexity():
    model = trained_ish_model(seed=14, label_smoothing=0.2)
    src, tgt_in, tgt_out = batch(np.random.default_rng(14), model.config, B=3)
    result = model.evaluate(src, tgt_in, tgt_out, batch_size=2)  # 2 + 1 rows, token-weighted
    logits = model(src, tgt_in)[0].data.astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = tgt_out != PAD
    nll = -np.take_along_axis(logp, tgt_out[..., None], -1)[..., 0][real]
    assert result["n_tokens"] == real.sum() == 9
    np.testing.assert_allclose(result["loss"], nll.mean(), rtol=1e-5)  # no label smoothing in it
    np.testing.assert_allclose(result["perplexity"], np.exp(nll.mean()), rtol=1e-5)
    assert model.perplexity(src, tgt_in, tgt_out) == pytest.approx(result["perplexity"], rel=1e-6)
    with pytest.raises(ValueError, match="got 3, 2 and 3 rows"):
        model.evaluate(src, tgt_in[:2], tgt_out)


def test_evaluate_of_a_diverged_model_gives_an_infinite_perplexity_not_an_overflow_error():
    model = trained_ish_model(seed=14)
    model.lm_head.weight.data *= 1e5  # logits in the tens of thousands: a loss past exp's float64 range
    src, tgt_in, tgt_out = batch(np.random.default_rng(14), model.config, B=3)
    result = model.evaluate(src, tgt_in, tgt_out)
    assert np.isfinite(result["loss"]) and result["loss"] > 710 and result["perplexity"] == float("inf")


def test_dropout_is_seeded_and_off_in_eval():
    cfg = tiny_config(dropout=0.3)
    src, tgt_in, tgt_out = batch(np.random.default_rng(15), cfg)
    losses = []
    for _ in range(2):
        model = EncoderDecoderTransformer(cfg, seed=2)
        losses.append([model(src, tgt_in, targets=tgt_out)[1].item() for _ in range(3)])
    assert losses[0] == losses[1] and len(set(losses[0])) == 3  # same seed, same run; each step new masks
    model.set_dropout_rng(np.random.default_rng(5))
    assert model(src, tgt_in, targets=tgt_out)[1].item() not in losses[0]
    model.eval()
    a, b = (model(src, tgt_in, targets=tgt_out)[1].item() for _ in range(2))
    assert a == b


# --------------------------------------------------------------------------------------------
# it learns: reverse a sequence
# --------------------------------------------------------------------------------------------

def reverse_task(rng, n, vocab, max_len, exclude=frozenset(), min_len=2):
    """n sources of min_len..max_len tokens from 3..vocab-1 (none in ``exclude``) and their
    reversal as decoder input / targets. Returns src, tgt_in, tgt_out, the sources as tuples."""
    src = np.full((n, max_len), PAD)
    tgt_in = np.full((n, max_len + 1), PAD)
    tgt_out = np.full((n, max_len + 1), PAD)
    seqs = []
    while len(seqs) < n:
        s = tuple(rng.integers(3, vocab, rng.integers(min_len, max_len + 1)))
        if s in exclude:
            continue
        i, L = len(seqs), len(s)
        seqs.append(s)
        src[i, :L] = s
        tgt_in[i, :L + 1] = (BOS,) + s[::-1]
        tgt_out[i, :L + 1] = s[::-1] + (EOS,)
    return src, tgt_in, tgt_out, seqs


def test_learns_to_reverse_sequences():
    """A tiny pre-LN model with AdamW learns to reverse sequences of 2..7 tokens in 400 steps;
    greedy and beam decoding are then exact on sequences it never saw."""
    vocab, max_len = 13, 7
    cfg = EncoderDecoderConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, max_src_len=max_len,
                               max_tgt_len=max_len + 1, n_encoder_layers=2, n_decoder_layers=2, n_head=2,
                               d_model=32, d_ff=64, dropout=0.0, share_embeddings=True)
    model = EncoderDecoderTransformer(cfg, seed=0)
    rng = np.random.default_rng(0)
    test_src, _, _, test_seqs = reverse_task(np.random.default_rng(123), 200, vocab, max_len, min_len=4)
    held_out = frozenset(test_seqs)
    steps, lr, warmup = 400, 5e-3, 30
    opt = optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    for it in range(steps):
        src, tgt_in, tgt_out, _ = reverse_task(rng, 32, vocab, max_len, exclude=held_out)
        opt.param_groups[0]["lr"] = lr * min((it + 1) / warmup, 1 - (it - warmup) / (steps - warmup))
        _, loss = model(src, tgt_in, targets=tgt_out)
        model.zero_grad()
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
    assert loss.item() < 0.05
    for num_beams in (1, 4):
        out = model.generate(test_src, num_beams=num_beams)
        exact = [list(row[:len(s) + 2]) == [BOS, *s[::-1], EOS] for row, s in zip(out, test_seqs)]
        assert np.mean(exact) >= 0.98, f"num_beams={num_beams}: exact match {np.mean(exact):.3f}"


def test_runs_with_jit_disabled():
    """NUMBA_DISABLE_JIT=1: training step (with dropout and label smoothing) and beam search on
    the plain-Python kernels."""
    from kernel_helpers import run_with_jit_disabled

    run_with_jit_disabled(
        'import numpy as np, numba\n'
        'from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer\n'
        'assert numba.config.DISABLE_JIT\n'
        'cfg = EncoderDecoderConfig(src_vocab_size=9, tgt_vocab_size=9, max_src_len=5, max_tgt_len=4, n_encoder_layers=1,\n'
        '                           n_decoder_layers=1, n_head=2, d_model=8, d_ff=8, dropout=0.1, label_smoothing=0.1)\n'
        'model = EncoderDecoderTransformer(cfg)\n'
        'src = np.array([[3, 4, 5, 0], [6, 7, 0, 0]])\n'
        'logits, loss = model(src, np.array([[1, 3, 4], [1, 5, 0]]), targets=np.array([[3, 4, 2], [5, 2, 0]]))\n'
        'loss.backward()\n'
        'assert np.isfinite(loss.item()) and all(np.isfinite(p.grad).all() for p in model.parameters())\n'
        'out = model.generate(src, max_new_tokens=3, num_beams=2)\n'
        'assert out.shape[0] == 2 and (out[:, 0] == 1).all()\n'
        "print('ok')\n"
    )
