"""The errors tinyllm raises for things a user can cause and fix.

Each is a subclass of the built-in error a caller would already catch (``ValueError`` for bad
data, ``OSError`` for a failed write, ``RuntimeError`` for a run that cannot go on), and its
message names the file or value at fault and says what to do. This module imports nothing, so
every layer can use it.
"""

__all__ = ["CheckpointWriteError", "DataError", "DownloadError", "FileFormatError", "OutDirLocked", "RunExistsError",
           "StateDictError"]


class FileFormatError(ValueError):
    """A file tinyllm reads is truncated, corrupt, hostile, or disagrees with the files next to it
    (weights whose shapes differ from config.json, ...). The message starts with the file's path."""

    def __init__(self, path, problem):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # keep it picklable (multiprocessing) despite the two-argument __init__
        return type(self), (self.path, self.problem)


class DataError(ValueError):
    """Training data that cannot be trained on: empty, too short for one block, not text."""


class DownloadError(OSError, RuntimeError):
    """A corpus could not be downloaded (offline, a failed checksum, an unwritable cache). An
    ``OSError``, so that a script's ``error: ...`` handler reports it as any failed read (and a
    ``RuntimeError``, so that code catching that keeps working)."""


class StateDictError(ValueError, RuntimeError):
    """``Module.load_state_dict`` got missing, unexpected or mis-shaped keys (the message names
    them all). A ``ValueError`` as bad data is, and a ``RuntimeError``, what ``torch``'s
    ``load_state_dict`` raises, so code written for either catches it."""


class RunExistsError(RuntimeError):
    """``--out-dir`` already holds a training run and neither resuming nor overwriting was asked for."""


class OutDirLocked(RuntimeError):
    """Another live process is training into the same output directory."""

    def __init__(self, message, pid=None):
        self.pid = pid
        super().__init__(message)

    def __reduce__(self):
        return type(self), (str(self), self.pid)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file too large, permissions); the previous
    checkpoint is untouched."""
