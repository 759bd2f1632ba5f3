"""Fault injection (``lr_core.faults``) in-process: how ``LRJOB_FAULT`` is read, when an
armed point fires, ``once`` markers and the report of where it fired. ``kill`` and
``stop`` act on a forked copy of the test process."""
import json
import os

import pytest

from lr_core import faults
from lr_core.faults import FaultSpecError


@pytest.mark.parametrize("value", [None, ""])
def test_unset_is_unarmed(value):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "LRJOB_FAULT"}
    if value is not None:
        env["LRJOB_FAULT"] = value
    code = "from lr_core import faults; print(faults.ARMED); faults.check(); faults.hit('step', step=1)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@pytest.mark.parametrize("action", ["kill", "stop", "raise"])
def test_a_spec_is_a_json_object_with_at_and_action(action):
    text = json.dumps({"at": "step", "epoch": 3, "action": action})
    assert faults._parse(text) == {"at": "step", "epoch": 3, "action": action}


def test_not_json():
    with pytest.raises(FaultSpecError) as e:
        faults._parse("{at: step")
    assert str(e.value).startswith("LRJOB_FAULT is not JSON (")
    assert str(e.value).endswith("); unset it, or see lr_core/faults.py")
    assert e.value.exit_code == 2
    assert e.value.__cause__ is None and e.value.__suppress_context__


@pytest.mark.parametrize("spec", [["at", "step"], {"action": "raise"}, {"at": "step"},
                                  {"at": "step", "action": "explode"}, "raise"])
def test_a_spec_without_at_or_a_known_action(spec):
    text = json.dumps(spec)
    with pytest.raises(FaultSpecError) as e:
        faults._parse(text)
    assert str(e.value) == (f"LRJOB_FAULT needs 'at' in step, checkpoint, cleanup, export, upload, sweep, asha, "
                            f"table, probe and 'action' in kill, stop, raise, interrupt, sleep, wait, meet; got {text!r}")


def test_a_key_the_point_does_not_report():
    with pytest.raises(FaultSpecError) as e:
        faults._parse(json.dumps({"at": "checkpoint", "stage": "written", "step": 3, "action": "raise"}))
    assert str(e.value) == "LRJOB_FAULT: point 'checkpoint' reports epoch, stage, not step"


def _arm(monkeypatch, **spec):
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"action": "raise", **spec})
    monkeypatch.delenv("LRJOB_FAULT_REPORT", raising=False)


def test_unarmed_points_do_nothing(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", False)
    monkeypatch.setattr(faults, "_SPEC", {"at": "step", "action": "raise"})
    faults.hit("step", epoch=1, step=1, rank=0)


def test_fires_only_where_every_condition_matches(monkeypatch):
    _arm(monkeypatch, at="step", epoch=2, step=3)
    faults.hit("checkpoint", epoch=2, step=3)           # another point
    faults.hit("step", epoch=2, step=4, rank=0)         # another step
    faults.hit("step", epoch=2, rank=0)                 # no step reported: no match
    with pytest.raises(RuntimeError) as e:
        faults.hit("step", epoch=2, step=3, rank=1)     # rank is not a condition: any rank
    assert str(e.value) == "injected fault at step {'epoch': 2, 'step': 3, 'rank': 1}"


def test_once_fires_a_single_time_and_reports_where(monkeypatch, tmp_path):
    marker = tmp_path / "fired"
    _arm(monkeypatch, at="checkpoint", stage="written", once=str(marker))
    with pytest.raises(RuntimeError):
        faults.hit("checkpoint", epoch=4, stage="written")
    assert marker.exists()
    report = json.loads((tmp_path / "fired.where").read_text())
    assert report == {"pid": os.getpid(), "at": "checkpoint", "epoch": 4, "stage": "written"}
    faults.hit("checkpoint", epoch=5, stage="written")  # the marker exists: no second time


def test_the_report_goes_where_the_environment_says(monkeypatch, tmp_path):
    _arm(monkeypatch, at="step", step=1)
    monkeypatch.setenv("LRJOB_FAULT_REPORT", str(tmp_path / "where.json"))
    with pytest.raises(RuntimeError):
        faults.hit("step", step=1, epoch=1)
    assert json.loads((tmp_path / "where.json").read_text()) == {"pid": os.getpid(), "at": "step", "step": 1,
                                                                 "epoch": 1}
    assert not list(tmp_path.glob("*.where"))


def test_without_once_or_report_nothing_is_written(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _arm(monkeypatch, at="step")
    with pytest.raises(RuntimeError):
        faults.hit("step", step=1)
    with pytest.raises(RuntimeError):
        faults.hit("step", step=2)                     # fires every time
    assert os.listdir(tmp_path) == []


def _fire_in_child(action):
    """Arm ``action`` in a forked copy of this process and hit the point there; the
    parent sees how the child ended (the test process itself is never signalled)."""
    import signal

    pid = os.fork()
    if pid == 0:  # the child: only faults.hit runs here, then it leaves without clean-up
        code = 3
        try:
            faults.ARMED, faults._SPEC = True, {"at": "step", "action": action}
            faults.hit("step", step=1)
        except RuntimeError:
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return status


def test_kill_stop_and_raise_act_as_named(monkeypatch):
    import signal

    monkeypatch.setattr(faults, "ARMED", True)
    for action in ("kill", "stop"):                      # armed elsewhere: nothing happens here
        monkeypatch.setattr(faults, "_SPEC", {"at": "checkpoint", "action": action})
        faults.hit("step", step=1)
    status = _fire_in_child("kill")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    status = _fire_in_child("stop")
    assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
    status = _fire_in_child("raise")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 4


def test_sleep_waits_its_seconds_and_goes_on(monkeypatch):
    """A slow step (tests/test_distributed.py makes an epoch outlast its timeout with it)."""
    slept = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    spec = faults._parse(json.dumps({"at": "step", "rank": 0, "action": "sleep", "seconds": 0.025}))
    _arm(monkeypatch, **spec)
    faults.hit("step", epoch=1, step=1, rank=1)          # another rank
    faults.hit("step", epoch=1, step=1, rank=0)
    faults.hit("step", epoch=1, step=2, rank=0)          # every matching step, no once
    assert slept == [0.025, 0.025]


@pytest.mark.parametrize("seconds", [None, 0, -1, 61, "1", True])
def test_sleep_needs_its_seconds(seconds):
    spec = {"at": "step", "action": "sleep", **({} if seconds is None else {"seconds": seconds})}
    with pytest.raises(FaultSpecError) as e:
        faults._parse(json.dumps(spec))
    assert str(e.value) == f"LRJOB_FAULT: action 'sleep' needs 'seconds', a number in (0, 60]; got {seconds!r}"


def test_only_sleep_takes_seconds():
    with pytest.raises(FaultSpecError) as e:
        faults._parse(json.dumps({"at": "step", "action": "raise", "seconds": 1}))
    assert str(e.value) == "LRJOB_FAULT: point 'step' reports epoch, rank, step, not seconds"


def test_check_reads_the_environment_once(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", None)
    monkeypatch.setenv("LRJOB_FAULT", '{"at": "step", "step": 2, "action": "raise", "once": "/tmp/x"}')
    faults.check()
    assert faults._SPEC == {"at": "step", "step": 2, "action": "raise", "once": "/tmp/x"}
    monkeypatch.setenv("LRJOB_FAULT", "not json")         # parsed already: not read again
    faults.check()
    assert faults._SPEC["step"] == 2
    monkeypatch.setattr(faults, "_SPEC", None)
    with pytest.raises(FaultSpecError):
        faults.check()


def test_long_and_multi_key_errors():
    text = json.dumps({"at": "nowhere", "action": "raise", "pad": "x" * 300})
    with pytest.raises(FaultSpecError) as e:
        faults._parse(text)
    assert str(e.value).endswith(f"got {text[:200]!r}")
    with pytest.raises(FaultSpecError) as e:
        faults._parse(json.dumps({"at": "step", "action": "raise", "stage": "x", "bogus": 1}))
    assert str(e.value) == "LRJOB_FAULT: point 'step' reports epoch, rank, step, not bogus, stage"


def test_a_list_arms_several_faults_each_on_its_own(monkeypatch, tmp_path):
    text = json.dumps([{"at": "step", "epoch": 2, "action": "raise", "once": str(tmp_path / "a")},
                       {"at": "checkpoint", "epoch": 3, "action": "raise", "once": str(tmp_path / "b")}])
    specs = faults._parse(text)
    assert [s["at"] for s in specs] == ["step", "checkpoint"]
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", specs)
    monkeypatch.delenv("LRJOB_FAULT_REPORT", raising=False)
    faults.hit("step", epoch=1, step=1, rank=0)  # neither matches
    with pytest.raises(RuntimeError, match="injected fault at step"):
        faults.hit("step", epoch=2, step=1, rank=0)
    faults.hit("step", epoch=2, step=1, rank=0)  # once: fired already
    with pytest.raises(RuntimeError, match="injected fault at checkpoint"):
        faults.hit("checkpoint", epoch=3, stage="written")
    assert json.loads((tmp_path / "b.where").read_text())["at"] == "checkpoint"
    with pytest.raises(FaultSpecError, match="point 'cleanup' reports status, not epoch"):
        faults._parse(json.dumps([specs[0], {"at": "cleanup", "epoch": 1, "action": "raise"}]))


def test_interrupt_is_a_ctrl_c_at_that_moment(monkeypatch, sigint_default):
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"at": "sweep", "trials": 1, "action": "interrupt"})
    faults.hit("sweep", trials=2)                       # another moment: nothing
    with pytest.raises(KeyboardInterrupt):              # Python's SIGINT handler, as at a Ctrl-C
        faults.hit("sweep", trials=1)


def test_wait_blocks_until_the_file_exists_and_meet_until_enough_processes_met(monkeypatch, tmp_path):
    import threading

    monkeypatch.setattr(faults, "ARMED", True)
    marker = tmp_path / "go"
    monkeypatch.setattr(faults, "_SPEC", {"at": "step", "epoch": 2, "action": "wait", "until": str(marker),
                                          "timeout": 0.2})
    with pytest.raises(RuntimeError, match=r"go did not appear within 0.2 s"):
        faults.hit("step", epoch=2, step=1, rank=0)    # the hang guard: an error, not a hang
    marker.touch()
    faults.hit("step", epoch=2, step=1, rank=0)         # there: goes on
    meet = tmp_path / "meet"
    monkeypatch.setattr(faults, "_SPEC", {"at": "step", "epoch": 1, "action": "meet", "dir": str(meet), "count": 2,
                                          "timeout": 60})
    first = threading.Thread(target=faults.hit, args=("step",), kwargs={"epoch": 1, "step": 1, "rank": 0})
    first.start()
    faults.hit("step", epoch=1, step=1, rank=0)         # the second arrival: both go on
    first.join(60)
    assert not first.is_alive() and len(list(meet.iterdir())) == 2
    monkeypatch.setattr(faults, "_SPEC", {"at": "step", "action": "meet", "dir": str(tmp_path / "alone"),
                                          "count": 2, "timeout": 0.2})
    with pytest.raises(RuntimeError, match=r"fewer than 2 processes met in .*alone within 0.2 s"):
        faults.hit("step", epoch=1, step=1, rank=0)


def test_wait_and_meet_name_what_they_need():
    with pytest.raises(FaultSpecError, match=r"action 'meet' needs count, dir"):
        faults._parse(json.dumps({"at": "step", "action": "meet"}))
    with pytest.raises(FaultSpecError, match=r"point 'step' reports epoch, rank, step, not until"):
        faults._parse(json.dumps({"at": "step", "action": "raise", "until": "/x"}))
    assert faults._parse(json.dumps({"at": "asha", "trial": "t001", "action": "kill"}))["trial"] == "t001"


def test_arm_arms_a_process_started_before_the_fault_was_known(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", False)
    monkeypatch.setattr(faults, "_SPEC", None)
    monkeypatch.delenv("LRJOB_FAULT", raising=False)
    faults.arm(json.dumps({"at": "step", "step": 2, "action": "raise"}))
    with pytest.raises(RuntimeError):
        faults.hit("step", epoch=1, step=2, rank=0)
    faults.arm(None)
    assert not faults.ARMED and "LRJOB_FAULT" not in os.environ
    faults.hit("step", epoch=1, step=2, rank=0)
