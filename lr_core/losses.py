"""Losses on logits: sigmoid binary cross-entropy and softmax cross-entropy, both per
sample (the loop sums them; the trainer divides by the global batch size)."""
from __future__ import annotations

from mxnet import gluon

__all__ = ["make_loss", "LossGraph"]


def make_loss(kind: str) -> gluon.loss.Loss:
    if kind == "binary":
        # from_sigmoid=False: the numerically stable form on logits.
        return gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)
    if kind == "softmax":
        return gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=True)
    raise ValueError(f"kind must be binary or softmax, got {kind!r}")


class LossGraph(gluon.HybridBlock):
    """Model and loss in one hybridized graph: (x, y) -> the SUM of per-sample losses,
    shape (1,). Summing inside the graph saves an operator call per step.

    ``y`` is (n, 1) float32 for binary (matching the single logit) and (n,) for softmax.
    """

    def __init__(self, net: gluon.HybridBlock, kind: str, cast: bool = False, scale: float | None = None):
        super().__init__(prefix="graph_")
        # Stored features (uint8) are cast to float32 and scaled first, inside the graph.
        self.cast, self.scale = cast, scale
        with self.name_scope():
            self.net = net
            self.loss = make_loss(kind)

    def hybrid_forward(self, F, x, y):
        if self.cast:
            x = F.cast(x, dtype="float32")
        if self.scale is not None:
            x = x * self.scale
        return F.sum(self.loss(self.net(x), y)).reshape((1,))
