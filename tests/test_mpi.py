"""Data-parallel training under a real ``mpiexec -n 2`` on this machine: two ranks follow one
process step for step, resume continues exactly, rank 0 alone writes, and a rank that raises, is
killed, hangs or diverges ends the whole job within seconds with the last checkpoint intact.

Skipped without mpi4py and an mpiexec (``pip install "tinyllm[mpi]"``); CI installs them (they are
in the oracle extra) and fails if these tests skip (tests/conftest.py counts mpi4py as an oracle).
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from tinyllm.checkpoint import CHECKPOINT_NAME, LOCK_NAME, load_checkpoint, read_checkpoint_meta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_shakespeare.py"
DRIVER = ROOT / "tests" / "mpi_driver.py"
SCENARIOS = ROOT / "tests" / "mpi_scenarios.py"
TEXT = "".join(f"{i % 9} now is the winter of our {'discontent' if i % 4 else 'content'} made glorious summer.\n"
               for i in range(400))


def find_mpiexec():
    """The mpiexec next to this Python (the mpich wheel's, matching mpi4py's MPI), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    from shutil import which

    return which("mpiexec")


MPIEXEC = find_mpiexec()
if MPIEXEC is None:
    pytest.skip("mpiexec not found: pip install mpi4py mpich (the mpich wheel ships it)", allow_module_level=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi-data") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def environment(**extra):
    unset = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "TINYLLM_TRACEBACK")  # each rank picks its threads
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), HF_HUB_OFFLINE="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def example_args(corpus, out_dir, max_iters=100, *more):
    return ["--data", str(corpus), "--out-dir", str(out_dir), "--max-iters", str(max_iters), "--batch-size", "12",
            "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--eval-interval", "25",
            "--eval-iters", "4", "--sample-tokens", "16", "--no-progress", "--seed", "7", *map(str, more)]


def run_one(args, script=EXAMPLE, timeout=300, **env):
    # one thread, as each of the two ranks gets on a 2-core machine (and fast on a busy one)
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=environment(NUMBA_NUM_THREADS=1, **env),
                          capture_output=True, text=True, timeout=timeout)


def run_mpi(args, script=EXAMPLE, n=2, timeout=300, **env):
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(script), *map(str, args)], env=environment(**env),
                          capture_output=True, text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    return proc


def log_rows(out_dir):
    with open(Path(out_dir) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def step_losses(out_dir):
    return np.array([float(r["loss"]) for r in log_rows(out_dir) if r["loss"]])


def eval_losses(out_dir):
    return np.array([[float(r["eval_train_loss"]), float(r["eval_val_loss"])] for r in log_rows(out_dir)
                     if r["eval_val_loss"]])


def rank_pids(text):
    """{rank: pid} from the run's first line, ``... rank 0 = pid 123 on host, rank 1 = pid 124 on host``."""
    return {int(r): int(p) for r, p in re.findall(r"rank (\d+) = pid (\d+)", text)}


# ----------------------------------------------------------------------------------------------
# the same run


def test_two_ranks_follow_one_process_for_100_steps_and_rank_0_alone_writes(corpus, tmp_path):
    ok(run_one(example_args(corpus, tmp_path / "one")))
    two = ok(run_mpi(example_args(corpus, tmp_path / "two")))

    losses_one, losses_two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert len(losses_one) == len(losses_two) == 100 and np.isfinite(losses_two).all()
    assert losses_one[-1] < 0.7 * losses_one[0]  # it learned: the comparison is not of noise
    np.testing.assert_allclose(losses_two, losses_one, rtol=0, atol=1e-5)
    np.testing.assert_allclose(eval_losses(tmp_path / "two"), eval_losses(tmp_path / "one"), rtol=0, atol=1e-5)
    m_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m_two["val_loss"] == pytest.approx(m_one["val_loss"], abs=1e-5)  # the whole split, shared out
    assert (m_two["world_size"], m_two["iter"]) == (2, 100) and "world_size" not in m_one

    # one copy of everything: rank 0 prints, logs (one row per step) and holds the lock
    assert two.stdout.count("iter 0: train loss") == 1 and two.stdout.count("--- sample ---") == 5
    assert two.stdout.count("tokens (vocab") == 1  # the script's own print: the other rank is silenced
    pids = rank_pids(two.stdout)
    assert sorted(pids) == [0, 1]
    assert (tmp_path / "two" / LOCK_NAME).read_text().split()[0] == str(pids[0])
    assert f"{max(1, len(os.sched_getaffinity(0)) // 2)} thread(s) each" in two.stdout  # the cores, shared


def test_two_ranks_follow_one_process_on_padded_pairs_with_label_smoothing(tmp_path):
    """An encoder-decoder whose rows carry 2 to 10 target tokens: each rank's gradient is weighted by
    its share of the tokens; the task's own final evaluation runs on rank 0 and reaches every rank."""
    one = ok(run_one([str(tmp_path / "one")], script=SCENARIOS))
    two = ok(run_mpi([str(tmp_path / "two")], script=SCENARIOS))
    r_one = json.loads(one.stdout.split("RESULT ", 1)[1])
    r_two = json.loads(two.stdout.split("RESULT ", 1)[1])
    assert two.stdout.count("RESULT ") == 1 and r_two["world_size"] == 2
    np.testing.assert_allclose(r_two["losses"], r_one["losses"], rtol=0, atol=1e-5)
    assert r_two["val_loss"] == pytest.approx(r_one["val_loss"], abs=1e-5)
    assert r_two["final"]["loss"] == pytest.approx(r_one["final"]["loss"], abs=1e-5)


def test_resume_under_mpi_continues_exactly_even_across_a_change_of_ranks(corpus, tmp_path):
    # dropout on: each rank's dropout stream must be saved and restored too
    common = ("--eval-interval", 10, "--lr-decay-iters", 40)  # stopped at 15: off the evaluation grid
    ok(run_mpi(example_args(corpus, tmp_path / "straight", 40, *common, "--dropout", 0.1)))
    ok(run_mpi(example_args(corpus, tmp_path / "split", 15, *common, "--dropout", 0.1)))
    resumed = ok(run_mpi(example_args(corpus, tmp_path / "split", 40, *common, "--dropout", 0.1, "--resume")))
    assert resumed.stdout.count("resumed from") == 1
    timeless = [[r[k] for k in ("iter", "loss", "lr", "grad_norm", "eval_train_loss", "eval_val_loss")]
                for r in log_rows(tmp_path / "straight")]
    assert [[r[k] for k in ("iter", "loss", "lr", "grad_norm", "eval_train_loss", "eval_val_loss")]
            for r in log_rows(tmp_path / "split")] == timeless  # bit for bit

    # a one-process checkpoint, continued by two ranks (no dropout: the same run to rounding)
    ok(run_one(example_args(corpus, tmp_path / "one", 40, *common)))
    ok(run_one(example_args(corpus, tmp_path / "mixed", 20, *common)))
    ok(run_mpi(example_args(corpus, tmp_path / "mixed", 40, *common, "--resume")))
    np.testing.assert_allclose(step_losses(tmp_path / "mixed"), step_losses(tmp_path / "one"), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# faults: never a hang, always a message, the checkpoint intact


def assert_checkpoint_intact(out_dir, every=25):
    meta, _, _ = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    assert meta["iter"] > 0 and meta["iter"] % every == 0
    return meta["iter"]


def test_a_rank_that_raises_ends_the_job_at_once_naming_it(corpus, tmp_path):
    proc = run_mpi(["--fault", "raise", "--rank", 1, "--at-step", 40, "--",
                    *example_args(corpus, tmp_path / "run", 1000)], script=DRIVER, timeout=120)  # a hang times out
    assert proc.returncode != 0
    assert "error: rank 1 of 2" in proc.stderr and "RuntimeError: injected fault on rank 1" in proc.stderr
    assert "iter 25), is intact: continue with --resume" in proc.stderr
    # at once: rank 0 took no step past the failed one (it would log up to iter 1000 otherwise)
    assert max(int(r["iter"]) for r in log_rows(tmp_path / "run")) <= 40
    assert assert_checkpoint_intact(tmp_path / "run") == 25


def test_a_rank_that_exits_ends_the_job_naming_it(corpus, tmp_path):
    proc = run_mpi(["--fault", "exit", "--rank", 1, "--at-step", 10, "--",
                    *example_args(corpus, tmp_path / "run", 1000)], script=DRIVER, timeout=120)
    assert proc.returncode != 0 and "error: rank 1 of 2" in proc.stderr and "exited with 3" in proc.stderr


def test_a_killed_rank_ends_the_job_within_seconds_and_the_checkpoint_resumes(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(DRIVER), "--slow-steps", "0.05", "--",
           *example_args(corpus, out, 400)]
    proc = subprocess.Popen(cmd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = ""
        while not rank_pids(output):
            line = proc.stdout.readline()
            assert line, f"the job ended before it started training:\n{output}"
            output += line
        pids = rank_pids(output)
        deadline = time.monotonic() + 120
        while not ((out / CHECKPOINT_NAME).exists() and read_checkpoint_meta(out / CHECKPOINT_NAME)["iter"] >= 25):
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint was written"
            time.sleep(0.05)
        time.sleep(0.3)  # mid-interval
        killed_at = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output += rest
    assert proc.returncode != 0
    assert took < 10, f"the job took {took:.1f} s to end after rank 1 was killed"
    # mpiexec names the dead process by its pid; the run's first line maps that pid to rank 1
    assert f"PID {pids[1]}" in output and f"rank 1 = pid {pids[1]}" in output
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # rank 0 did not outlive the job
    it = assert_checkpoint_intact(out)
    resumed = ok(run_mpi(example_args(corpus, out, it + 10, "--resume")))
    assert f"resumed from {out / CHECKPOINT_NAME} at iter {it}" in resumed.stdout
    assert int(log_rows(out)[-1]["iter"]) == it + 10


def test_a_hung_rank_is_named_after_the_timeout_and_the_job_ends(corpus, tmp_path):
    # (TINYLLM_MPI_TIMEOUT=2: the hang is named after 2 s, as the message says; a job that hung for
    # good would run into run_mpi's timeout)
    proc = run_mpi(["--fault", "hang", "--rank", 1, "--at-step", 30, "--",
                    *example_args(corpus, tmp_path / "run", 1000)], script=DRIVER, timeout=120, TINYLLM_MPI_TIMEOUT=2)
    assert proc.returncode != 0
    assert "error: rank 0 of 2" in proc.stderr
    assert "no word from rank 1 for 2 s at the gradient all-reduce" in proc.stderr
    assert_checkpoint_intact(tmp_path / "run")


def test_nan_on_one_rank_stops_every_rank_together_with_one_message(corpus, tmp_path):
    proc = run_mpi(["--fault", "poison", "--rank", 1, "--at-step", 40, "--",
                    *example_args(corpus, tmp_path / "run", 1000)], script=DRIVER, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("TrainingDiverged") == 1 and "iter 39: the loss is nan" in proc.stderr
    assert "MPI_Abort" not in proc.stderr  # every rank stopped at the same step: a clean exit, no abort
    assert assert_checkpoint_intact(tmp_path / "run") == 25


def test_a_refused_out_dir_is_one_message_and_a_clean_exit(corpus, tmp_path):
    ok(run_mpi(example_args(corpus, tmp_path / "run", 5)))
    proc = run_mpi(example_args(corpus, tmp_path / "run", 5))
    assert proc.returncode == 1
    assert proc.stderr.count("error:") == 1 and "already holds a training run" in proc.stderr
    assert "MPI_Abort" not in proc.stderr


def test_the_translation_example_under_mpi_writes_once_and_prints_once(tmp_path):
    """Every example runs under mpiexec, not only train_shakespeare.py: the translation example (its
    own test-set BLEU after training, its own prints) follows one process, and rank 0 alone prints
    and writes."""
    script = ROOT / "examples" / "train_translation.py"
    args = ["--max-iters", "12", "--n-train", "600", "--n-val", "40", "--n-test", "30", "--batch-size", "16",
            "--eval-interval", "6", "--eval-iters", "2", "--d-model", "32", "--n-head", "2", "--d-ff", "64",
            "--vocab-size", "300", "--no-progress"]
    one = ok(run_one([*args, "--out-dir", tmp_path / "one"], script=script))
    two = ok(run_mpi([*args, "--out-dir", tmp_path / "two"], script=script))
    assert two.stdout.count(" s in all; translate with") == 1, two.stdout
    assert one.stdout.count(" s in all; translate with") == 1
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["world_size"] == 2 and "world_size" not in m1
    np.testing.assert_allclose(step_losses(tmp_path / "two"), step_losses(tmp_path / "one"), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
