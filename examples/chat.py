"""Hold a dialogue with a model that has a chat template, e.g. the Shakespeare model, in the play's form.

    python examples/chat.py --model-dir out-shakespeare                   # the model in this process
    python examples/chat.py --model-dir out-shakespeare --user-name Hamlet --assistant-name Ophelia
    python examples/chat.py --server http://127.0.0.1:8000/v1             # through `tinyllm serve`

Each line you type is a message; the model answers as the assistant's speaker until its speech
ends (a blank line). The conversation is rendered by the tokenizer's chat template
(``tokenizer.apply_chat_template``); when it outgrows the model's context, the oldest speeches are
dropped. Ctrl-D, Ctrl-C or an empty line ends the scene.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from tinyllm import AutoModelForCausalLM, AutoTokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model-dir", type=Path, default=Path("out-shakespeare"),
                       help="a model directory whose tokenizer has a chat template (train_shakespeare.py writes one)")
    where.add_argument("--server", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="unused", help="the server's key (tinyllm serve --api-key)")
    p.add_argument("--model", default=None, help="model name at the server (default: the one it serves)")
    p.add_argument("--user-name", default=None, help="your speaker's name (default: the template's, ROMEO)")
    p.add_argument("--assistant-name", default=None, help="the model's speaker (default: the template's, JULIET)")
    p.add_argument("--max-tokens", type=int, default=None, help="longest answer (default: half the context)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=1337, help="each answer uses seed + its turn number")
    return p.parse_args(argv)


class LocalChat:
    """The model in this process: the chat template, ``model.generate``, and the turn's end."""

    def __init__(self, args):
        if not (args.model_dir / "config.json").is_file():
            sys.exit(f"error: {args.model_dir} holds no model; train one with examples/train_shakespeare.py")
        self.model = AutoModelForCausalLM.from_pretrained(args.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        if self.tokenizer.chat_template is None:
            sys.exit(f"error: the tokenizer in {args.model_dir} has no chat template; retrain with the current "
                     "examples/train_shakespeare.py, or attach one: tok.set_chat_template("
                     "shakespeare_chat_template(), stop_strings=['\\n\\n']); tok.save_pretrained(dir)")
        self.context = self.model.config.block_size
        self.args = args

    def reply(self, messages, max_tokens, seed):
        template_vars = {"assistant_name": self.args.assistant_name} if self.args.assistant_name else {}
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_vars)
        while len(ids) + max_tokens > self.context and len(messages) > 1:
            messages = messages[1:]  # the oldest speech leaves the stage
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_vars)
        ids = ids[-(self.context - max_tokens):]  # one speech longer than the context: keep its end
        out = self.model.generate(np.asarray([ids]), max_new_tokens=max_tokens, do_sample=self.args.temperature > 0,
                                  temperature=self.args.temperature, top_p=self.args.top_p, seed=seed,
                                  eos_token_id=self.tokenizer.eos_token_id)
        new = [int(t) for t in out[0, len(ids):] if t != self.tokenizer.eos_token_id]
        text = self.tokenizer.decode(new)
        for stop in self.tokenizer.chat_stop_strings:  # the speech ends at the first blank line
            text = text.split(stop)[0]
        return text

    def cue(self):
        name = self.args.assistant_name or _last_speaker(self.tokenizer)
        return f"{name.upper()}:" if name else ""


def _last_speaker(tokenizer):
    cue = tokenizer.apply_chat_template([], add_generation_prompt=True, tokenize=False).strip()
    return cue[:-1] if cue.endswith(":") else None


class ServerChat:
    """The same dialogue through the OpenAI API (streamed as the server writes it)."""

    def __init__(self, args):
        try:
            import openai
            from openai import OpenAI
        except ImportError:
            sys.exit("error: --server needs the openai client: pip install openai")
        self.client = OpenAI(base_url=args.server, api_key=args.api_key)
        try:
            card = self.client.models.list().data[0]
        except openai.APIConnectionError as e:
            raise ConnectionError(f"cannot reach a server at {args.server} ({e}); start one with "
                                  "`tinyllm serve --model-dir DIR`, or check --server") from None
        self.model = args.model or card.id
        self.context = (card.model_extra or {}).get("max_model_len", 1024)
        self.args = args

    def reply(self, messages, max_tokens, seed):
        import openai

        extra = {"chat_template_kwargs": {"assistant_name": self.args.assistant_name}} if self.args.assistant_name \
            else None
        while True:
            try:
                stream = self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=self.args.temperature,
                    top_p=self.args.top_p, seed=seed, stream=True, extra_body=extra)
                break
            except openai.BadRequestError as e:
                if (e.body or {}).get("code") != "context_length_exceeded" or max_tokens is None:
                    raise
                if len(messages) > 1:
                    messages = messages[1:]  # the oldest speech leaves the stage
                else:
                    max_tokens = None  # one long speech: answer in whatever room the context leaves
        parts = []
        for chunk in stream:
            piece = chunk.choices[0].delta.content or "" if chunk.choices else ""
            print(piece, end="", flush=True)
            parts.append(piece)
        print()
        return "".join(parts)

    def cue(self):
        return (self.args.assistant_name or "").upper() + ":" if self.args.assistant_name else ""


def main(argv=None):
    args = parse_args(argv)
    try:
        converse(args)
    except _user_errors() as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # Ctrl-C ends the scene too, as Ctrl-D does (no traceback)
        print()


def _user_errors():
    """What ends the scene with ``error: ...`` rather than a traceback: a bad option or model
    directory, a line the tokenizer cannot encode, and the server's refusals."""
    errors = (ValueError, OSError)
    if "openai" in sys.modules:  # (imported only by --server)
        errors += (sys.modules["openai"].OpenAIError,)
    return errors


def converse(args):
    chat = ServerChat(args) if args.server else LocalChat(args)
    max_tokens = max(chat.context // 2, 1) if args.max_tokens is None else args.max_tokens
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {max_tokens}")
    if isinstance(chat, LocalChat) and max_tokens >= chat.context:
        raise ValueError(f"--max-tokens {max_tokens} leaves no room for the conversation in the model's context "
                         f"of {chat.context} tokens; pass at most {chat.context - 1}")
    you = (args.user_name or "you").upper()
    messages = []
    interactive = sys.stdin.isatty()
    for turn in range(10**9):
        try:
            line = input(f"{you}: " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            break
        message = {"role": "user", "content": line}
        if args.user_name:
            message["name"] = args.user_name
        messages.append(message)
        if chat.cue():
            print(chat.cue())
        text = chat.reply(messages, max_tokens, args.seed + turn)
        if isinstance(chat, LocalChat):
            print(text)
        print()
        answer = {"role": "assistant", "content": text}
        if args.assistant_name:
            answer["name"] = args.assistant_name
        messages.append(answer)


if __name__ == "__main__":
    main()
