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


# ---------------------------------------------------------------------------- bundled sources
def _blobs(seed=5, n_train=6000, n_val=2000, d=3, sep=4.0):
    return load_dataset("synthetic-blobs", kind="binary", num_classes=2, seed=seed,
                        options={"n_train": n_train, "n_val": n_val, "n_features": d, "separation": sep})


@pytest.mark.parametrize("d,sep", [(1, 4.0), (3, 2.5), (4, 6.0)])
def test_blobs_are_two_unit_gaussians_sep_apart_on_the_diagonal(d, sep):
    ds = _blobs(d=d, sep=sep)
    x = np.concatenate([ds.x_train, ds.x_val]).astype(np.float64)
    y = np.concatenate([ds.y_train, ds.y_val])
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.shape == (6000, d) and ds.x_val.shape == (2000, d)
    assert 0.45 < y.mean() < 0.55                               # both classes, evenly
    centre = np.full(d, sep / 2 / np.sqrt(d))                   # +-sep/2 along (1, ..., 1)/sqrt(d)
    assert np.allclose(x[y == 1].mean(axis=0), centre, atol=0.06)
    assert np.allclose(x[y == 0].mean(axis=0), -centre, atol=0.06)
    for cls in (0, 1):
        assert np.allclose(x[y == cls].std(axis=0), 1.0, atol=0.05)   # unit noise around the centre
    assert ds.description == f"two N(c, I) blobs in {d}-D, centres {sep:g} apart"
    assert ds.source == "synthetic-blobs"


def test_synthetic_sources_follow_the_seed():
    a, b, c = _blobs(seed=1, n_train=50, n_val=10), _blobs(seed=1, n_train=50, n_val=10), _blobs(seed=2, n_train=50,
                                                                                                n_val=10)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize("boundary", [0.0, 1.5])
def test_synthetic_binary_labels_are_the_sum_rule(boundary):
    ds = load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=3,
                      options={"n_train": 300, "n_val": 50, "n_features": 4, "boundary": boundary})
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert np.array_equal(y, (x.sum(axis=1) > boundary).astype(np.int64))
    x = np.concatenate([ds.x_train, ds.x_val]).astype(np.float64)
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1.0) < 0.1         # N(0, 1) features
    assert ds.description == f"x ~ N(0,1)^4, y = sum(x) > {boundary:g}"
    assert (len(ds.x_train), len(ds.x_val)) == (300, 50)


def test_digits_are_scaled_to_unit_range_and_held_out_by_seed():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", kind="softmax", num_classes=10, seed=7, val_fraction=0.25)
    raw = load_digits()
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert len(ds.x_train) + len(ds.x_val) == 1797 and len(ds.x_val) == pytest.approx(1797 * 0.25, abs=1)
    x = np.concatenate([ds.x_train, ds.x_val])
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.array_equal(np.sort((x * 16).round().sum(axis=1)), np.sort(raw.data.sum(axis=1)))
    assert ds.image_shape == (8, 8) and ds.source == "digits"
    assert ds.description == "scikit-learn 8x8 digits (1797 images)"
    assert sorted(set(ds.y_val.tolist())) == list(range(10))


# ---------------------------------------------------------------------------- check_labels
@pytest.mark.parametrize("y,kind,message", [
    (np.zeros((2, 2)), "binary", "w: labels must be one value per row, got shape (2, 2)"),
    (np.array([]), "binary", "w: no rows; the dataset is empty"),
    (np.array(["cat", "dog", "ant", "bee", "cow"]), "softmax",
     "w: labels must be numbers, found ['ant', 'bee', 'cat', 'cow']; map them with data.label_map, "
     "e.g. {'ant': 0, ...}"),
    (np.array([0, 1, np.nan, np.nan]), "binary", "w: row 3: label nan is not finite; every row needs a label"),
    (np.array([0, 1, 0.5, 2.5]), "softmax", "w: row 3: label 0.5 is not an integer class"),
    (np.array([1, 2, 2]), "binary",
     "w: binary labels must be exactly 0 or 1, found [1, 2] (first at row 2); "
     "re-encode with data.label_map: {1: 0, 2: 1}"),
    (np.array([3, 3]), "binary", "w: binary labels must be exactly 0 or 1, found [3] (first at row 1)"),
    (np.array([0, 1, 2, 3, 4, 5]), "binary",
     "w: binary labels must be exactly 0 or 1, found [0, 1, 2, 3, 4, 5] (first at row 3)"),
    (np.array([0, 1, 2, 3, 4, 5, 6]), "binary",
     "w: binary labels must be exactly 0 or 1, found [0, 1, 2, 3, 4, 5, '...'] (first at row 3)"),
    (np.array([0, 1, 2, 3, 4, 5, 6, 7]), "binary",
     "w: binary labels must be exactly 0 or 1, found [0, 1, 2, 3, 4, 5, '...'] (first at row 3)"),
    (np.array([0, 3, -1, 5, 1]), "softmax",
     "w: softmax labels must be integers in [0, 3), found [-1, 3, 5] (first at row 2); raise model.num_classes "
     "or re-encode with data.label_map"),
    (np.array([0, -6, -5, -4, -3, -2, -1]), "softmax",
     "w: softmax labels must be integers in [0, 3), found [-6, -5, -4, -3, -2] (first at row 2); raise "
     "model.num_classes or re-encode with data.label_map"),
])
def test_bad_labels_are_named_exactly(y, kind, message):
    with pytest.raises(DataError) as e:
        check_labels(y, kind, 3, "w")
    assert str(e.value) == message


@pytest.mark.parametrize("y,kind,want", [
    (np.array(["0", "1", "1"]), "binary", [0, 1, 1]),
    (np.array([0.0, 1.0, 2.0]), "softmax", [0, 1, 2]),
    (np.array([2, 0, 1], dtype=object), "softmax", [2, 0, 1]),
])
def test_good_labels_become_int64(y, kind, want):
    got = check_labels(y, kind, 3, "w")
    assert got.dtype == np.int64 and got.tolist() == want


# ---------------------------------------------------------------------------- IDX sources
def _idx_folder(tmp_path, names=None, n=(5, 3), rows=4, cols=3, gz=False, folder="idx"):
    from lr_core.data import IDX_NAMES

    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, size=(n[0], rows, cols)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, size=n[0]),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n[1], rows, cols)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n[1])}
    d = tmp_path / folder
    d.mkdir()
    for name in IDX_NAMES:
        target = d / (names or {}).get(name, name)
        write_idx(target, arrays[name])
        if gz:
            target.with_name(target.name + ".gz").write_bytes(gzip.compress(target.read_bytes()))
            target.unlink()
    return d, arrays


@pytest.mark.parametrize("style", ["plain", "dotted", "gz", "dotted-gz"])
def test_an_idx_folder_loads_scaled_with_its_image_shape(tmp_path, style):
    names = {n: n.replace("-idx", ".idx") for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    d, arrays = _idx_folder(tmp_path, names if "dotted" in style else None, gz="gz" in style)
    ds = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.y_val.dtype == np.int64
    assert ds.x_train.shape == (5, 12) and ds.x_val.shape == (3, 12)
    assert np.allclose(ds.x_train, arrays["train-images-idx3-ubyte"].reshape(5, 12) / 255.0, atol=1e-7)
    assert np.allclose(ds.x_val, arrays["t10k-images-idx3-ubyte"].reshape(3, 12) / 255.0, atol=1e-7)
    assert ds.y_val.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.image_shape == (4, 3) and ds.val_name == "test" and ds.source == "fashion-mnist"
    assert ds.description == f"fashion-mnist from {d}"


def test_idx_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError) as e:
        mnist_files(tmp_path / "none")
    assert str(e.value) == (f"mnist: data directory {tmp_path / 'none'} does not exist; set data.path to a "
                            f"directory with the four IDX files or run `make install`")
    with pytest.raises(DataError) as e:
        mnist_files(tmp_path / "none", "fashion-mnist")
    assert str(e.value) == (f"fashion-mnist: data directory {tmp_path / 'none'} does not exist; set data.path "
                            f"to a directory with the four IDX files")
    d, arrays = _idx_folder(tmp_path, n=(5, 3))
    write_idx(d / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"][:2])
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(e.value) == ("fashion-mnist: t10k images (3, 4, 3) and labels (2,) do not match; expected "
                            "(n, rows, cols) images and n labels")


def test_mnist_without_a_path_checks_the_cache_md5(monkeypatch, tmp_path):
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path))
    d, _ = _idx_folder(tmp_path, folder="mnist")      # small files, not the real MNIST
    first = d / "train-images-idx3-ubyte"
    with pytest.raises(DataError) as e:
        load_dataset("mnist", kind="softmax", num_classes=10, seed=0)
    assert str(e.value) == (f"mnist cache: {first}: MD5 {hashlib.md5(first.read_bytes()).hexdigest()}, expected "
                            f"{MNIST_MD5['train-images-idx3-ubyte']} (corrupt file); run `make install` (or "
                            f"`python -m launcher.datacache ensure`) to rebuild it")
    # The same files named by data.path are the user's own MNIST: read as they are.
    assert load_dataset("mnist", kind="softmax", num_classes=10, seed=0, path=str(d)).x_train.shape == (5, 12)


def test_fashion_mnist_without_a_path_reads_its_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path))
    d, arrays = _idx_folder(tmp_path, folder="fashion-mnist")   # no checksums to match
    ds = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0)
    assert ds.description == f"fashion-mnist from {d}"
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


@pytest.mark.parametrize("given", [True, False], ids=["data.path", "cache"])
def test_idx_label_errors_name_the_source_and_its_folder(monkeypatch, tmp_path, given):
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path))
    d, arrays = _idx_folder(tmp_path, folder="fashion-mnist")
    y = arrays["train-labels-idx1-ubyte"]
    r = int(np.flatnonzero(y != 0)[0])
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="binary", num_classes=2, seed=0, path=str(d) if given else None,
                     label_map={0: 0})
    assert str(e.value) == (f"fashion-mnist ({d}): row {r + 1}: label {y[r]} is not in data.label_map {{0: 0}}; "
                            f"fix the row, or add the label to the map (before training)")


def test_a_test_label_the_map_lacks_is_named_by_its_row_in_the_test_set(tmp_path):
    d, _ = _idx_folder(tmp_path)
    write_idx(d / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4]))
    write_idx(d / "t10k-labels-idx1-ubyte", np.array([1, 9, 2]))
    label_map = {v: v % 2 for v in range(9)}
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="binary", num_classes=2, seed=0, path=str(d), label_map=label_map)
    assert str(e.value) == (f"fashion-mnist ({d}): row 2: label 9 is not in data.label_map {label_map}; "
                            f"fix the row, or add the label to the map (before training)")


def test_a_missing_idx_folder_is_named_with_its_source(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(tmp_path / "none"))
    assert str(e.value) == (f"fashion-mnist: data directory {tmp_path / 'none'} does not exist; set data.path "
                            f"to a directory with the four IDX files")


@pytest.mark.parametrize("name,array,message", [
    ("train-labels-idx1-ubyte", np.zeros(2), "train images (5, 4, 3) and labels (2,) do not match"),
    ("train-images-idx3-ubyte", np.zeros((5, 12)), "train images (5, 12) and labels (5,) do not match"),
])
def test_idx_images_must_be_3d_with_one_label_each(tmp_path, name, array, message):
    d, _ = _idx_folder(tmp_path)
    write_idx(d / name, array)
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(e.value) == f"fashion-mnist: {message}; expected (n, rows, cols) images and n labels"


def test_a_missing_idx_file_is_named_with_the_four_needed(tmp_path):
    d, _ = _idx_folder(tmp_path)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        mnist_files(d, "fashion-mnist")
    assert str(e.value) == (f"fashion-mnist: {d} has no t10k-labels-idx1-ubyte (or t10k-labels-idx1-ubyte.gz); "
                            f"it needs the four standard IDX files: train-images-idx3-ubyte, "
                            f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")


def test_an_empty_cache_folder_lists_every_missing_file(tmp_path):
    assert verify_idx_dir(tmp_path) == [f"{tmp_path / name}: missing" for name in MNIST_MD5]


# ---------------------------------------------------------------------------- IDX files
@pytest.mark.parametrize("raw,shown", [
    (b"", "missing"),
    (b"\x00\x00\x08", "000008"),                          # too short for a magic number
    (b"\x01\x00\x08\x01" + bytes(9), "01000801"),        # first byte not 0
    (b"\x00\x01\x08\x01" + bytes(9), "00010801"),        # second byte not 0
    (b"\x00\x00\x07\x01" + bytes(9), "00000701"),        # no such element type
    (b"\x00\x00\x08\x00" + bytes(9), "00000800"),        # no dimensions
])
def test_a_file_that_is_not_idx_shows_its_magic_bytes(tmp_path, raw, shown):
    p = tmp_path / "f"
    p.write_bytes(raw)
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (f"{p}: not an IDX file (magic bytes {shown}, expected 0000 08 01..03); point "
                            f"data.path at the standard MNIST files")


@pytest.mark.parametrize("raw,size", [(b"\x00\x00\x08\x01", 4), (b"\x00\x00\x08\x03" + bytes(8), 12)])
def test_a_truncated_idx_header_says_so(tmp_path, raw, size):
    p = tmp_path / "f"
    p.write_bytes(raw)
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == f"{p}: truncated IDX header ({size} bytes); download the file again"


def test_a_truncated_idx_body_names_the_sizes(tmp_path):
    p = tmp_path / "f"
    write_idx(p, np.zeros((10, 3), np.uint8))
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (f"{p}: truncated or padded IDX file: dimensions (10, 3) need 42 bytes, found 37; "
                            f"download the file again")


def test_an_idx_file_of_no_items_reads_as_an_empty_array(tmp_path):
    write_idx(tmp_path / "f", np.zeros(0, np.uint8))
    assert read_idx(tmp_path / "f").shape == (0,)


@pytest.mark.parametrize("code,dtype", [(0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")])
def test_wide_idx_types_are_read_big_endian(tmp_path, code, dtype):
    values = np.arange(-3, 9).reshape(3, 4).astype(dtype)
    (tmp_path / "f").write_bytes(bytes([0, 0, code, 2]) + np.asarray(values.shape, ">u4").tobytes()
                                 + values.tobytes())
    got = read_idx(tmp_path / "f")
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, values)


def test_unreadable_and_corrupt_gzip_idx_files_say_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        read_idx(tmp_path / "absent")
    assert str(e.value) == (f"{tmp_path / 'absent'}: cannot read (No such file or directory); check the path "
                            f"and its permissions")
    p = tmp_path / "f.gz"
    write_idx(tmp_path / "f", np.zeros((10, 3), np.uint8))
    p.write_bytes(gzip.compress((tmp_path / "f").read_bytes())[:-12])
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (f"{p}: corrupt or truncated gzip file (Compressed file ended before the "
                            f"end-of-stream marker was reached); download it again")


# ---------------------------------------------------------------------------- the cache folder
def test_data_home_is_lrjob_data_home_then_xdg_cache_home_then_home(monkeypatch, tmp_path):
    from lr_core.data import data_home

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LRJOB_DATA_HOME", "~/data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "home" / "data"
    monkeypatch.setenv("LRJOB_DATA_HOME", "")                 # empty counts as unset
    assert data_home() == tmp_path / "xdg" / "lrjob"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert data_home() == tmp_path / "home" / ".cache" / "lrjob"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("LRJOB_DATA_HOME")
    assert data_home() == tmp_path / "home" / ".cache" / "lrjob"


# ---------------------------------------------------------------------------- features and labels
@pytest.mark.parametrize("x,columns,message", [
    (np.zeros(3), None, "w: features must be a 2-D table (rows x features), got shape (3,)"),
    (np.zeros((0, 3)), None, "w: no rows; the dataset is empty"),
    (np.zeros((3, 0)), None, "w: no feature columns; give at least one column besides the label"),
    (np.zeros((2, 2), complex), None, "w: features must be numbers, got dtype complex128"),
    (np.array([["1", "2"]]), None, "w: features must be numbers, got dtype <U1"),
    (np.array([[1.0, 2.0], [3.0, np.nan]]), None,
     "w: row 2, column 2: value nan is not finite (NaN or inf); clean or impute it first (1 such values)"),
    (np.array([[1.0, np.inf], [np.inf, 2.0]]), ["a"],
     "w: row 1, column 2: value inf is not finite (NaN or inf); clean or impute it first (2 such values)"),
    (np.array([[np.inf, 1.0]]), ["a"],
     "w: row 1, a: value inf is not finite (NaN or inf); clean or impute it first (1 such values)"),
])
def test_bad_features_are_named_exactly(x, columns, message):
    from lr_core.data import check_features

    with pytest.raises(DataError) as e:
        check_features(x, "w", columns=columns)
    assert str(e.value) == message


def test_numeric_features_become_float32_and_float32_is_not_copied():
    from lr_core.data import check_features

    ints = np.arange(6, dtype=np.int32).reshape(3, 2)
    got = check_features(ints, "w")
    assert got.dtype == np.float32 and got.tolist() == ints.tolist()
    x32 = np.ones((3, 2), np.float32)      # a large float32 table is checked in place
    assert check_features(x32, "w") is x32


def test_a_label_map_keys_labels_by_value_whatever_their_type():
    from lr_core.data import apply_label_map

    m = {1: 0, 2: 1, "cat": 1}
    assert apply_label_map(np.array([1, 2]), m, "w").tolist() == [0.0, 1.0]              # NumPy integers
    assert apply_label_map(np.array([2.0, 1.0], dtype=object), m, "w").tolist() == [1.0, 0.0]   # whole floats
    assert apply_label_map(np.array(["cat", 1.0], dtype=object), m, "w").tolist() == [1.0, 0.0]
    with pytest.raises(DataError) as e:
        apply_label_map(np.array([1, 1.5], dtype=object), m, "w")
    assert str(e.value) == "w: row 2: label 1.5 is not in data.label_map {1: 0, 2: 1, 'cat': 1}; fix the row, or add the label to the map (before training)"


def test_a_csv_with_text_labels_loads_through_a_label_map(tmp_path):
    path = _csv(tmp_path, "a,label\n1,cat\n2,dog\n3,cat\n4,dog\n")
    ds = load_dataset("csv", kind="binary", num_classes=2, seed=0, path=path, val_fraction=0.25,
                      label_map={"cat": 0, "dog": 1})
    assert ds.source == "csv" and ds.description == path
    x = np.concatenate([ds.x_train, ds.x_val])[:, 0]
    y = np.concatenate([ds.y_train, ds.y_val])
    assert dict(zip(x.tolist(), y.tolist())) == {1.0: 0, 2.0: 1, 3.0: 0, 4.0: 1}


def test_the_label_column_is_the_one_the_job_names(tmp_path):
    path = _csv(tmp_path, "label,a,target\n5,1,0\n6,2,1\n7,3,0\n8,4,1\n")
    ds = load_dataset("csv", kind="binary", num_classes=2, seed=0, path=path, val_fraction=0.25,
                      label_column="target")
    assert ds.extra["columns"] == ["label", "a"] and sorted(np.concatenate([ds.y_train, ds.y_val])) == [0, 0, 1, 1]


def test_a_file_too_small_to_hold_rows_out_names_the_file(tmp_path):
    path = _csv(tmp_path, "a,label\n1,0\n")
    with pytest.raises(DataError) as e:
        load_dataset("csv", kind="binary", num_classes=2, seed=0, path=path, val_fraction=0.5)
    assert str(e.value) == (f"{path}: 1 rows leave nothing to train on after data.val_fraction=0.5; lower "
                            f"val_fraction or give data.val_path")


def test_a_hold_out_fraction_of_0_holds_out_nothing():
    from lr_core.data import holdout_split

    x, y = np.arange(10).reshape(5, 2), np.arange(5)
    x_tr, y_tr, x_va, y_va = holdout_split(x, y, 0.0, 3, "w")
    assert y_tr.tolist() == [0, 1, 2, 3, 4] and len(x_va) == len(y_va) == 0
    assert len(holdout_split(x, y, 0.01, 3, "w")[3]) == 1      # any fraction above 0 holds out a row


# ---------------------------------------------------------------------------- bundled sources' errors
def test_digits_errors_name_digits():
    with pytest.raises(DataError) as e:
        load_dataset("digits", kind="binary", num_classes=2, seed=0, label_map={0: 0, 1: 1})
    assert str(e.value) == "digits: row 3: label 2 is not in data.label_map {0: 0, 1: 1}; fix the row, or add the label to the map (before training)"
    with pytest.raises(DataError) as e:
        load_dataset("digits", kind="softmax", num_classes=10, seed=0, val_fraction=0.9999)
    assert str(e.value) == ("digits: 1797 rows leave nothing to train on after data.val_fraction=0.9999; lower "
                            "val_fraction or give data.val_path")


def test_synthetic_label_errors_name_the_source():
    ds = load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=0)
    r = int(np.flatnonzero(ds.y_train == 1)[0])
    with pytest.raises(DataError) as e:
        load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=0, label_map={0: 1})
    assert str(e.value) == (f"data.source synthetic-binary: row {r + 1}: label 1 is not in data.label_map "
                            f"{{0: 1}}; fix the row, or add the label to the map (before training)")


def test_a_synthetic_row_exactly_on_the_boundary_is_labelled_0():
    options = {"n_train": 20, "n_val": 5, "n_features": 1}
    x = load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=3, options=options).x_train
    on = float(x[4, 0])
    ds = load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=3, options={**options, "boundary": on})
    assert ds.y_train[4] == 0 and ds.y_train.tolist() == (x[:, 0] > on).astype(int).tolist()


# ---------------------------------------------------------------------------- IDX edge cases
def _write_typed_idx(path, array, code):
    """An IDX file of element type ``code`` (0x0D: big-endian float32), which write_idx (uint8 only) cannot make."""
    dtype = {0x0D: ">f4"}[code]
    array = np.asarray(array, dtype=dtype)
    path.write_bytes(bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
                     + array.tobytes())


@pytest.mark.parametrize("split,shape", [("train", (0, 4, 3)), ("t10k", (3, 0, 3)), ("train", (5, 4, 0))])
def test_idx_images_without_an_image_or_a_pixel_are_refused_by_name(tmp_path, split, shape):
    d, _ = _idx_folder(tmp_path)
    write_idx(d / f"{split}-images-idx3-ubyte", np.zeros(shape, np.uint8))
    if shape[0] == 0:
        write_idx(d / f"{split}-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(e.value) == (f"{d / f'{split}-images-idx3-ubyte'}: no images (dimensions {shape}); the {split} "
                            f"split needs at least one image of at least one pixel")


def test_one_idx_image_of_one_pixel_is_enough(tmp_path):
    d, arrays = _idx_folder(tmp_path)
    write_idx(d / "train-images-idx3-ubyte", np.full((1, 1, 1), 51, np.uint8))
    write_idx(d / "train-labels-idx1-ubyte", np.array([7], np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", np.full((1, 1, 1), 255, np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", np.array([2], np.uint8))
    ds = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert ds.x_train.shape == (1, 1) and ds.image_shape == (1, 1) and ds.y_train.tolist() == [7]
    assert ds.x_train[0, 0] == pytest.approx(0.2) and ds.x_val[0, 0] == pytest.approx(1.0)


def test_float_idx_images_must_be_finite_and_are_named_by_file(tmp_path):
    d, arrays = _idx_folder(tmp_path)
    images = d / "t10k-images-idx3-ubyte"
    x = np.linspace(0.0, 255.0, 3 * 4 * 3).reshape(3, 4, 3)
    _write_typed_idx(images, x, 0x0D)
    ds = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert np.allclose(ds.x_val, x.reshape(3, 12) / 255.0, atol=1e-6)
    x[1, 2, 1] = np.nan
    _write_typed_idx(images, x, 0x0D)
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(e.value) == (f"{images}: row 2, column 8: value nan is not finite (NaN or inf); clean or impute it "
                            f"first (1 such values)")


@pytest.mark.parametrize("bad,message", [(0.5, "label 0.5 is not an integer class"),
                                         (np.nan, "label nan is not finite; every row needs a label")])
def test_float_idx_labels_are_checked_not_cast_to_integers(tmp_path, bad, message):
    """A float IDX label file (type 0x0D) keeps its values for the label check: a cast to
    int64 would read 0.5 as class 0 and NaN as a huge negative class."""
    d, _ = _idx_folder(tmp_path)
    _write_typed_idx(d / "train-labels-idx1-ubyte", [0, 1, bad, 2, 3], 0x0D)
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(e.value) == f"fashion-mnist ({d}): row 3: {message}"
    _write_typed_idx(d / "train-labels-idx1-ubyte", [0, 1, 9, 2, 3], 0x0D)
    ds = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [0, 1, 9, 2, 3]


@pytest.mark.parametrize("gz", [False, True])
def test_raw_idx_keeps_the_stored_bytes_with_their_scale(tmp_path, gz):
    """``raw=True`` (the prepared-set writer's read): the uint8 pixels as stored, with the
    scale that makes them the features, and the same labels, shape and names as the
    scaled read."""
    from lr_core.data import _load_idx, make_request

    d, arrays = _idx_folder(tmp_path, gz=gz)
    request = make_request("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    ds = _load_idx(request, raw=True)
    assert ds.x_train.dtype == np.uint8 and ds.x_val.dtype == np.uint8
    assert ds.x_train.tolist() == arrays["train-images-idx3-ubyte"].reshape(5, 12).tolist()
    assert ds.x_val.tolist() == arrays["t10k-images-idx3-ubyte"].reshape(3, 12).tolist()
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_val.dtype == np.int64 and ds.y_val.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.scale == float(np.float32(1.0 / 255.0))
    assert (ds.source, ds.image_shape, ds.val_name, ds.description) == \
        ("fashion-mnist", (4, 3), "test", f"fashion-mnist from {d}")
    scaled = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert np.array_equal(ds.features(ds.x_train), scaled.x_train) and scaled.scale is None


def test_a_padded_idx_file_names_its_size_and_a_padded_gzip_its_bound(tmp_path):
    """A plain file is measured before it is read (its size is in the message); a gzip
    stream is read one byte past the declared body."""
    p = tmp_path / "f"
    write_idx(p, np.zeros((10, 3), np.uint8))
    p.write_bytes(p.read_bytes() + bytes(7))
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (f"{p}: truncated or padded IDX file: dimensions (10, 3) need 42 bytes, found 49; "
                            f"download the file again")
    gz = tmp_path / "f.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    with pytest.raises(DataError) as e:
        read_idx(gz)
    assert str(e.value) == (f"{gz}: truncated or padded IDX file: dimensions (10, 3) need 42 bytes, found more "
                            f"than 42; download the file again")


def test_a_damaged_gzip_idx_file_is_named_as_corrupt(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(b"\x1f\x8b\x00" + bytes(20))        # the gzip magic, then an unknown compression method
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == f"{p}: corrupt or truncated gzip file (Unknown compression method); download it again"


def test_a_truncated_gzip_idx_stream_names_the_bytes_it_found(tmp_path):
    plain = tmp_path / "f"
    write_idx(plain, np.zeros((10, 3), np.uint8))
    p = tmp_path / "f.gz"
    p.write_bytes(gzip.compress(plain.read_bytes()[:-5]))
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (f"{p}: truncated or padded IDX file: dimensions (10, 3) need 42 bytes, found 37; "
                            f"download the file again")


def test_idx_dimensions_up_to_the_bound_are_read_and_past_it_refused(tmp_path):
    """A header declaring exactly MAX_IDX_BYTES is checked against the file's size; one
    byte more is refused before anything is read (8 bytes on disk either way)."""
    from lr_core.data import MAX_IDX_BYTES

    p = tmp_path / "f"
    p.write_bytes(bytes([0, 0, 0x08, 1]) + np.asarray([MAX_IDX_BYTES], dtype=">u4").tobytes())
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (f"{p}: truncated or padded IDX file: dimensions ({MAX_IDX_BYTES},) need "
                            f"{MAX_IDX_BYTES + 8} bytes, found 8; download the file again")
    p.write_bytes(bytes([0, 0, 0x08, 1]) + np.asarray([MAX_IDX_BYTES + 1], dtype=">u4").tobytes())
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (f"{p}: IDX dimensions ({MAX_IDX_BYTES + 1},) declare {MAX_IDX_BYTES + 9:,} bytes, more "
                            f"than the {MAX_IDX_BYTES:,} an IDX file may hold; this is not a dataset of the MNIST "
                            f"kind (or its header is damaged)")
