"""Small files read with a bound: a job spec, a run's ``summary.json``, a model's
``meta.json``. A bound checked on the file's size alone is skipped by what has none (a
FIFO, ``/dev/zero``, a symlink to either): these read at most the bound and one byte more
from the open file, so nothing past the bound is ever read (docs/design.md#data)."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["TooLarge", "read_at_most", "load_json", "missing_folders", "remove_empty"]


class TooLarge(ValueError):
    """A file that holds more than its bound. ``size``: its size when it is a regular
    file, else None (only "more than the bound" is known)."""

    def __init__(self, size: int | None, limit: int):
        self.size, self.limit = size, limit
        held = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
        super().__init__(f"holds {held}, more than the {limit:,} it may")

    def __reduce__(self):
        return (self.__class__, (self.size, self.limit))


def read_at_most(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of ``path``, or :class:`TooLarge` when it holds more than ``limit``: a
    regular file by its size, before reading; anything else after ``limit + 1`` bytes.
    Opened without blocking: a FIFO with no writer reads as empty instead of waiting."""
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise TooLarge(st.st_size, limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(None, limit)
    return data


def load_json(path: str | os.PathLike, limit: int) -> Any:
    """``path`` parsed as JSON, read with :func:`read_at_most`. Too large, not UTF-8, not
    JSON, a number Python will not convert (4,300 digits) or nesting deeper than the
    parser's recursion limit (``[`` x 100,000) all raise ``ValueError``."""
    data = read_at_most(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except (RecursionError, MemoryError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else "too large to hold in memory"
        raise ValueError(f"not usable JSON ({what})") from None


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what a
    ``mkdir(parents=True)`` of it would make, for ``remove_empty`` to take back."""
    made = []
    for folder in (Path(path), *Path(path).parents):
        if folder.exists() or folder.is_symlink():
            break
        made.append(folder)
    return made


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first: ``missing_folders``) while they are empty; one that
    another process has written into is kept, with those above it, and one never made (its
    ``mkdir`` failed) is passed over."""
    for d in folders:
        try:
            d.rmdir()
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENAMETOOLONG):  # never made
                continue
            break
