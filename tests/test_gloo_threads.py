"""Gloo's event-loop threads run at a low priority (docs/design.md#the-ranks-threads): the threads
``hvd.init`` starts that wait on an epoll descriptor ``hvd.init`` made get nice
``LRJOB_GLOO_LOOP_NICE`` (19 unless set), no other thread changes, and no thread gets a higher
priority. Real threads, real Horovod ranks under horovodrun and the lrjob command; the Ray ranks
are checked in test_footprint."""
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import procs
from launcher.backends.cluster import GLOO_LOOP_NICE, gloo_loop_nice, worker_env
from launcher.backends.hvd_comm import find_loop_threads, lower_threads
from lr_core.errors import LrjobInputError

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LINUX = pytest.mark.skipif(not Path("/proc/self/task").is_dir() or not Path("/proc/self/syscall").exists(),
                           reason="reads Linux's /proc/self/task/TID/syscall")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _in_a_call(tid: int, fd: int | None = None, deadline: float = 5.0) -> list[str]:
    """Poll ``/proc/self/task/TID/syscall`` until the thread waits in a system call (whose first
    argument is ``fd`` if given); returns that line's fields."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            call = Path(f"/proc/self/task/{tid}/syscall").read_text().split()
        except OSError:
            call = ["running"]
        if call[0] not in ("running", "-1") and (fd is None or int(call[1], 16) == fd):
            return call
    raise AssertionError(f"thread {tid} never waited in a system call{'' if fd is None else f' on {fd}'}")


class _Waiter:
    """A thread that waits in ``how`` ("epoll": on ``ep``, "poll", "sleep" or "lock") until stopped."""

    def __init__(self, how: str, ep=None):
        self.how, self.ep, self.tid, self._stop = how, ep, None, threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)
        _in_a_call(self.tid, self.ep if how == "read" else None)

    def _run(self):
        self.tid = threading.get_native_id()
        self._ready.set()
        if self.how == "epoll":
            while not self._stop.is_set():
                self.ep.poll(0.05)
        elif self.how == "read":  # blocks in read(2) on ep, here a pipe's read end
            os.read(self.ep, 1)
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
        if self.how == "read":
            os.write(self.writer, b"x")
        self._thread.join(5)
        # join returns when the thread's Python work is done; the kernel thread exits a moment later
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/self/task/{self.tid}") and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not os.path.exists(f"/proc/self/task/{self.tid}"), f"thread {self.tid} did not exit in 5 s"


@pytest.fixture
def waiters():
    made, eps = [], []

    def make(how, ep=None):
        made.append(_Waiter(how, ep))
        return made[-1]

    def epoll():
        eps.append(select.epoll())
        return eps[-1]

    yield make, epoll
    for w in made:
        w.stop()
    for ep in eps:
        ep.close()


@LINUX
def test_the_loops_are_the_new_threads_waiting_on_a_new_epoll(waiters):
    make, epoll = waiters
    old_ep, new_ep, other_new_ep = epoll(), epoll(), epoll()
    loop = make("epoll", new_ep)
    old_loop = make("epoll", old_ep)          # waits on a descriptor that was there before
    outsider = make("epoll", other_new_ep)    # waits on a new descriptor, but is not a new thread
    quiet = [make(how) for how in ("poll", "sleep", "lock")]
    new_threads = {loop.tid, old_loop.tid, *(w.tid for w in quiet)}
    t0 = time.monotonic()
    assert find_loop_threads(new_threads, {new_ep.fileno(), other_new_ep.fileno()}, timeout=0.3) == [loop.tid]
    assert time.monotonic() - t0 >= 0.3  # it looked for the second descriptor's thread until the time-out
    assert find_loop_threads(new_threads, {new_ep.fileno()}) == [loop.tid]
    assert find_loop_threads(new_threads, set()) == []


@LINUX
def test_a_thread_in_another_call_on_that_descriptor_number_is_not_a_loop(waiters):
    make, _ = waiters
    r, w = os.pipe()
    try:
        reader = _Waiter.__new__(_Waiter)
        reader.writer = w
        reader.__init__("read", r)
        _in_a_call(reader.tid, r)  # it waits in a call whose first argument is that number
        # read(2) takes the descriptor as its first argument too: only an epoll wait counts
        assert find_loop_threads({reader.tid}, {r}, timeout=0.2) == []
        reader.stop()
    finally:
        os.close(r)
        os.close(w)


@LINUX
def test_lower_threads_only_ever_raises_the_nice_value(waiters):
    make, epoll = waiters
    base = _nice(threading.get_native_id())
    if base > 16:
        pytest.skip(f"this test runs at nice {base}: no room above it")
    a, b = make("sleep"), make("sleep")
    os.setpriority(os.PRIO_PROCESS, b.tid, base + 3)
    assert lower_threads([a.tid, b.tid], base + 2) == [a.tid]
    assert (_nice(a.tid), _nice(b.tid)) == (base + 2, base + 3)  # b was nicer already: kept
    assert _nice(threading.get_native_id()) == base  # the calling thread
    gone = make("sleep")
    gone.stop()
    assert lower_threads([gone.tid], 19) == []


def test_the_nice_value_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(GLOO_LOOP_NICE, raising=False)
    assert gloo_loop_nice() == 19
    for raw, value in (("0", 0), ("5", 5), (" 19 ", 19), ("", 19), ("07", 7)):
        monkeypatch.setenv(GLOO_LOOP_NICE, raw)
        assert gloo_loop_nice() == value
    for raw in ("abc", "20", "-1", "2.5", "+5", "1_9", "\u0663", "100"):
        monkeypatch.setenv(GLOO_LOOP_NICE, raw)
        with pytest.raises(LrjobInputError) as e:
            gloo_loop_nice()
        assert str(e.value) == (f"LRJOB_GLOO_LOOP_NICE={raw!r}: give a whole number from 0 (leave Gloo's threads "
                                f"as they start) to 19 (the default)")
        with pytest.raises(LrjobInputError):
            worker_env(1)


def test_the_ray_workers_get_the_users_setting(monkeypatch):
    monkeypatch.delenv(GLOO_LOOP_NICE, raising=False)
    assert GLOO_LOOP_NICE not in worker_env(1)  # the default applies in the rank
    monkeypatch.setenv(GLOO_LOOP_NICE, "3")
    assert worker_env(1)[GLOO_LOOP_NICE] == "3"


class _FakeHorovod:
    """horovod.mxnet's calls the communicator makes, for a rank whose loops cannot be found."""

    def __init__(self, gloo=True, initialized=False):
        self.gloo, self.initialized = gloo, initialized

    def is_initialized(self):
        return self.initialized

    def init(self):
        self.initialized = True

    def gloo_enabled(self):
        return self.gloo

    def rank(self):
        return 3

    def size(self):
        return 4

    def local_rank(self):
        return 1


@LINUX
@pytest.mark.parametrize("case", ["not found", "MPI", "initialized before", "nice 0"])
def test_a_rank_whose_loops_are_not_found_says_so_and_trains_on(case, monkeypatch, capsys):
    import horovod
    from launcher.backends import hvd_comm

    fake = _FakeHorovod(gloo=case != "MPI", initialized=case == "initialized before")
    monkeypatch.setitem(sys.modules, "horovod.mxnet", fake)
    monkeypatch.setattr(horovod, "mxnet", fake, raising=False)
    monkeypatch.setattr(hvd_comm, "find_loop_threads", lambda *a, **k: [])
    monkeypatch.setenv(GLOO_LOOP_NICE, "0" if case == "nice 0" else "19")
    comm = hvd_comm.HorovodCommunicator()
    assert (comm.rank, comm.size, comm.local_rank, comm.loops, comm.lowered) == (3, 4, 1, [], [])
    err = capsys.readouterr().err
    if case == "not found":
        assert err == ("lrjob: warning: rank 3: 0 of Gloo's event-loop threads found in /proc/self/task and 0 "
                       "given nice 19; the others keep their priority\n"), err
    else:  # nothing was looked for: nothing to say
        assert err == "", err


@pytest.mark.parametrize("command", ["run", "worker", "parity", "sweep"])
def test_a_bad_setting_is_one_line_and_exit_2_before_anything_starts(command, tmp_path):
    env = {**os.environ, GLOO_LOOP_NICE: "high"}
    job = str(ROOT / "jobs" / "binary_2d.yaml")
    args = {"sweep": [job, "--grid", "train.learning_rate=0.1,0.2"], "parity": [job]}.get(
        command, [job, "--output", str(tmp_path / "run")])
    r = procs.run([str(BIN / "lrjob"), command, *args], timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr == ("lrjob: error: LRJOB_GLOO_LOOP_NICE='high': give a whole number from 0 (leave Gloo's "
                        "threads as they start) to 19 (the default)\n"), r.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory, no runs/ folder


_RANK = r"""
import json, os
from launcher.backends.hvd_comm import HorovodCommunicator
comm = HorovodCommunicator()
comm.barrier()
tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
print("RESULT" + json.dumps({"rank": comm.rank, "loops": comm.loops, "lowered": comm.lowered,
                             "main": os.getpriority(os.PRIO_PROCESS, os.getpid()),
                             "nice": {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids}}))
"""


@pytest.mark.distributed
@pytest.mark.parametrize("setting", [None, "0", "12"])
def test_two_horovod_ranks_lower_their_gloo_loops_and_nothing_else(setting):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOROVOD_GLOO_TIMEOUT_SECONDS": "60"}
    env.pop(GLOO_LOOP_NICE, None)
    if setting is not None:
        env[GLOO_LOOP_NICE] = setting
    r = procs.run([str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, "-c", _RANK],
                  timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = [json.loads(line.split("RESULT", 1)[1]) for line in r.stdout.splitlines() if "RESULT" in line]
    assert sorted(x["rank"] for x in ranks) == [0, 1], r.stdout
    for x in ranks:
        nice = {int(t): n for t, n in x["nice"].items()}
        base = x["main"]  # every thread starts at the launching shell's nice
        want = max(base, 19 if setting is None else int(setting))
        if setting == "0":
            assert x["loops"] == x["lowered"] == [], x
        else:
            # Horovod 0.28's Gloo: an event loop per TCP device, two here
            assert len(x["loops"]) == 2 and x["lowered"] == (x["loops"] if want > base else []), x
        assert {t: nice[t] for t in x["loops"]} == {t: want for t in x["loops"]}, x
        # the training, Horovod background and MXNet threads keep the rank's priority
        others = {t: n for t, n in nice.items() if t not in x["loops"]}
        assert len(others) > 5 and set(others.values()) == {base}, x
