"""Chat templates on tinyllm's tokenizers: rendering, files, the sandbox, and transformers as the oracle."""
import json

import numpy as np
import pytest

pytest.importorskip("jinja2")

from serve_helpers import EOT, bpe_tokenizer  # noqa: E402

from tinyllm.tokenizers import AutoTokenizer, CharTokenizer, Tokenizer, shakespeare_chat_template  # noqa: E402



def char_tokenizer(chat=True):
    """A whole alphabet (the server tests' tokenizer has only a few characters)."""
    tok = CharTokenizer.from_text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz :\n.,?!'")
    if chat:
        tok.set_chat_template(shakespeare_chat_template(), stop_strings=["\n\n"])
    return tok


DIALOGUE = [
    {"role": "system", "content": "A street."},
    {"role": "user", "content": "Good morrow."},
    {"role": "assistant", "content": "And to you."},
    {"role": "user", "content": "Who art thou?", "name": "hamlet"},
]


def test_shakespeare_template_writes_the_plays_form():
    tok = char_tokenizer()
    text = tok.apply_chat_template(DIALOGUE, add_generation_prompt=True, tokenize=False)
    assert text == ("A street.\n\nROMEO:\nGood morrow.\n\nJULIET:\nAnd to you.\n\n"
                    "HAMLET:\nWho art thou?\n\nJULIET:\n")
    # without the cue for the assistant's turn, the text ends after the last speech
    assert tok.apply_chat_template(DIALOGUE, tokenize=False).endswith("HAMLET:\nWho art thou?\n\n")


def test_shakespeare_template_named_assistant_keeps_its_part():
    tok = char_tokenizer()
    messages = [{"role": "user", "content": "Nurse!"}, {"role": "assistant", "content": "Anon!", "name": "Nurse"},
                {"role": "user", "content": "Come."}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "ROMEO:\nNurse!\n\nNURSE:\nAnon!\n\nROMEO:\nCome.\n\nNURSE:\n"
    custom = char_tokenizer(chat=False)
    custom.set_chat_template(shakespeare_chat_template(user="First Citizen", assistant="Menenius"))
    assert custom.apply_chat_template([{"role": "user", "content": "ab"}], add_generation_prompt=True,
                                      tokenize=False) == "FIRST CITIZEN:\nab\n\nMENENIUS:\n"
    with pytest.raises(ValueError, match="one-line name"):
        shakespeare_chat_template(user="O'Brien")


def test_apply_chat_template_tokenizes_like_encode():
    tok = char_tokenizer()
    text = tok.apply_chat_template(DIALOGUE[1:2], add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(DIALOGUE[1:2], add_generation_prompt=True) == tok.encode(text)
    arr = tok.apply_chat_template(DIALOGUE[1:2], add_generation_prompt=True, return_tensors="np")
    assert arr.dtype == np.int64 and arr.shape == (1, len(text))


def test_template_sees_bos_eos_and_extra_variables():
    bpe = bpe_tokenizer()
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}{{ greeting }}"
    text = bpe.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, chat_template=template,
                                   greeting="!")
    assert text == f"{EOT}hi{EOT}!"
    ids = bpe.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template, greeting="")
    assert ids[0] == ids[-1] == bpe.eos_token_id  # special tokens in the rendered text become their ids


def test_no_template_is_a_clear_error():
    tok = char_tokenizer(chat=False)
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="no chat template.*set_chat_template"):
        tok.apply_chat_template(DIALOGUE)


def test_bad_templates_and_messages_fail_early():
    tok = char_tokenizer(chat=False)
    with pytest.raises(ValueError, match="chat template, line 1"):
        tok.set_chat_template("{% for m in messages %}")
    assert tok.chat_template is None  # nothing attached by the failed call
    with pytest.raises(TypeError, match="stop_strings"):
        tok.set_chat_template("x", stop_strings="\n\n")
    with pytest.raises(TypeError, match="list of"):
        char_tokenizer().apply_chat_template("hello")
    with pytest.raises(TypeError, match="message 0"):
        char_tokenizer().apply_chat_template([{"content": "no role"}])


def test_template_runs_in_a_sandbox():
    """A template from a stranger's model directory cannot reach Python's internals."""
    from jinja2.exceptions import SecurityError

    tok = char_tokenizer(chat=False)
    escapes = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__name__ }}",
        "{% set ns = namespace(_x=1) %}",
        "{{ messages.append(1) }}",  # immutable: the caller's messages cannot be changed
    ]
    for template in escapes:
        with pytest.raises(SecurityError):
            tok.apply_chat_template(DIALOGUE, tokenize=False, chat_template=template)
    raising = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(Exception, match="roles must alternate"):
        tok.apply_chat_template(DIALOGUE, chat_template=raising)


@pytest.mark.parametrize("make", [lambda: char_tokenizer(chat=False), bpe_tokenizer])
def test_template_and_stop_strings_survive_save_and_load(tmp_path, make):
    tok = make()
    tok.set_chat_template(shakespeare_chat_template(), stop_strings=["\n\n"])
    tok.save_pretrained(tmp_path)
    for loaded in (AutoTokenizer.from_pretrained(tmp_path),
                   Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))):
        assert loaded.chat_template == tok.chat_template and loaded.chat_stop_strings == ("\n\n",)
        assert loaded.apply_chat_template(DIALOGUE[1:2], add_generation_prompt=True) == \
            tok.apply_chat_template(DIALOGUE[1:2], add_generation_prompt=True)
    plain = make()
    plain.save_pretrained(tmp_path / "plain")
    assert "chat_template" not in json.loads((tmp_path / "plain" / "tinyllm_tokenizer.json").read_text())
    assert AutoTokenizer.from_pretrained(tmp_path / "plain").chat_template is None


def test_transformers_renders_our_saved_template_the_same(tmp_path):
    """transformers loads the template tinyllm saved in tokenizer_config.json and renders it identically."""
    transformers = pytest.importorskip("transformers")
    bpe = bpe_tokenizer()
    template = ("{% for m in messages %}{{ bos_token + m['role'] + ': ' + m['content'] | trim }}\n"
                "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    bpe.set_chat_template(template)
    bpe.save_pretrained(tmp_path)
    hf = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
    for gen in (False, True):
        ours = bpe.apply_chat_template(DIALOGUE, add_generation_prompt=gen, tokenize=False)
        assert hf.apply_chat_template(DIALOGUE, add_generation_prompt=gen, tokenize=False) == ours
    shakespeare = shakespeare_chat_template()
    assert hf.apply_chat_template(DIALOGUE, add_generation_prompt=True, tokenize=False,
                                  chat_template=shakespeare) == \
        bpe.apply_chat_template(DIALOGUE, add_generation_prompt=True, tokenize=False, chat_template=shakespeare)


def test_reads_the_template_transformers_saved(tmp_path):
    """A Hugging Face directory whose template transformers wrote (chat_template.jinja or the config)."""
    transformers = pytest.importorskip("transformers")
    bpe = bpe_tokenizer()
    bpe.save_pretrained(tmp_path / "plain")
    hf = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "plain")
    hf.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tinyllm_tokenizer.json").unlink(missing_ok=True)  # read what transformers wrote
    ours = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert ours.chat_template == hf.chat_template
    assert ours.apply_chat_template(DIALOGUE, tokenize=False) == hf.apply_chat_template(DIALOGUE, tokenize=False)


def test_assistant_name_variable_cues_another_speaker():
    tok = char_tokenizer()
    text = tok.apply_chat_template(DIALOGUE[1:2], add_generation_prompt=True, tokenize=False, assistant_name="Nurse")
    assert text == "ROMEO:\nGood morrow.\n\nNURSE:\n"


def test_without_jinja2_templates_are_kept_and_rendering_names_the_install():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['jinja2'] = None\n"
            "from tinyllm.tokenizers import CharTokenizer, shakespeare_chat_template\n"
            "tok = CharTokenizer.from_text('ROMEO JULIET:\\nab')\n"
            "tok.set_chat_template(shakespeare_chat_template(), stop_strings=['\\n\\n'])\n"
            "assert tok.chat_template is not None\n"
            "try:\n"
            "    tok.apply_chat_template([{'role': 'user', 'content': 'ab'}])\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    assert 'pip install "tinyllm[serve]"' in r.stdout


def test_a_broken_template_in_a_file_does_not_stop_loading(tmp_path):
    tok = char_tokenizer(chat=False)
    tok.save_pretrained(tmp_path)
    path = tmp_path / "tinyllm_tokenizer.json"
    d = json.loads(path.read_text())
    d["chat_template"] = "{% for m in messages %}"  # never closed
    path.write_text(json.dumps(d))
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode("ab") == tok.encode("ab")  # completions still work
    with pytest.raises(ValueError, match="chat template, line 1"):
        loaded.apply_chat_template(DIALOGUE)
