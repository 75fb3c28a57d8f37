"""Data-parallel training over MPI: the few collective operations the training loop needs.

``mpiexec -n 4 python examples/train_shakespeare.py ...`` starts four copies of the script, the
*ranks*. Each builds the same model from the same seed and draws the same global batch; each then
computes the gradients of its own share of the rows, and the ranks add their gradients together
(an *all-reduce*) so that every rank holds the gradient of the whole batch and takes the same
AdamW step. That is the method of PyTorch DDP, Horovod and llm.c, on the engine they use across
machines: MPI, through mpi4py (the optional ``[mpi]`` extra: ``pip install "tinyllm[mpi]"``).

Run as a plain ``python`` (or ``mpiexec -n 1``), :func:`get_world` is a one-rank world whose
operations do nothing, and mpi4py is never imported. Under ``mpiexec -n N`` with N > 1, MPI starts
at the first :func:`get_world` call, which :mod:`tinyllm.training` makes when a run begins.

What a rank must never do is leave the others waiting. So, once MPI has started:

* An exception that nobody catches, or SIGTERM / SIGHUP, prints its message naming the rank and
  calls ``MPI_Abort``, which ends every rank within a second (:meth:`World.abort`). A rank killed
  outright (``kill -9``, the out-of-memory killer) cannot say anything; ``mpiexec`` then stops the
  job and names the rank's process id, which the run's first line maps to its rank.
* Every collective operation starts with a check-in (:meth:`World._rendezvous`): the ranks tell
  rank 0 they have arrived and wait for its go, polling with a deadline (``TINYLLM_MPI_TIMEOUT``
  seconds, default 600: longer than anything rank 0 does alone, such as writing a checkpoint). A
  rank stuck, stopped or cut off is named by rank 0 when the deadline passes, and the job aborts.
  The data then moves in a blocking MPI call among ranks known to be present.
* Errors that every rank meets at the same point of the program (a diverged loss, which is the
  same on every rank after the all-reduce; a refused ``--out-dir``, which rank 0 decides and
  broadcasts) are marked with :func:`on_every_rank`: rank 0 prints them and every rank exits
  normally, without an abort.

Messages between ranks are NumPy buffers and JSON, never pickle.
"""
import json
import os
import signal
import socket
import sys
import time

import numpy as np

__all__ = ["ErrorOnMainRank", "World", "current_world", "get_world", "launched_size", "on_every_rank",
           "split_rows"]

TIMEOUT_ENV = "TINYLLM_MPI_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# Gradients travel in buckets of at most this many bytes. A few large messages cost about what one
# does (time per byte dominates, not time per message), while one call per parameter would pay
# the per-message latency ~50 times a step; and each call stays far below MPI's 2**31-element
# count limit whatever the model's size.
BUCKET_BYTES = 16 << 20
# The variables by which launchers tell a process how many were started: MPICH / Intel MPI
# (hydra's PMI), Open MPI, MVAPICH.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_TAG_ARRIVED, _TAG_GO = 7301, 7302
_WORLD = None


class ErrorOnMainRank(RuntimeError):
    """What the other ranks raise when rank 0 met an error in work only it does (reading the
    checkpoint, deciding about ``--out-dir``). Rank 0 prints the real error."""


def on_every_rank(exc):
    """Mark ``exc`` as raised on every rank at the same point of the program; returns it.

    :func:`tinyllm.cli.exit_on_error` then lets rank 0 print it and every rank exit normally,
    instead of aborting the job from the first rank that got there."""
    exc.tinyllm_on_every_rank = True
    return exc


def launched_size(environ=None):
    """How many processes the MPI launcher started (1 when there is none)."""
    environ = os.environ if environ is None else environ
    for name in _SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def split_rows(n, parts):
    """``parts`` contiguous (start, stop) ranges covering ``range(n)``, the first ``n % parts`` one
    row longer (as ``np.array_split``): how a batch of ``n`` rows is shared out."""
    base, extra = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return list(zip(bounds[:-1], bounds[1:]))


def current_world():
    """The world if :func:`get_world` has made it, else None (MPI not started)."""
    return _WORLD


def get_world():
    """This process's world: one rank when run as a plain ``python``; the MPI ranks under
    ``mpiexec -n N`` (N > 1), starting MPI on the first call."""
    global _WORLD
    if _WORLD is None:
        n = launched_size()
        _WORLD = World() if n == 1 else World._start_mpi(n)
    return _WORLD


class World:
    """The ranks of one training job, and the collective operations the training loop uses.

    With one rank (``World()``, no MPI) every operation returns its input. ``rank``, ``size``,
    ``is_main`` (rank 0: the one that writes files and prints); ``threads``: compute threads per
    rank; ``comm_seconds``: time :meth:`reduce_gradients` spent moving and adding gradients, once
    every rank had arrived; ``wait_seconds``: time spent waiting for the others to arrive at any
    collective operation (for benchmarks).
    """

    def __init__(self, comm=None, mpi=None):
        self.comm, self._mpi = comm, mpi
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.is_main = self.rank == 0
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.members = [{"pid": self.pid, "host": self.host}]
        self.threads = None
        self.timeout = _timeout_from_env()
        self.note = ""  # appended to fault messages: where the last good checkpoint is
        self.comm_seconds, self.comm_calls, self.wait_seconds = 0.0, 0, 0.0
        self._seq = 0  # collective operations so far: the same count on every rank
        self._layout = None

    # --- start-up -----------------------------------------------------------------------------
    @classmethod
    def _start_mpi(cls, launched):
        try:
            import mpi4py
        except ImportError:
            raise ImportError(f"this process was started by an MPI launcher as one of {launched} ranks, but mpi4py "
                              "is not installed: pip install \"tinyllm[mpi]\" (mpi4py and MPICH's mpiexec)") from None
        mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI (numba's threads never do)
        from mpi4py import MPI

        comm = MPI.COMM_WORLD.Dup()  # our own context: a user's messages can never match ours
        if comm.Get_size() != launched:
            raise RuntimeError(f"the launcher started {launched} processes but MPI sees {comm.Get_size()}: mpi4py is "
                               "built for another MPI than this mpiexec; use the mpiexec of the MPI mpi4py was "
                               "built with (with the [mpi] extra, the one pip installed)")
        world = cls(comm, MPI)
        world.threads = world._share_cores()
        world.members = world.allgather_json({"pid": world.pid, "host": world.host, "threads": world.threads})
        world._install_fault_handlers()
        return world

    def _share_cores(self):
        """Compute threads per rank: this machine's cores shared among the ranks on it, unless the
        user chose (NUMBA_NUM_THREADS / OMP_NUM_THREADS); several ranks each running threads for
        every core would fight over them."""
        from .kernels import get_num_threads, set_num_threads
        from .kernels.systems.openblas import OPENBLAS

        if "NUMBA_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
            return get_num_threads()
        local = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED)
        ranks_here = local.Get_size()
        local.Free()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // ranks_here)
        import numba

        set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if OPENBLAS is not None:
            OPENBLAS.set_num_threads(threads)
        return get_num_threads()

    def describe(self):
        """One line mapping ranks to process ids (mpiexec names a dead rank by its pid)."""
        if self.size == 1:
            return "one process"
        ranks = ", ".join(f"rank {r} = pid {m['pid']} on {m['host']}" for r, m in enumerate(self.members))
        return f"data parallel over {self.size} MPI ranks, {self.threads} thread(s) each: {ranks}"

    def whoami(self):
        return f"rank {self.rank} of {self.size} (pid {self.pid} on {self.host})"

    # --- faults -------------------------------------------------------------------------------
    def abort(self, message, code=1):
        """Print ``error: <rank>: message`` and end every rank of the job (``MPI_Abort``)."""
        note = f" {self.note}" if self.note else ""
        sys.stderr.write(f"error: {self.whoami()}: {message}; stopping every rank.{note}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        if self.comm is None:
            sys.exit(code)
        self.comm.Abort(code)

    def _install_fault_handlers(self):
        previous = sys.excepthook

        def excepthook(exc_type, exc, tb):
            previous(exc_type, exc, tb)  # the traceback, as always
            self.abort(f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__)

        sys.excepthook = excepthook
        def on_signal(signum, frame):
            self.abort(f"received {signal.Signals(signum).name}", 128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)

    def _rendezvous(self, what, timeout="default"):
        """Block until every rank has reached this collective operation, or abort after the timeout.

        The ranks send rank 0 their count of collectives so far; rank 0 waits for all of them,
        checks that the counts agree (ranks whose control flow differs would otherwise exchange
        mismatched data), and answers go. Waiting polls with short sleeps, so a waiting rank leaves
        its core to the others and still sees signals and its deadline.
        """
        self._seq += 1
        t0 = time.perf_counter()
        try:
            self._check_in(what, self.timeout if timeout == "default" else timeout)
        finally:
            self.wait_seconds += time.perf_counter() - t0

    def _check_in(self, what, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        mine = np.array([self._seq], np.int64)
        if self.rank == 0:
            arrived = [np.zeros(1, np.int64) for _ in range(self.size - 1)]
            reqs = [self.comm.Irecv(buf, source=r + 1, tag=_TAG_ARRIVED) for r, buf in enumerate(arrived)]
            self._wait(reqs, deadline, lambda late: f"no word from rank {_names(r + 1 for r in late)} for "
                                                    f"{timeout:g} s at {what} (is it stuck, stopped or cut off?)")
            behind = [r + 1 for r, buf in enumerate(arrived) if buf[0] != self._seq]
            go = mine if not behind else np.array([-1], np.int64)
            self._wait([self.comm.Isend(go, dest=r, tag=_TAG_GO) for r in range(1, self.size)], None, None)
            if behind:
                raise on_every_rank(RuntimeError(
                    f"rank {_names(behind)} reached another collective operation than rank 0 ({what}): the ranks' "
                    "programs took different paths (a bug: please report it)"))
        else:
            go = np.zeros(1, np.int64)
            reqs = [self.comm.Isend(mine, dest=0, tag=_TAG_ARRIVED), self.comm.Irecv(go, source=0, tag=_TAG_GO)]
            # a little longer than rank 0 waits, so that rank 0 names the late rank first
            self._wait(reqs, None if deadline is None else deadline + 5.0,
                       lambda late: f"no word from rank 0 for {timeout + 5:g} s at {what} (is it stuck, stopped or "
                                    "cut off?)")
            if go[0] != self._seq:
                raise on_every_rank(RuntimeError(f"rank {self.rank} reached another collective operation than "
                                                 f"rank 0 ({what}): a bug, please report it"))

    def _wait(self, reqs, deadline, late_message):
        done = [False] * len(reqs)
        start, pause = time.monotonic(), 0.0
        while True:
            for i, req in enumerate(reqs):
                if not done[i]:
                    done[i] = req.Test()
            if all(done):
                return
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self.abort(late_message([i for i, d in enumerate(done) if not d]))
            time.sleep(pause)
            pause = min(1e-3, (now - start) / 20)  # sleep at most 5% past the moment the others arrive

    # --- collective operations ----------------------------------------------------------------
    def reduce_gradients(self, params, loss_share, what="the gradient all-reduce"):
        """Sum every ``p.grad`` and ``loss_share`` over the ranks; returns the summed loss.

        Each rank's gradient is already weighted by its share of the batch's target tokens, so the
        sum is the gradient of the whole batch, as one process would compute it. The gradients
        travel through one flat buffer per dtype, in buckets of at most :data:`BUCKET_BYTES`; a
        parameter without a gradient on any rank keeps ``grad`` None (as AdamW expects).
        """
        if self.size == 1:
            return loss_share
        self._rendezvous(what)
        t0 = time.perf_counter()
        sums = np.array([loss_share] + [p.grad is not None for p in params], np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, sums, op=self._mpi.SUM)
        for buffer, members in self._flat_buffers(params):
            for (p, offset) in members:  # pack: (params' sizes) -> one flat vector
                chunk = buffer[offset:offset + p.size]
                if p.grad is None:
                    chunk.fill(0)
                else:
                    np.copyto(chunk.reshape(p.shape), p.grad)
            step = max(1, BUCKET_BYTES // buffer.itemsize)
            for start in range(0, buffer.size, step):
                self.comm.Allreduce(self._mpi.IN_PLACE, buffer[start:start + step], op=self._mpi.SUM)
            for p, offset in members:  # unpack
                summed = buffer[offset:offset + p.size].reshape(p.shape)
                if not sums[1 + self._index[id(p)]]:
                    p.grad = None
                elif p.grad is not None and p.grad.flags.writeable and p.grad.dtype == summed.dtype:
                    np.copyto(p.grad, summed)
                else:
                    p.grad = summed.copy()
        self.comm_seconds += time.perf_counter() - t0
        self.comm_calls += 1
        return float(sums[0])

    def _flat_buffers(self, params):
        """[(buffer, [(param, offset)])]: one persistent flat buffer per gradient dtype."""
        key = tuple((id(p), p.shape, p.dtype.str) for p in params)
        if self._layout is None or self._layout[0] != key:
            groups = {}
            for p in params:
                groups.setdefault(np.dtype(p.dtype), []).append(p)
            layout = []
            for dtype, members in groups.items():
                offsets = np.cumsum([0] + [p.size for p in members])
                layout.append((np.zeros(int(offsets[-1]), dtype), list(zip(members, offsets[:-1].tolist()))))
            self._layout = (key, layout)
            self._index = {id(p): i for i, p in enumerate(params)}
        return self._layout[1]

    def sum(self, values, what="a sum over the ranks"):
        """The element-wise sum over the ranks of ``values`` (numbers), as float64."""
        out = np.array(values, np.float64)
        if self.size > 1:
            self._rendezvous(what)
            self.comm.Allreduce(self._mpi.IN_PLACE, out, op=self._mpi.SUM)
        return out

    def broadcast(self, array, what="a broadcast from rank 0"):
        """Overwrite ``array`` (contiguous) on every rank with rank 0's, in place."""
        if self.size > 1:
            if not array.flags.c_contiguous:
                raise ValueError("broadcast: the array must be C-contiguous")
            self._rendezvous(what)
            self.comm.Bcast(array, root=0)
        return array

    def broadcast_json(self, obj=None, what="a broadcast from rank 0", timeout="default"):
        """Rank 0's ``obj`` (anything JSON can hold) on every rank."""
        if self.size == 1:
            return obj
        self._rendezvous(what, timeout)
        data = np.frombuffer(_dumps(obj), np.uint8) if self.is_main else None
        n = np.array([data.size if self.is_main else 0], np.int64)
        self.comm.Bcast(n, root=0)
        buf = data.copy() if self.is_main else np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(buf, root=0)
        return json.loads(buf.tobytes().decode())

    def allgather_json(self, obj, what="an all-gather"):
        """[every rank's ``obj``], in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        self._rendezvous(what)
        data = np.frombuffer(_dumps(obj), np.uint8)
        sizes = np.zeros(self.size, np.int64)
        self.comm.Allgather(np.array([data.size], np.int64), sizes)
        out = np.empty(int(sizes.sum()), np.uint8)
        self.comm.Allgatherv(data, [out, sizes.tolist()])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return [json.loads(out[offsets[r]:offsets[r + 1]].tobytes().decode()) for r in range(self.size)]

    def on_main(self, fn, what, timeout="default"):
        """Run ``fn()`` on rank 0 only and return its result (JSON) on every rank.

        If ``fn`` raises, rank 0 re-raises it and the other ranks raise :class:`ErrorOnMainRank`,
        all marked :func:`on_every_rank`: one message, from rank 0, and a clean exit everywhere.
        """
        if self.size == 1:
            return fn()
        error = None
        if self.is_main:
            try:
                outcome = {"ok": True, "value": fn()}
            except Exception as e:  # handed to every rank, then raised again below
                error, outcome = e, {"ok": False, "error": f"{type(e).__name__}: {e}"}
        else:
            outcome = None
        outcome = self.broadcast_json(outcome, what, timeout)
        if outcome["ok"]:
            return outcome["value"]
        if error is not None:
            raise on_every_rank(error)
        raise on_every_rank(ErrorOnMainRank(f"rank 0 failed at {what}: {outcome['error']}"))


def _dumps(obj):
    """JSON bytes; NumPy scalars and arrays become numbers and lists."""
    def plain(x):
        if isinstance(x, (np.generic, np.ndarray)):
            return x.tolist()
        raise TypeError(f"{type(x).__name__} cannot be sent between ranks (JSON only)")

    return json.dumps(obj, default=plain).encode()


def _names(ranks):
    ranks = list(ranks)
    return ", ".join(map(str, ranks)) if len(ranks) > 1 else str(ranks[0])


def _timeout_from_env():
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: give the seconds a rank may wait for the others (e.g. 600)")
    return seconds
