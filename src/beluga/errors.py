"""The failures beluga expects, all under one base class.

A stage script turns any `BelugaError` into one line on stderr and exit code 1
(130 for `Interrupted`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BelugaError(Exception):
    """An expected failure; its message is one line that says what to do."""

    exit_code = 1


class ParamsError(BelugaError, ValueError):
    """A bad value in params.yaml; the message names the key."""


class DataError(BelugaError, ValueError):
    """A data source that cannot be imported; the message names the file."""


class LRFindError(BelugaError, RuntimeError):
    """The range test gave no usable curve."""


class TrainingError(BelugaError, RuntimeError):
    """Training cannot go on (a non-finite loss, a failed write); the message says where."""


class ModelError(BelugaError, ValueError):
    """The trained model's file is missing, corrupt or of another network."""


class WriteError(BelugaError, OSError):
    """An output could not be written (full disk, quota, permissions); the old file is kept."""


class Interrupted(BelugaError):
    """SIGINT or SIGTERM arrived; the last finished epoch is checkpointed."""

    exit_code = 130
