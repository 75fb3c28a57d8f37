"""tinyllm.pipeline against transformers.pipeline on the same GPT-2 directory, and the encoder-decoder's."""
import numpy as np
import pytest

import tinyllm
from kernel_helpers import make_gpt2_dir
from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_gpt2_dir(tmp_path_factory.mktemp("gpt2"), seed=0)


@pytest.fixture(scope="module")
def hf_pipelines():
    """transformers' pipeline module, with TOKENIZERS_PARALLELISM set for the module as its
    pipelines would set it on first use (conftest fails a test that changes os.environ)."""
    transformers = pytest.importorskip("transformers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield transformers


@pytest.fixture(scope="module")
def both(gpt2_dir, hf_pipelines):
    return (tinyllm.pipeline("text-generation", model=gpt2_dir),
            hf_pipelines.pipeline("text-generation", model=str(gpt2_dir)))


@pytest.mark.parametrize("kwargs", [dict(), dict(return_full_text=False), dict(num_beams=3, num_return_sequences=2),
                                    dict(return_tensors=True)])
def test_text_generation_equals_transformers_greedy(both, kwargs):
    ours, theirs = both
    prompt = "The quick brown fox"
    got = ours(prompt, max_new_tokens=8, do_sample=False, **kwargs)
    want = theirs(prompt, max_new_tokens=8, do_sample=False, **kwargs)
    assert got == want
    assert len(got) == kwargs.get("num_return_sequences", 1)
    if "generated_text" in got[0] and kwargs.get("return_full_text", True):
        assert got[0]["generated_text"].startswith(prompt) and len(got[0]["generated_text"]) > len(prompt)


def test_a_list_of_prompts_gives_a_list_of_lists(both):
    ours, theirs = both
    prompts = ["Hello", "A longer prompt here"]
    assert ours(prompts, max_new_tokens=5, do_sample=False) == theirs(prompts, max_new_tokens=5, do_sample=False)


def test_sampling_defaults_are_the_pipelines_and_seeded_runs_repeat(both):
    ours, _ = both
    a = ours("Hello", max_new_tokens=6, seed=3)
    b = ours("Hello", max_new_tokens=6, seed=3)
    greedy = ours("Hello", max_new_tokens=6, do_sample=False)
    assert a == b and a != greedy  # do_sample=True by default, as transformers' pipeline
    assert len(ours("Hello", seed=1, return_tensors=True)[0]["generated_token_ids"]) <= 256 + 1


def test_feature_extraction_equals_transformers(gpt2_dir, hf_pipelines):
    ours = tinyllm.pipeline("feature-extraction", model=gpt2_dir)("Hello world, again")
    theirs = hf_pipelines.pipeline("feature-extraction", model=str(gpt2_dir))("Hello world, again")
    assert np.asarray(ours).shape == np.asarray(theirs).shape == (1, 4, 64)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-5)


def test_a_chat_comes_back_with_the_reply_appended(tmp_path):
    from serve_helpers import save_char_model

    directory = save_char_model(tmp_path)
    chat = tinyllm.pipeline("text-generation", model=directory)
    messages = [{"role": "user", "content": "abc"}]
    out = chat(messages, max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"][:-1] == messages
    reply = out[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and len(reply["content"]) > 0


def test_translation_pipeline_on_an_encoder_decoder(tmp_path):
    from tinyllm.tokenizers import CharTokenizer, Seq2SeqTokenizer

    src = CharTokenizer.from_text("abcdef ")
    tok = Seq2SeqTokenizer(src)
    cfg = EncoderDecoderConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16, n_head=2,
                               n_encoder_layers=1, n_decoder_layers=1, max_src_len=16, max_tgt_len=16)
    model = EncoderDecoderTransformer(cfg, seed=0)
    translate = tinyllm.pipeline("translation_src_to_tgt", model=model, tokenizer=tok)
    out = translate(["abc", "fed"], max_new_tokens=6)
    ids = model.generate(np.asarray([tok.encode("abc")]), max_new_tokens=6)
    assert out[0] == [{"translation_text": tok.decode(ids[0], skip_special_tokens=True)}]
    assert len(out) == 2 and set(out[1][0]) == {"translation_text"}


def test_errors_say_what_to_pass():
    with pytest.raises(ValueError, match="unknown task 'fill-mask'"):
        tinyllm.pipeline("fill-mask", model="x")
    with pytest.raises(ValueError, match="pass model="):
        tinyllm.pipeline("text-generation")
    with pytest.raises(ValueError, match="pass its tokenizer= too"):
        tinyllm.pipeline("text-generation", model=object())
