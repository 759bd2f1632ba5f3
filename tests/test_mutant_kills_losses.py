"""``lr_core.losses`` class weights (docs/design.md#class-weights), where `make mutants`
found the fast tests silent: "balanced" with a class that has no training rows, and the
float32 weight of every row."""
import numpy as np
import pytest

from lr_core.losses import class_weights, row_weights


def test_balanced_weights_with_a_class_without_rows():
    y = np.array([0, 0, 0, 1], dtype=np.int64)      # class 2 of 3 has no rows: weight 1
    w = class_weights("balanced", y, 3)
    assert w.shape == (3,)
    assert w == pytest.approx([4 / (3 * 3), 4 / (3 * 1), 1.0], rel=1e-15)
    assert class_weights("balanced", np.array([1, 1, 0, 1, 1]), 2) == pytest.approx([5 / 2, 5 / 8], rel=1e-15)
    assert class_weights(None, y, 3) is None


def test_each_row_gets_its_class_weight_as_float32():
    w = row_weights(np.array([0.5, 2.0, 1.0]), np.array([2, 0, 1, 1]))
    assert w.dtype == np.float32 and w.tolist() == [1.0, 0.5, 2.0, 2.0]
