"""ROC AUC and the softmax summary (``lr_core.metrics``) beyond tests/test_metrics.py: a
single sample of one class, hard yes/no and integer scores, classes never true or never
predicted; each against scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lr_core.metrics import roc_auc, softmax_summary


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


def _softmax_case(seed, k=5):
    """Labels where class k-2 never occurs, class k-1 is never predicted, class 0 is
    predicted exactly once (rightly) and class 1 has precision = recall = 1/2."""
    rng = np.random.default_rng(seed)
    y_true = np.concatenate([[0, 1, 1], rng.choice([1, 2, k - 1], size=20)]).astype(np.int64)
    y_pred = np.concatenate([[0, 1, 2], rng.choice([1, 2, k - 2], size=20)]).astype(np.int64)
    y_true[y_true == k - 2] = 2
    y_pred[y_pred == 0] = 1
    y_pred[0] = 0
    return y_true, y_pred


@pytest.mark.parametrize("seed", range(3))
def test_softmax_summary_matches_scikit_learn(seed):
    from sklearn.metrics import confusion_matrix, f1_score, recall_score

    k = 5
    y_true, y_pred = _softmax_case(seed, k)
    labels = list(range(k))
    c = confusion_matrix(y_true, y_pred, labels=labels)
    assert c[k - 2].sum() == 0 and c[:, k - 1].sum() == 0 and c[:, 0].sum() == 1
    got = softmax_summary(c)
    assert set(got) == {"accuracy", "macro_f1", "per_class_recall", "confusion"}
    assert got["accuracy"] == pytest.approx(float(np.mean(y_true == y_pred)))
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro",
                                                     zero_division=0))
    assert got["per_class_recall"] == pytest.approx(
        recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0).tolist())
    assert got["confusion"] == c.tolist()


def test_softmax_summary_of_a_half_right_class():
    # class 0: 1 of 2 found, 1 of 2 predictions right: precision = recall = F1 = 1/2
    c = np.array([[1, 1, 0], [1, 2, 0], [0, 0, 3]])
    got = softmax_summary(c)
    assert got["per_class_recall"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert got["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)


def test_softmax_confusion_is_reported_as_integers():
    got = softmax_summary(np.array([[2.0, 1.0], [0.0, 3.0]]))
    assert got["confusion"] == [[2, 1], [0, 3]] and all(type(v) is int for row in got["confusion"] for v in row)
