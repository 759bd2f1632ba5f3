"""``lr_core.tables.text_column``: the id column ``lrjob predict --id-column`` passes through as
written, read from a CSV, a Parquet file, a directory or a glob of them, in blocks, and refused
in one line where a file has no such column (docs/design.md#data)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from lr_core import tables
from lr_core.errors import DataError
from lr_core.tables import text_column


def _message(path, column, **kw) -> str:
    with pytest.raises(DataError) as e:
        list(text_column(path, column, **kw))
    return str(e.value)


def test_a_csv_id_is_its_text_in_blocks_of_the_given_size(tmp_path):
    """``007`` stays ``007``; cells are stripped; a quoted comma is part of the id; a row too
    short to reach the column gives an empty id; a BOM is not part of the first name."""
    p = tmp_path / "t.csv"
    p.write_bytes("\ufeffkey , a,label\n007,1,0\n x ,2,1\n\"a,b\",3,0\n4.50,4,1\n\n9\n".encode())
    assert list(text_column(p, "key", block_rows=2)) == [["007", "x"], ["a,b", "4.50"], ["9"]]
    assert list(text_column(p, "a", block_rows=2)) == [["1", "2"], ["3", "4"], [""]]
    assert list(text_column(p, "a", block_rows=5)) == [["1", "2", "3", "4", ""]]
    assert list(text_column(p, "a")) == [["1", "2", "3", "4", ""]]   # one block of BLOCK_ROWS at most


def test_a_csv_without_the_column_or_a_header_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,0\n")
    assert _message(p, "id") == f"{p}: no column 'id' for the id (columns: a, label); name the id column in the header"
    names = [f"c{i}" for i in range(8)] + ["n" * 50]
    p.write_text(",".join(names) + "\n" + ",".join("1" * 9) + "\n")
    assert _message(p, "id") == (f"{p}: no column 'id' for the id (columns: c0, c1, c2, c3, c4, c5, c6, c7, ...); "
                                 f"name the id column in the header")
    p.write_text(",".join(["a", "n" * 50]) + "\n1,2\n")
    assert _message(p, "id") == (f"{p}: no column 'id' for the id (columns: a, nnnnnnnnnnnnnnnnnnnnn... (50 "
                                 f"characters)); name the id column in the header")
    p.write_text("1,0\n2,1\n")  # a first row of numbers is data, not names
    assert _message(p, "1") == f"{p}: no column '1' for the id (no header row); name the id column in the header"
    p.write_text("customer_id,a,label\nc1,1,0\n")  # a misspelt name, or another case: the near column named
    for typed in ("customerid", "Customer_ID", "custmer_id"):
        assert _message(p, typed) == (f"{p}: no column {typed!r} for the id (columns: customer_id, a, label); "
                                      f"did you mean 'customer_id'?")
    p.write_text("ID,a,id,label\nc1,1,d1,0\n")  # names alike but for case: the first in the file
    assert _message(p, "Id") == f"{p}: no column 'Id' for the id (columns: ID, a, id, label); did you mean 'ID'?"
    p.write_text("id,label\n1,0\n" + "x" * 200_000 + ",1\n")  # a cell past the csv module's field limit
    assert _message(p, "id") == f"{p}: malformed CSV (field larger than field limit (131072))"


def _parquet(path, **columns):
    pq.write_table(pa.table(columns), path)


def test_a_parquet_id_is_its_text_in_blocks_file_after_file(tmp_path):
    _parquet(tmp_path / "a.parquet", key=pa.array([7, 8, 9]), x=pa.array([1.0, 2.0, 3.0]))
    assert list(text_column(tmp_path / "a.parquet", "key", block_rows=2)) == [["7", "8"], ["9"]]
    assert list(text_column(tmp_path / "a.parquet", "key")) == [["7", "8", "9"]]
    _parquet(tmp_path / "B.PQ", key=pa.array(["x", "y"]), x=pa.array([4.0, 5.0]))
    assert list(text_column(tmp_path / "B.PQ", "key")) == [["x", "y"]]
    d = tmp_path / "d"
    d.mkdir()
    _parquet(d / "part-0.parquet", key=pa.array(["a", "b", "c"]))
    _parquet(d / "part-1.parquet", key=pa.array(["d"]))
    assert list(text_column(d, "key", block_rows=2)) == [["a", "b"], ["c"], ["d"]]
    assert list(text_column(f"{d}/part-*.parquet", "key")) == [["a", "b", "c"], ["d"]]
    assert _message(f"{d}/none-*.parquet", "key") == f"{d}/none-*.parquet: no file matches this pattern; check data.path"
    assert _message(d / "gone.csv", "key") == f"{d / 'gone.csv'}: file not found; check data.path / data.val_path"
    (tmp_path / "empty").mkdir()
    assert _message(tmp_path / "empty", "key") == (f"{tmp_path / 'empty'}: a directory needs .parquet files, or x.npy "
                                                   f"and y.npy (found: nothing); or point data.path at a .csv, "
                                                   f".parquet or .npz file")


def test_a_parquet_without_the_column_or_with_a_null_id_is_one_line(tmp_path):
    p = tmp_path / "a.parquet"
    _parquet(p, x=pa.array([1.0]), label=pa.array([0]))
    assert _message(p, "id") == f"{p}: no column 'id' for the id (columns: x, label)"
    assert _message(p, "Label") == f"{p}: no column 'Label' for the id (columns: x, label); did you mean 'label'?"
    _parquet(p, **{f"c{i}": pa.array([1.0]) for i in range(8)}, **{"n" * 50: pa.array([1.0])})
    assert _message(p, "id") == f"{p}: no column 'id' for the id (columns: c0, c1, c2, c3, c4, c5, c6, c7, ...)"
    _parquet(p, **{"n" * 50: pa.array([1.0])})
    assert _message(p, "id") == f"{p}: no column 'id' for the id (columns: nnnnnnnnnnnnnnnnnnnnn... (50 characters))"
    _parquet(p, id=pa.array(["a", "b", None, "d"]))
    null = ": the id column 'id' is null; every row needs an id: fill it in, or drop the id option (rows are then numbered)"
    assert _message(p, "id") == f"{p}: row 3{null}"
    assert _message(p, "id", block_rows=2) == f"{p}: row 3{null}"   # counted across blocks
    d = tmp_path / "d"
    d.mkdir()
    _parquet(d / "part-0.parquet", id=pa.array(["a", "b"]))
    _parquet(d / "part-1.parquet", id=pa.array(["c", None]))
    # of several files, the one with the null and its own row
    assert _message(d, "id") == f"{d / 'part-1.parquet'}: row 2{null}"


def test_an_npy_or_npz_has_no_id_column(tmp_path):
    msg = ("{}: an NPY or NPZ file names no columns, so it has no id column 'id'; drop the id option "
           "(rows are then numbered), or give a CSV or Parquet file")
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    np.savez(tmp_path / "t.npz", x=np.zeros((2, 2), np.float32))
    assert _message(tmp_path / "x.npy", "id") == msg.format(tmp_path / "x.npy")
    assert _message(tmp_path / "t.npz", "id") == msg.format(tmp_path / "t.npz")
    assert _message(tmp_path, "id") == msg.format(tmp_path)  # a directory of x.npy (and y.npy)


def test_a_list_of_exactly_eight_column_names_is_shown_whole(tmp_path):
    """The ``, ...`` of a missing id's message stands for names past the eighth: eight names are all shown."""
    names = [f"c{i}" for i in range(8)]
    p = tmp_path / "t.csv"
    p.write_text(",".join(names) + "\n" + ",".join("1" * 8) + "\n")
    assert _message(p, "id") == (f"{p}: no column 'id' for the id (columns: {', '.join(names)}); "
                                 f"name the id column in the header")
    q = tmp_path / "t.parquet"
    _parquet(q, **{n: pa.array([1.0]) for n in names})
    assert _message(q, "id") == f"{q}: no column 'id' for the id (columns: {', '.join(names)})"


def test_a_bom_before_a_blank_first_line_starts_no_record(tmp_path):
    """The rows are decoded as the head is: a BOM is dropped, so the blank line after it is no
    record and the header is not read as an id."""
    p = tmp_path / "t.csv"
    p.write_bytes(b"\xef\xbb\xbf\nid,label\n007,0\n8,1\n")
    assert list(text_column(p, "id")) == [["007", "8"]]


def test_a_line_end_quoted_in_a_csv_id_is_kept_as_written(tmp_path):
    """The csv module gets the line ends as the file writes them: a quoted \\r\\n or \\r in an id stays."""
    p = tmp_path / "t.csv"
    p.write_bytes(b'id,label\n"a\r\nb",0\n"c\rd",1\n')
    assert list(text_column(p, "id")) == [["a\r\nb", "c\rd"]]


def test_a_parquet_id_is_read_by_name_wherever_its_column_is(tmp_path):
    _parquet(tmp_path / "a.parquet", x=pa.array([1.5, 2.5]), key=pa.array(["k1", "k2"]), label=pa.array([0, 1]))
    assert list(text_column(tmp_path / "a.parquet", "key")) == [["k1", "k2"]]


def test_a_parquet_id_is_read_through_the_tables_own_file_system(tmp_path, monkeypatch):
    """A store's path (``bucket/a.parquet`` of s3://) is opened by its file system, not as a local path."""
    store = tmp_path / "store"
    (store / "bucket").mkdir(parents=True)
    _parquet(store / "bucket" / "a.parquet", key=pa.array(["k1", "k2"]))
    fs = pafs.SubTreeFileSystem(str(store), pafs.LocalFileSystem())
    monkeypatch.setattr(tables, "resolve", lambda path: (fs, "bucket/a.parquet", "s3://bucket/a.parquet"))
    monkeypatch.chdir(tmp_path)  # no local bucket/a.parquet here
    assert list(text_column("s3://bucket/a.parquet", "key")) == [["k1", "k2"]]


def test_a_null_id_past_the_second_block_is_counted_from_the_first_row(tmp_path):
    p = tmp_path / "a.parquet"
    _parquet(p, id=pa.array(["a", "b", "c", "d", None]))
    assert _message(p, "id", block_rows=2) == (f"{p}: row 5: the id column 'id' is null; every row needs an id: "
                                               f"fill it in, or drop the id option (rows are then numbered)")


def test_a_null_id_in_a_single_file_names_the_path_as_given(tmp_path):
    """One file given by a file:// URI is named by that URI, not by the local path it resolves to."""
    p = tmp_path / "a.parquet"
    _parquet(p, id=pa.array([None, "b"]))
    uri = f"file://{p}"
    assert _message(uri, "id") == (f"{uri}: row 1: the id column 'id' is null; every row needs an id: "
                                   f"fill it in, or drop the id option (rows are then numbered)")
