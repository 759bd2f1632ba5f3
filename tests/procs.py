"""Processes a test starts, and nothing else: each runs in a session of its own and is
stopped with everything under it (Ray heads, workers, horovodrun ranks) however the
test ends."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable

import psutil

__all__ = ["kill_tree", "run", "stop_session", "free_ports", "start_ray_head"]


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


def _session(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid`` (a process started with ``start_new_session``
    and all it started, whatever process groups they made since; zombies, which the
    machine's init reaps in its own time, hold nothing and do not count)."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return out


def stop_session(sid: int, grace: float = 2.0) -> None:
    """Stop everything in session ``sid`` (a ``ray start --head`` started in a session of its
    own): SIGTERM, SIGKILL to whatever still runs ``grace`` seconds later, then wait (at
    most 10 s) until none of it runs, else fail. Ray's GCS server and autoscaler monitor
    outlive a SIGTERM by more than 25 s here, so waiting longer for them only adds to the
    tests' time."""
    left: list[psutil.Process] = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for p in _session(sid):
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + wait
        while (left := _session(sid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not left:
            return
    raise AssertionError(f"session {sid} still runs after SIGKILL: pids {[p.pid for p in left]}")


def free_ports(n: int) -> list[int]:
    """``n`` different ports that were free a moment ago (each socket is held while the next
    is picked, so the kernel cannot hand out the same port twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_ray_head(command: Callable[[int, int, int], list[str]], env: dict, attempts: int = 3,
                   timeout: float = 180) -> tuple[subprocess.Popen, str, tuple[int, int, int]]:
    """Run ``command(gcs_port, dashboard_port, agent_port)`` (a ``ray start --head``) in a
    session of its own until it exits; returns the process, its output and the ports. Ray picks
    its other components' ports itself, after these are chosen, and refuses to start when one
    of them took a port given here ("... is trying to use a port number ... used by other
    components"): such a start is stopped and tried again with new ports."""
    proc = None
    for _ in range(attempts):
        if proc is not None:
            stop_session(proc.pid)
        ports = tuple(free_ports(3))
        proc = subprocess.Popen(command(*ports), env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except BaseException:  # a start that hangs (or Ctrl-C): nothing of it is left running
            stop_session(proc.pid)
            raise
        if proc.returncode == 0 or "used by other components" not in out:
            break
    return proc, out, ports
