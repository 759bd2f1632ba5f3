"""Metrics from mergeable counts.

Every per-epoch metric is a function of sums (loss sum, row count, confusion counts) so
that shards can be merged by adding: the sum over workers equals the whole-set value.
Binary precision/recall/F1 come from whole-set TP/FP/FN (``mx.metric.F1``'s default
'macro' mode averages per-batch F1s, which under-reports rare positives). ROC AUC needs
every score: shards place their scores at their global positions in a zero vector, and
the sum of those vectors is the whole set's scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["EvalCounts", "binary_summary", "softmax_summary", "roc_auc", "summarize", "from_logits"]


def from_logits(kind: str, logits: np.ndarray, threshold: float = 0.5, y: np.ndarray | None = None):
    """Predicted class, probability and (with labels) per-sample loss from logits.

    Binary: the probability is P(class 1) and the class is P >= threshold; softmax: the
    top class and its probability. The loss is the training loss in float64 (stable
    sigmoid BCE on logits; log-softmax cross-entropy), or None without labels.
    """
    z = np.asarray(logits, dtype=np.float64)
    if kind == "binary":
        z = z[:, 0]
        # exp of -|z| only: a huge logit (unscaled features) must not overflow into a warning
        e = np.exp(-np.abs(z))
        prob = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        pred = (prob >= threshold).astype(np.int64)
        # An infinite logit (parameters that overflowed) makes a NaN loss, which the loop reports
        # as a divergence: NumPy's warning about it would only add a source line to the output.
        with np.errstate(invalid="ignore"):
            losses = None if y is None else np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        return pred, prob, losses
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    pred = logp.argmax(axis=1)
    rows = np.arange(len(z))
    prob = np.exp(logp[rows, pred])
    losses = None if y is None else -logp[rows, np.asarray(y, dtype=np.int64)]
    return pred, prob, losses


@dataclass
class EvalCounts:
    """Mergeable evaluation state: ``confusion[true, predicted]``, loss sum, row count."""

    num_classes: int
    n: int = 0
    loss_sum: float = 0.0
    confusion: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.n, self.loss_sum = 0, 0.0
        self.confusion[:] = 0

    def update(self, y_true: np.ndarray, y_pred: np.ndarray, losses: np.ndarray | None = None) -> None:
        y_true = np.asarray(y_true, dtype=np.int64)
        y_pred = np.asarray(y_pred, dtype=np.int64)
        k = self.num_classes
        self.confusion += np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
        self.n += len(y_true)
        if losses is not None:
            self.loss_sum += float(np.sum(np.asarray(losses, dtype=np.float64)))

    def merge(self, other: "EvalCounts") -> "EvalCounts":
        out = EvalCounts(self.num_classes)
        out.n = self.n + other.n
        out.loss_sum = self.loss_sum + other.loss_sum
        out.confusion = self.confusion + other.confusion
        return out

    def to_vector(self) -> np.ndarray:
        """Float64 vector for an allreduce; counts stay exact below 2**53."""
        return np.concatenate([[self.n, self.loss_sum], self.confusion.ravel()]).astype(np.float64)

    @classmethod
    def from_vector(cls, v: np.ndarray, num_classes: int) -> "EvalCounts":
        out = cls(num_classes)
        out.n = int(round(v[0]))
        out.loss_sum = float(v[1])
        out.confusion = np.rint(v[2:]).astype(np.int64).reshape(num_classes, num_classes)
        return out


def _ratio(a: float, b: float) -> float:
    # scikit-learn's zero_division=0: an empty denominator reports 0.
    return float(a) / float(b) if b else 0.0


def binary_summary(confusion: np.ndarray) -> dict:
    tn, fp, fn, tp = (int(v) for v in np.asarray(confusion).ravel())
    n = tn + fp + fn + tp
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def softmax_summary(confusion: np.ndarray) -> dict:
    c = np.asarray(confusion, dtype=np.int64)
    n = int(c.sum())
    tp = np.diag(c).astype(np.float64)
    support, predicted = c.sum(axis=1), c.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": _ratio(tp.sum(), n),
        "macro_f1": float(f1.mean()),
        "per_class_recall": [float(v) for v in recall],
        "confusion": c.tolist(),
    }


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney with average ranks for ties).

    ``None`` when the set holds only one class: the AUC is undefined there.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank (1-based) over each run of ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def summarize(kind: str, counts: EvalCounts, y_true: np.ndarray | None = None,
              scores: np.ndarray | None = None) -> dict:
    """The reported metrics of one evaluation."""
    out = {"loss": _ratio(counts.loss_sum, counts.n), "n": counts.n}
    if kind == "binary":
        out.update(binary_summary(counts.confusion))
        out["auc"] = roc_auc(y_true, scores) if y_true is not None and scores is not None else None
    else:
        out.update(softmax_summary(counts.confusion))
    return out
