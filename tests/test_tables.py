"""User tables read by pyarrow (lr_core/tables.py): CSV, Parquet, NPY, NPZ, local and on a
real S3-compatible server on loopback; every bad file is one line naming file, row or column."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is in requirements.txt; .ci/install installs it")
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
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """A real S3-compatible HTTP server (moto) on loopback, stopped afterwards."""
    from moto.server import ThreadedMotoServer
    import pyarrow.fs as pfs

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "lrjob", "AWS_SECRET_ACCESS_KEY": "lrjob",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    try:
        fs = pfs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                              allow_bucket_creation=True)
        fs.create_dir("data")
        yield fs, f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


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
    assert str(err.value) == "s3://data/missing.parquet: file not found; check data.path / --input"
