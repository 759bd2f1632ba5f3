"""Data sources and their checks: IDX files, CSV/NPZ label and feature errors, the cache."""
import gzip
import hashlib

import numpy as np
import pytest

from lr_core.data import (MNIST_MD5, check_labels, load_dataset, mnist_files, read_idx,
                          verify_idx_dir, write_idx)
from lr_core.errors import DataError


def _idx_dir(tmp_path, n_train=12, n_test=5, gz=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 3), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        write_idx(tmp_path / name, a)
        if gz:
            raw = (tmp_path / name).read_bytes()
            (tmp_path / name).unlink()
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(raw))
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_and_mnist_source(tmp_path, gz):
    arrays = _idx_dir(tmp_path, gz=gz)
    ds = load_dataset("mnist", kind="softmax", num_classes=10, seed=0, path=str(tmp_path))
    assert ds.x_train.shape == (12, 12) and ds.x_val.shape == (5, 12) and ds.image_shape == (4, 3)
    np.testing.assert_allclose(ds.x_train * 255, arrays["train-images-idx3-ubyte"].reshape(12, -1), atol=1e-3)
    assert ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.y_val, arrays["t10k-labels-idx1-ubyte"])


def test_idx_wrong_magic(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)


def test_idx_truncated(tmp_path):
    p = tmp_path / "x"
    write_idx(p, np.zeros((10, 3), np.uint8))
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_mnist_dir_missing_file(tmp_path):
    _idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        mnist_files(tmp_path)


def test_checksum_rejects_corrupted_file(tmp_path):
    _idx_dir(tmp_path)
    problems = verify_idx_dir(tmp_path)
    assert len(problems) == 4 and all("MD5" in p for p in problems)


def test_installed_mnist_cache_verifies_and_a_flipped_byte_is_caught(tmp_path):
    from lr_core.data import data_home

    cache = data_home() / "mnist"
    # The install step builds the cache: its absence is a failure, never a skip.
    assert not verify_idx_dir(cache), f"no MNIST cache in {cache}: run `make install` to build it"
    for name in MNIST_MD5:
        (tmp_path / name).write_bytes((cache / name).read_bytes())
    assert verify_idx_dir(tmp_path) == []
    raw = bytearray((tmp_path / "t10k-labels-idx1-ubyte").read_bytes())
    raw[100] ^= 1
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    problems = verify_idx_dir(tmp_path)
    assert len(problems) == 1 and "t10k-labels" in problems[0]
    assert hashlib.md5(raw).hexdigest() != MNIST_MD5["t10k-labels-idx1-ubyte"]


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BAD_CSV = [
    ("a,b,label\n1,2,-1\n3,4,1\n", "binary", r"\{-1: 0, 1: 1\}"),
    ("a,b,label\n1,2,1\n3,4,2\n", "binary", r"\{1: 0, 2: 1\}"),
    ("a,b,label\n1,2,cat\n3,4,dog\n", "binary", "labels must be numbers"),
    ("a,b,label\n1,nan,1\n3,4,0\n", "binary", "row 1, b: value nan is not finite"),
    ("a,b,label\n1,2,1\ninf,4,0\n", "binary", "row 2, a: value inf is not finite"),
    ("a,b,label\n1,2,0.5\n3,4,0\n", "binary", "not an integer class"),
    ("a,b,label\n1,2,1\n3,4,12\n", "softmax", r"integers in \[0, 10\)"),
    ("a,b,label\n1,x,1\n", "binary", "line 2, column 'b': 'x' is not a number"),
    ("a,b,label\n1,2\n", "binary", "line 2 has 2 columns, expected 3"),
    ("", "binary", "empty file"),
    ("a,b,label\n", "binary", "no data rows"),
    ("a,b,y\n1,2,1\n", "binary", "no column 'label'"),
]


@pytest.mark.parametrize("text,kind,message", BAD_CSV)
def test_bad_csv_gives_clear_error(tmp_path, text, kind, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("csv", kind=kind, num_classes=10, seed=0, path=path, val_fraction=0.5)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_label_map_reencodes(tmp_path):
    path = _csv(tmp_path, "a,b,label\n" + "".join(f"{i},{i % 3},{1 if i % 2 else -1}\n" for i in range(20)))
    ds = load_dataset("csv", kind="binary", num_classes=2, seed=0, path=path, val_fraction=0.25,
                      label_map={-1: 0, 1: 1})
    assert set(np.unique(np.concatenate([ds.y_train, ds.y_val]))) == {0, 1}
    assert len(ds.y_val) == 5 and len(ds.y_train) == 15
    assert ds.extra["columns"] == ["a", "b"]


def test_val_file_feature_count_mismatch(tmp_path):
    tr = _csv(tmp_path, "a,b,label\n1,2,1\n3,4,0\n", "tr.csv")
    va = _csv(tmp_path, "a,label\n1,1\n", "va.csv")
    with pytest.raises(DataError, match="1 feature columns, the model expects 2"):
        load_dataset("csv", kind="binary", num_classes=2, seed=0, path=tr, val_path=va)


def test_npz_object_arrays_are_refused_not_unpickled(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([[1.0], [2.0]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("npz", kind="binary", num_classes=2, seed=0, path=str(p))


def test_npz_ok_and_missing_y(tmp_path):
    p = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x=rng.normal(size=(30, 4)), y=rng.integers(0, 3, 30))
    ds = load_dataset("npz", kind="softmax", num_classes=3, seed=0, path=str(p), val_fraction=0.2)
    assert ds.num_features == 4 and len(ds.x_val) == 6
    np.savez(p, x=rng.normal(size=(30, 4)))
    with pytest.raises(DataError, match="no array 'y'"):
        load_dataset("npz", kind="softmax", num_classes=3, seed=0, path=str(p))


def test_missing_path():
    with pytest.raises(DataError, match="file not found"):
        load_dataset("csv", kind="binary", num_classes=2, seed=0, path="/nonexistent/data.csv")


def test_synthetic_sources_are_deterministic_and_tutorial_shaped():
    a = load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=5)
    b = load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=5)
    assert a.x_train.shape == (1000, 10) and a.x_val.shape == (100, 10)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, (a.x_train.sum(axis=1) > 3).astype(int))
    blobs = load_dataset("synthetic-blobs", kind="binary", num_classes=2, seed=5, options={"n_train": 50})
    assert blobs.x_train.shape == (50, 2) and set(np.unique(blobs.y_train)) == {0, 1}


def test_digits_holdout_is_seeded():
    a = load_dataset("digits", kind="softmax", num_classes=10, seed=1, val_fraction=0.1)
    b = load_dataset("digits", kind="softmax", num_classes=10, seed=1, val_fraction=0.1)
    assert len(a.x_train) + len(a.x_val) == 1797 and len(a.x_val) == 180
    np.testing.assert_array_equal(a.y_val, b.y_val)


def test_check_labels_binary_ok():
    assert check_labels(np.array([0.0, 1.0, 1.0]), "binary", 2, "x").tolist() == [0, 1, 1]


def test_label_map_applies_to_bundled_sources():
    m = {i: int(i >= 5) for i in range(10)}
    ds = load_dataset("digits", kind="binary", num_classes=2, seed=0, label_map=m)
    assert set(np.unique(ds.y_train)) == {0, 1}


def test_csv_with_bom_and_headerless_bad_first_row(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("a,b,label\n1,2,1\n3,4,0\n".encode("utf-8-sig"))
    ds = load_dataset("csv", kind="binary", num_classes=2, seed=0, path=str(p), val_fraction=0.5)
    assert ds.extra["columns"] == ["a", "b"]
    from lr_core.data import read_features_file
    q = tmp_path / "nohead.csv"
    q.write_text("1,abc\n2,3\n")
    with pytest.raises(DataError, match="line 1, column 'column 2': 'abc' is not a number"):
        read_features_file(q, None, require_labels=False)


def test_npz_with_scalar_x(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, x=np.float64(3.0), y=np.array([1]))
    with pytest.raises(DataError, match="must be 2-D"):
        load_dataset("npz", kind="binary", num_classes=2, seed=0, path=str(p))
