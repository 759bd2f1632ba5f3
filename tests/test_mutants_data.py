"""The bundled data sources (``lr_core.data``) against what they promise: the synthetic
generators' distributions and labelling rules, the digits scaling and holdout, dtypes
and descriptions."""
import numpy as np
import pytest

from lr_core.data import load_dataset


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
    from lr_core.data import check_labels
    from lr_core.errors import DataError

    with pytest.raises(DataError) as e:
        check_labels(y, kind, 3, "w")
    assert str(e.value) == message


@pytest.mark.parametrize("y,kind,want", [
    (np.array(["0", "1", "1"]), "binary", [0, 1, 1]),
    (np.array([0.0, 1.0, 2.0]), "softmax", [0, 1, 2]),
    (np.array([2, 0, 1], dtype=object), "softmax", [2, 0, 1]),
])
def test_good_labels_become_int64(y, kind, want):
    from lr_core.data import check_labels

    got = check_labels(y, kind, 3, "w")
    assert got.dtype == np.int64 and got.tolist() == want


# ---------------------------------------------------------------------------- IDX sources
def _idx_dir(tmp_path, names=None, n=(5, 3), rows=4, cols=3, gz=False):
    import gzip

    from lr_core.data import IDX_NAMES, write_idx

    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, size=(n[0], rows, cols)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, size=n[0]),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n[1], rows, cols)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n[1])}
    d = tmp_path / "idx"
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
    d, arrays = _idx_dir(tmp_path, names if "dotted" in style else None, gz="gz" in style)
    ds = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.y_val.dtype == np.int64
    assert ds.x_train.shape == (5, 12) and ds.x_val.shape == (3, 12)
    assert np.allclose(ds.x_train, arrays["train-images-idx3-ubyte"].reshape(5, 12) / 255.0, atol=1e-7)
    assert np.allclose(ds.x_val, arrays["t10k-images-idx3-ubyte"].reshape(3, 12) / 255.0, atol=1e-7)
    assert ds.y_val.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.image_shape == (4, 3) and ds.val_name == "test" and ds.source == "fashion-mnist"
    assert ds.description == f"fashion-mnist from {d}"


def test_idx_folder_errors_name_the_fix(tmp_path):
    from lr_core.data import mnist_files
    from lr_core.errors import DataError

    with pytest.raises(DataError) as e:
        mnist_files(tmp_path / "none")
    assert str(e.value) == (f"mnist: data directory {tmp_path / 'none'} does not exist; set data.path to a "
                            f"directory with the four IDX files or run `make install`")
    with pytest.raises(DataError) as e:
        mnist_files(tmp_path / "none", "fashion-mnist")
    assert str(e.value) == (f"fashion-mnist: data directory {tmp_path / 'none'} does not exist; set data.path "
                            f"to a directory with the four IDX files")
    d, arrays = _idx_dir(tmp_path, n=(5, 3))
    from lr_core.data import write_idx

    write_idx(d / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"][:2])
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(e.value) == ("fashion-mnist: t10k images (3, 4, 3) and labels (2,) do not match; expected "
                            "(n, rows, cols) images and n labels")
