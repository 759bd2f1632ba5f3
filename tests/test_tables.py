"""User tables read by pyarrow (lr_core/tables.py): CSV, Parquet, NPY, NPZ, local and on a
real S3-compatible server on loopback; every bad file is one line naming file, row or column."""
from __future__ import annotations

import os

import numpy as np
import pytest

import pyarrow as pa  # noqa: E402  (requirements.txt; .ci/install installs it: missing is a failure)
import pyarrow.parquet as pq  # noqa: E402

from lr_core.data import load_dataset, read_features_file  # noqa: E402
from lr_core.errors import DataError  # noqa: E402
from lr_core.tables import open_table, read_all  # noqa: E402


def _read(path, **kw):
    return read_features_file(path, **kw)


# --------------------------------------------------------------------------- CSV
def test_csv_reads_like_the_exact_reader(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("\ufeffa, b ,label\n\n1, 2.5 ,0\n3,4e1,1\n-0.5,7,cat\n".encode())
    x, y, columns = _read(p)
    assert columns == ["a", "b"]
    assert x.dtype == np.float32 and x.tolist() == [[1.0, 2.5], [3.0, 40.0], [-0.5, 7.0]]
    assert list(y) == [0.0, 1.0, "cat"]


def test_csv_without_header_numbers_its_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2\n3,4\n")
    x, y, columns = _read(p, label_column=None, require_labels=False)
    assert y is None and columns == ["column 1", "column 2"] and x.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("text,message", [
    ("a,b,label\n1,2,0\n3,x,1\n", "line 3, column 'b': 'x' is not a number"),
    ("a,b,label\n1,2,0\n3,,1\n", "line 3, column 'b': '' is not a number"),
    ("a,b,label\n1,2,0\n3,4\n", "line 3 has 2 columns, expected 3"),
    ("a,b,label\n", "no data rows after the header"),
    ("", "empty file"),
])
def test_csv_errors_name_the_line_and_column(tmp_path, text, message):
    p = tmp_path / "d.csv"
    p.write_text(text)
    with pytest.raises(DataError) as err:
        _read(p)
    assert str(err.value).startswith(f"{p}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_csv_error_in_a_late_block_names_its_line(tmp_path):
    p = tmp_path / "big.csv"
    rows = [f"{i},{i % 7},{i % 2}" for i in range(30000)]
    rows[25000] = "1,oops,0"
    p.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"line 25002, column 'b': 'oops' is not a number"):
        _read(p)


# --------------------------------------------------------------------------- Parquet
def _parquet(path, n=10, d=3, dtype=np.float64, label=True, seed=0):
    rng = np.random.default_rng(seed)
    cols = {f"f{j}": (rng.integers(0, 255, n) if dtype == np.uint8 else rng.standard_normal(n)).astype(dtype)
            for j in range(d)}
    if label:
        cols["label"] = rng.integers(0, 2, n)
    pq.write_table(pa.table(cols), path)
    return cols


def test_parquet_file_directory_and_glob(tmp_path):
    a = _parquet(tmp_path / "part-0.parquet", 10, seed=1)
    b = _parquet(tmp_path / "part-1.parquet", 5, seed=2)
    want = np.column_stack([np.concatenate([a[f"f{j}"], b[f"f{j}"]]) for j in range(3)]).astype(np.float32)
    for path in (tmp_path, tmp_path / "part-*.parquet"):
        x, y, columns = _read(path)
        assert columns == ["f0", "f1", "f2"] and np.array_equal(x, want)
        assert np.array_equal(y, np.concatenate([a["label"], b["label"]]))
    x, _, _ = _read(tmp_path / "part-1.parquet", features=["f2", "f0"])
    assert np.array_equal(x, np.column_stack([b["f2"], b["f0"]]).astype(np.float32))


def test_parquet_list_columns_and_uint8_stay_compact(tmp_path):
    img = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(img.ravel()), 6)
    pq.write_table(pa.table({"pixels": fixed, "label": [0, 1, 0, 1]}), tmp_path / "fixed.parquet")
    x, y, columns = _read(tmp_path / "fixed.parquet", features="pixels")
    assert x.dtype == np.uint8 and np.array_equal(x, img) and columns[0] == "pixels[0]"
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0, 4.0]], "label": [0, 1]}), tmp_path / "var.parquet")
    assert _read(tmp_path / "var.parquet", features="v")[0].tolist() == [[1, 2], [3, 4]]
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0]], "label": [0, 1]}), tmp_path / "ragged.parquet")
    with pytest.raises(DataError, match="row 2, column 'v': 1 values, the first row has 2"):
        _read(tmp_path / "ragged.parquet", features="v")


@pytest.mark.parametrize("make,kw,message", [
    (lambda p: _parquet(p, label=False), {}, "no column 'label'"),
    (lambda p: _parquet(p), {"features": ["f0", "nope"]}, "no column 'nope' for data.features"),
    (lambda p: pq.write_table(pa.table({"s": ["a", "b"], "label": [0, 1]}), p), {},
     "column 's' has type string, features must be numeric"),
    (lambda p: pq.write_table(pa.table({"f": [1.0, None, 2.0], "label": [0, 1, 0]}), p), {},
     "row 2, column 'f': missing value"),
    (lambda p: p.write_bytes(b"PAR1 not really"), {}, "not a readable Parquet file"),
])
def test_parquet_errors(tmp_path, make, kw, message):
    p = tmp_path / "t.parquet"
    make(p)
    with pytest.raises(DataError) as err:
        _read(p, **kw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_directory_without_tables_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"a directory needs .parquet files, or x.npy and y.npy \(found: notes.txt\)"):
        _read(tmp_path)


# --------------------------------------------------------------------------- NumPy
def test_npy_pair_directory_and_truncation(tmp_path):
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    table = open_table(tmp_path)
    got = list(table.batches(4))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    xa, ya = read_all(table)
    assert xa.dtype == np.float32 and np.array_equal(xa, x) and list(ya) == [0, 1] * 5
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-20])
    with pytest.raises(DataError, match=r"x.npy: truncated .npy file: 10 rows declared"):
        read_all(open_table(tmp_path))
    os.remove(tmp_path / "y.npy")
    with pytest.raises(DataError, match="has x.npy but no y.npy"):
        open_table(tmp_path)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"missing.parquet: file not found; check data.path"):
        _read(tmp_path / "missing.parquet")


# --------------------------------------------------------------------------- object storage
# ``s3``: the moto server fixture of conftest.py


def test_s3_parquet_and_csv_read_like_local_files(s3, tmp_path):
    fs, query = s3
    cols = _parquet(tmp_path / "t.parquet", 50, seed=3)
    with open(tmp_path / "t.parquet", "rb") as src, fs.open_output_stream("data/t.parquet") as dst:
        dst.write(src.read())
    with fs.open_output_stream("data/t.csv") as dst:
        dst.write(b"a,label\n1,0\n2,1\n")
    x, y, columns = _read(f"s3://data/t.parquet?{query}")
    assert columns == ["f0", "f1", "f2"] and np.array_equal(y, cols["label"])
    assert np.array_equal(x, _read(tmp_path / "t.parquet")[0])
    assert _read(f"s3://data/t.csv?{query}")[0].tolist() == [[1.0], [2.0]]
    ds = load_dataset("parquet", kind="binary", num_classes=2, seed=0, path=f"s3://data/t.parquet?{query}")
    assert len(ds.x_train) + len(ds.x_val) == 50
    with pytest.raises(DataError) as err:
        _read(f"s3://data/missing.parquet?{query}")
    assert str(err.value) == "s3://data/missing.parquet: file not found; check data.path / data.val_path"


# --------------------------------------------------------------------------- exact texts and edges
# (the mutation run judges lr_core.tables by these: .ci/mutants_scope.py)
from lr_core import tables  # noqa: E402


def _err(fn, *a, **kw) -> str:
    with pytest.raises(DataError) as err:
        fn(*a, **kw)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_uri_display_hides_credentials_and_query_and_local_paths_are_absolute(tmp_path, monkeypatch):
    assert tables.display("s3://u:p@bucket/a/b.csv?endpoint_override=h:1") == "s3://bucket/a/b.csv"
    assert tables.display("s3://bucket") == "s3://bucket"
    assert tables.display("gs://b/k?x=1?y") == "gs://b/k"
    assert tables.display("s3://bucket/dir@x/k.csv") == "s3://bucket/dir@x/k.csv"  # an @ in a key is no login
    assert tables.display("s3://u:p@bucket/a://b") == "s3://bucket/a://b"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert tables.display("~/d.csv") == str(tmp_path / "d.csv")
    assert tables.display("rel.csv") == str(tmp_path / "rel.csv")
    assert tables.is_uri("file:///x") and not tables.is_uri("/a:b/c")


def test_uri_that_pyarrow_cannot_open_is_one_line(tmp_path):
    text = _err(open_table, "nope://u:secret@host/t.csv?token=secret")
    assert text.startswith("nope://host/t.csv: cannot open this URI (Unrecognized filesystem type in URI: "
                           "nope://host/t.csv); ") and "secret" not in text
    assert text.endswith("); check its scheme (s3://, gs://, hdfs://, file://), its options (a server other "
                         "than AWS: ?endpoint_override=host:port&scheme=http) and the credentials in the environment")


def test_uri_file_scheme_reads_and_names_part_files_with_the_scheme(tmp_path):
    _parquet(tmp_path / "part-0.parquet", 4, seed=1)
    pq.write_table(pa.table({"f0": [1.0, None], "f1": [1.0, 2.0], "f2": [1.0, 2.0], "label": [0, 1]}),
                   tmp_path / "part-1.parquet")
    uri = f"file://{tmp_path}"
    assert open_table(uri).where == uri
    text = _err(read_all, open_table(uri))
    assert text == f"file://{tmp_path}/part-1.parquet: row 2, column 'f0': missing value; fill or drop it first"


def test_uri_first_line_of_an_error():
    assert tables._first_line(ValueError("\n  \nfirst one\nsecond")) == "first one"
    assert tables._first_line(ValueError("")) == "ValueError"
    assert tables._first_line(ValueError("  ")) == "ValueError"
    assert tables._first_line(ValueError("x" * 400)) == "x" * 300


def test_uri_unreachable_storage_is_one_line():
    class Down:
        def get_file_info(self, path):
            raise OSError("connection refused\ndetails")

    text = _err(tables._info, Down(), "b/k", "s3://b/k")
    assert text == ("s3://b/k: cannot reach (connection refused); check the URI, its endpoint (a server other than "
                    "AWS: ?endpoint_override=host:port&scheme=http) and the credentials")

    class Refused:
        def get_file_info(self, selector):
            raise PermissionError("access denied")

    assert _err(tables._glob, Refused(), "b/*.parquet", "s3://b/*.parquet") == (
        "s3://b/*.parquet: cannot list (access denied); check the URI and the credentials")


def test_fingerprint_names_sizes_and_times_of_every_file(tmp_path):
    a = _parquet(tmp_path / "d" / "a.parquet" if (tmp_path / "d").mkdir() is None else None, 3)
    assert a
    (tmp_path / "d" / "sub").mkdir()
    _parquet(tmp_path / "d" / "sub" / "b.parquet", 2)
    (tmp_path / "d" / "cache").mkdir()
    (tmp_path / "d" / "cache" / "c.bin").write_bytes(b"123")

    def fp(p):
        st = os.stat(p)
        return [str(p), st.st_size, st.st_mtime_ns]

    d = tmp_path / "d"
    assert tables.fingerprint(d / "a.parquet") == [fp(d / "a.parquet")]
    assert tables.fingerprint(d) == [fp(d / "a.parquet"), fp(d / "cache" / "c.bin"), fp(d / "sub" / "b.parquet")]
    assert tables.fingerprint(d, exclude=str(d / "cache")) == [fp(d / "a.parquet"), fp(d / "sub" / "b.parquet")]
    assert tables.fingerprint(d, exclude=str(d / "cach")) == tables.fingerprint(d)  # a folder, not a prefix
    assert tables.fingerprint(d / "*.parquet") == [fp(d / "a.parquet")]
    assert tables.fingerprint(d / "nope.csv") == [[str(d / "nope.csv"), "unreadable"]]
    assert tables.fingerprint(d / "*.nope") == [[str(d / "*.nope"), "unreadable"]]


def test_glob_star_stays_in_one_folder_and_other_wildcards_work(tmp_path):
    for rel in ("a1.parquet", "a2.parquet", "b.parquet", "sub/a3.parquet", "sub/deep/a4.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        _parquet(tmp_path / rel, 2)
    names = lambda pattern: [os.path.relpath(i.path, tmp_path) for i in tables._glob(  # noqa: E731
        *tables.resolve(tmp_path / pattern)[:2], "w")]
    assert names("*.parquet") == ["a1.parquet", "a2.parquet", "b.parquet"]
    assert names("a*.parquet") == ["a1.parquet", "a2.parquet"]
    assert names("*/*.parquet") == ["sub/a3.parquet"]
    assert names("sub/*/*.parquet") == ["sub/deep/a4.parquet"]
    assert names("a?.parquet") == ["a1.parquet", "a2.parquet"]
    assert names("[b].parquet") == ["b.parquet"]
    assert names("s?b/a3.parquet") == ["sub/a3.parquet"]
    for rel in ("d1/x.parquet", "d2/y.parquet", "d3/z.parquet"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        _parquet(tmp_path / rel, 2)
    assert names("d[12]/*.parquet") == ["d1/x.parquet", "d2/y.parquet"]  # a wildcard in a folder's name
    assert names("d?/?.parquet") == ["d1/x.parquet", "d2/y.parquet", "d3/z.parquet"]
    assert open_table(tmp_path / "a?.parquet").rows == 4
    assert _err(open_table, tmp_path / "z*.parquet") == f"{tmp_path}/z*.parquet: no file matches this pattern; " \
                                                        f"check data.path"
    assert _err(open_table, tmp_path / "gone" / "*.parquet") == (
        f"{tmp_path}/gone/*.parquet: no file matches this pattern; check data.path")


def test_a_directory_lists_what_it_found_and_takes_pq_in_any_case(tmp_path):
    for i in range(7):
        (tmp_path / f"n{6 - i}.txt").write_text("x")
    assert _err(open_table, tmp_path) == (
        f"{tmp_path}: a directory needs .parquet files, or x.npy and y.npy (found: n0.txt, n1.txt, n2.txt, "
        f"n3.txt, n4.txt); or point data.path at a .csv, .parquet or .npz file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "(found: nothing)" in _err(open_table, empty)
    _parquet(tmp_path / "B.PQ", 3, seed=1)
    _parquet(tmp_path / "a.Parquet", 2, seed=2)
    table = open_table(tmp_path)
    assert table.rows == 5 and [len(x) for x, _ in table.batches()] == [3, 2]  # B.PQ sorts first


def test_open_by_ending_pq_npz_npy_and_csv_default(tmp_path):
    _parquet(tmp_path / "t.pq", 3)
    assert open_table(tmp_path / "t.pq").rows == 3
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    assert _err(open_table, tmp_path / "x.npy") == (
        f"{tmp_path}/x.npy: .npy holds features only; training needs a directory with x.npy and y.npy, an .npz "
        f"with arrays x and y, or a table with a label column")
    t = open_table(tmp_path / "x.npy", require_labels=False)
    assert t.rows == 3 and not t.has_labels and t.columns == ["column 1", "column 2"]
    (tmp_path / "t.txt").write_text("a,label\n1,0\n")
    assert read_all(open_table(tmp_path / "t.txt"))[0].tolist() == [[1.0]]
    with open(tmp_path / "T.NPZ", "wb") as f:
        np.savez(f, x=np.ones((2, 2)), y=np.zeros(2))
    assert open_table(tmp_path / "T.NPZ").rows == 2


def test_block_rows_default_and_where_each_block_comes_from(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "BLOCK_ROWS", 4)
    np.save(tmp_path / "x.npy", np.arange(20.0).reshape(10, 2))
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    table = open_table(tmp_path)
    seen = [(len(x), table.block_where, table.block_offset) for x, _ in table.batches()]
    assert seen == [(4, str(tmp_path), 0), (4, str(tmp_path), 4), (2, str(tmp_path), 8)]
    assert [len(x) for x, _ in table.batches(3)] == [3, 3, 3, 1]
    d = tmp_path / "pq"
    d.mkdir()
    _parquet(d / "p0.parquet", 5, seed=1)
    _parquet(d / "p1.parquet", 3, seed=2)
    table = open_table(d)
    seen = [(len(x), table.block_where, table.block_offset) for x, _ in table.batches(2)]
    assert seen == [(2, f"{d}/p0.parquet", 0), (2, f"{d}/p0.parquet", 2), (1, f"{d}/p0.parquet", 4),
                    (2, f"{d}/p1.parquet", 0), (1, f"{d}/p1.parquet", 2)]
    one = open_table(d / "p0.parquet")
    assert [one.block_where for _ in one.batches(2)] == [str(d / "p0.parquet")] * 3


def test_read_all_of_no_rows_and_of_several_blocks(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros((0, 3)))
    np.save(tmp_path / "y.npy", np.zeros(0, dtype=np.int64))
    x, y = read_all(open_table(tmp_path))
    assert x.shape == (0, 3) and x.dtype == np.float32 and y.shape == (0,)
    x, y = read_all(open_table(tmp_path / "x.npy", require_labels=False))
    assert x.shape == (0, 3) and y is None
    monkeypatch.setattr(tables, "BLOCK_ROWS", 2)
    np.save(tmp_path / "x.npy", np.arange(10.0).reshape(5, 2))
    np.save(tmp_path / "y.npy", np.arange(5))
    x, y = read_all(open_table(tmp_path))
    assert x.tolist() == np.arange(10.0).reshape(5, 2).tolist() and y.tolist() == [0, 1, 2, 3, 4]
    x, y = read_all(open_table(tmp_path / "x.npy", require_labels=False))
    assert len(x) == 5 and y is None
    monkeypatch.setattr(tables, "BLOCK_ROWS", 3)
    x, y = read_all(open_table(tmp_path))
    assert len(x) == 5 and y.tolist() == [0, 1, 2, 3, 4]


# CSV: headers, labels, features, physical lines
def test_csv_header_label_and_feature_choices(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(" a , b ,label, c\n1,2,x,3\n4,5,y,6\n")
    x, y, columns = _read(p)
    assert columns == ["a", "b", "c"] and x.tolist() == [[1, 2, 3], [4, 5, 6]] and list(y) == ["x", "y"]
    x, y, columns = _read(p, features="c")
    assert columns == ["c"] and x.tolist() == [[3], [6]]
    x, y, columns = _read(p, features=["c", "a"])
    assert columns == ["c", "a"] and x.tolist() == [[3, 1], [6, 4]]
    assert _err(_read, p, features=["a", "label"]) == (
        f"{p}: data.features names the label column 'label'; a model must not see its own label: remove it "
        f"from data.features")
    assert _err(_read, p, features=["a", "zz"]) == (
        f"{p}: no column 'zz' for data.features (columns: a, b, label, c); fix data.features")
    p.write_text("a,b,c\n1,2,3\n")
    x, y, columns = _read(p, require_labels=False)
    assert y is None and columns == ["a", "b", "c"]
    x, y, columns = _read(p, label_column=None, require_labels=False, features=["b"])
    assert columns == ["b"] and x.tolist() == [[2]]
    x, y, columns = _read(p, require_labels=False, features=["label"] if False else ["a"])
    assert columns == ["a"]
    wide = tmp_path / "w.csv"
    wide.write_text(",".join(f"c{i}" for i in range(9)) + "\n" + ",".join("1" * 9) + "\n")
    assert _err(_read, wide) == f"{wide}: no column 'label' (columns: c0, c1, c2, c3, c4, c5, c6, c7, ...); " \
                                f"set data.label_column"
    wide.write_text(",".join(f"c{i}" for i in range(8)) + "\n" + ",".join("1" * 8) + "\n")
    assert _err(_read, wide) == f"{wide}: no column 'label' (columns: c0, c1, c2, c3, c4, c5, c6, c7); " \
                                f"set data.label_column"
    only = tmp_path / "o.csv"
    only.write_text("label\n0\n1\n")
    x, y, columns = _read(only)
    assert x.shape == (2, 0) and x.dtype == np.float32 and columns == [] and list(y) == [0.0, 1.0]


def test_csv_without_header_rows_and_blank_lines_before_it(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2,0\n3,4,1\n")
    assert _err(_read, p) == (f"{p}: no header row, so label column 'label' cannot be found; add a header naming "
                              f"the columns")
    assert _err(_read, p, features=["a"], require_labels=False) == (
        f"{p}: no column 'a' for data.features (columns: ); fix data.features")
    p.write_text("\n \n1,2\n\n3,4\n")  # pyarrow skips empty lines, not blank ones: the reader skips them
    x, _, columns = _read(p, label_column=None, require_labels=False)
    assert x.tolist() == [[1, 2], [3, 4]] and columns == ["column 1", "column 2"]
    p.write_text("\n \n\na,label\n1,0\n\n2,1\n")
    x, y, _ = _read(p)
    assert x.tolist() == [[1], [2]] and list(y) == [0.0, 1.0]
    p.write_text("1,2\nx,3\n")
    assert _err(_read, p, label_column=None, require_labels=False) == (
        f"{p}: line 2, column 'column 1': 'x' is not a number; features must be numeric")
    p.write_text("a,label\n\n\n1,0\n\n2,1\nq,1\n")
    assert _err(_read, p) == f"{p}: line 7, column 'a': 'q' is not a number; features must be numeric"
    p.write_text('a,b,label\n1,"2\n",0\nx,1,1\n')
    assert _err(_read, p) == f"{p}: line 4, column 'a': 'x' is not a number; features must be numeric"
    p.write_text("a,b,label\n1,2,0\n3,4,5,1\n")
    assert _err(_read, p) == f"{p}: line 3 has 4 columns, expected 3; fix the row"


def test_csv_blocks_and_labels_as_text(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,label\n1,0\n2,True\n3, 2.5 \n4,\n5,1e0\n6, cat \n")
    table = open_table(p)
    blocks = list(table.batches(2))
    assert [len(x) for x, _ in blocks] == [2, 2, 2] and table.rows is None
    x, y = read_all(table)
    assert x.tolist() == [[1], [2], [3], [4], [5], [6]] and list(y) == [0.0, "True", 2.5, "", 1.0, "cat"]
    assert isinstance(y[0], float) and y.dtype == object
    p.write_text("a,label\n1,0\n2,1\n")
    assert read_all(open_table(p))[1].dtype == np.float64


def test_csv_encoding_and_csv_module_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"a,label\n1,0\n\xff,1\n" + b"2,0\n" * 10)
    assert _err(_read, p) == f"{p}: not a text CSV file (invalid start byte); save it as UTF-8 CSV"
    head = b"a,label\n" + b"1,0\n" * ((1 << 20) // 4)  # past the 1 MiB head: pyarrow finds it, then the diagnosis
    p.write_bytes(head + b"\xff,1\n")
    assert _err(_read, p) == f"{p}: not a text CSV file (invalid start byte); save it as UTF-8 CSV"
    # a character cut by the 1 MiB window is not an error (and the BOM still is not a cell)
    prefix = b"\xef\xbb\xbfa,label\n"
    k = ((1 << 20) - 1 - len(prefix) - 2 - 10) // 4
    m = (1 << 20) - 1 - len(prefix) - 4 * k - 2
    body = prefix + b"1,0\n" * k + b"1," + b"0" * m
    assert len(body) == (1 << 20) - 1
    p.write_bytes(body + "é\n".encode() + b"2,1\n")
    x, y, columns = _read(p)
    assert columns == ["a"] and y[-2] == "0" * m + "é" and y[-1] == 1.0 and len(x) == k + 2
    big = '"' + "z" * 140000 + '"'
    p.write_text(f"a,{big}\n1,0\n")
    assert _err(_read, p, require_labels=False) == f"{p}: malformed CSV (field larger than field limit (131072))"
    p.write_text(f"a,label\n1,0\n{big},1\n")
    assert _err(_read, p) == f"{p}: malformed CSV (field larger than field limit (131072))"


def test_csv_gzip_is_read(tmp_path):
    import gzip

    p = tmp_path / "d.csv.gz"
    p.write_bytes(gzip.compress(b"a,label\n1,0\n2,1\n"))
    assert _read(p)[0].tolist() == [[1], [2]]


# Parquet: columns, types, rows, part files
def test_parquet_features_labels_and_types(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"i": np.array([1, 2], dtype=np.int16), "b": [True, False],
                             "u": np.array([3, 4], dtype=np.uint8), "label": [True, False]}), p)
    x, y, columns = _read(p)
    assert columns == ["i", "b", "u"] and x.dtype == np.float32 and x.tolist() == [[1, 1, 3], [2, 0, 4]]
    assert y.dtype == np.float64 and y.tolist() == [1.0, 0.0]
    x, _, _ = _read(p, features="u")
    assert x.dtype == np.uint8 and x.tolist() == [[3], [4]]
    x, y, columns = _read(p, label_column=None, require_labels=False)
    assert columns == ["i", "b", "u", "label"] and y is None
    assert _err(_read, p, features=["i", "label"]) == (
        f"{p}: data.features names the label column 'label'; a model must not see its own label: remove it "
        f"from data.features")
    x, y, _ = _read(p, label_column="nope", require_labels=False, features=["i"])
    assert y is None and x.tolist() == [[1], [2]]
    pq.write_table(pa.table({"f": [1.0, 2.0], "label": ["1", "0"]}), p)
    assert _read(p)[1].dtype == np.float64
    pq.write_table(pa.table({"f": [1.0, 2.0], "label": ["cat", None]}), p)
    assert list(_read(p)[1]) == ["cat", ""]
    pq.write_table(pa.table({f"c{i}": [1.0] for i in range(9)}), p)
    assert _err(_read, p) == f"{p}: no column 'label' (columns: c0, c1, c2, c3, c4, c5, c6, c7, ...); " \
                             f"set data.label_column"
    assert _err(_read, p, features=["zz"], require_labels=False) == (
        f"{p}: no column 'zz' for data.features (columns: c0, c1, c2, c3, c4, c5, c6, c7, ...); fix data.features")
    pq.write_table(pa.table({f"c{i}": [1.0] for i in range(8)}), p)
    assert _err(_read, p) == f"{p}: no column 'label' (columns: c0, c1, c2, c3, c4, c5, c6, c7); " \
                             f"set data.label_column"
    assert _err(_read, p, features=["zz"], require_labels=False) == (
        f"{p}: no column 'zz' for data.features (columns: c0, c1, c2, c3, c4, c5, c6, c7); fix data.features")


def test_parquet_exact_errors(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"s": ["a", "b"], "label": [0, 1]}), p)
    assert _err(_read, p) == (f"{p}: column 's' has type string, features must be numeric; convert it, or leave "
                              f"it out with data.features")
    pq.write_table(pa.table({"v": [[1.0], [2.0]], "w": [1.0, 2.0], "label": [0, 1]}), p)
    assert _err(_read, p).startswith(f"{p}: column 'v' has type list<")
    p.write_bytes(b"PAR1 not really")
    assert _err(_read, p).startswith(f"{p}: not a readable Parquet file (Parquet magic bytes not found in footer")
    assert _err(_read, p).endswith("); write it with pyarrow.parquet.write_table or pandas.DataFrame.to_parquet")
    pq.write_table(pa.table({"f": [1.0, 2.0, 3.0, 4.0, None], "label": [0, 1, 0, 1, 0]}), p)
    assert _err(read_all, open_table(p)) == f"{p}: row 5, column 'f': missing value; fill or drop it first"
    table = open_table(p)
    with pytest.raises(DataError, match=r"row 5, column 'f'"):
        list(table.batches(2))


def test_parquet_part_files_rows_and_their_errors(tmp_path):
    _parquet(tmp_path / "p0.parquet", 4, seed=1)
    _parquet(tmp_path / "p1.parquet", 3, seed=2)
    assert open_table(tmp_path).rows == 7
    (tmp_path / "p2.parquet").write_bytes(b"PAR1 broken")
    text = _err(open_table, tmp_path)
    assert text.startswith(f"{tmp_path}: {tmp_path}/p2.parquet: not a readable Parquet file (Parquet magic bytes not found ")
    pq.write_table(pa.table({"f0": [1.0], "label": [0]}), tmp_path / "p2.parquet")
    text = _err(read_all, open_table(tmp_path))
    assert text.startswith(f"{tmp_path}/p2.parquet: cannot read ('Field \"f1\" does not exist in schema')")
    assert text.endswith(
        "); every file needs the same columns")
    pq.write_table(pa.table({"f0": [1.0, 2.0, 3.0], "f1": [1.0, 2.0, None], "f2": [1.0, 2.0, 3.0],
                             "label": [0, 1, 0]}), tmp_path / "p2.parquet")
    assert _err(lambda: list(open_table(tmp_path).batches(2))) == (
        f"{tmp_path}/p2.parquet: row 3, column 'f1': missing value; fill or drop it first")


def test_parquet_list_columns_exact_errors(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0, 4.0], None], "label": [0, 1, 0]}), p)
    assert _err(_read, p, features="v") == f"{p}: row 3, column 'v': missing value; fill or drop it first"
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0]], "label": [0, 1, 0, 1]}), p)
    assert _err(_read, p, features="v") == (f"{p}: row 4, column 'v': 1 values, the first row has 2; every row "
                                            f"needs the same number of features")
    with pytest.raises(DataError, match=r"row 4, column 'v': 1 values"):
        list(open_table(p, features="v").batches(3))
    pq.write_table(pa.table({"v": [["a"], ["b"]], "label": [0, 1]}), p)
    assert _err(_read, p, features="v") == f"{p}: column 'v' holds object values; features must be numeric"
    pq.write_table(pa.table({"v": pa.array([[1, 2, 3]] * 5, type=pa.list_(pa.int64())), "label": [0] * 5}), p)
    table = open_table(p, features="v")
    assert table.columns == ["v[0]", "v[1]", "v[2]"]
    x = read_all(table)[0]
    assert x.dtype == np.float32 and x.shape == (5, 3)
    pq.write_table(pa.table({"v": pa.array([], type=pa.list_(pa.float64())), "label": pa.array([], pa.int64())}), p)
    assert open_table(p, features="v").columns == []
    large = pa.array([[1.0, 2.0]], type=pa.large_list(pa.float64()))
    pq.write_table(pa.table({"v": large, "label": [0]}), p)
    assert _read(p, features="v")[0].tolist() == [[1.0, 2.0]]


# NumPy files
def test_npy_exact_errors_and_types(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(20.0).reshape(10, 2))
    np.save(tmp_path / "y.npy", np.arange(9))
    assert _err(open_table, tmp_path) == f"{tmp_path}: x.npy has 10 rows, y.npy 9 labels; they must match"
    np.save(tmp_path / "y.npy", np.arange(10).reshape(10, 1))
    assert _err(open_table, tmp_path) == (f"{tmp_path}/y.npy: labels must be a 1-D array, one per row, got shape "
                                          f"(10, 1)")
    np.save(tmp_path / "y.npy", np.arange(10))
    np.save(tmp_path / "x.npy", np.arange(10.0))
    assert _err(open_table, tmp_path) == (f"{tmp_path}/x.npy: features must be a 2-D C-order array "
                                          f"(rows x features), got shape (10,)")
    np.save(tmp_path / "x.npy", np.asfortranarray(np.arange(20.0).reshape(10, 2)))
    assert _err(open_table, tmp_path) == (f"{tmp_path}/x.npy: features must be a 2-D C-order array "
                                          f"(rows x features), got shape (10, 2)")
    np.save(tmp_path / "x.npy", np.array([[1, None]] * 10, dtype=object), allow_pickle=True)
    assert _err(open_table, tmp_path) == (f"{tmp_path}/x.npy: not a readable .npy array (it holds Python objects); "
                                          f"save numbers with np.save")
    (tmp_path / "x.npy").write_bytes(b"not numpy at all")
    assert _err(open_table, tmp_path).startswith(f"{tmp_path}/x.npy: not a readable .npy array (")
    x = np.arange(20.0).reshape(10, 2)
    np.save(tmp_path / "x.npy", x)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-20])
    # The header's shape is checked against the file's size when the table opens.
    assert _err(open_table, tmp_path) == (f"{tmp_path}/x.npy: truncated .npy file: 10 rows declared, "
                                          f"the data ends in row 9; write it again")
    np.save(tmp_path / "x.npy", np.arange(20, dtype=np.uint8).reshape(10, 2))
    np.save(tmp_path / "y.npy", np.arange(10)[::-1].copy())
    table = open_table(tmp_path)
    got = list(table.batches(3))
    assert [x.dtype for x, _ in got] == [np.uint8] * 4 and got[1][1].tolist() == [6, 5, 4]
    assert got[1][0].tolist() == [[6, 7], [8, 9], [10, 11]] and table.rows == 10
    np.save(tmp_path / "x.npy", np.arange(20, dtype=np.int32).reshape(10, 2))
    assert read_all(open_table(tmp_path))[0].dtype == np.float32


def test_npy_feature_dtype():
    for dtype, want in ((np.uint8, np.uint8), (np.int8, np.float32), (np.int64, np.float32),
                        (np.float64, np.float32), (np.float16, np.float32), (np.complex64, np.complex64),
                        (np.bool_, np.bool_), (np.uint16, np.float32)):
        assert tables._feature_dtype(np.zeros(2, dtype=dtype)).dtype == want, dtype
    u = np.zeros(3, dtype=np.uint8)
    assert tables._feature_dtype(u) is u


def test_npz_exact_errors_and_blocks(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, a=np.ones((2, 2)))
    assert _err(open_table, p) == f"{p}: no array 'x' (found ['a']); save with np.savez(path, x=..., y=...)"
    np.savez(p, x=np.ones((2, 2)))
    assert _err(open_table, p) == f"{p}: no array 'y' (found ['x']); save with np.savez(path, x=..., y=...)"
    t = open_table(p, require_labels=False)
    assert not t.has_labels and read_all(t)[1] is None and t.rows == 2
    np.savez(p, x=np.ones(3), y=np.zeros(3))
    assert _err(open_table, p) == f"{p}: array 'x' must be 2-D (rows x features), got shape (3,)"
    np.savez(p, x=np.ones((3, 2)), y=np.zeros(2))
    assert _err(open_table, p) == f"{p}: array 'y' must hold one label per row of x (3), got shape (2,)"
    np.savez(p, x=np.ones((3, 2)), y=np.zeros((3, 1)))
    assert _err(open_table, p) == f"{p}: array 'y' must hold one label per row of x (3), got shape (3, 1)"
    p.write_bytes(b"PK not a zip")
    text = _err(open_table, p)
    assert text == f"{p}: not a readable .npz file (not a zip archive); save with np.savez(path, x=..., y=...)"
    np.savez(p, x=np.arange(10.0).reshape(5, 2), y=np.arange(5))
    t = open_table(p)
    assert t.has_labels and [(x.tolist(), y.tolist()) for x, y in t.batches(2)][2] == ([[8.0, 9.0]], [4])


def test_open_errors_of_unreadable_paths(tmp_path):
    fs, inner, where = tables.resolve(tmp_path)
    for text in (_err(tables._open_stream, fs, inner, "w"), _err(tables._npy_reader, fs, inner, "w", 2)):
        assert text.startswith("w: cannot read (") and text.endswith("); check the path and its permissions")
        assert "is a directory" in text.lower()


def test_parquet_empty_tables_and_subfolders(tmp_path):
    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float64()), "label": pa.array([], pa.int64())}), p)
    x, y = read_all(open_table(p))
    assert x.shape == (0, 1) and y.shape == (0,)
    pq.write_table(pa.table({"a": pa.array([], pa.float64())}), p)
    x, y = read_all(open_table(p, require_labels=False))
    assert x.shape == (0, 1) and y is None
    assert _err(_read, p, features=["label"], require_labels=False) == (
        f"{p}: no column 'label' for data.features (columns: a); fix data.features")
    d = tmp_path / "hive"
    for part, n in (("year=1", 2), ("year=2", 3)):
        (d / part).mkdir(parents=True)
        _parquet(d / part / "p.parquet", n)
    assert open_table(d).rows == 5 and len(_read(d)[0]) == 5


def test_npz_and_npy_details(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((0, 2)), y=np.zeros(0))
    t = open_table(p)
    x, y = read_all(t)
    assert t.where == str(p) and t.columns == [] and x.shape == (0, 0) and y.shape == (0,)
    np.savez(p, x=np.zeros((0, 2)))
    assert read_all(open_table(p, require_labels=False))[1] is None
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    t = open_table(tmp_path / "x.npy", require_labels=False)
    assert t.where == str(tmp_path / "x.npy") and [t.block_where for _ in t.batches()] == [t.where]
    np.save(tmp_path / "y.npy", np.zeros(3))
    assert open_table(tmp_path).columns == ["column 1", "column 2"]
    (tmp_path / "b.npy").write_bytes(b"not numpy at all")
    assert _err(open_table, tmp_path / "b.npy", require_labels=False) == (
        f"{tmp_path}/b.npy: not a readable .npy array (the magic string is not correct; expected "
        f"b'\\x93NUMPY', got b'not nu')")
    # a one-byte row: the row a truncation ends in counts bytes as rows
    np.save(tmp_path / "u.npy", np.arange(10, dtype=np.uint8).reshape(10, 1))
    raw = (tmp_path / "u.npy").read_bytes()
    (tmp_path / "u.npy").write_bytes(raw[:-3])
    assert _err(open_table, tmp_path / "u.npy", require_labels=False) == (
        f"{tmp_path}/u.npy: truncated .npy file: 10 rows declared, the data ends in row 8; write it again")
    # a 1-D array's header may say Fortran order: it is the same array
    with open(tmp_path / "y.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": True, "shape": (3,)})
        f.write(np.array([1, 0, 1], dtype="<i8").tobytes())
    assert read_all(open_table(tmp_path))[1].tolist() == [1, 0, 1]


def test_csv_more_edges(tmp_path, monkeypatch):
    p = tmp_path / "d.csv"
    p.write_text("a,bb,label\n1,2,0\n3,4,1\n")
    x, _, columns = _read(p, features="bb")  # one name, not its letters
    assert columns == ["bb"] and x.tolist() == [[2], [4]]
    p.write_text("a,b\n1,2\n")
    assert _err(_read, p, features=["label"], require_labels=False) == (
        f"{p}: no column 'label' for data.features (columns: a, b); fix data.features")
    p.write_text(",".join(f"c{i}" for i in range(10)) + "\n" + ",".join("1" * 10) + "\n")
    assert _err(_read, p, features=["zz"], require_labels=False) == (
        f"{p}: no column 'zz' for data.features (columns: c0, c1, c2, c3, c4, c5, c6, c7); fix data.features")
    p.write_text("a,b,label\n1,2,0\n \n3,x,1\n")  # a line of spaces is blank, not a row of one cell
    assert _err(_read, p) == f"{p}: line 4, column 'b': 'x' is not a number; features must be numeric"
    p.write_bytes(b"\xef\xbb\xbf1,2\n3,x\n")  # a BOM before a row without header
    assert _err(_read, p, label_column=None, require_labels=False) == (
        f"{p}: line 2, column 'column 2': 'x' is not a number; features must be numeric")
    # the CSV is parsed _CSV_CHUNK_BYTES at a time: a block never spans two chunks
    monkeypatch.setattr(tables, "_CSV_CHUNK_BYTES", 64)
    p.write_text("a,b,label\n" + "1,1,0\n" * 40 + "2,x,1\n")
    table = open_table(p, features=["a"])
    sizes = [len(x) for x, _ in table.batches(1000)]
    assert len(sizes) > 1 and sum(sizes) == 41  # unselected columns are not read (b turns to text late)


def test_open_a_folder_with_x_npy_only_for_prediction(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(3, 2))
    assert _err(open_table, tmp_path) == (f"{tmp_path}: has x.npy but no y.npy; save the labels with "
                                          f"np.save(y.npy, y)")
    t = open_table(tmp_path, require_labels=False)
    x, y = read_all(t)
    assert t.where == str(tmp_path) and not t.has_labels and y is None and x.tolist() == [[0, 1], [2, 3], [4, 5]]
    np.save(tmp_path / "y.npy", np.array([5, 6, 7]))
    assert read_all(open_table(tmp_path, require_labels=False))[1] is None  # labels not asked for: not read
    assert read_all(open_table(tmp_path))[1].tolist() == [5, 6, 7]


def test_csv_fallback_message_where_and_labels_flag(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,0\n \n3,4,1\n")  # a line of spaces: pyarrow refuses it, the rows are fine
    text = _err(_read, p)
    assert text.startswith(f"{p}: malformed CSV (CSV parse error: ") and "Expected 3 columns, got 1" in text
    p.write_text("a,b,label\n1,2,0\n")
    t = open_table(p)
    assert t.where == str(p) and t.has_labels and not open_table(p, "nope", require_labels=False).has_labels
    list(t.batches())
    assert t.block_where == str(p)
    x = tmp_path / "DATA_X.csv"  # an X is no wildcard
    x.write_text("a,label\n1,0\n")
    assert _read(x)[0].tolist() == [[1.0]]


def test_glob_and_folder_tables_take_every_option(tmp_path):
    _parquet(tmp_path / "p0.parquet", 3, seed=1)
    _parquet(tmp_path / "p1.parquet", 2, seed=2)
    for path in (tmp_path, tmp_path / "p*.parquet"):
        x, y, columns = _read(path, features=["f1"])
        assert columns == ["f1"] and x.shape == (5, 1) and len(y) == 5
    nolabel = tmp_path / "nl"
    nolabel.mkdir()
    _parquet(nolabel / "q.parquet", 2, label=False)
    assert _err(_read, nolabel) == f"{nolabel}: no column 'label' (columns: f0, f1, f2); set data.label_column"
    assert _err(_read, nolabel / "*.parquet") == (f"{nolabel}/*.parquet: no column 'label' (columns: f0, f1, f2); "
                                                  f"set data.label_column")
    (nolabel / "q.parquet").write_bytes(b"PAR1 broken")
    assert _err(_read, nolabel / "q*").startswith(f"{nolabel}/q*: not a readable Parquet file (")


@pytest.mark.parametrize("text", [
    "a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n",                   # plain
    "\n\na,b,label\r\n1,2,0\r\n\r\n3,4,1\r\n5,6,0\r\n7,8,1",   # blank lines before the header, CRLF, no last line end
    "\ufeffa,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n",            # a BOM before the header
    "\ufeff1,2,0\n3,4,1\n5,6,0\n7,8,1\n",                        # a BOM before the first row, no header
    "a,b,label\n1.25,2,0\n3,4," + "1" * 300 + "\n5,6,0\n7,8,1\n",  # a line longer than a chunk
])
@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_csv_chunks_give_every_row_once_in_order(tmp_path, monkeypatch, text, chunk):
    """Rows parsed in parallel chunks of any size are the file's rows, in order, whatever
    the line ends, blank lines, BOM or a line longer than a chunk."""
    p = tmp_path / "d.csv"
    p.write_bytes(text.encode())
    monkeypatch.setattr(tables, "_CSV_CHUNK_BYTES", chunk)
    header = not text.lstrip("\ufeff").startswith("1")
    t = open_table(p, "label" if header else None, header)
    blocks = list(t.batches(3))
    x = np.concatenate([b[0] for b in blocks])
    rows = [[1.25 if "1.25" in text else 1, 2], [3, 4], [5, 6], [7, 8]]
    assert x.tolist() == (rows if header else [r + [k % 2] for k, r in enumerate(rows)])
    if header:
        y = np.concatenate([b[1] for b in blocks])
        assert y.tolist() == [0, float("1" * 300) if "1" * 300 in text else 1, 0, 1]
    assert t.columns == (["a", "b"] if header else ["column 1", "column 2", "column 3"])


def test_csv_labels_are_numbers_until_a_chunk_holds_text(tmp_path, monkeypatch):
    """Labels parse as numbers; the chunk with a text label and every chunk after it parse
    again with text labels, so each chunk's labels come out as they do from text: numbers
    as float64 (padded, signed, exponent), text kept as it is, blanks as ''."""
    p = tmp_path / "d.csv"
    p.write_text("a,label\n" + "1,0\n2, 1 \n3,+1e0\n" + "4,cat\n5,1\n" + "6,\n7,0\n")
    monkeypatch.setattr(tables, "_CSV_CHUNK_BYTES", 8)  # about one line a chunk
    blocks = list(open_table(p).batches())
    y = np.concatenate([b[1] for b in blocks]).tolist()
    assert y == [0.0, 1.0, 1.0, "cat", 1.0, "", 0.0]
    assert [type(v) for v in y[:3] + y[4:5] + y[6:]] == [float] * 5
    assert np.concatenate([b[0] for b in blocks]).ravel().tolist() == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("ends", ["\n", "\r\n"])  # a lone \r in the head is refused as malformed CSV
@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1 << 20])
def test_a_local_csv_counts_the_rows_its_parse_yields(tmp_path, monkeypatch, ends, piece):
    """The rows counted before a local CSV is read are the rows its parse yields, whatever
    the line ends, blank lines (before, among and after the rows), a last line without a
    line end or one of whitespace only, a BOM, and pieces cut anywhere."""
    monkeypatch.setattr(tables, "_COUNT_BYTES", piece)
    e = ends
    texts = {
        "plain": f"a,b,label{e}1,2,0{e}3,4,1{e}",
        "blank lines": f"a,b,label{e}{e}{e}1,2,0{e}{e}3,4,1{e}{e}{e}5,6,0{e}{e}",
        "no last line end": f"a,b,label{e}1,2,0{e}3,4,1",
        "a last line of whitespace": f"a,b,label{e}1,2,0{e}3,4,1{e}  \t ",
        "a BOM, no header": f"\ufeff1,2,0{e}3,4,1{e}5,6,1",
        "blank lines before the header": f"{e}{e}a,b,label{e}1,2,0{e}",
        "one row": "a,b,label" + e + "1,2,0",
    }
    for what, text in texts.items():
        p = tmp_path / "d.csv"
        p.write_bytes(text.encode())
        header = "label" in text
        parsed = sum(len(x) for x, _ in open_table(p, "label" if header else None, header).batches())
        t = open_table(p, "label" if header else None, header)
        assert (t.count_rows(), t.counted, t.rows) == (parsed, True, parsed), what
        assert sum(len(x) for x, _ in t.batches()) == parsed, what


def test_a_csv_whose_rows_cannot_be_counted_cheaply_is_not(tmp_path):
    """A quote anywhere after the header (a quoted value may hold a line end) or a
    compressed file: no count; the rows are counted as they are read."""
    import gzip

    p = tmp_path / "q.csv"
    p.write_text('"a",b,label\n1,2,0\n3,4,"1"\n')
    t = open_table(p)
    assert t.count_rows() is None and not t.counted and sum(len(x) for x, _ in t.batches()) == 2
    p.write_text('"a",b,label\n1,2,0\n3,4,1\n')  # a quote in the header only
    assert open_table(p).count_rows() == 2
    g = tmp_path / "d.csv.gz"
    g.write_bytes(gzip.compress(b"a,b,label\n1,2,0\n"))
    t = open_table(g)
    assert t.count_rows() is None and sum(len(x) for x, _ in t.batches()) == 1


# --------------------------------------------------------------------------- ingest speed
@pytest.mark.parametrize("ends", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("at", [0, 1, 37, 99])
def test_a_line_one_cell_too_wide_is_found_wherever_it_is(ends, at):
    """Every line's commas are counted: a line with one cell more than the first, among
    blank and short lines, is refused before pyarrow sees the chunk."""
    lines = ["1,2,3"] * 100
    lines[at] = "1,2,3,4"
    lines[min(at + 1, 99)] = "1" if at < 99 else lines[99]  # a short line after it does not hide it
    chunk = (ends.join(lines[:50]) + ends + ends + ends.join(lines[50:]) + ends).encode()
    with pytest.raises(pa.ArrowInvalid):
        tables._refuse_wide_lines(memoryview(chunk), 3)
    tables._refuse_wide_lines(memoryview(chunk), 4)  # as wide as the widest line: nothing refused
    tables._refuse_wide_lines(memoryview(chunk.replace(b"1,2,3,4", b'1,2,"3,4"')), 3)  # a quoted comma


def test_a_line_with_256_more_commas_than_allowed_is_found():
    """Commas are counted per line into uint8 only while no line is longer than 255 bytes:
    a line with 258 commas (2 in uint8) among 3-cell lines is still refused."""
    chunk = ("1,2,3\n" * 10 + "," * 258 + "\n" + "1,2,3\n" * 10).encode()
    with pytest.raises(pa.ArrowInvalid):
        tables._refuse_wide_lines(memoryview(chunk), 3)
    tables._refuse_wide_lines(memoryview(chunk), 259)
    tables._refuse_wide_lines(memoryview(("1,2,3\n" * 10 + "1" * 300 + "\n").encode()), 3)  # long, not wide


def test_plain_reads_arrow_numbers_as_numpy_from_their_buffers():
    """Numbers from their buffers: offsets of sliced arrays, several chunks, every width;
    nulls and booleans take pyarrow's own conversion."""
    for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"):
        a = pa.array(np.arange(10).astype(t))
        assert tables._plain(a.slice(3, 4)).tolist() == [3, 4, 5, 6]
        assert tables._plain(a.slice(3, 4)).dtype == np.dtype(t)
        c = pa.chunked_array([a.slice(1, 2), a.slice(0, 0), a.slice(7, 3)])
        assert tables._plain(c).tolist() == [1, 2, 7, 8, 9]
        assert tables._plain(pa.chunked_array([], type=a.type)).tolist() == []
    assert np.isnan(tables._plain(pa.array([1.0, None])).astype(float)[1])
    assert tables._plain(pa.array([True, False])).tolist() == [True, False]


def test_reading_a_csv_or_parquet_table_imports_no_pandas(tmp_path):
    """pyarrow's to_numpy imports pandas on its first call (0.3 s, about 40 MB of a reader's
    peak memory); the readers take numbers from the Arrow buffers instead."""
    import subprocess
    import sys

    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c,label\n" + "".join(f"{a},{b},{c},{i % 2}\n" for i, (a, b, c) in enumerate(x)))
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": np.arange(20) % 2}),
                   tmp_path / "t.parquet")
    pq.write_table(pa.table({"v": pa.array(list(x), type=pa.list_(pa.float32())), "label": np.arange(20) % 2}),
                   tmp_path / "l.parquet")
    code = ("import sys; from lr_core.tables import open_table, read_all\n"
            "for p in sys.argv[1:]:\n"
            "    x, y = read_all(open_table(p))\n"
            "    assert x.shape == (20, 3) and y.tolist() == [i % 2 for i in range(20)], (p, x, y)\n"
            "    if p.endswith('.csv'):  # numeric labels parse as numbers: no text cast, no pyarrow.compute\n"
            "        assert 'pyarrow.compute' not in sys.modules, p\n"
            "print('pandas' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(csv), str(tmp_path / "t.parquet"), str(tmp_path / "l.parquet")],
                       capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
