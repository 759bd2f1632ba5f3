"""The memory footprint and start-up time of a distributed run on tiny data: ``lrjob run
jobs/binary_2d.yaml --workers 2`` with an embedded Ray, its whole process tree (driver, GCS,
raylet, Ray's agents, the Horovod workers, anything else Ray starts) measured from
``/proc/PID/smaps_rollup`` when the second epoch is reported.

    python -m benchmarks.footprint --reps 3 --out /tmp/footprint.json

PSS (proportional set size) splits shared pages between the processes that map them, so the
sum over the tree is what the run costs the machine. Start-up is the time from launching the
command to its ``start`` event (the worker group ready): Python imports, the data, ``ray.init``
and the workers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LRJOB = str(Path(sys.executable).parent / "lrjob")
JOB = ["jobs/binary_2d.yaml", "--set", "train.epochs=4"]

__all__ = ["footprint", "tree_pss", "role"]


def _memory(pid: int) -> dict | None:
    """PSS and USS (its private pages: what stopping it would free) of a process, in bytes."""
    out = {"pss": 0, "uss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    out["pss"] = int(rest.split()[0]) * 1024
                elif key in ("Private_Clean", "Private_Dirty"):
                    out["uss"] += int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return out


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def role(pid: int, root: int) -> str:
    """What a process of the tree is: driver, worker (a Horovod rank), or Ray's own name for it."""
    if pid == root:
        return "driver"
    cmd = _cmdline(pid)
    if "HorovodWorker" in cmd:  # ray::BaseHorovodWorker.execute()
        return "worker"
    first = cmd.split()[0] if cmd else "?"
    if first.startswith("ray::"):
        return first.split(".")[0]
    if first.rsplit("/", 1)[-1] in ("raylet", "gcs_server"):
        return first.rsplit("/", 1)[-1]
    for script in ("log_monitor.py", "monitor.py", "dashboard.py", "agent.py", "runtime_env"):
        if script in cmd:
            return script
    return first.rsplit("/", 1)[-1][:40]


def tree_pss(root: int) -> list[dict]:
    """[{pid, role, pss, uss}] of ``root`` and all its descendants."""
    seen, todo, out = set(), [root], []
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += _children(pid)
        mem = _memory(pid)
        if mem is not None:
            out.append({"pid": pid, "role": role(pid, root), **mem})
    return out


def footprint(workers: int = 2, at_epoch: int = 2, timeout: float = 300, checkout: Path = ROOT) -> dict:
    """One run of ``checkout``'s lrjob: the tree's PSS when epoch ``at_epoch`` is reported, and the
    start-up seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["LRJOB_PICTURES"] = "0"
    # the checkout's code, whatever the environment's editable install points at (Ray's
    # processes inherit it)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p = subprocess.Popen([LRJOB, "run", *JOB, "--workers", str(workers), "--json", "--output", f"{tmp}/run"],
                             cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        startup, procs = None, None
        deadline = time.monotonic() + timeout
        for line in p.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "start" and startup is None:
                startup = time.perf_counter() - t0
            if e.get("event") == "epoch" and e.get("epoch") == at_epoch and procs is None:
                procs = tree_pss(p.pid)
            if time.monotonic() > deadline:
                p.kill()
                break
        rc = p.wait(timeout=120)
        err = p.stderr.read()
    if rc != 0 or procs is None:
        raise RuntimeError(f"the footprint run failed (exit {rc}): {err.strip().splitlines()[-1:] or ''}")
    by_role: dict[str, dict] = {}
    for q in procs:
        r = by_role.setdefault(q["role"], {"count": 0, "pss": 0, "uss": 0})
        r["count"] += 1
        r["pss"] += q["pss"]
        r["uss"] += q["uss"]
    return {"total_pss": sum(q["pss"] for q in procs), "total_uss": sum(q["uss"] for q in procs),
            "processes": len(procs), "by_role": by_role, "startup_s": startup}


def measure(reps: int = 3, workers: int = 2, checkout: Path = ROOT) -> dict:
    runs = [footprint(workers, checkout=checkout) for _ in range(reps)]
    totals = [r["total_pss"] for r in runs]
    starts = [r["startup_s"] for r in runs]
    return {"workers": workers, "job": " ".join(JOB), "total_pss_median": statistics.median(totals),
            "total_pss": totals, "total_uss_median": statistics.median(r["total_uss"] for r in runs),
            "startup_s_median": statistics.median(starts), "startup_s": starts,
            "runs": runs}


def summary_lines(f: dict) -> list[str]:
    mib = 2 ** 20
    parts = ", ".join(f"{k} {v['pss'] / mib:.0f}" + (f" ({v['count']})" if v["count"] > 1 else "")
                      for k, v in sorted(f["runs"][0]["by_role"].items(), key=lambda kv: -kv[1]["pss"]))
    return [f"| footprint: total PSS of a {f['workers']}-worker run on tiny data (driver + Ray + workers), "
            f"median of {len(f['total_pss'])} | **{f['total_pss_median'] / mib:.0f} MiB** ({parts}; MiB); "
            f"USS {f['total_uss_median'] / mib:.0f} MiB | <= 0.85 x 1.03 GB |",
            f"| start-up of that run: command to workers ready, median | {f['startup_s_median']:.2f} s "
            f"({', '.join(f'{s:.2f}' for s in f['startup_s'])}) | |"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON to write")
    p.add_argument("--checkout", type=Path, default=ROOT, help="the lrjob checkout to run (default: this one)")
    args = p.parse_args(argv)
    f = measure(args.reps, checkout=args.checkout.resolve())
    f["checkout"] = str(args.checkout)
    f["load_average"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(f, indent=2) + "\n")
    print("\n".join(summary_lines(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
