"""The two models: binary logistic (one logit) and softmax regression (one logit per
class), each optionally with ReLU hidden layers (the tutorial's 10-10-10 MLP).

Initial parameters come from a seeded NumPy generator, not MXNet's global RNG, so the
same seed gives the same model in every process (and they are still broadcast from
rank 0 in distributed runs).
"""
from __future__ import annotations

import numpy as np
import mxnet as mx
from mxnet import gluon

from .config import LoopConfig

__all__ = ["LogisticNet", "build_model", "initial_parameters"]


class LogisticNet(gluon.HybridBlock):
    """Dense layers with ReLU between them; the last layer returns logits."""

    def __init__(self, num_features: int, num_outputs: int, hidden: tuple[int, ...] = ()):
        super().__init__(prefix="lrjob_")
        self.num_features, self.num_outputs, self.hidden = num_features, num_outputs, tuple(hidden)
        widths = [num_features, *hidden, num_outputs]
        with self.name_scope():
            self.layers = []
            for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
                last = i == len(widths) - 2
                layer = gluon.nn.Dense(n_out, in_units=n_in, activation=None if last else "relu",
                                       flatten=True, prefix=f"layer{i}_")
                self.register_child(layer, f"layer{i}")
                self.layers.append(layer)

    def hybrid_forward(self, F, x):
        for layer in self.layers:
            x = layer(x)
        return x


def initial_parameters(cfg: LoopConfig, num_features: int) -> dict[str, np.ndarray]:
    """Seeded initial values for every parameter, by name (float32)."""
    rng = np.random.default_rng([cfg.seed, 1])
    widths = [num_features, *cfg.hidden, cfg.num_outputs]
    params = {}
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        shape = (n_out, n_in)
        if cfg.init == "xavier":
            # MXNet's Xavier default: uniform, factor 'avg', magnitude 3.
            scale = np.sqrt(3.0 / ((n_in + n_out) / 2.0))
            w = rng.uniform(-scale, scale, size=shape)
        elif cfg.init == "normal":
            w = rng.normal(0.0, cfg.init_sigma, size=shape)
        elif cfg.init == "zeros":
            w = np.zeros(shape)
        else:
            raise ValueError(f"init must be xavier, normal or zeros, got {cfg.init!r}")
        params[f"lrjob_layer{i}_weight"] = w.astype(np.float32)
        params[f"lrjob_layer{i}_bias"] = np.zeros(n_out, dtype=np.float32)
    return params


def build_model(cfg: LoopConfig, num_features: int, ctx: mx.Context | None = None) -> LogisticNet:
    """The model of ``cfg`` with its seeded initial parameters on ``ctx``."""
    ctx = ctx or mx.cpu()
    net = LogisticNet(num_features, cfg.num_outputs, cfg.hidden)
    net.initialize(mx.init.Zero(), ctx=ctx)
    values = initial_parameters(cfg, num_features)
    for name, p in net.collect_params().items():
        p.set_data(mx.nd.array(values[name], ctx=ctx, dtype="float32"))
    return net
