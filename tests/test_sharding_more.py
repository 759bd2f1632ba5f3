"""Edges of the parity rule's batching (``lr_core.sharding``) beyond tests/test_sharding.py:
an empty training set and the integer types every rank indexes with."""
import numpy as np
import pytest

from lr_core.sharding import epoch_permutation, local_plan, num_batches, segments, shard_bounds


@pytest.mark.parametrize("rank,size", [(0, 1), (0, 3), (2, 3)])
def test_an_empty_epoch_has_no_steps(rank, size):
    indices, offsets, global_sizes = local_plan(np.arange(0), 4, rank, size)
    assert indices.shape == (0,) and indices.dtype == np.int64
    assert offsets.tolist() == [0] and offsets.dtype == np.int64
    assert global_sizes.shape == (0,) and global_sizes.dtype == np.int64


@pytest.mark.parametrize("perm_dtype", [np.int32, np.int64, np.uint16])
def test_plans_index_with_int64_whatever_the_permutation_type(perm_dtype):
    perm = np.random.default_rng(3).permutation(23).astype(perm_dtype)
    indices, offsets, global_sizes = local_plan(perm, 5, 1, 3)
    assert indices.dtype == offsets.dtype == global_sizes.dtype == np.int64
    assert global_sizes.tolist() == [5, 5, 5, 5, 3]
    # rank 1 of 3 takes the middle slice of every global batch
    want = [perm[s * 5:(s + 1) * 5][slice(*shard_bounds(len(perm[s * 5:(s + 1) * 5]), 1, 3))]
            for s in range(5)]
    assert indices.tolist() == np.concatenate(want).astype(np.int64).tolist()
    assert np.diff(offsets).tolist() == [len(w) for w in want]


def test_a_rank_with_no_rows_in_a_short_last_batch():
    # 10 rows, batch 4: the last batch has 2 rows, so rank 2 of 3 gets none of it
    indices, offsets, global_sizes = local_plan(np.arange(10), 4, 2, 3)
    assert global_sizes.tolist() == [4, 4, 2]
    assert np.diff(offsets).tolist() == [1, 1, 0]
    assert indices.tolist() == [3, 7]


def test_permutation_accepts_numpy_and_python_integers():
    a = epoch_permutation(np.int64(7), np.int32(2), 50)
    b = epoch_permutation(7, 2, 50)
    assert np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(b, np.random.default_rng([7, 2]).permutation(50))
    assert not np.array_equal(epoch_permutation(7, 3, 50), b)
    assert not np.array_equal(epoch_permutation(8, 2, 50), b)


@pytest.mark.parametrize("n,b,want", [(0, 3, 0), (1, 3, 1), (3, 3, 1), (4, 3, 2), (6, 3, 2), (7, 1, 7)])
def test_num_batches_rounds_up(n, b, want):
    assert num_batches(n, b) == want


def test_an_epoch_is_cut_at_every_multiple_of_every_step_wherever_it_starts():
    """docs/design.md#mid-epoch-checkpoints: the cuts fall on multiples of checkpoint.every_steps,
    not on steps counted from where a resumed run starts; an empty epoch is one empty range."""
    assert segments(0, 10, 0) == [(0, 10)]
    assert segments(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert segments(5, 10, 4) == [(5, 8), (8, 10)]
    assert segments(8, 10, 4) == [(8, 10)]
    assert segments(9, 10, 3) == [(9, 10)]
    assert segments(0, 8, 4) == [(0, 4), (4, 8)]
    assert segments(0, 1, 1) == [(0, 1)]
    assert segments(0, 0, 3) == [(0, 0)]


@pytest.mark.parametrize("start,steps", [(10, 10), (11, 10), (-1, 10), (1, 1), (1, 0)])
def test_a_start_outside_the_epoch_is_refused_with_its_numbers(start, steps):
    with pytest.raises(ValueError) as e:
        segments(start, steps, 4)
    assert str(e.value) == f"step {start} is outside an epoch of {steps} steps"
