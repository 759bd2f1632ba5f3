"""Processes a test starts, and nothing else: each runs in a session of its own and is
stopped with everything under it (Ray heads, workers, horovodrun ranks) however the
test ends."""
from __future__ import annotations

import os
import signal
import subprocess

import psutil

__all__ = ["kill_tree", "run"]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``, its process group and every descendant still alive."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` with the output captured as text, in a session of its own; on a
    time-out the whole tree is killed before ``TimeoutExpired`` is raised."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        kill_tree(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
