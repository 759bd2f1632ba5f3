"""``lr_core.files``' bounded reads at the bound (docs/design.md#data), where `make mutants`
found the fast tests silent: a file of exactly the bound, the size a message gives, the
words of the error when the parser runs out of memory, a FIFO with no writer (read as empty,
without waiting) and one that never ends (read no further than the bound)."""
import contextlib
import io
import json
import os
import signal

import pytest

from lr_core import files
from lr_core.files import TooLarge, load_json, read_at_most


def test_a_file_of_exactly_the_bound_is_read(tmp_path):
    p = tmp_path / "ten"
    p.write_bytes(b"1234567890")
    assert read_at_most(p, 10) == b"1234567890"
    assert load_json(p, 10) == 1234567890
    with pytest.raises(TooLarge) as e:
        read_at_most(p, 9)
    assert (e.value.size, e.value.limit) == (10, 9)


def test_a_pipe_of_exactly_the_bound_is_read_and_one_byte_more_is_too_large():
    r, w = os.pipe()
    try:
        os.write(w, b"[1, 2]")
        os.close(w)
        assert read_at_most(f"/proc/self/fd/{r}", 6) == b"[1, 2]"
    finally:
        os.close(r)
    r, w = os.pipe()
    try:
        os.write(w, b"[1, 2] ")
        os.close(w)
        with pytest.raises(TooLarge) as e:
            read_at_most(f"/proc/self/fd/{r}", 6)
    finally:
        os.close(r)
    assert str(e.value) == "holds more than 6 bytes, more than the 6 it may" and e.value.size is None


def test_too_large_says_the_size_when_it_is_known(tmp_path):
    p = tmp_path / "big.json"
    p.write_bytes(b" " * 1234)
    with pytest.raises(TooLarge) as e:
        load_json(p, 1000)
    assert str(e.value) == "holds 1,234 bytes, more than the 1,000 it may"
    assert str(TooLarge(None, 1000)) == "holds more than 1,000 bytes, more than the 1,000 it may"


def test_json_the_parser_cannot_hold_is_named_so(tmp_path, monkeypatch):
    p = tmp_path / "summary.json"
    p.write_text(json.dumps({"a": 1}))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(ValueError) as e:
        load_json(deep, 1 << 20)
    assert str(e.value) == "not usable JSON (nested too deeply)"

    # A MemoryError inside the parser (a JSON value that expands past the memory left): the
    # standard library's parser is made to raise it, the rest is the real code.
    def out_of_memory(text, *args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(files.json, "loads", out_of_memory)
    with pytest.raises(ValueError) as e:
        load_json(p, 1 << 20)
    assert str(e.value) == "not usable JSON (too large to hold in memory)"
    assert e.value.__cause__ is None and e.value.__suppress_context__


@contextlib.contextmanager
def _returns_within(seconds: float, what: str):
    """Fails the test if the block has not returned after ``seconds`` (it waits for something
    that never comes): a guard against a hang, far above the microseconds the block takes."""
    def hung(signum, frame):
        raise AssertionError(f"{what} did not return within {seconds} s: it blocks")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_a_fifo_with_no_writer_reads_as_empty_at_once(tmp_path):
    """Opened without blocking: a FIFO nobody writes to is empty, not a wait for a writer."""
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with _returns_within(5, "read_at_most of a FIFO with no writer"):
        assert read_at_most(fifo, 10) == b""


def test_a_source_that_does_not_end_is_read_only_near_the_bound(tmp_path):
    """A FIFO whose writer keeps it open (a source with no end, like /dev/zero) holding a full
    pipe: the bound of 10 stops the read after one buffer of the reader at most; the rest
    stays unread (a read to the end would drain the pipe, or wait for an end that never comes)."""
    fifo = tmp_path / "meta.json"
    os.mkfifo(fifo)
    w = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that stays: the FIFO never reports its end
    try:
        held = 0
        with contextlib.suppress(BlockingIOError):  # fill the pipe, whatever its capacity
            while True:
                held += os.write(w, b"x" * 4096)
        buffer = max(io.DEFAULT_BUFFER_SIZE, os.fstat(w).st_blksize)  # what the reader reads ahead
        assert held > 2 * buffer, f"a pipe of {held} bytes cannot tell a bounded read"
        with _returns_within(5, "read_at_most of a FIFO that never ends"), pytest.raises(TooLarge) as e:
            read_at_most(fifo, 10)
        assert e.value.size is None
        left = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(w, 1 << 16):
                left += len(chunk)
        assert left >= held - buffer, f"only {left:,} of {held:,} bytes left unread"
    finally:
        os.close(w)
