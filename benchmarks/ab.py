"""A/B of environment settings: the same MNIST training under each setting, interleaved, on
this machine idle or beside busy processes.

Each arm is a set of environment variables (``--arm KEY=VALUE[,KEY=VALUE...]``; ``--arm ''``
for the environment as it is) given to every process of the run. Every repetition runs each
arm under each method in turn (``lrjob``: `lrjob run` with its own Ray; ``horovodrun``: the
same `lrjob worker` ranks under `horovodrun --gloo`), so a change of the machine's speed during
the run falls on every arm alike; odd repetitions run the order backwards, and one untimed run
first prepares the data. A run's figure is the median `train_seconds` of its epochs
after the first (its own metrics.jsonl); an arm's, the median of its runs. ``--busy N`` keeps
N CPU-bound processes (each a session of its own, as another user's work) running for the whole
measurement. Writes JSON and a Markdown table."""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import scaling

__all__ = ["parse_arm", "summarize", "main"]


def parse_arm(text: str) -> dict[str, str]:
    """``"A=1,B=2"`` as ``{"A": "1", "B": "2"}``; ``""`` as no change."""
    arm = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--arm {text!r}: give KEY=VALUE pairs separated by commas, or '' for no change")
        arm[key] = value
    return arm


# A busy process that ends itself when this script is gone (even killed: no finally runs then).
BUSY = ("import os\np = os.getppid()\nwhile os.getppid() == p:\n    for _ in range(10 ** 6):\n        pass\n")


def _busy(n: int) -> list[subprocess.Popen]:
    hogs = []
    try:
        for _ in range(n):
            hogs.append(subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True))
    except OSError:
        _stop(hogs)
        raise
    return hogs


def _stop(hogs: list[subprocess.Popen]) -> None:
    for h in hogs:
        h.kill()
        h.wait()


def _machine() -> dict:
    """What decides how this machine shares its CPUs."""
    def read(path):
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None
    return {"kernel": os.uname().release, "cpus": os.cpu_count(),
            "sched_autogroup_enabled": read("/proc/sys/kernel/sched_autogroup_enabled")}


def _order(rep: int, names: list[str], methods: list[str]) -> list[tuple[str, str]]:
    """Every arm under every method; odd repetitions in reverse (ABBA), so no arm always runs first."""
    pairs = [(name, method) for name in names for method in methods]
    return pairs if rep % 2 == 0 else pairs[::-1]


def summarize(r: dict) -> str:
    """The Markdown table of a result: per arm and method, the median epoch and each run's."""
    lines = [f"# A/B: {r['plan']['model']} model, global batch {r['plan']['batch']}, {r['plan']['workers']} workers, "
             f"{r['busy']} busy process{'' if r['busy'] == 1 else 'es'}", "",
             f"{r['plan']['rows']:,} MNIST rows, {r['plan']['epochs']} epochs per run (the first a warm-up); "
             f"load average {r['load_start'][0]:.1f} at the start, {r['load_end'][0]:.1f} at the end; "
             f"{r['seconds'] / 60:.1f} min; commit {r.get('commit')}.", "",
             "| arm | method | median of the runs (s) | each run's median epoch (s) |", "|---|---|---|---|"]
    for arm in r["arms"]:
        for method in r["methods"]:
            runs = [x for x in r["runs"] if x["arm"] == arm and x["method"] == method]
            meds = [x["median_s"] for x in runs if x.get("median_s") is not None]
            med = f"{statistics.median(meds):.3f}" if meds else "failed"
            ok = "" if len(meds) == len(runs) else f" ({len(meds)} of {len(runs)} runs ended)"
            lines.append(f"| `{arm or '(as is)'}` | {method} | {med}{ok} | "
                         f"{', '.join(f'{m:.3f}' for m in meds) or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.ab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (Gloo's loops lowered or not; about 4 minutes idle, needs horovodrun and the MNIST cache "
               "that make install fills):\n  python -m benchmarks.ab --arm LRJOB_GLOO_LOOP_NICE=19 "
               "--arm LRJOB_GLOO_LOOP_NICE=0")
    ap.add_argument("--arm", action="append", required=True, metavar="KEY=VALUE[,...]",
                    help="one setting to compare (repeat for each arm; '' for the environment as it is)")
    ap.add_argument("--methods", default="lrjob,horovodrun", help="lrjob, horovodrun or both (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every arm and method (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per run, the first a warm-up (default: %(default)s)")
    ap.add_argument("--model", choices=sorted(scaling.MODELS), default="linear",
                    help="linear (softmax regression) or mlp (784-256-256-10) (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=64, help="global batch (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="ranks per run (default: %(default)s)")
    ap.add_argument("--rows", type=int, default=60000, help="MNIST training rows (default: %(default)s)")
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside the runs (default: %(default)s)")
    ap.add_argument("--out", default="bench-results/ab.json", help="JSON to write, .md beside it (default: %(default)s)")
    a = ap.parse_args(argv)
    try:
        arms = [parse_arm(x) for x in a.arm]
        methods = [m for m in a.methods.split(",") if m]
        if not methods or set(methods) - {"lrjob", "horovodrun"}:
            raise ValueError(f"--methods {a.methods!r}: give lrjob, horovodrun or lrjob,horovodrun")
        names = [",".join(f"{k}={v}" for k, v in arm.items()) for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"each --arm must differ from the others, got {names}")
        if a.reps < 1 or a.epochs < 2 or a.busy < 0:
            raise ValueError("give --reps >= 1, --epochs >= 2 (the first is a warm-up) and --busy >= 0")
        plan = scaling.Plan(workers=(0, a.workers), batches=(a.batch,), models=(a.model,), rows=a.rows,
                            epochs=a.epochs)
    except ValueError as e:
        print(f"ab: {e}", file=sys.stderr)
        return 2
    r = {"plan": {"model": a.model, "batch": a.batch, "workers": a.workers, "rows": a.rows, "epochs": a.epochs},
         "arms": names, "methods": methods, "busy": a.busy, "reps": a.reps, "commit": scaling._commit(),
         "machine": _machine(), "environment": {k: v for k, v in sorted(os.environ.items())
                                                 if k.startswith(("LRJOB_", "HOROVOD_", "OMP_", "MXNET_"))},
         "load_start": os.getloadavg(), "runs": []}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arm_of = dict(zip(names, arms))
    t0 = time.perf_counter()
    # a SIGTERM or SIGHUP ends the run through the finally below (the busy processes stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    hogs = _busy(a.busy)
    try:
        with tempfile.TemporaryDirectory(prefix="lrjob-ab-") as tmp:
            data, cache = Path(tmp) / "mnist", Path(tmp) / "prepared"
            scaling._write_subset(data, a.rows, 1000)
            cell = {"model": a.model, "batch": a.batch, "workers": a.workers, "method": methods[0]}
            # one untimed run first: it prepares the data every measured run then maps
            warm = scaling._run_lrjob(replace(plan, epochs=2), cell, data, cache, Path(tmp) / "warm-up")
            if "error" in warm:
                scaling.log(f"the untimed first run failed: {warm['error']}")
            for rep in range(a.reps):
                for name, method in _order(rep, names, methods):
                    cell = {**cell, "method": method}
                    run_dir = Path(tmp) / f"run-{len(r['runs']):03d}"
                    try:
                        got = scaling._run_lrjob(plan, cell, data, cache, run_dir, extra_env=arm_of[name])
                    except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                        got = {"error": f"{type(e).__name__}: {e}"}
                    secs = got.get("epoch_seconds") or []
                    got["median_s"] = statistics.median(secs[1:]) if len(secs) > 1 else None
                    r["runs"].append({"rep": rep, "arm": name, "method": method, "load": os.getloadavg()[0],
                                      "busy_alive": sum(h.poll() is None for h in hogs), **got})
                    out.write_text(json.dumps(r, indent=1))  # what is measured so far survives a stop
                    scaling.log(f"rep {rep + 1}/{a.reps} {name or '(as is)'} {method}: "
                                f"{got['median_s'] if got['median_s'] is not None else got.get('error')}")
    finally:
        _stop(hogs)
    r["load_end"], r["seconds"] = os.getloadavg(), time.perf_counter() - t0
    out.write_text(json.dumps(r, indent=1))
    out.with_suffix(".md").write_text(summarize(r))
    print(summarize(r))
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 1 if any(x.get("median_s") is None for x in r["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
