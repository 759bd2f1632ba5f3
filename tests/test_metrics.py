"""Metrics against hand-computed confusion counts; merging shards equals the whole set."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lr_core.metrics import EvalCounts, binary_summary, roc_auc, softmax_summary, summarize


def test_binary_counts_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    c = EvalCounts(2)
    c.update(y, p)
    s = binary_summary(c.confusion)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (3, 1, 1, 3)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert s["accuracy"] == pytest.approx(6 / 8)


def test_no_positives_in_the_set():
    c = EvalCounts(2)
    c.update(np.zeros(5, int), np.array([0, 0, 1, 0, 0]))
    s = binary_summary(c.confusion)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (0, 1, 0, 4)
    assert s["recall"] == 0.0 and s["precision"] == 0.0 and s["f1"] == 0.0
    assert roc_auc(np.zeros(5), np.linspace(0, 1, 5)) is None


def test_all_one_class_predicted_and_true():
    c = EvalCounts(2)
    c.update(np.ones(4, int), np.ones(4, int))
    s = binary_summary(c.confusion)
    assert s["precision"] == 1.0 and s["recall"] == 1.0 and s["f1"] == 1.0 and s["accuracy"] == 1.0


def test_rare_positives_whole_set_f1_not_batch_average():
    """Whole-set F1 from summed counts, not an average of per-batch F1s."""
    y = np.array([0] * 9 + [1] + [0] * 10)
    p = np.array([0] * 9 + [1] + [0] * 9 + [1])
    whole = EvalCounts(2)
    whole.update(y, p)
    assert binary_summary(whole.confusion)["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_merging_shards_equals_whole(shards):
    rng = np.random.default_rng(shards)
    y, p = rng.integers(0, 4, 101), rng.integers(0, 4, 101)
    losses = rng.random(101)
    whole = EvalCounts(4)
    whole.update(y, p, losses)
    merged = EvalCounts(4)
    for part in np.array_split(np.arange(101), shards):
        c = EvalCounts(4)
        c.update(y[part], p[part], losses[part])
        merged = merged.merge(EvalCounts.from_vector(c.to_vector(), 4))
    assert np.array_equal(merged.confusion, whole.confusion)
    assert merged.n == whole.n and merged.loss_sum == pytest.approx(whole.loss_sum, abs=1e-12)
    assert softmax_summary(merged.confusion) == softmax_summary(whole.confusion)


def test_reset_clears_state():
    c = EvalCounts(3)
    c.update(np.array([0, 1]), np.array([1, 1]), np.array([0.5, 0.5]))
    c.reset()
    assert c.n == 0 and c.loss_sum == 0 and not c.confusion.any()


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_softmax_confusion_by_hand():
    y = np.array([0, 1, 2, 2, 1])
    p = np.array([0, 2, 2, 2, 1])
    c = EvalCounts(3)
    c.update(y, p)
    assert c.confusion.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    s = summarize("softmax", c)
    assert s["accuracy"] == pytest.approx(4 / 5)
    assert s["per_class_recall"] == pytest.approx([1.0, 0.5, 1.0])
