"""ROC and precision-recall curves of a binary model on its validation rows, for
``roc_pr.png`` in ``report.html`` (docs/design.md#plots-and-report).

The scores are read in chunks of ``CHUNK`` rows (the validation rows may be a large memory
map): only one float64 score and one label per row are kept, never the features. The AUC
is ``lr_core.metrics.roc_auc``, the number the training loop reports per epoch; the average
precision is scikit-learn's definition, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct
scores from the highest down (no interpolation).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lr_core.metrics import roc_auc

__all__ = ["Ranking", "ranking_curves", "validation_scores", "thin", "CHUNK"]

CHUNK = 1 << 16   # validation rows scored at a time


class Ranking(NamedTuple):
    """The curves of one scored set; each array has one point per distinct score plus the
    origin, from the highest threshold down."""

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray    # at each point after the origin
    recall: np.ndarray
    auc: float
    average_precision: float
    positives: int
    negatives: int


def validation_scores(model, x, y, scale: float | None = None, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int8, P(class 1) as float64) of every row of ``x``, scored ``chunk`` rows at
    a time by ``model`` (``lr_core.export.ExportedModel``, binary)."""
    n = len(x)
    labels, scores = np.empty(n, dtype=np.int8), np.empty(n, dtype=np.float64)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        _, p = model.predict(x[a:b], scale=scale)
        scores[a:b] = p
        labels[a:b] = np.asarray(y[a:b])
    return labels, scores


def ranking_curves(y_true: np.ndarray, scores: np.ndarray) -> Ranking | None:
    """ROC and precision-recall curves, AUC and average precision; None when the rows hold one
    class only (both curves need positives and negatives). ``scores`` must be finite."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # the last row of each run of equal scores: one point per threshold, ties move together
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    auc = roc_auc(y, s)
    return Ranking(np.r_[0.0, fps / neg], np.r_[0.0, recall], precision, recall, float(auc), ap, pos, neg)


def thin(n: int, most: int = 4000) -> np.ndarray:
    """Indices of at most ``most`` points of a curve of ``n``, first and last included, evenly
    spread: a picture of a million-point curve looks the same from a few thousand."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))
