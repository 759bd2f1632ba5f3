"""Fast tier (no Ray): the parity rule's batching, and gradient accumulation over W
slices in one process equal to the full-batch gradient."""
import numpy as np
import mxnet as mx
import pytest
from mxnet import autograd

from lr_core.config import LoopConfig
from lr_core.losses import LossGraph
from lr_core.models import build_model
from lr_core.sharding import epoch_permutation, local_plan, num_batches, shard_bounds


@pytest.mark.parametrize("length", [0, 1, 3, 7, 10, 64])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_shard_bounds_partition_contiguously(length, size):
    bounds = [shard_bounds(length, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    for (a, b), (c, d) in zip(bounds, bounds[1:]):
        assert b == c  # contiguous, no gap, no overlap
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes


@pytest.mark.parametrize("n,batch,size", [(997, 7, 4), (10, 3, 4), (64, 64, 3), (5, 2, 8), (1, 1, 2)])
def test_local_plans_cover_every_global_batch_exactly(n, batch, size):
    perm = epoch_permutation(3, 1, n)
    plans = [local_plan(perm, batch, r, size) for r in range(size)]
    steps = num_batches(n, batch)
    for idx, offsets, global_sizes in plans:
        assert len(global_sizes) == steps and global_sizes.sum() == n
    for s in range(steps):
        union = np.concatenate([idx[off[s]:off[s + 1]] for idx, off, _ in plans])
        assert union.tolist() == perm[s * batch:(s + 1) * batch].tolist()  # in order, once each


def test_permutation_depends_on_seed_and_epoch_only():
    assert np.array_equal(epoch_permutation(1, 2, 50), epoch_permutation(1, 2, 50))
    assert not np.array_equal(epoch_permutation(1, 2, 50), epoch_permutation(1, 3, 50))
    assert sorted(epoch_permutation(9, 0, 50).tolist()) == list(range(50))


@pytest.mark.parametrize("kind,hidden", [("binary", ()), ("softmax", ()), ("softmax", (5,))])
@pytest.mark.parametrize("workers", [2, 3, 5])
def test_summed_slice_gradients_equal_the_full_batch_gradient(kind, hidden, workers):
    rng = np.random.default_rng(workers)
    batch, d = 11, 4
    x = mx.nd.array(rng.normal(size=(batch, d)))
    labels = rng.integers(0, 2 if kind == "binary" else 3, batch).astype(np.float32)
    y = mx.nd.array(labels.reshape(-1, 1) if kind == "binary" else labels)
    cfg = LoopConfig(kind=kind, num_classes=3, hidden=hidden, seed=2)
    graph = LossGraph(build_model(cfg, d), kind)
    params = list(graph.net.collect_params().values())

    def grads(rows):
        with autograd.record():
            total = graph(x[rows[0]:rows[1]], y[rows[0]:rows[1]])
        total.backward()
        return [p.grad().asnumpy().astype(np.float64) for p in params]

    full = grads((0, batch))
    summed = [np.zeros_like(g) for g in full]
    for r in range(workers):
        a, b = shard_bounds(batch, r, workers)
        if b > a:
            summed = [s + g for s, g in zip(summed, grads((a, b)))]
    for f, s in zip(full, summed):
        np.testing.assert_allclose(s / batch, f / batch, atol=1e-6)
