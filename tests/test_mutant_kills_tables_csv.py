"""``lr_core.tables``' CSV and Parquet readers where `make mutants` found the fast tests
silent (docs/design.md#data): the column lists that messages cut, the chunks a CSV is cut
into and how far it reads ahead, the line-width guard and its ``\\r`` search, how often a
chunk is parsed, the labels of text, null and decimal columns, zero-copy numbers, the rows
of a NumPy block; and a CSV's first line: refused when the 1 MiB head cuts it, and read
whole when a quoted name in it holds a \\r."""
from __future__ import annotations

import decimal
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from lr_core import tables
from lr_core.errors import DataError
from lr_core.tables import open_table

NAME41 = "n" * 41  # one character over the 40 a message shows of a column name


def _message(fn, *a, **kw) -> str:
    with pytest.raises(DataError) as e:
        fn(*a, **kw)
    return str(e.value)


@pytest.fixture
def pools(monkeypatch):
    """The max_workers of every ThreadPoolExecutor made while the test runs."""
    import concurrent.futures

    sizes = []

    class Pool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            sizes.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Pool)
    return sizes


@pytest.fixture
def cpu_count(monkeypatch):
    """Sets the number of cores the CSV reader sees (it bounds the parse threads)."""
    return lambda n: monkeypatch.setattr(tables, "_cores", lambda: n)


def test_the_parse_threads_follow_the_cores_not_pyarrows_count(tmp_path, pools):
    """lrjob sets OMP_NUM_THREADS=1 for MXNet, and pyarrow's cpu_count() follows it: the CSV
    chunks still parse on every core this process may use."""
    assert tables._cores() == len(os.sched_getaffinity(0))
    before = pa.cpu_count()
    pa.set_cpu_count(1)
    try:
        p = tmp_path / "t.csv"
        p.write_bytes(b"1,2\n" * 4)
        assert list(tables._parallel_chunks(_CountingFS(), str(p), str(p), 0, bytes)) == [b"1,2\n" * 4]
    finally:
        pa.set_cpu_count(before)
    assert pools == [min(tables._CSV_THREADS, len(os.sched_getaffinity(0)))]


def test_column_lists_in_messages_cut_each_name_at_40_characters(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(f"{NAME41},b\n1,2\n")
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({NAME41: [1.0], "b": [2.0]}), parquet)
    shown = "n" * 21 + "... (41 characters), b"
    for p in (csv, parquet):
        assert _message(open_table, p) == f"{p}: no column 'label' (columns: {shown}); set data.label_column"
        assert (_message(open_table, p, None, False, features=["zz"])
                == f"{p}: no column 'zz' for data.features (columns: {shown}); fix data.features")


def test_a_csv_removed_after_it_was_opened_is_named_when_it_is_read(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,0\n")
    t = open_table(p)
    p.unlink()
    m = _message(lambda: list(t.batches()))
    assert m.startswith(f"{p}: cannot read (") and m.endswith("); check the path and its permissions"), m


def test_trailing_blank_lines_in_a_chunk_of_their_own_keep_the_rows_before(tmp_path, monkeypatch):
    """The last chunk (blank lines only) yields no row; the table still has its one row."""
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,0\n" + "\n" * 20)
    monkeypatch.setattr(tables, "_CSV_CHUNK_BYTES", 4)
    assert [(x.tolist(), y.tolist()) for x, y in open_table(p).batches()] == [([[1.0]], [0.0])]


# --------------------------------------------------------------------------- chunks
class _CountingFS:
    """The local file system, counting the reads of the streams it opens."""

    def __init__(self):
        self.fs, self.reads = pafs.LocalFileSystem(), 0

    def open_input_stream(self, path, compression=None):
        stream, outer = self.fs.open_input_stream(path, compression=compression), self

        class Counted:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def read(self, n):
                return stream.read(n)

            def readinto(self, b):
                outer.reads += 1
                return stream.readinto(b)

        return Counted()


@pytest.mark.parametrize("cores,threads", [(1, 1), (2, 2), (8, 4)])
def test_a_csv_is_read_at_most_one_chunk_per_thread_ahead(tmp_path, monkeypatch, pools, cpu_count, cores, threads):
    """min(4, cores) threads: when the first chunk's rows are handed on, threads + 1 chunks
    have been read (one per thread being parsed, and the next); never more. The pool has
    that many threads (a larger one would parse more chunks at once than were read for it)."""
    p = tmp_path / "t.csv"
    p.write_bytes(b"1,2\n" * 20)
    monkeypatch.setattr(tables, "_CSV_CHUNK_BYTES", 4)
    cpu_count(cores)
    fs = _CountingFS()
    chunks = tables._parallel_chunks(fs, str(p), str(p), 0, bytes)
    assert next(chunks) == b"1,2\n"
    assert fs.reads == threads + 1 and pools == [threads]
    assert list(chunks) == [b"1,2\n"] * 19


@pytest.mark.parametrize("text,size,chunks", [
    (b"1,2\r3,4\r5,6\r", 5, [b"1,2\r", b"3,4\r", b"5,6\r"]),                 # \r only
    (b"1,2\r3,4\r5,6\r", 9, [b"1,2\r3,4\r", b"5,6\r"]),                      # the last \r read
    (b"1,2\r33,44\r5,6\r", 9, [b"1,2\r", b"33,44\r5,6\r"]),                 # an early \r
    (b"1,2\r\n3,4\r\n", 4, [b"1,2\r", b"\n", b"3,4\r\n"]),                  # \r\n cut between
    (b"1,2\n\r3,4\n", 5, [b"1,2\n\r", b"3,4\n"]),                            # a \r just after \n
    (b"1,2\n3,4", 5, [b"1,2\n", b"3,4"]),                                   # no last line end
])
def test_each_chunk_ends_at_the_last_line_end_read(tmp_path, monkeypatch, cpu_count, text, size, chunks):
    """A chunk ends at the last \\n or \\r of the bytes read so far (the rest starts the next
    chunk): chunks of any line ends are whole lines, in order."""
    p = tmp_path / "t.csv"
    p.write_bytes(text)
    monkeypatch.setattr(tables, "_CSV_CHUNK_BYTES", size)
    cpu_count(1)
    assert list(tables._parallel_chunks(pafs.LocalFileSystem(), str(p), str(p), 0, bytes)) == chunks


def test_labels_are_parsed_as_numbers_once_until_a_chunk_holds_text(tmp_path, monkeypatch, cpu_count):
    """One parse a chunk with the labels as numbers; the chunk with a text label is parsed
    again with text labels, and every chunk after it only with text labels."""
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,0\n2,1\n3,cat\n4,1\n5,0\n")
    monkeypatch.setattr(tables, "_CSV_CHUNK_BYTES", 4)  # one line a chunk
    cpu_count(1)  # one parse thread: the chunks parse in file order
    read_csv, label_types = pcsv.read_csv, []

    def recorded(buf, read_options, convert_options):
        label_types.append(str(convert_options.column_types["c1"]))
        return read_csv(buf, read_options=read_options, convert_options=convert_options)

    monkeypatch.setattr(pcsv, "read_csv", recorded)
    y = [v for _, b in open_table(p).batches() for v in b.tolist()]
    assert y == [0.0, 1.0, "cat", 1.0, 0.0]
    assert label_types == ["double", "double", "double", "string", "string", "string"]


# --------------------------------------------------------------------------- line widths
def test_a_wide_line_is_refused_with_arrows_error_and_its_words():
    with pytest.raises(pa.ArrowInvalid) as e:
        tables._refuse_wide_lines(memoryview(b"1,2,3\n1,2,3,4\n"), 3)
    assert str(e.value) == "a line has more columns than the first"
    with pytest.raises(pa.ArrowInvalid):
        tables._refuse_wide_lines(b"1,2,3\r1,2,3,4\r", 3)  # bytes as well as a memoryview


@pytest.mark.parametrize("chunk", [
    b",,,\n1,2\n",           # the chunk's first byte is a comma of the wide line
    b"1,2\n,,,\n",           # so is a later line's first byte
    b'1,2,3\n"1",2,3,4\n',   # a quote, and still one cell too many
])
def test_a_wide_line_is_refused_whatever_its_first_byte_or_quotes(chunk):
    with pytest.raises(pa.ArrowInvalid):
        tables._refuse_wide_lines(memoryview(chunk), 3)


def test_lines_end_at_every_line_end_of_a_chunk_that_mixes_them():
    tables._refuse_wide_lines(memoryview(b"1,2,3\n1,2,3\r1,2,3\r\n1,2,3\n"), 3)


def test_a_last_line_of_256_commas_without_a_line_end_is_refused():
    """256 bytes (the chunk's last line, no line end): its commas are not summed into
    uint8, where 256 would be 0."""
    with pytest.raises(pa.ArrowInvalid):
        tables._refuse_wide_lines(memoryview(b"1,2,3\n" + b"," * 256), 3)
    tables._refuse_wide_lines(memoryview(b"1,2,3\n" + b"," * 256), 257)


def test_holds_cr_searches_the_whole_bytes_up_to_twice_the_chunk_else_the_chunk():
    def holds(chunk):
        return tables._holds_cr(chunk, np.frombuffer(chunk, dtype=np.uint8))

    assert holds(memoryview(b"12\r\r")[:2])            # whole object searched: twice the chunk
    assert not holds(memoryview(b"12\r\r\r")[:2])      # more than twice: the chunk's own bytes
    assert not holds(memoryview(b"12\r\r\r\r")[:2])
    assert holds(memoryview(b"1\r" + b"0" * 10)[:2])   # the chunk's own bytes hold one
    assert holds(memoryview(bytearray(b"1\r2")))
    assert not holds(memoryview(b"1,2"))
    assert holds(b"1\r2") and not holds(b"1,2")        # bytes, not a memoryview


# --------------------------------------------------------------------------- labels, numbers
def test_labels_of_text_null_large_text_and_decimal_columns():
    def labels(values, type=None):
        out = tables._labels(pa.array(values, type=type))
        return out.dtype, out.tolist()

    # a null among numbers written as text: '' (as the exact reader shows a blank), not NaN
    assert labels(["1", None, "0"]) == (np.dtype(object), [1.0, "", 0.0])
    assert labels(["1", "0"], pa.large_string()) == (np.dtype(np.float64), [1.0, 0.0])
    assert labels(["1", "cat"], pa.large_string()) == (np.dtype(object), [1.0, "cat"])
    assert labels([decimal.Decimal("1"), decimal.Decimal("0.5")]) == (np.dtype(np.float64), [1.0, 0.5])
    assert labels([b"1", b"x"]) == (np.dtype(object), ["b'1'", "b'x'"])


def test_labels_written_as_text_parse_as_the_csv_reader_parses_them(tmp_path):
    """Text labels (a Parquet string column) become the numbers that a CSV's labels parse
    to: pyarrow's parser (it takes 'nan(1)', which Python's float() does not)."""
    texts = ["nan(1)", " 1", "+.5e1", "0"]
    p = tmp_path / "t.csv"
    p.write_text("a,label\n" + "".join(f"1,{t}\n" for t in texts))
    from_csv = np.concatenate([y for _, y in open_table(p).batches()])
    from_text = tables._labels(pa.array(texts))
    assert from_text.dtype == from_csv.dtype == np.float64
    np.testing.assert_array_equal(from_text, from_csv)
    np.testing.assert_array_equal(from_text, [np.nan, 1.0, 5.0, 0.0])


def test_plain_of_no_chunks_keeps_the_type_and_of_one_chunk_copies_nothing():
    for t, dtype in ((pa.int32(), np.int32), (pa.float32(), np.float32), (pa.uint8(), np.uint8)):
        assert tables._plain(pa.chunked_array([], type=t)).dtype == dtype
    c = pa.chunked_array([pa.array(np.arange(5, dtype=np.int64)).slice(1, 3)])
    out = tables._plain(c)
    assert out.tolist() == [1, 2, 3]
    assert out.ctypes.data == c.chunk(0).buffers()[1].address + 8  # the Arrow buffer itself


def test_rows_per_block_keeps_a_block_within_its_bytes():
    assert tables._rows_per_block(1, 8) == 1
    assert tables._rows_per_block(10 ** 9, 65 << 20) == 1        # a row wider than a block: one a block
    rows = tables._rows_per_block(10 ** 9, 3 << 20)               # 64 MiB // 3 MiB
    assert rows == 21 and isinstance(rows, int)
    assert tables._rows_per_block(10 ** 9, 1) == 64 << 20
    assert tables._rows_per_block(10 ** 9, 0) == 64 << 20         # rows of no bytes


# --------------------------------------------------------------------------- the first line
def test_a_first_line_longer_than_the_1_mib_head_is_refused_by_name(tmp_path):
    """A header the 1 MiB head cuts would give cut column names and start the rows inside
    it; it is refused, saying why and what to do. A first line that ends within the head,
    even right before a 1 MiB row, is read."""
    p = tmp_path / "wide.csv"
    # ten long names make the header long (a wide table's many short names read the same, only
    # slower; a name stays under the csv module's field limit of 128 KiB)
    p.write_text(",".join(["label"] + [c * 110_000 for c in "abcdefghij"]) + "\n" + ",".join("0" * 11) + "\n")
    assert _message(open_table, p) == (f"{p}: the first line is longer than 1 MiB (the most a CSV's header or "
                                       f"first row may be); save a table this wide as Parquet or NPY")
    p.write_text("a,label\n1," + "0" * (1 << 20) + "\n")  # the head ends inside the row
    assert [(x.tolist(), y.tolist()) for x, y in open_table(p).batches()] == [([[1.0]], [0.0])]
    p.write_text("a,label")  # a short file whose first line has no line end: no rows
    assert _message(lambda: list(open_table(p).batches())) == f"{p}: no data rows after the header; the dataset is empty"
    # at the bound: a first line of exactly 1 MiB is read (its line end the byte after the window),
    # a file of exactly 1 MiB that is its first line is not cut, one byte more is refused
    header = ",".join([c * 120_000 for c in "abcdefgh"] + ["i" * 88_562, "label"])  # exactly 1 MiB
    assert len(header) == 1 << 20
    row = "7,7,7,7,7,7,7,7,5,1"
    for end in ("\n", "\r\n"):  # its line end the byte (or two) after the window
        p.write_text(header + end + row + end)
        [(x, y)] = list(open_table(p).batches())
        assert x.tolist() == [[7.0] * 8 + [5.0]] and y.tolist() == [1.0]
    p.write_text(header)
    assert _message(lambda: list(open_table(p).batches())) == f"{p}: no data rows after the header; the dataset is empty"
    p.write_text("x" + header + "\n" + row + "\n")
    assert _message(open_table, p) == (f"{p}: the first line is longer than 1 MiB (the most a CSV's header or "
                                       f"first row may be); save a table this wide as Parquet or NPY")


def test_a_quoted_carriage_return_in_the_header_is_a_character_of_its_name(tmp_path):
    """The rows start after the header's line end, not after a \\r inside a quoted name."""
    p = tmp_path / "t.csv"
    p.write_bytes(b'"a\rb",label\n1,0\n2,1\n')
    t = open_table(p)
    assert t.columns == ["a\rb"]
    assert [(x.tolist(), y.tolist()) for x, y in t.batches()] == [([[1.0], [2.0]], [0.0, 1.0])]


class _FailingFS:
    """The local file system whose ``fail_at``-th opened stream fails to open (a file removed
    or a remote store's error between two reads of the same table)."""

    def __init__(self, fail_at=None):
        self.fs, self.opened, self.fail_at = pafs.LocalFileSystem(), 0, fail_at

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_input_stream(self, path, compression=None):
        self.opened += 1
        if self.opened == self.fail_at:
            raise OSError("boom")
        return self.fs.open_input_stream(path, compression=compression)


@pytest.mark.parametrize("text", ["a,label\n1,0\n2,1\n", "a,label\n1,0\nx,1\n"])  # read whole; diagnosed
def test_each_read_of_a_csv_that_fails_to_open_names_the_file(tmp_path, monkeypatch, text):
    """A CSV is opened several times (its head, the rows' offset, the rows, the diagnosis of a
    bad cell): whichever open fails, the message names the file and says what to do."""
    p = tmp_path / "t.csv"
    p.write_text(text)
    real = tables.resolve

    def read(fs):
        monkeypatch.setattr(tables, "resolve", lambda path: (fs, *real(path)[1:]))
        try:
            return [(x.tolist(), y.tolist()) for x, y in open_table(p).batches()]
        finally:
            monkeypatch.setattr(tables, "resolve", real)

    counting = _FailingFS()
    try:
        read(counting)
    except DataError:
        pass
    assert counting.opened >= 3
    for k in range(1, counting.opened + 1):
        assert _message(read, _FailingFS(k)) == f"{p}: cannot read (boom); check the path and its permissions", k


def test_each_read_of_a_csv_id_column_that_fails_to_open_names_the_file(tmp_path, monkeypatch):
    """The id column of a CSV is read by opening it twice (its header, then its rows): whichever
    open fails, the message names the file and says what to do."""
    p = tmp_path / "t.csv"
    p.write_text("id,label\n7,0\n8,1\n")
    real = tables.resolve

    def read(fs):
        monkeypatch.setattr(tables, "resolve", lambda path: (fs, *real(path)[1:]))
        try:
            return list(tables.text_column(p, "id"))
        finally:
            monkeypatch.setattr(tables, "resolve", real)

    counting = _FailingFS()
    assert read(counting) == [["7", "8"]]
    assert counting.opened == 2
    for k in (1, 2):
        assert _message(read, _FailingFS(k)) == f"{p}: cannot read (boom); check the path and its permissions", k


# --------------------------------------------------------------------------- the head's window
class _RecordingFS:
    """The local file system, recording the bytes each read of each opened stream returned."""

    def __init__(self):
        self.fs, self.reads = pafs.LocalFileSystem(), []

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_input_stream(self, path, compression=None):
        stream, reads = self.fs.open_input_stream(path, compression=compression), []
        self.reads.append(reads)

        class Recorded:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def read(self, n=None):
                data = stream.read(n)
                reads.append(len(data))
                return data

        return Recorded()


def test_a_csv_is_opened_from_its_first_1_mib_and_two_bytes(tmp_path, monkeypatch):
    """Opening a CSV reads its head twice (its first line, then the offset of the rows after
    it), each time the file's first 1 MiB and two bytes, however long the file is."""
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1," + "0" * (tables._HEAD_BYTES + 10) + "\n")
    fs, real = _RecordingFS(), tables.resolve
    monkeypatch.setattr(tables, "resolve", lambda path: (fs, *real(path)[1:]))
    assert open_table(p).columns == ["a"]
    assert fs.reads == [[tables._HEAD_BYTES + 2]] * 2


def _long_names(length: int) -> bytes:
    """A header's names ``a..a,...,j..j,label,`` and a last one of z's, ``length`` bytes in all
    (each name under the csv module's field limit of 128 KiB)."""
    names = ",".join([c * 100_000 for c in "abcdefghij"] + ["label"]) + ","
    return (names + "z" * (length - len(names))).encode()


@pytest.mark.parametrize("back", [1, 2, 3, 5, 40])
def test_a_byte_that_is_not_utf8_near_the_end_of_a_1_mib_header_is_refused(tmp_path, back):
    """A header of exactly 1 MiB whose last name holds a byte that is not UTF-8 ``back`` bytes
    before the header's end (within the head's last four bytes or not) is refused: its names
    are never read cut short before the byte."""
    header = _long_names(tables._HEAD_BYTES - back) + b"\xff" + b"y" * (back - 1)
    assert len(header) == tables._HEAD_BYTES
    p = tmp_path / "t.csv"
    p.write_bytes(header + b"\n" + b",".join([b"1"] * 12) + b"\n")
    assert _message(open_table, p) == f"{p}: not a text CSV file (invalid start byte); save it as UTF-8 CSV"


@pytest.mark.parametrize("char,inside", [("é", 1), ("\U0001F600", 1), ("\U0001F600", 2), ("\U0001F600", 3)])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["", "bom"])
def test_a_character_that_the_end_of_the_head_cuts_is_read_whole_with_the_rows(tmp_path, char, inside, bom):
    """A character of several bytes whose first ``inside`` bytes end the head (1 MiB and two
    bytes) is no error, after a BOM too (Excel's "CSV UTF-8"): the rows after the first line
    are read from the file, the character whole."""
    before = bom + b"a,label\n1,"
    row = b"\n2,"
    zeros = tables._HEAD_BYTES + 2 - inside - len(before) - len(row)
    p = tmp_path / "t.csv"
    p.write_bytes(before + b"0" * zeros + row + char.encode() + b"\n")
    t = open_table(p)
    assert t.columns == ["a"]
    assert [(x.tolist(), y.tolist()) for x, y in t.batches()] == [([[1.0], [2.0]], [0.0, char])]


def test_a_byte_that_is_no_character_at_the_end_of_the_head_is_refused(tmp_path):
    """A byte that starts no UTF-8 character, as the head's last byte, is the file's error,
    not a character the head cuts."""
    before = b"a,label\n1,"
    p = tmp_path / "t.csv"
    p.write_bytes(before + b"0" * (tables._HEAD_BYTES + 1 - len(before)) + b"\xff\n2,0\n")
    assert _message(open_table, p) == f"{p}: not a text CSV file (invalid start byte); save it as UTF-8 CSV"


@pytest.mark.parametrize("size", ["short", "1 MiB and a byte"])
def test_a_csv_that_ends_inside_a_character_within_its_head_is_refused(tmp_path, size):
    """Only the end of a full head (1 MiB and two bytes) can cut a character: a file that ends
    sooner, inside a character of two bytes, is not UTF-8 (so says its first read)."""
    zeros = 1 if size == "short" else tables._HEAD_BYTES - 10
    p = tmp_path / "t.csv"
    p.write_bytes(b"a,label\n1," + b"0" * zeros + b"\xc3")
    assert size == "short" or p.stat().st_size == tables._HEAD_BYTES + 1
    assert _message(open_table, p) == f"{p}: not a text CSV file (unexpected end of data); save it as UTF-8 CSV"


# --------------------------------------------------------------------------- the row count
@pytest.mark.parametrize("piece", [1, 2, 3, 1 << 20])
def test_rows_that_end_in_carriage_returns_are_counted_as_the_parse_yields_them(tmp_path, monkeypatch, piece):
    """Rows ended by \\r alone after a header ended by \\n, and a last line of whitespace: a
    piece's last line end is its last \\r (not its first), and a \\r that starts a piece ends
    the line the piece before left open, which the whitespace after it does not reopen."""
    monkeypatch.setattr(tables, "_COUNT_BYTES", piece)
    p = tmp_path / "d.csv"
    p.write_bytes(b"a,b,label\n1,2,0\r3,4,1\r  \t ")
    t = open_table(p)
    assert (t.count_rows(), t.counted) == (2, True)
    assert [x.tolist() for x, _ in t.batches()] == [[[1.0, 2.0], [3.0, 4.0]]]


@pytest.mark.parametrize("tail", [b"", b"  \t "])
def test_a_csv_of_a_header_alone_counts_no_rows(tmp_path, tail):
    """Nothing after the header, or whitespace without a line end: no row is counted (the
    parse yields none)."""
    p = tmp_path / "d.csv"
    p.write_bytes(b"a,b,label\n" + tail)
    assert open_table(p).count_rows() == 0
    assert _message(lambda: list(open_table(p).batches())) == f"{p}: no data rows after the header; the dataset is empty"


@pytest.mark.parametrize("piece", [1, 1 << 20])
def test_a_quote_as_the_first_byte_after_the_header_or_of_a_piece_stops_the_count(tmp_path, monkeypatch, piece):
    """A quote right after the header (the first byte the count reads; with one-byte pieces,
    every quote is the first byte of its piece): the rows are not counted ahead."""
    monkeypatch.setattr(tables, "_COUNT_BYTES", piece)
    p = tmp_path / "d.csv"
    p.write_bytes(b'a,b,label\n"1",2,0\n3,4,1\n')
    t = open_table(p)
    assert (t.count_rows(), t.counted) == (None, False)
    assert sum(len(x) for x, _ in t.batches()) == 2


def test_the_cores_are_the_affinity_else_the_cpu_count_and_at_least_one(monkeypatch):
    """Where the platform has no affinity (macOS), the machine's count; an unknown count is one core."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert tables._cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert tables._cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert tables._cores() == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert tables._cores() == 1
