"""Errors meant for people: one line naming the field, file or row, what was expected,
what was found, and the fix. Every class pickles, so it survives crossing a Ray actor.

Exit codes (docs/design.md#exit-codes): ``LrjobInputError`` and subclasses -> 2, ``LrjobRuntimeError`` -> 1.
"""
from __future__ import annotations

import difflib
import os
import reprlib

__all__ = [
    "suggest", "near", "counted", "shown", "clip", "SHOWN_CHARS", "LrjobError", "LrjobInputError", "SpecError", "DataError",
    "LrjobRuntimeError", "TrainingError", "DivergenceError", "ClusterError",
    "WorkerFailure",
]


def suggest(word: str, options) -> str:
    """The tail of an error about an unknown name: "; did you mean 'x'?" for a near
    match, else "; allowed: a, b, c"."""
    options = list(options)
    near = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else f"; allowed: {', '.join(options)}"


def near(word: str, options) -> str | None:
    """The option nearest ``word``, case aside (the first of those alike in ``options``' order),
    as ``options`` spells it; None when none is near."""
    lower: dict[str, str] = {}
    for o in options:
        lower.setdefault(str(o).lower(), str(o))
    found = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=0.6)
    return lower[found[0]] if found else None


def counted(n: int, noun: str) -> str:
    """"1 worker", "2 workers"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


# The most characters of a user's value an error message quotes: a message stays one short
# line whatever the input (a YAML alias bomb expands to gigabytes).
SHOWN_CHARS = 80


class _Brief(reprlib.Repr):
    """``reprlib.Repr`` that never builds a long repr to cut it afterwards: long strings,
    containers and nesting are cut as they are rendered, and an integer too long for
    ``repr`` (Python refuses 4,300 digits) is described, not written."""

    def __init__(self, limit: int):
        super().__init__()
        # At most limit // 2 items a level and 2 levels: a value that fits the limit is shown
        # as repr shows it; the most rendered is (limit // 2) ** 2 strings of ``limit``.
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = self.maxarray = limit // 2
        self.maxdict = limit // 2
        self.maxlevel = 2

    def repr_int(self, x, level):
        if x.bit_length() > 4 * self.maxlong:
            return f"an integer of about {int(x.bit_length() * 0.30103)} digits"
        return super().repr_int(x, level)

    def repr_str(self, x, level):
        # reprlib cuts a string after repr-ing it whole: keep only its first and last
        # ``maxstring`` characters, all that reprlib shows of it, before it does.
        if len(x) > self.maxstring:
            return super().repr_str(x[:self.maxstring] + x[-self.maxstring:], level)
        return super().repr_str(x, level)


def _cut(text: str, limit: int, size: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut said inside the limit (with
    ``size``, the value's full length, when known)."""
    if len(text) <= limit:
        return text
    suffix = f"... ({size:,} characters)" if size else "..."
    return (text[:max(limit - len(suffix), 0)] + suffix)[:limit]


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters: a long value keeps
    its start and says how long it was. A long string, list or mapping is never rendered
    whole first (``reprlib``), so a hostile value costs no more than the message; an integer
    too long to write is described by its length (``_Brief.repr_int``), cut to ``limit`` too."""
    if isinstance(value, str) and len(value) > limit:  # its start, and its length
        return _cut(repr(value[:limit]), limit, len(value))
    return _cut(_Brief(limit).repr(value), limit, 0)


def clip(text, limit: int = SHOWN_CHARS) -> str:
    """``text`` (a user's argument, unquoted) cut to at most ``limit`` characters for a message."""
    if not isinstance(text, str):
        text = os.fspath(text) if isinstance(text, os.PathLike) else _Brief(limit).repr(text)
    return _cut(text, limit, len(text))


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
