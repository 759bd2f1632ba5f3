"""Errors meant for people: one line naming the field, file or row, what was expected,
what was found, and the fix. Every class pickles, so it survives crossing a Ray actor.

Exit codes (docs/design.md#exit-codes): ``LrjobInputError`` and subclasses -> 2, ``LrjobRuntimeError`` -> 1.
"""
from __future__ import annotations

import difflib

__all__ = [
    "suggest", "shown", "clip", "SHOWN_CHARS", "LrjobError", "LrjobInputError", "SpecError", "DataError",
    "LrjobRuntimeError", "TrainingError", "DivergenceError", "ClusterError",
    "WorkerFailure",
]


def suggest(word: str, options) -> str:
    """The tail of an error about an unknown name: "; did you mean 'x'?" for a near
    match, else "; allowed: a, b, c"."""
    options = list(options)
    near = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else f"; allowed: {', '.join(options)}"


# The most characters of a user's value an error message quotes: a message stays one short
# line whatever the input (a YAML alias bomb expands to gigabytes).
SHOWN_CHARS = 80


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: a long value keeps
    its start and says how long it was. (A spec's values are bounded by the YAML reader, so
    their full repr is affordable; an integer's is not: Python refuses 4,300 digits.)"""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` (a user's argument, unquoted) cut to ``limit`` characters for a message."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class LrjobError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to the user."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (self.__class__, (self.message,))

    def __str__(self) -> str:
        return self.message


class LrjobInputError(LrjobError):
    """Bad input: spec, data, arguments. Exit code 2."""

    exit_code = 2


class SpecError(LrjobInputError):
    """The job spec or a command-line override is wrong."""


class DataError(LrjobInputError):
    """A data file or data source is wrong."""


class LrjobRuntimeError(LrjobError):
    """Training or cluster failure. Exit code 1."""

    exit_code = 1


class TrainingError(LrjobRuntimeError):
    """Training could not go on."""


class DivergenceError(TrainingError):
    """The loss became NaN or infinite."""


class ClusterError(LrjobRuntimeError):
    """Ray, Horovod or the devices could not do what the job asked."""


class WorkerFailure(LrjobRuntimeError):
    """A worker died or hung; names the rank, node and last finished epoch."""

    def __init__(self, message: str, rank: int | None = None, node: str | None = None,
                 last_epoch: int | None = None):
        super().__init__(message)
        self.rank, self.node, self.last_epoch = rank, node, last_epoch

    def __reduce__(self):
        return (self.__class__, (self.message, self.rank, self.node, self.last_epoch))
