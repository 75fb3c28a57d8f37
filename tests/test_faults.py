"""Fault injection on the real training script, each in a subprocess with a tiny model (issue 13):
kill -9 at random moments (also while a checkpoint is half written), a disk that fills up, two
trainers on one directory, NaN/inf mid-run, and inputs that must be refused with nothing saved lost.

The subprocesses run tests/fault_driver.py, which is examples/train_shakespeare.py plus an optional
fault (a slow disk, a poisoned weight); the kill, the file-size limit and the second trainer are
done from here, to the real process. Every run is on one thread (NUMBA_NUM_THREADS=1), so a 2-core
machine shared with other work times them steadily; that does not change any number.
"""
import csv
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinyllm.checkpoint import CHECKPOINT_NAME, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "fault_driver.py"
TEXT = "".join(f"{i % 5} a quick brown fox {'jumps' if i % 3 else 'leaps'} over the lazy dog.\n" for i in range(60))
DETERMINISTIC = ["iter", "loss", "lr", "grad_norm", "eval_train_loss", "eval_val_loss"]  # log.csv minus timings
TIMEOUT = 300

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL") or sys.platform == "win32",
                                reason="POSIX signals and resource limits")


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TINYLLM_TRACEBACK", None)
    return env


def train_args(data, out_dir, max_iters, *extra):
    return ["--data", str(data), "--out-dir", str(out_dir), "--max-iters", str(max_iters), "--eval-interval", "4",
            "--eval-iters", "2", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16",
            "--batch-size", "4", "--warmup-iters", "2", "--dropout", "0.1", "--sample-tokens", "0", "--no-progress",
            *extra]


def command(args, faults=()):
    return [sys.executable, str(DRIVER), *faults, "--", *args]


def run(args, faults=(), **kwargs):
    return subprocess.run(command(args, faults), env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
                          **kwargs)


def run_ok(args, faults=()):
    r = run(args, faults)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def log_rows(out_dir):
    with open(out_dir / "log.csv", newline="") as f:
        return [tuple(r[k] for k in DETERMINISTIC) for r in csv.DictReader(f)]


def assert_same_run(a, b):
    """Two output directories hold bit-identical runs: checkpoint (weights, moments, generator
    states), final model file, every deterministic log.csv entry and the final metrics."""
    meta_a, model_a, opt_a = load_checkpoint(a / CHECKPOINT_NAME)
    meta_b, model_b, opt_b = load_checkpoint(b / CHECKPOINT_NAME)
    assert meta_a["iter"] == meta_b["iter"] and meta_a["rng_states"] == meta_b["rng_states"]
    assert model_a.keys() == model_b.keys()
    for k in model_a:
        assert np.array_equal(model_a[k], model_b[k]), k
    for i, s in opt_a["state"].items():
        for k, v in s.items():
            assert np.array_equal(v, opt_b["state"][i][k]), (i, k)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert log_rows(a) == log_rows(b)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for k in ("iter", "train_loss", "val_loss", "val_perplexity", "val_loss_estimate"):
        assert ma[k] == mb[k], k


def snapshot(directory):
    """Every file's bytes, except the lock file (which holds the pid of whoever opened it last)."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.name != "train.lock"}


# ----------------------------------------------------------------------------------------------
# kill -9


def wait_for_line(proc, prefix, timeout=120):
    """Read the child's output until a line starts with ``prefix`` (False if it ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return False
        if line.startswith(prefix):
            return True
    return False


def wait_for_fresh_partial_write(proc, tmp_file, since_ns, timeout=240):
    """Wait until a new write of ``tmp_file`` has begun (modified after ``since_ns``, not empty)
    while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            st = tmp_file.stat()
            if st.st_mtime_ns > since_ns and st.st_size > 0:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return False


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_run_bit_for_bit(tmp_path, data):
    """Twelve SIGKILLs with the same command each time (--resume: the first start has no checkpoint
    yet): every third one while a checkpoint is half written, every third at a random moment of
    training, every third at a random moment from the start (imports, data, model, training). Then
    the same command once more, to the end: the run equals the one never interrupted, bit for bit."""
    # Enough work that twelve short runs cannot finish it on a fast, idle machine: a run killed at a
    # random moment gets through at most ~4 s / 0.3 s per checkpoint x 4 iters = 52 iters, 8 such runs < 400.
    max_iters = 400
    reference = tmp_path / "reference"
    run_ok(train_args(data, reference, max_iters))
    full_size = (reference / CHECKPOINT_NAME).stat().st_size

    out = tmp_path / "killed"
    args = train_args(data, out, max_iters, "--resume")
    chooser = random.Random(13)
    kills = mid_write = 0
    tmp_file = out / (CHECKPOINT_NAME + ".tmp")
    for attempt in range(12):
        since = tmp_file.stat().st_mtime_ns if tmp_file.exists() else 0
        proc = subprocess.Popen(command(args, ["--slow-write", "0.3"]), env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            if attempt % 3 == 0:
                if not wait_for_fresh_partial_write(proc, tmp_file, since):
                    proc.kill()
                    pytest.fail(f"attempt {attempt}: no checkpoint write began; the trainer said:\n"
                                f"{proc.stdout.read()[-3000:]}")
            elif attempt % 3 == 1:
                assert wait_for_line(proc, "iter "), "the trainer ended before training"  # first evaluation done
                time.sleep(chooser.uniform(0.2, 1.5))
            else:
                time.sleep(chooser.uniform(0.0, 4.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            if attempt % 3 == 0 and tmp_file.exists() and 0 < tmp_file.stat().st_size < full_size:
                mid_write += 1
        # whatever a kill leaves behind is a whole checkpoint of an evaluation step
        if (out / CHECKPOINT_NAME).exists():
            assert load_checkpoint(out / CHECKPOINT_NAME)[0]["iter"] % 4 == 0
    assert kills >= 10, f"only {kills} of 12 runs were still running when killed"
    assert mid_write >= 3, f"only {mid_write} kills landed inside a checkpoint write"
    assert load_checkpoint(out / CHECKPOINT_NAME)[0]["iter"] < max_iters  # the last run has work left

    run_ok(args)
    assert_same_run(reference, out)


def interruptible_trainer(args, faults=()):
    """The trainer as a terminal starts it: SIGINT (Ctrl-C) raises KeyboardInterrupt in it, even when
    this test process was started with SIGINT ignored (as a shell's background job is)."""
    return subprocess.Popen(command(args, faults), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_during_a_checkpoint_write_keeps_the_previous_one_and_resume_continues_bit_for_bit(tmp_path, data):
    max_iters = 40
    reference = tmp_path / "reference"
    run_ok(train_args(data, reference, max_iters))
    out = tmp_path / "out"
    args = train_args(data, out, max_iters, "--resume")
    proc = interruptible_trainer(args, ["--slow-write", "0.5"])
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / CHECKPOINT_NAME).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the first checkpoint (iter 4) is whole ...
        assert wait_for_fresh_partial_write(proc, out / (CHECKPOINT_NAME + ".tmp"), 0), "no second checkpoint write"
        proc.send_signal(signal.SIGINT)  # ... and the second one half written
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == ("interrupted: what --out-dir already holds is intact; continue with "
                                            "--resume (a fresh start if no checkpoint was saved yet)")
    assert "Traceback" not in err
    assert load_checkpoint(out / CHECKPOINT_NAME)[0]["iter"] == 4
    assert not (out / (CHECKPOINT_NAME + ".tmp")).exists()  # the half-written file is gone
    run_ok(args)
    assert_same_run(reference, out)


# ----------------------------------------------------------------------------------------------
# a full disk (a file-size limit: writing past it fails with EFBIG, as a full disk fails with ENOSPC)


def test_disk_full_while_saving_stops_clearly_and_keeps_the_previous_checkpoint(tmp_path, data):
    out = tmp_path / "run"
    run_ok(train_args(data, out, 8))
    ckpt = out / CHECKPOINT_NAME
    good = ckpt.read_bytes()
    limit = len(good) // 2  # the next checkpoint fails half way through

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = run(train_args(data, out, 16, "--resume"), preexec_fn=small_disk)
    assert r.returncode == 1, r.stderr[-3000:]
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in r.stderr
    assert "iter 12" in message and f"could not write the checkpoint {ckpt}" in message
    assert "File too large" in message and "previous checkpoint (iter 8) is intact" in message
    assert "--resume" in message
    assert ckpt.read_bytes() == good
    assert not (out / (CHECKPOINT_NAME + ".tmp")).exists()

    # with room again, the same command continues from iter 8 (exactness of resuming: the kill test)
    r = run_ok(train_args(data, out, 16, "--resume"))
    assert f"resumed from {ckpt} at iter 8" in r.stdout
    assert load_checkpoint(ckpt)[0]["iter"] == 16


# ----------------------------------------------------------------------------------------------
# two trainers, one directory


def test_a_second_trainer_on_the_same_out_dir_is_refused_naming_the_first(tmp_path, data):
    out = tmp_path / "run"
    first = subprocess.Popen(command(train_args(data, out, 400), ["--slow-write", "0.5"]), env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock, deadline = out / "train.lock", time.monotonic() + 120
        while not (lock.exists() and lock.read_text().split()[:1] == [str(first.pid)]):
            assert first.poll() is None and time.monotonic() < deadline, "the first trainer never took the lock"
            time.sleep(0.02)
        for flags in (("--resume",), ()):
            second = run(train_args(data, out, 8, *flags))
            assert second.returncode == 1, second.stderr[-3000:]
            message = second.stderr.strip().splitlines()[-1]
            assert message.startswith("error: ") and f"in use by process {first.pid}" in message, message
            assert lock.read_text().split()[0] == str(first.pid)  # the refused one wrote nothing
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    # the lock died with its process: the directory is usable at once
    run_ok(train_args(data, out, 8, "--overwrite"))
    assert load_checkpoint(out / CHECKPOINT_NAME)[0]["iter"] == 8


# ----------------------------------------------------------------------------------------------
# NaN / inf mid-run


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_or_inf_mid_run_stops_with_training_diverged_and_the_last_checkpoint_loads(tmp_path, data, value):
    out = tmp_path / "run"
    r = run(train_args(data, out, 16), ["--poison-after", "7", "--poison-value", value])
    assert r.returncode == 1, r.stderr[-3000:]
    message = r.stderr.strip().splitlines()[-1]
    ckpt = out / CHECKPOINT_NAME
    assert message.startswith("error: TrainingDiverged: training stopped at iter 7"), message
    assert f"the last good checkpoint, {ckpt} (iter 4), is untouched" in message and "--resume" in message
    meta, state, _ = load_checkpoint(ckpt)
    assert meta["iter"] == 4 and all(np.isfinite(v).all() for v in state.values())
    if value == "nan":  # and it resumes (without the poison) to the end
        r = run_ok(train_args(data, out, 16, "--resume"))
        assert f"resumed from {ckpt} at iter 4" in r.stdout
        assert load_checkpoint(ckpt)[0]["iter"] == 16


# ----------------------------------------------------------------------------------------------
# inputs that must be refused, with nothing already saved touched


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    data = root / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    run_ok(train_args(data, root / "run", 8))
    return root / "run"


def _bad_data(tmp_path, kind):
    path = tmp_path / f"{kind}.txt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "short":
        path.write_text(TEXT[:40], encoding="utf-8")  # 36 train + 4 val ids: not one block of 16 each
    elif kind == "latin1":
        path.write_bytes(TEXT[:500].encode() + "café".encode("latin-1") + TEXT[:500].encode())
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind, expected", [
    ("empty", "is empty"),
    ("short", "too short to train on"),
    ("latin1", "is not UTF-8: invalid byte(s) b'\\xe9' at byte offset 503"),
    ("directory", "is a directory"),
])
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_bad_training_data_is_a_clear_error_and_touches_no_saved_run(tmp_path, finished_run, kind, expected, flag):
    before = snapshot(finished_run)
    bad = _bad_data(tmp_path, kind)
    r = run(train_args(bad, finished_run, 16, flag))
    assert r.returncode == 1
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert str(bad) in message and expected in message, message
    assert snapshot(finished_run) == before


def _copy_model(src, dst):
    dst.mkdir()
    for name in ("config.json", "model.safetensors", "tinyllm_tokenizer.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def sample(model_dir):
    return subprocess.run([sys.executable, str(ROOT / "examples" / "sample.py"), "--model-dir", str(model_dir),
                           "--max-new-tokens", "5"], env=child_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.mark.parametrize("mangle, expected", [
    (lambda s: s.replace('"chars"', '"charz"'), "is not a valid CharTokenizer: lacks the field 'chars'"),
    (lambda s: s[: len(s) // 2], "is not valid JSON"),
    (lambda s: s.replace('"CharTokenizer"', '"Nonsense"'), "not a tinyllm tokenizer"),
    (lambda s: s.replace('"format_version": 1', '"format_version": "one"'), "format_version 'one'"),
])
def test_a_hand_mangled_tokenizer_file_is_a_clear_error(tmp_path, finished_run, mangle, expected):
    model_dir = _copy_model(finished_run, tmp_path / "model")
    tok = model_dir / "tinyllm_tokenizer.json"
    tok.write_text(mangle(tok.read_text(encoding="utf-8")), encoding="utf-8")
    before = snapshot(model_dir)
    r = sample(model_dir)
    assert r.returncode == 1
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert str(tok) in message and expected in message, message
    assert snapshot(model_dir) == before


@pytest.mark.parametrize("field", ["vocab_size", "n_embd", "block_size"])
def test_a_config_json_with_a_negative_size_is_a_clear_error(tmp_path, finished_run, field):
    model_dir = _copy_model(finished_run, tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    config[field] = -3
    (model_dir / "config.json").write_text(json.dumps(config))
    before = snapshot(model_dir)
    r = sample(model_dir)
    assert r.returncode == 1
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert str(model_dir / "config.json") in message and f"{field} must be a positive integer, got -3" in message
    assert snapshot(model_dir) == before
