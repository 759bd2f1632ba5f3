"""Which rank a hang is blamed on (``stalled_rank``, docs/design.md#failures-and-restarts),
from the positions the ranks report; no cluster. The real hang: tests/test_reliability.py."""
from launcher.backends.ray_horovod import SILENT_S, stalled_rank

LIVE, OLD = 0.1, SILENT_S + 10


def test_a_silent_rank_is_blamed_over_live_ranks_at_the_same_step():
    assert stalled_rank([0, 1], {0: (2, 4, LIVE), 1: (2, 4, OLD)}) == 1


def test_a_silent_rank_is_blamed_even_when_its_host_ran_ahead():
    # a rank's host may be queued ahead of its device; silence is the stronger sign
    assert stalled_rank([0, 1, 2], {0: (2, 10, LIVE), 1: (2, 250, LIVE), 2: (2, 200, OLD)}) == 2


def test_among_live_ranks_the_lowest_step_stopped_first():
    assert stalled_rank([0, 1, 2], {0: (2, 15, LIVE), 1: (2, 9, LIVE), 2: (2, 15, LIVE)}) == 1
    assert stalled_rank([0, 1], {0: (3, 0, LIVE), 1: (2, 40, LIVE)}) == 1


def test_the_longest_silent_and_the_never_heard_come_first():
    assert stalled_rank([0, 1, 2], {0: (2, 4, OLD), 1: (2, 4, OLD + 5), 2: (2, 4, LIVE)}) == 1
    assert stalled_rank([0, 1, 2], {0: (2, 4, OLD), 2: (2, 4, LIVE)}) == 1


def test_without_positions_the_lowest_busy_rank():
    assert stalled_rank([3, 1, 2], {}) == 1
    assert stalled_rank([0, 1], {0: (2, 4, LIVE), 1: (2, 4, LIVE)}) == 0


def test_large_groups_report_less_often_and_wait_longer_before_calling_a_rank_silent():
    from launcher.backends.worker import HEARTBEAT_S, heartbeat_interval

    assert heartbeat_interval(2) == heartbeat_interval(256) == HEARTBEAT_S
    assert heartbeat_interval(4096) == 16 * HEARTBEAT_S  # 4096 ranks: 512 reports a second
    # 10 s without a report: silent among 2 ranks, merely waiting among 4096 (5 x 8 s)
    positions = {0: (2, 4, LIVE), 1: (2, 9, 10.0)}
    assert stalled_rank([0, 1], positions) == 1
    assert stalled_rank([0, 1], positions, silent_s=5 * heartbeat_interval(4096)) == 0
