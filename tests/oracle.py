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


# --------------------------------------------------------------------------- whole training runs
# The same model trained the long way: several epochs, a short last batch, the three
# optimizers of the job spec. Each step backpropagates the SUM of the batch's per-sample
# losses and the optimizer multiplies that gradient by rescale_grad = 1 / len(batch).


def per_sample_loss(params, x, y, kind, w=None):
    """Each row's loss, times its weight ``w`` (class weights) when given."""
    z, _ = mlp_forward(params, x)
    loss = bce_from_logits(z[:, 0], y) if kind == "binary" else softmax_ce(z, y)
    return loss if w is None else loss * w


def sum_loss_grads(params, x, y, kind, w=None):
    """Gradient of the SUM over the rows of ``x`` of the (weighted) per-sample losses."""
    z, _ = mlp_forward(params, x)
    d = bce_grad_logits(z[:, 0], y)[:, None] if kind == "binary" else softmax_ce_grad_logits(z, y)
    return mlp_grads(params, x, d if w is None else d * w[:, None])


class SGD:
    """Stochastic gradient descent with momentum and weight decay, per array::

        g = rescale_grad * grad + wd * w
        v = momentum * v - lr * g          (v starts at zero)
        w = w + v

    With momentum 0 this is ``w = w - lr * g``. Weight decay applies to every array,
    biases included.
    """

    def __init__(self, learning_rate, momentum=0.0, wd=0.0):
        self.lr, self.momentum, self.wd = learning_rate, momentum, wd
        self.v = {}

    def step(self, arrays, grads, rescale_grad):
        out = []
        for i, (w, grad) in enumerate(zip(arrays, grads)):
            g = rescale_grad * grad + self.wd * w
            v = self.momentum * self.v.get(i, np.zeros_like(w)) - self.lr * g
            self.v[i] = v
            out.append(w + v)
        return out


class NAG:
    """Nesterov momentum as MXNet 1.9.1 runs it (``nag_mom_update``, updating the weight
    in place), per array::

        g = rescale_grad * grad + wd * w
        w_new = w + momentum**2 * v - (1 + momentum) * lr * g
        v = momentum * v - lr * (rescale_grad * grad + wd * w_new)     (v starts at zero)

    Without weight decay this is the textbook look-ahead ``v = momentum * v - lr * g;
    w = w + momentum * v - lr * g``. With weight decay the velocity takes its decay term
    from the NEW weight: the kernel writes the weight first and then reads it again for
    the velocity, and the optimizer passes the weight as its own output. With momentum 0
    this is plain SGD.
    """

    def __init__(self, learning_rate, momentum=0.0, wd=0.0):
        self.lr, self.momentum, self.wd = learning_rate, momentum, wd
        self.v = {}

    def step(self, arrays, grads, rescale_grad):
        out = []
        mu = self.momentum
        for i, (w, grad) in enumerate(zip(arrays, grads)):
            v = self.v.get(i, np.zeros_like(w))
            g = rescale_grad * grad + self.wd * w
            w_new = w + mu * mu * v - (1 + mu) * self.lr * g
            self.v[i] = mu * v - self.lr * (rescale_grad * grad + self.wd * w_new)
            out.append(w_new)
        return out


class Adam:
    """Adam, per array, with that array's own update count t (1 at its first update)::

        g = rescale_grad * grad + wd * w   (weight decay inside the moments)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)
        w = w - lr_t * m / (sqrt(v) + eps)

    The bias correction is folded into the step size; epsilon is added to sqrt(v), the
    uncorrected second moment.
    """

    def __init__(self, learning_rate, wd=0.0, beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.lr, self.wd, self.beta1, self.beta2, self.eps = learning_rate, wd, beta1, beta2, epsilon
        self.m, self.v, self.t = {}, {}, {}

    def step(self, arrays, grads, rescale_grad):
        out = []
        for i, (w, grad) in enumerate(zip(arrays, grads)):
            self.t[i] = t = self.t.get(i, 0) + 1
            g = rescale_grad * grad + self.wd * w
            self.m[i] = m = self.beta1 * self.m.get(i, np.zeros_like(w)) + (1 - self.beta1) * g
            self.v[i] = v = self.beta2 * self.v.get(i, np.zeros_like(w)) + (1 - self.beta2) * g * g
            lr_t = self.lr * np.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
            out.append(w - lr_t * m / (np.sqrt(v) + self.eps))
        return out


def make_optimizer(name, learning_rate, momentum=0.0, weight_decay=0.0):
    """The optimizer a job names (``train.optimizer``); Adam takes no momentum."""
    if name == "sgd":
        return SGD(learning_rate, momentum, weight_decay)
    if name == "nag":
        return NAG(learning_rate, momentum, weight_decay)
    if name == "adam":
        return Adam(learning_rate, weight_decay)
    raise ValueError(name)


def scheduled_lr(schedule, lr, epoch, step_in_epoch, steps_per_epoch):
    """The learning rate of one step under a ``train.lr_schedule``, from its definition:

    - warmup (``warmup_epochs`` = K): step number i = epoch * S + step + 1 (1-based)
      of the first K * S steps gets lr * i / (K * S);
    - ``step``: lr times ``factor`` once for every full ``step_epochs`` epochs done;
    - ``cosine``: after the warmup, the fraction p of the remaining (``epochs`` - K) * S
      steps done, capped at 1; lr goes min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2.
    """
    if schedule is None:
        return lr
    warm_steps = schedule.get("warmup_epochs", 0) * steps_per_epoch
    i = epoch * steps_per_epoch + step_in_epoch
    if i < warm_steps:
        return lr * (i + 1) / warm_steps
    if schedule["kind"] == "step":
        decays = epoch // schedule["step_epochs"]
        return lr * schedule["factor"] ** decays
    p = min((i - warm_steps) / (schedule["epochs"] * steps_per_epoch - warm_steps), 1.0)
    return schedule["min_lr"] + (lr - schedule["min_lr"]) * (1 + np.cos(np.pi * p)) / 2


def train(params, x, y, kind, perms, batch, opt, x_val=None, y_val=None, divisor=None, weights=None,
          schedule=None):
    """One epoch per permutation in ``perms``, batches ``perm[s:s + batch]`` (the last one
    possibly short). Returns the final parameters and one dict per epoch:

    - ``train_loss``: the mean over all n rows of the loss each row had under the
      parameters of its step (before the update): sum of batch loss sums / n;
    - ``mean_of_batch_means``: the average of the per-batch mean losses (a different
      number when the last batch is short);
    - ``val_loss``: mean per-sample loss on the validation rows with the parameters at
      the end of the epoch, and ``val_accuracy`` (binary: class 1 when the logit is >= 0,
      i.e. probability >= 0.5; softmax: the largest logit), when validation rows are given.

    ``divisor`` replaces the real batch size in rescale_grad (to show what dividing the
    short last batch by the nominal size would do). ``weights``: one weight per training
    row, multiplying its loss (the divisor stays the batch's row count); validation losses
    are unweighted. ``schedule``: the ``train.lr_schedule`` mapping; each step then sets
    the optimizer's ``lr`` to ``scheduled_lr`` of its epoch and step (``epoch_lrs`` in the
    history lists the rates used).
    """
    params = [(w.copy(), b.copy()) for w, b in params]
    history = []
    base_lr = opt.lr
    for e, perm in enumerate(perms):
        n = len(perm)
        loss_sum, batch_means, lrs = 0.0, [], []
        steps = -(-n // batch)
        for s in range(0, n, batch):
            opt.lr = scheduled_lr(schedule, base_lr, e, s // batch, steps)
            lrs.append(opt.lr)
            idx = perm[s:s + batch]
            xb, yb = x[idx], y[idx]
            wb = None if weights is None else weights[idx]
            losses = per_sample_loss(params, xb, yb, kind, wb)
            loss_sum += losses.sum()
            batch_means.append(losses.mean())
            grads = sum_loss_grads(params, xb, yb, kind, wb)
            flat = [a for wb in params for a in wb]
            flat_g = [g for gg in grads for g in gg]
            new = opt.step(flat, flat_g, 1.0 / (divisor or len(idx)))
            params = [(new[2 * i], new[2 * i + 1]) for i in range(len(params))]
        epoch = {"train_loss": loss_sum / n, "mean_of_batch_means": float(np.mean(batch_means)), "epoch_lrs": lrs}
        if x_val is not None:
            epoch["val_loss"] = float(per_sample_loss(params, x_val, y_val, kind).mean())
            z, _ = mlp_forward(params, x_val)
            pred = (z[:, 0] >= 0).astype(int) if kind == "binary" else z.argmax(axis=1)
            epoch["val_accuracy"] = float(np.mean(pred == y_val))
        history.append(epoch)
    return params, history
