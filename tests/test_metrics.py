"""Metrics against hand-computed confusion counts; merging shards equals the whole set. ROC AUC
and the softmax summary against scikit-learn: a single sample of one class, hard yes/no and
integer scores, classes never true or never predicted; logits to predictions and losses."""
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


# ---------------------------------------------------------------------------- against scikit-learn
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


# ---------------------------------------------------------------------------- from_logits
def test_binary_from_logits_is_the_sigmoid_and_its_loss():
    from scipy.special import expit

    from lr_core.metrics import from_logits

    z32 = np.array([[-3.0], [-0.25], [0.0], [0.4], [2.5], [40.0], [-40.0]], dtype=np.float32)
    y = np.array([0, 1, 1, 0, 1, 0, 1])
    z = z32[:, 0].astype(np.float64)
    pred, prob, losses = from_logits("binary", z32, 0.5, y)
    assert prob.dtype == np.float64 and np.allclose(prob, expit(z), rtol=1e-13, atol=0)
    assert pred.dtype == np.int64 and pred.tolist() == [0, 0, 1, 1, 1, 1, 0]   # P = 0.5 is class 1
    p = expit(z)
    with np.errstate(divide="ignore"):
        direct = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    stable = np.abs(z) < 30
    assert np.allclose(losses[stable], direct[stable], rtol=1e-10)
    assert np.allclose(losses[~stable], [40.0, 40.0], rtol=1e-12)      # no inf far out on the wrong side
    assert from_logits("binary", z32, 0.5)[2] is None
    assert np.array_equal(from_logits("binary", z32)[0], pred)        # the default threshold is 0.5
    assert from_logits("binary", z32, 0.9)[0].tolist() == [0, 0, 0, 0, 1, 1, 0]


def test_softmax_from_logits_is_the_log_softmax_and_its_loss():
    from scipy.special import log_softmax

    from lr_core.metrics import from_logits

    rng = np.random.default_rng(0)
    z32 = (rng.normal(size=(8, 4)) * 3).astype(np.float32)
    z32[0] = [500.0, 1.0, -2.0, 0.0]                                   # no overflow
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3], dtype=np.float64)           # labels read from a CSV are floats
    logp = log_softmax(z32.astype(np.float64), axis=1)
    pred, prob, losses = from_logits("softmax", z32, 0.5, y)
    assert pred.tolist() == logp.argmax(axis=1).tolist()
    assert prob.dtype == np.float64 and np.allclose(prob, np.exp(logp.max(axis=1)), rtol=1e-13, atol=0)
    assert np.allclose(losses, -logp[np.arange(8), y.astype(int)], rtol=1e-13, atol=0)
    assert from_logits("softmax", z32)[2] is None


# ---------------------------------------------------------------------------- EvalCounts, summarize
def test_counts_accumulate_updates_from_any_integer_like_labels():
    from lr_core.metrics import EvalCounts

    c = EvalCounts(3)
    assert c.confusion.dtype == np.int64 and c.confusion.shape == (3, 3)
    c.update(np.array([0.0, 1.0, 2.0]), np.array([0.0, 2.0, 2.0]), np.array([0.5, 1.0, 0.25], dtype=np.float32))
    c.update([1, 1], [1, 0])
    c.update([2], [2], [0.125])
    assert c.n == 6 and c.loss_sum == 1.875
    assert c.confusion.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 2]]
    back = EvalCounts.from_vector(c.to_vector(), 3)
    assert back.confusion.dtype == np.int64 and back.confusion.tolist() == c.confusion.tolist()
    assert (back.n, back.loss_sum) == (6, 1.875) and type(back.n) is int
    assert c.to_vector().dtype == np.float64


def test_summarize_binary_and_softmax():
    from lr_core.metrics import EvalCounts, summarize

    c = EvalCounts(2)
    c.update([0, 1, 1, 0], [0, 1, 0, 0], [0.2, 0.4, 1.0, 0.4])
    y, scores = np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.3, 0.2])
    out = summarize("binary", c, y, scores)
    assert out["loss"] == pytest.approx(0.5) and out["n"] == 4
    assert out["auc"] == pytest.approx(roc_auc_score(y, scores)) and out["accuracy"] == 0.75
    assert summarize("binary", c, y, None)["auc"] is None and summarize("binary", c, None, scores)["auc"] is None
    soft = summarize("softmax", c)
    assert "auc" not in soft and soft["macro_f1"] == pytest.approx(softmax_summary(c.confusion)["macro_f1"])
    assert summarize("binary", EvalCounts(2))["loss"] == 0.0


def test_loss_sums_are_float64_whatever_the_losses_dtype():
    from lr_core.metrics import EvalCounts

    c = EvalCounts(2)
    losses = np.full(1000, 0.1, dtype=np.float32)       # float32 losses, as the network gives them
    c.update(np.zeros(1000, dtype=np.int64), np.zeros(1000, dtype=np.int64), losses)
    assert c.loss_sum == float(np.sum(losses.astype(np.float64)))
    assert c.loss_sum != float(np.sum(losses))          # (a float32 sum would be off in the 7th digit)
