"""CI fails when an oracle test was skipped (tests/conftest.py's hook), and a user's run does not.

A small suite in a temporary directory, with this repository's conftest.py, imports one oracle
inside a test and another at module level, each made unimportable the way a missing package is.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUITE = {
    "test_inside.py": (
        "import sys\nimport pytest\n\n"
        "def test_compares_with_torch():\n"
        "    sys.modules['torch'] = None  # as if torch were not installed\n"
        "    pytest.importorskip('torch')\n\n"
        "def test_plain():\n    assert 1 + 1 == 2\n\n"
        "def test_unrelated_skip():\n    pytest.skip('needs a GPU')\n"
    ),
    "test_module_level.py": (
        "import sys\nimport pytest\n\n"
        "sys.modules['tiktoken'] = None\n"
        "tiktoken = pytest.importorskip('tiktoken')\n\n"
        "def test_never_collected():\n    pass\n"
    ),
}


def run_suite(tmp_path, ci):
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_oracle_skips_fail_the_session_in_ci_only(tmp_path):
    user = run_suite(tmp_path, ci=False)
    assert user.returncode == 0, user.stdout + user.stderr
    assert "skipped" in user.stdout

    ci = run_suite(tmp_path, ci=True)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "CI: 2 oracle test(s) skipped" in ci.stderr and '.[dev,oracle]' in ci.stderr
    assert "test_inside.py::test_compares_with_torch: could not import 'torch'" in ci.stderr
    assert "test_module_level.py: could not import 'tiktoken'" in ci.stderr
    assert "needs a GPU" not in ci.stderr  # other skips are not the oracle gate's business
