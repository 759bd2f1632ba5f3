"""An independent NumPy oracle, written the way a from-scratch tutorial does it:
softmax, cross-entropy, sigmoid BCE and their gradients by hand, in float64."""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bce_from_logits(z, y):
    """Per-sample -[y log s(z) + (1-y) log(1-s(z))]."""
    p = sigmoid(z)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def bce_grad_logits(z, y):
    return sigmoid(z) - y


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_ce(z, y):
    p = softmax(z)
    return -np.log(p[np.arange(len(y)), y])


def softmax_ce_grad_logits(z, y):
    g = softmax(z)
    g[np.arange(len(y)), y] -= 1.0
    return g


def mlp_forward(params, x):
    """params: list of (W (out,in), b). ReLU between layers; returns logits and cache."""
    acts, pre = [x], []
    h = x
    for i, (w, b) in enumerate(params):
        z = h @ w.T + b
        pre.append(z)
        h = z if i == len(params) - 1 else np.maximum(z, 0)
        acts.append(h)
    return h, (acts, pre)


def mlp_grads(params, x, dlogits):
    """Backprop of sum-loss given d(sum loss)/d(logits)."""
    _, (acts, pre) = mlp_forward(params, x)
    grads = [None] * len(params)
    delta = dlogits
    for i in reversed(range(len(params))):
        w, _ = params[i]
        grads[i] = (delta.T @ acts[i], delta.sum(axis=0))
        if i:
            delta = (delta @ w) * (pre[i - 1] > 0)
    return grads


def sgd_epoch(params, x, y, kind, perm, batch, lr):
    """Plain mini-batch SGD over one epoch in the order ``perm``: mean loss per batch."""
    params = [(w.copy(), b.copy()) for w, b in params]
    for s in range(0, len(perm), batch):
        idx = perm[s:s + batch]
        xb, yb = x[idx], y[idx]
        z, _ = mlp_forward(params, xb)
        if kind == "binary":
            d = bce_grad_logits(z[:, 0], yb)[:, None]
        else:
            d = softmax_ce_grad_logits(z, yb)
        grads = mlp_grads(params, xb, d)
        params = [(w - lr * gw / len(idx), b - lr * gb / len(idx)) for (w, b), (gw, gb) in zip(params, grads)]
    return params
