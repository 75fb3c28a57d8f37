"""tinyllm.kernels.embedding: the numba scatter-add against np.add.at."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import run_with_jit_disabled
from tinyllm.kernels.embedding import embedding_backward, embedding_backward_ref


@settings(deadline=None, max_examples=40)
@given(vocab=st.integers(1, 9), positions=st.integers(0, 60), width=st.integers(1, 17),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31 - 1))
def test_matches_np_add_at_with_repeated_ids(vocab, positions, width, dtype, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, positions)  # with few ids, many repeat
    dy = rng.standard_normal((positions, width)).astype(dtype)
    got = embedding_backward(ids, dy, vocab)
    want = embedding_backward_ref(ids, dy, vocab)
    assert got.dtype == dtype and got.shape == (vocab, width)
    # both add each id's rows in position order: the same sums, bit for bit
    np.testing.assert_array_equal(got, want)


def test_a_repeated_id_collects_every_row():
    dy = np.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    got = embedding_backward(np.array([1, 0, 1]), dy, 3)
    np.testing.assert_array_equal(got, [[10.0, 20.0], [101.0, 202.0], [0.0, 0.0]])


def test_an_id_out_of_range_is_named():
    with pytest.raises(ValueError, match="id 5 is outside"):
        embedding_backward(np.array([0, 5]), np.zeros((2, 3)), 4)


def test_runs_with_the_jit_disabled():
    run_with_jit_disabled(
        "import numpy as np\n"
        "from tinyllm.kernels.embedding import *\n"
        "ids = np.array([0, 2, 0]); dy = np.arange(6.0).reshape(3, 2)\n"
        "assert (embedding_backward(ids, dy, 3) == embedding_backward_ref(ids, dy, 3)).all()\n"
        "print('ok')\n"
    )
