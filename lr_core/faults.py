"""Fault injection at exact moments, for tests: inert unless ``LRJOB_FAULT`` is set.

Tests that kill a worker "in epoch 3" or the driver "while it writes a checkpoint" must
not rely on timing (a faster machine finishes first). Instead the code names its
dangerous moments and a test arms one of them through the environment, which reaches
the driver, ``horovodrun`` ranks and Ray workers alike:

    LRJOB_FAULT='{"at": "step", "epoch": 3, "step": 5, "rank": 1, "action": "kill",
                  "once": "/tmp/x/fired"}'

``at`` names the point; every other key but ``action`` and ``once`` must equal the
value the code reports there (1-based epochs and steps, as printed). The points:

- ``step``: inside epoch ``epoch`` of the training loop, before the update of step
  ``step``, on rank ``rank`` (``lr_core.loop``).
- ``checkpoint``: while the driver writes the checkpoint after epoch ``epoch``, at
  ``stage`` ``params`` (params.npz written into the temporary folder), ``written``
  (every file written and synced, not yet renamed into place) or ``renamed`` (in
  place, older checkpoints not yet pruned) (``launcher.rundir``).
- ``cleanup``: the driver starts its clean-up, the run ending with ``status``
  (``interrupted``, ``failed``, ``completed``) (``launcher.runner``).

Actions: ``kill`` (SIGKILL this process: a crash, no clean-up runs), ``stop``
(SIGSTOP: alive but silent, a hang), ``raise`` (a ``RuntimeError``). With ``once``, the
fault fires only if that marker file does not exist yet and creates it first, so a
restarted worker does not fail again at the same place. Before acting, the fault
writes ``<once>.where`` (or ``$LRJOB_FAULT_REPORT``) with the process id and the
point, so a test knows which process to inspect.

The check in the training loop is one boolean test per step when no fault is armed.
"""
from __future__ import annotations

import json
import os
import signal

__all__ = ["ARMED", "hit", "FaultSpecError"]

_ENV = "LRJOB_FAULT"


class FaultSpecError(ValueError):
    """``LRJOB_FAULT`` is not a JSON object with ``at`` and ``action``."""


def _parse(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise FaultSpecError(f"{_ENV} is not JSON ({e}); see lr_core/faults.py") from None
    if not isinstance(spec, dict) or "at" not in spec or spec.get("action") not in ("kill", "stop", "raise"):
        raise FaultSpecError(f"{_ENV} needs 'at' and an 'action' of kill, stop or raise; got {text!r}")
    return spec


_SPEC = _parse(os.environ.get(_ENV))
ARMED: bool = _SPEC is not None


def hit(at: str, **where) -> None:
    """Fire the armed fault if ``at`` and every condition in it match ``where``."""
    spec = _SPEC
    if spec is None or spec["at"] != at:
        return
    for key, want in spec.items():
        if key in ("at", "action", "once"):
            continue
        if where.get(key) != want:
            return
    once = spec.get("once")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
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
    else:
        raise RuntimeError(f"injected fault at {at} {where}")
