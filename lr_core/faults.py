"""Fault injection at exact moments, for tests: inert unless ``LRJOB_FAULT`` is set.

Tests that kill a worker "in epoch 3" or the driver "while it writes a checkpoint" must
not rely on timing (a faster machine finishes first). Instead the code names its
dangerous moments and a test arms one of them through the environment, which reaches
the driver, ``horovodrun`` ranks and Ray workers alike:

    LRJOB_FAULT='{"at": "step", "epoch": 3, "step": 5, "rank": 1, "action": "kill",
                  "once": "/tmp/x/fired"}'

``at`` names the point; every other key but ``action`` and ``once`` must equal the
value the code reports there (1-based epochs and steps, as printed). A JSON list of such
objects arms several faults; each fires on its own (the first that matches a moment). The points:

- ``step``: inside epoch ``epoch`` of the training loop, before the update of step
  ``step``, on rank ``rank`` (``lr_core.loop``).
- ``checkpoint``: while the driver writes the checkpoint after epoch ``epoch``, at
  ``stage`` ``params`` (params.npz written into the temporary folder), ``written``
  (every file written and synced, not yet renamed into place) or ``renamed`` (in
  place, older checkpoints not yet pruned) or ``swapping`` (rewriting a damaged
  checkpoint of the same epoch: the old one moved aside, the new one not yet in
  place) (``launcher.rundir``).
- ``upload``: the driver uploads the checkpoint of ``epoch`` epochs done to a run's
  storage URI, at ``stage`` ``files`` (its files uploaded, its ``manifest.json`` not yet)
  (``launcher.storage``).
- ``cleanup``: the driver starts its clean-up, the run ending with ``status``
  (``interrupted``, ``failed``, ``completed``) (``launcher.driver``).
- ``export``: before the model is converted to ``format`` (``onnx``), after the MXNet
  export is written (``lr_core.export.export_onnx``).
- ``sweep``: the sweep's driver has recorded the end of its ``trials``-th trial in
  ``sweep.json`` (``launcher.sweep``).
- ``asha``: the sweep's driver has recorded in ``sweep.json`` that ASHA stops trial
  ``trial`` (``t001``), before Tune stops it (``launcher.sweep``).
- ``probe``: the driver checks that it can write to a run's storage URI, at ``stage``
  ``written`` (its probe object written, not yet removed) (``launcher.storage``).
- ``table``: the sweep's trials have returned (or none was left to run), before its driver
  writes and prints the table (``launcher.sweep``); it reports nothing.

Actions: ``kill`` (SIGKILL this process: a crash, no clean-up runs), ``stop``
(SIGSTOP: alive but silent, a hang), ``raise`` (a ``RuntimeError``), ``interrupt``
(SIGINT to this process: a Ctrl-C at that moment), ``sleep`` (wait ``seconds``, a number
in (0, 60], and go on: a slow step, still progressing), ``wait`` (block until the file
``until`` exists) and ``meet`` (leave a mark in the folder ``dir`` and block until
``count`` marks are there: that many processes reached the point at the same time).
``wait`` and ``meet`` give up after ``timeout`` seconds (default 120) with a
``RuntimeError``, so a test whose processes never meet fails instead of hanging. With ``once``, the
fault fires only if that marker file does not exist yet and creates it first, so a
restarted worker does not fail again at the same place. Before acting, the fault
writes ``<once>.where`` (or ``$LRJOB_FAULT_REPORT``) with the process id and the
point, so a test knows which process to inspect.

The check in the training loop is one boolean test per step when no fault is armed.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path

from .errors import LrjobInputError

__all__ = ["ARMED", "arm", "check", "hit", "FaultSpecError", "POINTS"]

_ENV = "LRJOB_FAULT"
# Each point and the keys the code reports there.
POINTS = {"step": {"epoch", "step", "rank"}, "checkpoint": {"epoch", "stage"}, "cleanup": {"status"},
          "export": {"format"}, "upload": {"epoch", "stage"}, "sweep": {"trials"}, "asha": {"trial"},
          "table": set(), "probe": {"stage"}}
ACTIONS = ("kill", "stop", "raise", "interrupt", "sleep", "wait", "meet")
# The keys of an action besides the point's conditions.
ACTION_KEYS = {"sleep": {"seconds"}, "wait": {"until", "timeout"}, "meet": {"dir", "count", "timeout"}}
_MAX_SLEEP_S = 60.0


class FaultSpecError(LrjobInputError):
    """``LRJOB_FAULT`` is malformed: a one-line input error (exit 2), not a crash."""


def _parse(text: str) -> dict | list[dict]:
    """One fault (a JSON object), or several (a list of objects: each fires on its own)."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise FaultSpecError(f"{_ENV} is not JSON ({e}); unset it, or see lr_core/faults.py") from None
    many = isinstance(spec, list) and bool(spec) and all(isinstance(s, dict) for s in spec)
    for one in spec if many else [spec]:
        if not isinstance(one, dict) or one.get("at") not in POINTS or one.get("action") not in ACTIONS:
            raise FaultSpecError(f"{_ENV} needs 'at' in {', '.join(POINTS)} and 'action' in {', '.join(ACTIONS)}; "
                                 f"got {text[:200]!r}")
        unknown = set(one) - POINTS[one["at"]] - {"at", "action", "once"} - ACTION_KEYS.get(one["action"], set())
        missing = {"wait": {"until"}, "meet": {"dir", "count"}}.get(one["action"], set()) - set(one)
        if missing:
            raise FaultSpecError(f"{_ENV}: action {one['action']!r} needs {', '.join(sorted(missing))}")
        if unknown:
            raise FaultSpecError(f"{_ENV}: point {one['at']!r} reports {', '.join(sorted(POINTS[one['at']]))}, "
                                 f"not {', '.join(sorted(unknown))}")
        if one["action"] == "sleep":
            seconds = one.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= _MAX_SLEEP_S:
                raise FaultSpecError(f"{_ENV}: action 'sleep' needs 'seconds', a number in (0, {_MAX_SLEEP_S:g}]; "
                                     f"got {seconds!r}")
    return spec


# Read once; parsed (and a malformed value reported) only when the code reaches a
# fault point, so no command that never trains is affected by it.
ARMED: bool = bool(os.environ.get(_ENV))
_SPEC: dict | list[dict] | None = None


def arm(text: str | None) -> None:
    """Arm ``text`` (an ``LRJOB_FAULT`` value; None disarms) in a process that was started before
    it was known: a Ray actor that runs a sweep's trial (``launcher.sweep``)."""
    global ARMED, _SPEC
    if text:
        os.environ[_ENV] = text
    else:
        os.environ.pop(_ENV, None)
    ARMED, _SPEC = bool(text), None


def check() -> None:
    """Raise ``FaultSpecError`` now if an armed ``LRJOB_FAULT`` is malformed (the driver
    calls this before it writes anything)."""
    global _SPEC
    if ARMED and _SPEC is None:
        _SPEC = _parse(os.environ[_ENV])


def hit(at: str, **where) -> None:
    """Fire the armed fault (the first of several) whose ``at`` and every condition match ``where``."""
    if not ARMED:
        return
    check()
    for spec in _SPEC if isinstance(_SPEC, list) else [_SPEC]:
        if _fire(spec, at, where):
            return


def _fire(spec: dict, at: str, where: dict) -> bool:
    """Act as ``spec`` says if it matches (and its ``once`` marker is new); whether it fired."""
    if spec["at"] != at:
        return False
    for key, want in spec.items():
        if key in ("at", "action", "once") or key in ACTION_KEYS.get(spec["action"], ()):
            continue
        if where.get(key) != want:
            return False
    once = spec.get("once")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
    report = os.environ.get("LRJOB_FAULT_REPORT") or (f"{once}.where" if once else None)
    if report:
        with open(report, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "at": at, **where}))
            f.flush()
            os.fsync(f.fileno())
    action = spec["action"]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    elif action == "sleep":
        time.sleep(spec["seconds"])
    elif action in ACTION_KEYS:
        _block(spec, at, where)
    else:
        raise RuntimeError(f"injected fault at {at} {where}")
    return True


def _block(spec: dict, at: str, where: dict) -> None:
    """``wait`` and ``meet``: block until ``until`` exists, or until ``count`` processes left their
    mark in ``dir``; a ``RuntimeError`` after ``timeout`` seconds."""
    timeout = float(spec.get("timeout", 120))
    if spec["action"] == "wait":
        def done():
            return Path(spec["until"]).exists()
        what = f"{spec['until']} did not appear"
    else:
        folder = Path(spec["dir"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{os.getpid()}-{secrets.token_hex(4)}").touch()

        def done():
            return len(list(folder.iterdir())) >= int(spec["count"])
        what = f"fewer than {spec['count']} processes met in {folder}"
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"injected fault at {at} {where}: {what} within {timeout:g} s")
        time.sleep(0.02)
