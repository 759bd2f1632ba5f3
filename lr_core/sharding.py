"""The parity rule's batching, in one place.

Each epoch draws one global permutation from ``(seed, epoch)``. Global batch ``b`` is
``perm[b*B:(b+1)*B]`` (the last one possibly short). Rank ``r`` of ``W`` takes its
contiguous slice of every global batch; slice sizes differ by at most one and a rank may
get none when the batch is smaller than ``W``. The union of the slices over ranks is the
global batch, so summing per-rank gradients and dividing by the batch's real size gives
exactly the single-process gradient.
"""
from __future__ import annotations

import numpy as np

__all__ = ["epoch_permutation", "num_batches", "shard_bounds", "local_plan", "segments"]


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global order of the ``n`` training rows in ``epoch`` (same on every rank)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def shard_bounds(length: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous slice of ``length`` items."""
    q, r = divmod(length, size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def local_plan(perm: np.ndarray, batch_size: int, rank: int, size: int):
    """This rank's rows for a whole epoch.

    Returns ``(indices, offsets, global_sizes)``: the rank's row indices for every step
    concatenated, ``offsets[s]:offsets[s+1]`` the slice of step ``s``, and the real size
    of each global batch (the divisor of the summed gradient).
    """
    n = len(perm)
    steps = num_batches(n, batch_size)
    pieces, offsets, global_sizes = [], [0], []
    for s in range(steps):
        lo, hi = s * batch_size, min((s + 1) * batch_size, n)
        a, b = shard_bounds(hi - lo, rank, size)
        pieces.append(perm[lo + a:lo + b])
        offsets.append(offsets[-1] + (b - a))
        global_sizes.append(hi - lo)
    indices = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
    return indices.astype(np.int64), np.asarray(offsets, dtype=np.int64), np.asarray(global_sizes, dtype=np.int64)


def segments(start: int, steps: int, every: int) -> list[tuple[int, int]]:
    """The ``[a, b)`` step ranges an epoch of ``steps`` steps runs in, from step ``start``:
    cut at every multiple of ``every`` (mid-epoch checkpoints), or one range when ``every``
    is 0. The cuts do not depend on where a resumed run starts."""
    if not 0 <= start < max(steps, 1):
        raise ValueError(f"step {start} is outside an epoch of {steps} steps")
    if not every:
        return [(start, steps)]
    cuts = list(range((start // every + 1) * every, steps, every))
    bounds = [start, *cuts, steps]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(start, steps)]
