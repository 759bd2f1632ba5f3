"""Losses on logits: sigmoid binary cross-entropy and softmax cross-entropy, both per
sample (the loop sums them; the trainer divides by the global batch size), and the
per-class weights a job may put on them (docs/design.md#class-weights)."""
from __future__ import annotations

import numpy as np
from mxnet import gluon

__all__ = ["make_loss", "LossGraph", "class_weights", "row_weights"]


def class_weights(spec, y: np.ndarray, num_classes: int) -> np.ndarray | None:
    """One float64 weight per class from ``train.class_weight`` (``spec``: "balanced", a
    weight per class, or None) and the training labels ``y``: "balanced" is
    ``n / (num_classes * count)`` (scikit-learn's), 1 for a class without rows. Integer
    counts of the whole training set: the same on every rank."""
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)[:num_classes]
        return np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 1.0)
    return np.asarray(spec, dtype=np.float64)


def row_weights(weights: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The float32 weight of every row: its class's weight."""
    return weights.astype(np.float32)[np.asarray(y, dtype=np.int64)]


def make_loss(kind: str) -> gluon.loss.Loss:
    if kind == "binary":
        # from_sigmoid=False: the numerically stable form on logits.
        return gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)
    if kind == "softmax":
        return gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=True)
    raise ValueError(f"kind must be binary or softmax, got {kind!r}")


class LossGraph(gluon.HybridBlock):
    """Model and loss in one hybridized graph: (x, y[, w][, mean, inv_std]) -> the SUM of
    per-sample losses, shape (1,). Summing inside the graph saves an operator call per step.

    ``y`` is (n, 1) float32 for binary (matching the single logit) and (n,) for softmax.
    ``weighted``: ``w`` (n, 1) float32 multiplies each row's loss (class weights).
    ``standardized``: the features become ``(x - mean) * inv_std`` (float32, shape (d,)),
    the same float32 arithmetic as ``Dataset.features`` (docs/design.md#standardization).
    ``gather``: the inputs are (X, Y, rows[, W][, mean, inv_std]): all the rows, and the int64
    positions of this step's; the graph takes them itself (``take``, as the loop would), which
    saves three operator calls per step.
    """

    def __init__(self, net: gluon.HybridBlock, kind: str, cast: bool = False, scale: float | None = None,
                 weighted: bool = False, standardized: bool = False, gather: bool = False):
        super().__init__(prefix="graph_")
        # Stored features (uint8) are cast to float32 and scaled first, inside the graph.
        self.cast, self.scale = cast, scale
        self.weighted, self.standardized, self.gather = weighted, standardized, gather
        with self.name_scope():
            self.net = net
            self.loss = make_loss(kind)

    def hybrid_forward(self, F, x, y, *extra):
        extra = list(extra)
        rows = extra.pop(0) if self.gather else None
        w = extra.pop(0) if self.weighted else None
        if rows is not None:
            x, y = F.take(x, rows), F.take(y, rows)
            w = F.take(w, rows) if w is not None else None
        if self.cast:
            x = F.cast(x, dtype="float32")
        if self.scale is not None:
            x = x * self.scale
        if self.standardized:
            mean, inv_std = extra
            x = F.broadcast_mul(F.broadcast_sub(x, mean), inv_std)
        out = self.net(x)
        losses = self.loss(out, y) if w is None else self.loss(out, y, w)
        return F.sum(losses).reshape((1,))
