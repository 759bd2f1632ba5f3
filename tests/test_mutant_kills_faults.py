"""``LRJOB_FAULT`` with several faults (docs/design.md#fault-injection), where `make mutants`
found the fast tests silent: a fault that does not match the moment (another point,
another epoch, its ``once`` marker already there) leaves the moment to the next one, the
first that fires ends it, and an empty list or object arms nothing but is refused."""
import json

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
    assert str(e.value) == ("LRJOB_FAULT needs 'at' in step, checkpoint, cleanup, export, upload, sweep, asha "
                            f"and 'action' in kill, stop, raise, interrupt, sleep, wait, meet; got {text!r}")
