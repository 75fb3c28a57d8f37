"""``python -m tinyllm.serve --model-dir DIR ...``"""
from .cli import serve_main

if __name__ == "__main__":
    serve_main(prog="python -m tinyllm.serve")
