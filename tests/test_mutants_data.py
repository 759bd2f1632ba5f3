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
