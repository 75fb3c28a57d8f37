"""Data parallelism without MPI: how a batch is shared out, gradient accumulation (the same code
path as the ranks' shares, in one process), the one-process world, and the clear error when
mpiexec starts a script but mpi4py is missing. tests/test_mpi.py runs the real ``mpiexec -n 2``.
"""
import argparse
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyllm import CharTokenizer, distributed, training
from tinyllm.models import GPT, GPTConfig
from tinyllm.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"{i % 5} a rose by any other name {'would' if i % 3 else 'could'} smell as sweet.\n" for i in range(90))


def load_scenarios():
    spec = importlib.util.spec_from_file_location("mpi_scenarios", ROOT / "tests" / "mpi_scenarios.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quiet(_msg):
    pass


# ----------------------------------------------------------------------------------------------
# sharing out a batch


@pytest.mark.parametrize("n, parts", [(12, 2), (12, 5), (7, 3), (1, 1), (3, 3), (2, 4), (100, 7)])
def test_split_rows_is_array_split_as_contiguous_ranges(n, parts):
    ranges = distributed.split_rows(n, parts)
    expected = [(int(a[0]), int(a[-1]) + 1) if a.size else None for a in np.array_split(np.arange(n), parts)]
    assert len(ranges) == parts
    assert [r if r[0] < r[1] else None for r in ranges] == expected
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order, no gaps


def test_micro_batches_cover_each_ranks_share_in_order(tmp_path):
    world = distributed.World()
    trainer = make_gpt_trainer(tmp_path, max_iters=1, batch_size=12, grad_accum_steps=5)
    assert trainer._micro_batches(12) == [(0, 3), (3, 6), (6, 8), (8, 10), (10, 12)]
    for rank, expected in ((0, [(0, 3), (3, 6)]), (1, [(6, 9), (9, 12)])):
        world.rank, world.size = rank, 2  # what rank `rank` of two would take
        trainer.world, trainer.cfg.grad_accum_steps = world, 2
        assert trainer._micro_batches(12) == expected


def test_launched_size_reads_the_launchers_variables():
    assert distributed.launched_size({}) == 1
    assert distributed.launched_size({"PMI_SIZE": "1"}) == 1
    assert distributed.launched_size({"PMI_SIZE": "4"}) == 4
    assert distributed.launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert distributed.launched_size({"PMI_SIZE": "garbage"}) == 1


# ----------------------------------------------------------------------------------------------
# one process: everything as before, no MPI


def test_the_one_process_world_changes_nothing():
    world = distributed.World()
    assert (world.rank, world.size, world.is_main) == (0, 1, True)
    assert world.reduce_gradients([], 1.25) == 1.25
    assert world.sum([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert world.broadcast_json({"a": [1]}) == {"a": [1]}
    assert world.allgather_json(7) == [7]
    assert world.on_main(lambda: 42, "a test") == 42
    array = np.arange(3.0)
    assert world.broadcast(array) is array and array.tolist() == [0.0, 1.0, 2.0]


def test_a_plain_run_uses_the_one_process_world_and_never_imports_mpi4py():
    code = ("import sys, tinyllm, tinyllm.training, tinyllm.cli, tinyllm.distributed as d\n"
            "w = d.get_world()\n"
            "assert (w.size, w.comm) == (1, None), w\n"
            "assert 'mpi4py' not in sys.modules\n"
            "print('ok')\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_started_by_mpiexec_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    monkeypatch.setattr(distributed, "_WORLD", None)
    with pytest.raises(ImportError, match=r'pip install "tinyllm\[mpi\]"'):
        distributed.get_world()


def test_a_bad_timeout_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="TINYLLM_MPI_TIMEOUT='soon'"):
        distributed.World()


# ----------------------------------------------------------------------------------------------
# gradient accumulation: a step cut into micro-batches is the same step


def make_gpt_trainer(out_dir, max_iters, **cfg):
    tok = CharTokenizer.from_text(TEXT)
    ids = np.asarray(tok.encode(TEXT), dtype=np.int64)
    n = int(0.9 * len(ids))
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=0)
    settings = dict(out_dir=str(out_dir), max_iters=max_iters, batch_size=12, learning_rate=1e-2, min_lr=1e-3,
                    warmup_iters=5, eval_interval=50, eval_iters=2, sample_tokens=0, progress=False, seed=0)
    settings.update(cfg)
    return Trainer(model, ids[:n], ids[n:], TrainConfig(**settings), tok)


def test_grad_accum_steps_follow_the_one_batch_run_for_100_steps(tmp_path):
    runs = {}
    for accum in (1, 5):  # 5: micro-batches of 3, 3, 2, 2, 2 rows (uneven)
        trainer = make_gpt_trainer(tmp_path / f"accum{accum}", 100, grad_accum_steps=accum)
        trainer.train(log=quiet)
        runs[accum] = np.array([loss for _, loss in trainer.history])
        assert len(runs[accum]) == 100 and np.isfinite(runs[accum]).all()
    assert runs[1][-1] < 0.7 * runs[1][0]  # it learned something: the comparison is not of noise
    np.testing.assert_allclose(runs[5], runs[1], rtol=0, atol=1e-5)


def test_grad_accum_weighs_micro_batches_by_target_tokens_not_rows(tmp_path, monkeypatch):
    """Padded pairs: rows carry 2 to 10 target tokens. Weighing each micro-batch by its share of
    tokens gives the one-batch run; weighing by rows (the tempting mistake) does not."""
    scenarios = load_scenarios()
    one = scenarios.run(tmp_path / "one", accum=1, steps=20)
    accumulated = scenarios.run(tmp_path / "accum", accum=4, steps=20)
    np.testing.assert_allclose(accumulated["losses"], one["losses"], rtol=0, atol=1e-5)
    assert accumulated["final"] == pytest.approx(one["final"], abs=1e-5)

    monkeypatch.setattr(training, "_count_targets", lambda targets: len(targets))  # weigh by rows instead
    by_rows = scenarios.run(tmp_path / "rows", accum=4, steps=20)
    assert np.max(np.abs(np.array(by_rows["losses"]) - one["losses"])) > 1e-3


def test_grad_accum_steps_are_checked(tmp_path):
    with pytest.raises(ValueError, match="grad_accum_steps must be a positive integer, got 0"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match="grad_accum_steps 13 exceeds batch_size 12"):
        TrainConfig(batch_size=12, grad_accum_steps=13)
    world = distributed.World()
    world.size = 4  # as if four ranks: 12 rows are 3 per rank, too few for 4 micro-batches
    tok = CharTokenizer.from_text(TEXT)
    ids = np.asarray(tok.encode(TEXT), dtype=np.int64)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)
    with pytest.raises(ValueError, match="batch_size 12 cannot be shared by 4 rank.* x 4 micro-batch.*at least 16"):
        Trainer(model, ids, ids, TrainConfig(out_dir=str(tmp_path), batch_size=12, grad_accum_steps=4), world=world)


def test_the_grad_accum_flag_reaches_the_train_config():
    from tinyllm import cli

    parser = argparse.ArgumentParser()
    cli.add_training_args(parser)
    args = parser.parse_args(["--grad-accum-steps", "4"])
    assert cli.train_config_from_args(args).grad_accum_steps == 4
    assert cli.train_config_from_args(parser.parse_args([])).grad_accum_steps == 1


def test_a_batch_whose_targets_are_all_ignored_is_a_clear_error(tmp_path):
    trainer = make_gpt_trainer(tmp_path, 5)
    trainer.get_batch = lambda data, batch_size, rng: ((np.zeros((batch_size, 4), np.int64),),
                                                       np.full((batch_size, 4), -100))
    with pytest.raises(ValueError, match="no target to learn from"):
        trainer.train_step()
    assert math.isfinite(trainer.params[0].data.sum())
