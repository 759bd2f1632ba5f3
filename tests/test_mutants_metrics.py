"""ROC AUC edges (``lr_core.metrics.roc_auc``) beyond tests/test_metrics.py: a single
sample of one class, hard yes/no scores, integer scores; each against scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lr_core.metrics import roc_auc


@pytest.mark.parametrize("y", [[0, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1]])
def test_one_sample_of_a_class_is_enough(y):
    scores = np.linspace(0.1, 0.9, len(y))
    assert roc_auc(np.array(y), scores) == pytest.approx(roc_auc_score(y, scores))


def test_hard_boolean_scores():
    y = np.array([0, 0, 1, 1, 1, 0, 1])
    hard = np.array([False, True, True, True, False, False, True])
    assert roc_auc(y, hard) == pytest.approx(roc_auc_score(y, hard.astype(float)))


def test_integer_scores_with_ties():
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    scores = np.array([1, 3, 2, 3, 1, 0, 2, 5], dtype=np.int64)
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert roc_auc(y.tolist(), scores.tolist()) == pytest.approx(roc_auc_score(y, scores))
