"""Profile one rank of a 2-worker MNIST run, under Ray (``lrjob run``) or under ``horovodrun``
(``lrjob worker``), over the same steps: the evidence of benchmarks/results/profile-2026-11-26.md.
Needs root (py-spy and gdb attach to the rank); asserts nothing.

    python -m benchmarks.profile_rank ray --out /tmp/prof/ray            # 3 windows: clean, idle, gil
    python -m benchmarks.profile_rank horovodrun --out /tmp/prof/hvd
    python -m benchmarks.profile_rank ray --windows clean --no-spy --env HOROVOD_CYCLE_TIME=1 --out /tmp/p

The windows are set by ``LRJOB_FAULT`` (docs/design.md#fault-injection), not by a clock: rank 1
waits at step 1 of epochs 2, 4, 6... until this script lets it go, so every window is exactly two
epochs (their steps and evaluations) of rank 1, whatever the machine's speed. At the first stop
the script reads the rank's environment (as started, from /proc, and live, through gdb: horovod.ray
sets Horovod's variables after the process started), affinity, priority, session and autogroup,
and every thread's native stack (gdb). Windows: ``clean`` (nothing attached: its time is the
measurement), ``idle`` (``py-spy record --native --threads --idle``: every sample of the Python
threads) and ``gil`` (``--gil``: only the samples that hold the GIL). Around each window it reads
every thread's CPU time and run-queue wait (``/proc/PID/task/*/schedstat``). The stacks are
written in py-spy's ``raw`` (collapsed) format, gzipped; speedscope opens them. Arming a fault
costs every step one function call more; both launchers pay it alike.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The worker settings of ``worker_env(1)`` (launcher/backends/cluster.py), given to horovodrun's
# ranks too, so both launchers run with the same thread and Horovod settings.
HVD_ENV = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", "HOROVOD_CYCLE_TIME": "0.1",
           "HOROVOD_GLOO_TIMEOUT_SECONDS": "60", "PYTHONUNBUFFERED": "1"}
ENV_KEYS = ("OMP", "MXNET", "HOROVOD", "KMP", "MKL", "OPENBLAS", "RAY_", "PYTHON", "LD_PRELOAD", "CUDA")
# Two epochs per window: the first unprofiled (its timing and threads' CPU), then py-spy with
# every sample (--idle), then py-spy with the samples that hold the GIL.
WINDOWS = ("clean", "idle", "gil")
FIRST = 2  # epoch 1 warms up
RATE = 100


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> dict:
    """The fault's report at ``path`` (pid and point), once the rank wrote it."""
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if proc.poll() is not None:
            raise SystemExit(f"the run ended (exit {proc.returncode}) before {path.name} appeared")
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.05)
    return json.loads(path.read_text())


def threads(pid: int) -> dict:
    """{tid: {name, utime+stime seconds, run seconds, run-queue wait seconds, switches}} of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            run_ns, wait_ns, slices = (int(v) for v in (task / "schedstat").read_text().split())
            status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line)
        except (OSError, ValueError):
            continue
        out[int(task.name)] = {"name": name, "cpu_s": (int(stat[11]) + int(stat[12])) / tick,
                               "run_s": run_ns / 1e9, "runq_wait_s": wait_ns / 1e9, "slices": slices,
                               "cpus_allowed": status.get("Cpus_allowed_list", "").strip(), "last_cpu": int(stat[36]),
                               "voluntary": int(status.get("voluntary_ctxt_switches", 0)),
                               "involuntary": int(status.get("nonvoluntary_ctxt_switches", 0))}
    return out


def delta(before: dict, after: dict, seconds: float) -> list[dict]:
    """Per thread over a window: CPU share, run-queue wait share and switches, busiest first."""
    rows = []
    for tid, a in after.items():
        b = before.get(tid, {k: 0 for k in a} | {"name": a["name"]})
        rows.append({"tid": tid, "name": a["name"], "cpu": (a["run_s"] - b["run_s"]) / seconds,
                     "runq_wait": (a["runq_wait_s"] - b["runq_wait_s"]) / seconds,
                     "voluntary": a["voluntary"] - b["voluntary"], "involuntary": a["involuntary"] - b["involuntary"]})
    return sorted(rows, key=lambda r: -r["cpu"])


def inspect(pid: int) -> dict:
    """The rank's environment (as the process started), affinity, priority and threads."""
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
               .split("\0") if "=" in kv)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    sched = subprocess.run(["chrt", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    try:
        autogroup = Path(f"/proc/{pid}/autogroup").read_text().strip()
    except OSError:
        autogroup = None
    return {"pid": pid, "session": int(stat[3]), "sched": sched, "autogroup": autogroup,
            "cgroup": Path(f"/proc/{pid}/cgroup").read_text().strip(), "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300],
            "environ": {k: v for k, v in sorted(env.items()) if k.startswith(ENV_KEYS)},
            "taskset": subprocess.run(["taskset", "-p", str(pid)], capture_output=True, text=True).stdout.strip(),
            "nice": int(stat[16]), "num_threads": int(stat[17]),
            "threads": {tid: {k: t[k] for k in ("name", "cpus_allowed")} for tid, t in sorted(threads(pid).items())}}


def _gdb(pid: int, script: str) -> str:
    """Run the gdb ``script`` attached to ``pid`` (paused for its duration); its output."""
    with tempfile.NamedTemporaryFile("w", suffix=".gdb") as f:
        f.write("set pagination off\n" + script + "\n")
        f.flush()
        return subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-x", f.name],
                              capture_output=True, text=True, timeout=120).stdout


def live_environ(pid: int) -> dict:
    """The rank's environment now (``/proc/PID/environ`` is the one it started with: horovod.ray
    sets Horovod's variables later, with ``os.environ``, which ``putenv``s them)."""
    text = _gdb(pid, 'set $e = *(char***)&environ\nset $i = 0\nwhile $e[$i] != 0\n printf "ENV %s\\n", $e[$i]\n'
                     ' set $i = $i + 1\nend')
    env = dict(line[4:].split("=", 1) for line in text.splitlines() if line.startswith("ENV ") and "=" in line)
    return {k: v for k, v in sorted(env.items()) if k.startswith(ENV_KEYS)}


def native_threads(pid: int) -> str:
    """Every thread's native stack (gdb), to tell MXNet's, Horovod's and Ray's threads apart."""
    return _gdb(pid, "info threads\nthread apply all bt 25")


def _spy(pid: int, out: Path, gil: bool) -> subprocess.Popen:
    cmd = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--native", "--threads", "--rate", str(RATE),
           "--format", "raw", "-o", str(out), "--gil" if gil else "--idle"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()  # "Sampling process 200 times a second ...": attached
    if "Sampling" not in line:
        raise SystemExit(f"py-spy did not attach: {line.strip()}")
    return p


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_rank", description=__doc__.split("\n\n")[0])
    p.add_argument("launcher", choices=("ray", "horovodrun"))
    p.add_argument("--out", required=True, help="folder for the evidence (created)")
    p.add_argument("--job", default="jobs/mnist_softmax.yaml")
    p.add_argument("--checkout", help="run the lr_core and launcher of this checkout (PYTHONPATH; default: "
                                      "the environment's install)")
    p.add_argument("--no-spy", action="store_true", help="time the windows and read /proc only")
    p.add_argument("--windows", default=",".join(WINDOWS),
                   help=f"comma-separated windows of two epochs each, of {', '.join(WINDOWS)} (default: all)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the run (both launchers pass it to the ranks)")
    args = p.parse_args(argv)

    windows_asked = args.windows.split(",")
    if not set(windows_asked) <= set(WINDOWS):
        p.error(f"--windows: each of {', '.join(WINDOWS)}; got {args.windows}")
    epochs = FIRST + 2 * len(windows_asked)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    marks = out / "marks"
    marks.mkdir(exist_ok=True)
    for f in marks.iterdir():
        f.unlink()
    faults = [{"at": "step", "epoch": e, "step": 1, "rank": 1, "action": "wait", "until": str(marks / f"go{e}"),
               "timeout": 300, "once": str(marks / f"at{e}")} for e in range(FIRST, epochs + 1, 2)]
    extra = dict(kv.split("=", 1) for kv in args.env)
    env = {**os.environ, "LRJOB_FAULT": json.dumps(faults), **extra}
    env.pop("RAY_ADDRESS", None)
    rundir = out / "run"
    if args.launcher == "ray":
        cmd = [str(BIN / "lrjob"), "run", args.job, "--set", "resources.workers=2", "--set",
               f"train.epochs={epochs}", "--output", str(rundir), "--json"]
    else:
        env = {**env, **{k: v for k, v in HVD_ENV.items() if k not in extra}}
        cmd = [str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", str(BIN / "lrjob"), "worker",
               args.job, "--set", f"train.epochs={epochs}", "--output", str(rundir)]
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    if args.checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.checkout).resolve()), extra.get("PYTHONPATH")]))
    record: dict = {"session": os.getsid(0), "launcher": args.launcher, "cmd": " ".join(cmd), "extra_env": extra, "checkout": args.checkout,
                    "load_start": os.getloadavg()}
    log = open(out / "run.log", "w")
    proc = subprocess.Popen(cmd, cwd=args.checkout or ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        first = _wait_for(marks / f"at{FIRST}.where", proc)
        pid = first["pid"]
        record["rank1"] = inspect(pid)
        record["rank1"]["live_environ"] = live_environ(pid)
        (out / "gdb-threads.txt").write_text(native_threads(pid))
        if not args.no_spy:
            dump = subprocess.run([str(BIN / "py-spy"), "dump", "--pid", str(pid), "--native"],
                                  capture_output=True, text=True)
            (out / "dump.txt").write_text(dump.stdout + dump.stderr)
        windows = []
        for i, mode in enumerate(windows_asked):
            start, end = FIRST + 2 * i, FIRST + 2 * i + 2
            spy = None
            if mode != "clean" and not args.no_spy:
                spy = _spy(pid, out / f"epochs{start}-{end - 1}-{mode}.txt", gil=mode == "gil")
            before, t0, load0 = threads(pid), time.monotonic(), os.getloadavg()
            (marks / f"go{start}").touch()
            _wait_for(marks / f"at{end}.where", proc)
            seconds = time.monotonic() - t0
            after = threads(pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(120)
            windows.append({"mode": "clean" if spy is None else mode, "epochs": [start, end - 1], "seconds": seconds, "load_before": load0,
                            "load_after": os.getloadavg(), "threads": delta(before, after, seconds)})
        (marks / f"go{epochs}").touch()
        record["windows"] = windows
        proc.wait(600)
        record["exit"] = proc.returncode
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
        log.close()
    record["load_end"] = os.getloadavg()
    shutil.rmtree(rundir, ignore_errors=True)  # the model and checkpoints are not evidence
    for stacks in out.glob("epochs*.txt"):
        with open(stacks, "rb") as f, gzip.open(f"{stacks}.gz", "wb") as g:
            shutil.copyfileobj(f, g)
        stacks.unlink()
    (out / "profile.json").write_text(json.dumps(record, indent=1) + "\n")
    for w in record["windows"]:
        busy = ", ".join(f"{t['tid']} {100 * t['cpu']:.0f}%" for t in w["threads"][:4])
        busy += f"; all threads {100 * sum(t['cpu'] for t in w['threads']):.0f}%"
        print(f"{args.launcher} {w['mode']} epochs {w['epochs']}: {w['seconds']:.2f} s, load {w['load_before'][0]:.2f}; {busy}")
    return 0 if record.get("exit") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
