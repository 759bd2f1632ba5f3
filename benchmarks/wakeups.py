r"""Who wakes up, and how often, while something runs: every thread's context switches and CPU
time over a window, from ``/proc`` (Linux). For finding what competes with a training rank for
the cores, e.g. Ray's daemons beside the ranks:

    lrjob run jobs/mnist_softmax.yaml --workers 2 --set train.epochs=300 --quiet &
    sleep 15; python -m benchmarks.wakeups --seconds 5

Prints, per process and then per thread, voluntary switches a second (the thread slept and was
woken), involuntary ones (it was preempted) and the share of a CPU it used; only threads that
woke more than 20 times a second or used any CPU are listed. Asserts nothing."""
from __future__ import annotations

import argparse
import collections
import os
import time


def _snapshot() -> dict:
    """{(pid, tid): (command line, thread name, voluntary, involuntary, CPU ticks)} of every thread."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().replace("\0", " ").strip()[:70]
            for tid in os.listdir(f"/proc/{pid}/task"):
                base = f"/proc/{pid}/task/{tid}"
                with open(f"{base}/status") as f:
                    status = f.read()
                with open(f"{base}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                with open(f"{base}/comm") as f:
                    name = f.read().strip()
                vol = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
                invol = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
                out[(int(pid), int(tid))] = (cmd, name, vol, invol, int(stat[11]) + int(stat[12]))
        except (OSError, IndexError, ValueError):  # the thread ended while it was read
            continue
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.wakeups", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="the window (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=40, help="threads listed at most (default: %(default)s)")
    args = ap.parse_args(argv)
    tick = os.sysconf("SC_CLK_TCK")
    w = args.seconds
    before = _snapshot()
    time.sleep(w)
    after = _snapshot()
    procs: dict = collections.defaultdict(lambda: [0, 0, 0, ""])
    threads = []
    for key, (cmd, name, vol, invol, cpu) in after.items():
        if key not in before:
            continue
        _, _, vol0, invol0, cpu0 = before[key]
        dv, di, dc = vol - vol0, invol - invol0, cpu - cpu0
        p = procs[key[0]]
        p[0], p[1], p[2], p[3] = p[0] + dv, p[1] + di, p[2] + dc, cmd
        if dv + di > 20 * w or dc > 0:
            threads.append((dv + di, dv, di, dc, key[0], name, cmd))
    print(f"per process, over {w:g} s: voluntary/s  involuntary/s  CPU %  command")
    for pid, (dv, di, dc, cmd) in sorted(procs.items(), key=lambda x: -(x[1][0] + x[1][1])):
        if dv + di > 2 * w or dc:
            print(f"{pid:>8} {dv / w:>10.0f} {di / w:>13.0f} {100 * dc / tick / w:>6.1f}  {cmd}")
    print("per thread: pid  voluntary/s  involuntary/s  CPU %  thread  command")
    for _, dv, di, dc, pid, name, cmd in sorted(threads, reverse=True)[:args.threads]:
        print(f"{pid:>8} {dv / w:>10.0f} {di / w:>13.0f} {100 * dc / tick / w:>6.1f}  {name:<16} {cmd[:50]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
