"""``LRJOB_FAULT`` with several faults (docs/design.md#fault-injection), where `make mutants`
found the fast tests silent: a fault that does not match the moment (another point,
another epoch, its ``once`` marker already there) leaves the moment to the next one, the
first that fires ends it, and an empty list or object arms nothing but is refused; the
blocking actions on a clock of their own (how often ``wait`` polls, when it gives up, what
it says then), the folder and mark of ``meet``, and disarming."""
import json
import os

import pytest

from lr_core import faults
from lr_core.faults import FaultSpecError

WHERE = {"epoch": 1, "step": 3, "rank": 0}
INJECTED = "injected fault at step {'epoch': 1, 'step': 3, 'rank': 0}"


@pytest.fixture
def arm(monkeypatch):
    """``faults.arm`` in this test only: the module's state and the environment are restored after it."""
    monkeypatch.setattr(faults, "ARMED", False)
    monkeypatch.setattr(faults, "_SPEC", None)
    monkeypatch.setenv("LRJOB_FAULT", "")
    monkeypatch.delenv("LRJOB_FAULT_REPORT", raising=False)
    return lambda *specs: faults.arm(json.dumps(list(specs)))


@pytest.mark.parametrize("first", [
    {"at": "checkpoint", "epoch": 1, "stage": "written", "action": "raise"},   # another point
    {"at": "step", "epoch": 2, "action": "raise"},                             # another epoch
], ids=["other-point", "other-epoch"])
def test_a_fault_that_does_not_match_leaves_the_moment_to_the_next(arm, first):
    arm(first, {"at": "step", "epoch": 1, "action": "raise"})
    with pytest.raises(RuntimeError) as e:
        faults.hit("step", **WHERE)
    assert str(e.value) == INJECTED


def test_a_fault_that_already_fired_once_leaves_the_moment_to_the_next(arm, tmp_path):
    fired, second = tmp_path / "fired", tmp_path / "second"
    fired.touch()
    arm({"at": "step", "epoch": 1, "action": "raise", "once": str(fired)},
        {"at": "step", "step": 3, "action": "raise", "once": str(second)})
    with pytest.raises(RuntimeError) as e:
        faults.hit("step", **WHERE)
    assert str(e.value) == INJECTED and second.exists()
    assert json.loads((tmp_path / "second.where").read_text())["step"] == 3
    faults.hit("step", **WHERE)          # both markers there now: nothing fires


def test_the_first_fault_that_fires_ends_the_moment(arm, tmp_path):
    there = tmp_path / "go"
    there.touch()
    arm({"at": "step", "epoch": 1, "action": "wait", "until": str(there)},   # fires, returns at once
        {"at": "step", "epoch": 1, "action": "raise"})
    faults.hit("step", **WHERE)


@pytest.mark.parametrize("text", ["[]", "{}"])
def test_an_empty_list_or_object_is_refused(arm, text):
    faults.arm(text)
    with pytest.raises(FaultSpecError) as e:
        faults.check()
    assert str(e.value) == ("LRJOB_FAULT needs 'at' in step, checkpoint, cleanup, export, upload, sweep, asha, "
                            f"table, probe and 'action' in kill, stop, raise, interrupt, sleep, wait, meet; got {text!r}")


class _Clock:
    """``faults.time`` for the blocking actions: ``sleep`` advances ``monotonic`` (no real
    time passes) and can run ``then`` once, as another process acting during the wait."""

    def __init__(self, then=None):
        self.now, self.slept, self.then = 1000.0, [], then

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        if self.then:
            self.then()
            self.then = None


def test_wait_polls_every_20_ms_until_the_file_appears(arm, monkeypatch, tmp_path):
    go = tmp_path / "go"
    clock = _Clock(then=go.touch)                   # the file appears during the first poll
    monkeypatch.setattr(faults, "time", clock)
    arm({"at": "step", "epoch": 1, "action": "wait", "until": str(go)})
    faults.hit("step", **WHERE)
    assert clock.slept == [0.02]


def test_wait_gives_up_after_its_timeout_and_says_where(arm, monkeypatch, tmp_path):
    go = tmp_path / "go"
    clock = _Clock()
    monkeypatch.setattr(faults, "time", clock)
    arm({"at": "step", "epoch": 1, "action": "wait", "until": str(go), "timeout": 0.02})
    with pytest.raises(RuntimeError) as e:
        faults.hit("step", **WHERE)
    assert str(e.value) == f"{INJECTED}: {go} did not appear within 0.02 s"
    assert clock.slept == [0.02, 0.02]              # at the deadline itself it still waits


def test_wait_gives_up_after_120_seconds_by_default(arm, monkeypatch, tmp_path):
    clock = _Clock()
    clock.sleep = lambda seconds: (clock.slept.append(seconds), setattr(clock, "now", clock.now + 50))
    monkeypatch.setattr(faults, "time", clock)
    arm({"at": "step", "epoch": 1, "action": "wait", "until": str(tmp_path / "never")})
    with pytest.raises(RuntimeError) as e:
        faults.hit("step", **WHERE)
    assert str(e.value) == f"{INJECTED}: {tmp_path / 'never'} did not appear within 120 s"
    assert len(clock.slept) == 3                    # 50, 100 s: waits; 150 s: past 120


def test_meet_makes_its_folder_and_leaves_a_mark_named_by_its_process(arm, tmp_path):
    folder = tmp_path / "a" / "b" / "meet"          # none of it there yet
    arm({"at": "step", "epoch": 1, "action": "meet", "dir": str(folder), "count": 1})
    faults.hit("step", **WHERE)
    (mark,) = [p.name for p in folder.iterdir()]
    pid, _, token = mark.partition("-")
    assert pid == str(os.getpid()) and len(token) == 8 and int(token, 16) >= 0


def test_wait_without_until_is_refused_and_sleep_may_last_60_seconds(arm):
    with pytest.raises(FaultSpecError) as e:
        faults._parse(json.dumps({"at": "step", "action": "wait"}))
    assert str(e.value) == "LRJOB_FAULT: action 'wait' needs until"
    assert faults._parse(json.dumps({"at": "step", "action": "sleep", "seconds": 60}))["seconds"] == 60


def test_disarming_an_unarmed_process_does_nothing(arm, monkeypatch):
    monkeypatch.delenv("LRJOB_FAULT")
    faults.arm(None)
    assert not faults.ARMED and "LRJOB_FAULT" not in os.environ
