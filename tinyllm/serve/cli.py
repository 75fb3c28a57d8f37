"""The command: ``tinyllm serve --model-dir DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]``.

It binds the loopback address by default, so only this machine can reach the model. Binding any
other address without an API key is refused: the server would answer anyone on the network.
Prefer ``TINYLLM_API_KEY=...`` to ``--api-key`` (a command line is visible to every user in ``ps``).
"""
import argparse
import ipaddress
import os
import sys
from pathlib import Path

__all__ = ["main", "serve_main", "is_loopback", "check_bind"]

EXTRA_HINT = 'pip install "tinyllm[serve]"'


def build_parser(prog):
    p = argparse.ArgumentParser(prog=prog, description="Serve a tinyllm model over OpenAI's API.",
                                epilog="Example: tinyllm serve --model-dir out-shakespeare, then "
                                       "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='unused').")
    p.add_argument("--model-dir", type=Path, required=True,
                   help="a directory written by save_pretrained (model + tokenizer), or a GPT-2 directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every request (default: $TINYLLM_API_KEY)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the directory's name)")
    p.add_argument("--max-active", type=int, default=16, help="sequences generated in turn at once")
    p.add_argument("--max-waiting", type=int, default=256, help="sequences queued before answering 503")
    p.add_argument("--num-threads", type=int, default=None,
                   help="threads for the model's kernels (default: tinyllm's; 1 decodes faster on a busy machine, "
                        "but the tokens then match model.generate run with 1 thread)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything, so it is not assumed local
        return False


def check_bind(host, api_key):
    """None if binding ``host`` is safe, else the message that refuses it."""
    if api_key or is_loopback(host):
        return None
    return (f"error: refusing to bind {host} without an API key: anyone who can reach this machine could use "
            "the model. Set TINYLLM_API_KEY (or pass --api-key), or bind 127.0.0.1 (the default).")


def serve_main(argv=None, prog="tinyllm serve"):
    args = build_parser(prog).parse_args(argv)
    api_key = args.api_key or os.environ.get("TINYLLM_API_KEY") or None
    refusal = check_bind(args.host, api_key)
    if refusal:
        sys.exit(refusal)
    if not 0 <= args.port <= 65535:
        sys.exit(f"error: --port must be in 0..65535, got {args.port}")
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        sys.exit(f"error: the server needs the serve extra ({e}): {EXTRA_HINT}")
    from .backend import load_backend

    try:
        backend, tokenizer = load_backend(args.model_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    name = args.model_name or args.model_dir.resolve().name
    try:
        app = create_app(backend, tokenizer, name, api_key=api_key, max_active=args.max_active,
                         max_waiting=args.max_waiting, num_threads=args.num_threads)
    except ValueError as e:  # --max-active 0, --num-threads beyond numba's pool: the message names the value
        sys.exit(f"error: {e}")
    chat = "with" if tokenizer.chat_template is not None else "without"
    if backend.is_encoder_decoder:
        what = (f"an encoder-decoder {chat} a chat template, sources up to {backend.context_length} tokens, "
                f"completions up to {backend.max_target_length}")
    else:
        what = f"{chat} a chat template, context {backend.context_length} tokens"
    print(f"tinyllm: serving {name!r} ({what}) at "
          f"http://{args.host}:{args.port}/v1{' (API key required)' if api_key else ''}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def main(argv=None):
    """The ``tinyllm`` console script: ``tinyllm serve ...`` (the one command so far)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "serve":
        if argv and argv[0] not in ("-h", "--help"):
            print(f"tinyllm: unknown command {argv[0]!r}", file=sys.stderr)
        print("usage: tinyllm serve --model-dir DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] "
              "[--model-name NAME]\n\ncommands:\n  serve   serve a model over OpenAI's API (tinyllm serve -h)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    serve_main(argv[1:], prog="tinyllm serve")
