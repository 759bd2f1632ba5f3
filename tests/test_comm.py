"""The single-process communicator (``lr_core.comm``)."""
import numpy as np

from lr_core.comm import SingleProcessCommunicator


def test_single_process_allreduce_returns_a_new_array():
    a = np.arange(3.0)
    out = SingleProcessCommunicator().allreduce_sum(a, "x")
    assert out is not a and np.array_equal(out, a)
    out[0] = 7.0
    assert a[0] == 0.0
