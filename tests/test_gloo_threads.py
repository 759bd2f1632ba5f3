"""Gloo's event-loop threads run at a low priority (docs/design.md#the-ranks-threads): the threads
``hvd.init`` starts that wait in ``epoll_wait`` get ``LRJOB_GLOO_LOOP_NICE`` (19 unless set), and
no other thread of the rank changes. Real threads, and real Horovod ranks under horovodrun; the
Ray ranks are checked in test_footprint."""
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.backends.cluster import worker_env
from launcher.backends.hvd_comm import GLOO_LOOP_NICE, gloo_loop_nice, lower_loop_threads

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


class _Waiter:
    """A thread that waits in ``how`` ("epoll", "poll", "sleep" or "lock") until stopped."""

    def __init__(self, how: str):
        self.how, self.tid, self._stop = how, None, threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.05)  # into its wait

    def _run(self):
        self.tid = threading.get_native_id()
        self._ready.set()
        if self.how == "epoll":
            ep = select.epoll()
            while not self._stop.is_set():
                ep.poll(0.05)
            ep.close()
        elif self.how == "poll":
            p = select.poll()
            while not self._stop.is_set():
                p.poll(50)
        elif self.how == "sleep":
            while not self._stop.is_set():
                time.sleep(0.05)
        else:
            self._stop.wait()

    def stop(self):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def waiters():
    made = []
    yield lambda how: made.append(_Waiter(how)) or made[-1]
    for w in made:
        w.stop()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_only_the_new_threads_waiting_in_epoll_are_lowered(waiters):
    loop, other_loop = waiters("epoll"), waiters("epoll")
    quiet = [waiters(how) for how in ("poll", "sleep", "lock")]
    new = {loop.tid, *(w.tid for w in quiet)}  # other_loop was there before: not new
    assert lower_loop_threads(new, 7) == [loop.tid]
    assert _nice(loop.tid) == 7
    assert [_nice(w.tid) for w in quiet] == [0, 0, 0]
    assert _nice(other_loop.tid) == 0
    assert _nice(threading.get_native_id()) == 0  # the calling thread


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_nice_zero_lowers_nothing_and_a_gone_thread_is_skipped(waiters):
    loop = waiters("epoll")
    assert lower_loop_threads({loop.tid}, 0) == []
    assert _nice(loop.tid) == 0
    gone = waiters("epoll")
    gone.stop()
    assert lower_loop_threads({gone.tid}, 19) == []


def test_the_nice_value_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(GLOO_LOOP_NICE, raising=False)
    assert gloo_loop_nice() == 19
    for raw, value in (("0", 0), ("5", 5), (" 19 ", 19), ("", 19)):
        monkeypatch.setenv(GLOO_LOOP_NICE, raw)
        assert gloo_loop_nice() == value
    for raw in ("abc", "20", "-1", "2.5"):
        monkeypatch.setenv(GLOO_LOOP_NICE, raw)
        with pytest.raises(ValueError) as e:
            gloo_loop_nice()
        assert str(e.value) == (f"LRJOB_GLOO_LOOP_NICE={raw!r}: give a whole number from 0 (leave Gloo's threads "
                                f"as they start) to 19 (the default)")


def test_the_ray_workers_get_the_users_setting(monkeypatch):
    monkeypatch.delenv(GLOO_LOOP_NICE, raising=False)
    assert GLOO_LOOP_NICE not in worker_env(1)  # the default applies in the rank
    monkeypatch.setenv(GLOO_LOOP_NICE, "3")
    assert worker_env(1)[GLOO_LOOP_NICE] == "3"


_RANK = r"""
import json, os
from launcher.backends.hvd_comm import HorovodCommunicator
comm = HorovodCommunicator()
comm.barrier()
tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
wchan = {t: open(f"/proc/self/task/{t}/wchan").read() for t in comm.lowered}
print("RESULT" + json.dumps({"rank": comm.rank, "lowered": comm.lowered, "wchan": wchan,
                             "nice": {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids}}))
"""


@pytest.mark.parametrize("setting", [None, "0", "12"])
def test_two_horovod_ranks_lower_their_gloo_loops_and_nothing_else(setting):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOROVOD_GLOO_TIMEOUT_SECONDS": "60"}
    env.pop(GLOO_LOOP_NICE, None)
    if setting is not None:
        env[GLOO_LOOP_NICE] = setting
    r = subprocess.run([str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, "-c",
                        _RANK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = [json.loads(line.split("RESULT", 1)[1]) for line in r.stdout.splitlines() if "RESULT" in line]
    assert sorted(x["rank"] for x in ranks) == [0, 1], r.stdout
    want = 19 if setting is None else int(setting)
    for x in ranks:
        nice = {int(t): n for t, n in x["nice"].items()}
        if want == 0:
            assert x["lowered"] == [], x
        else:
            # Horovod 0.28's Gloo: an event loop per TCP device, two here
            assert len(x["lowered"]) in (1, 2), x
            assert set(x["wchan"].values()) <= {"do_epoll_wait", "0"}, x
        assert {t: n for t, n in nice.items() if t in x["lowered"]} == {t: want for t in x["lowered"]}, x
        # the training, Horovod background and MXNet threads keep the rank's priority
        assert {t: n for t, n in nice.items() if t not in x["lowered"]} == {t: 0 for t in nice
                                                                            if t not in x["lowered"]}, x
