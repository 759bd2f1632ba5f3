"""The baseline: MNIST softmax regression written the way the Gluon tutorials do it
(DataLoader over an ArrayDataset, a Python loop, ``asscalar()`` every batch)."""
from __future__ import annotations

import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

__all__ = ["TutorialLoop"]


class TutorialLoop:
    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64, lr: float = 0.1, seed: int = 1):
        mx.random.seed(seed)
        self.loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y.astype(np.float32)),
                                            batch_size=batch_size, shuffle=True)
        self.net = gluon.nn.Dense(10)
        self.net.initialize(mx.init.Normal(sigma=1.0))
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.trainer = gluon.Trainer(self.net.collect_params(), "sgd", {"learning_rate": lr})

    def epoch(self) -> float:
        """Seconds for one epoch (the tutorial's loop, including its per-batch loss read)."""
        t0 = time.perf_counter()
        cumulative = 0.0
        for data, label in self.loader:
            with autograd.record():
                output = self.net(data)
                loss = self.loss(output, label)
            loss.backward()
            self.trainer.step(data.shape[0])
            cumulative += loss.mean().asscalar()
        return time.perf_counter() - t0
