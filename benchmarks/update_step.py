"""In-process MNIST epochs at global batch 64 with each part of lrjob's step on or off
(docs/design.md#the-update-step): Gluon's ``Trainer.step`` or SGD's fused update called
directly, the rows gathered before the graph or inside it, the graph's memory plan kept from
step to step (``static_shape``) or not; then MXNet's engines, each in a
process of its own (MXNET_ENGINE_TYPE is read when MXNet starts). The tutorial loop
(benchmarks/tutorial.py) runs in every round: the baseline of the in-process goal (5x its
samples/s). Rounds are interleaved, the first dropped as warm-up; figures are medians.

    python -m benchmarks.update_step [--rounds 8] [--out bench-results/update_step.json]

It writes the JSON and a Markdown table beside it (``.md``). About a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("ThreadedEnginePerDevice", "NaiveEngine", "ThreadedEngine")  # MXNet 1.9's default first


def log(msg: str) -> None:
    print(f"[update_step {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _mnist():
    from launcher.spec import load_spec

    return load_spec(ROOT / "jobs/mnist_softmax.yaml").load_data()


def arms_in_process(rounds: int, arms: list[tuple[str, bool, bool, bool]]) -> dict:
    """``arms``: (name, fused, gather, static_shape). Seconds of each arm's epochs and the
    tutorial's, by name."""
    from benchmarks.tutorial import TutorialLoop
    from lr_core.comm import SingleProcessCommunicator
    from lr_core.config import LoopConfig
    from lr_core.loop import TrainingLoop

    class GluonSteps(SingleProcessCommunicator):
        def step(self, trainer, global_batch_size):
            trainer.step(global_batch_size)

    data = _mnist()
    cfg = LoopConfig(kind="softmax", num_classes=10, batch_size=64, learning_rate=0.1)
    loops = {}
    for name, fused, gather, static_shape in arms:
        loops[name] = TrainingLoop(cfg, data, comm=SingleProcessCommunicator() if fused else GluonSteps(), gather=gather)
        if not static_shape:  # before its first call: the graph as it was hybridized before
            loops[name].graph.hybridize(static_alloc=True)
    tutorial = TutorialLoop(data.x_train, data.y_train, batch_size=64)
    times: dict[str, list[float]] = {"tutorial": [], **{name: [] for name in loops}}
    for r in range(rounds):
        order = list(loops) if r % 2 == 0 else list(loops)[::-1]
        times["tutorial"].append(tutorial.epoch())
        for name in order:
            times[name].append(loops[name].train_epoch(r)["train_seconds"])
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    params = {name: loop.get_params() for name, loop in loops.items()}
    first = next(iter(params.values()))
    same = all(np.array_equal(p[k], first[k]) for p in params.values() for k in first)
    return {"seconds": times, "parameters_equal": bool(same)}


def _median(xs: list[float]) -> float:
    return float(np.median(xs[1:])) if len(xs) > 1 else float(xs[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.update_step", description=__doc__.split("\n\n")[0],
                                epilog="Example: python -m benchmarks.update_step --rounds 8 --out /tmp/us.json",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds, the first a warm-up (default 8)")
    p.add_argument("--out", default="bench-results/update_step.json",
                   help="JSON to write, a .md table beside it (default: bench-results/update_step.json)")
    p.add_argument("--engine-child", help=argparse.SUPPRESS)  # one engine's arms, in a process of its own
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the first is a warm-up)")
    if args.engine_child:
        r = arms_in_process(args.rounds, [("lrjob", True, True, True)])
        print(json.dumps(r))
        return 0

    from benchmarks.scaling import _commit

    load_start, commit = os.getloadavg(), _commit()
    log("the parts of a step, in one process (MXNet's default engine)")
    parts = arms_in_process(args.rounds, [
        ("Gluon step, rows gathered before the graph, no static shape (lrjob before)", False, False, False),
        ("fused update, rows gathered before the graph, no static shape", True, False, False),
        ("Gluon step, rows gathered in the graph, no static shape", False, True, False),
        ("fused update, rows gathered in the graph, no static shape", True, True, False),
        ("fused update, rows gathered in the graph, static shape (lrjob)", True, True, True)])
    engines = {}
    for engine in ENGINES:
        log(f"engine {engine}")
        env = {**os.environ, "MXNET_ENGINE_TYPE": engine}
        out = subprocess.run([sys.executable, "-m", "benchmarks.update_step", "--rounds", str(args.rounds),
                              "--engine-child", engine], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            engines[engine] = {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
            continue
        engines[engine] = json.loads(out.stdout.strip().splitlines()[-1])
    result = {"rounds": args.rounds, "batch_size": 64, "commit": commit, "load_start": load_start,
              "load_end": os.getloadavg(), "parts": parts, "engines": engines}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(summary(result) + "\n")
    print(summary(result))
    return 0


def summary(r: dict) -> str:
    secs = r["parts"]["seconds"]
    tut = _median(secs["tutorial"])
    machine = ""
    if r.get("load_start"):
        machine = (f" Load average (1, 5, 15 min) {', '.join(f'{x:.1f}' for x in r['load_start'])} at the start, "
                   f"{', '.join(f'{x:.1f}' for x in r['load_end'])} at the end"
                   + (f"; code at commit {r['commit']}" if r.get("commit") else "") + ".")
    lines = [f"In-process MNIST, global batch 64, {r['rounds']} interleaved rounds (the first dropped), median "
             f"epoch seconds; tutorial loop {tut:.3f} s in the same process.{machine}", "",
             "| step | epoch | tutorial / this |", "|---|---|---|"]
    for name, xs in secs.items():
        if name != "tutorial":
            lines.append(f"| {name} | {_median(xs):.3f} s | {tut / _median(xs):.2f}x |")
    lines.append(f"\nAll {len(secs) - 1} trained the same parameters bit for bit: {r['parts']['parameters_equal']}.\n")
    lines += ["| MXNET_ENGINE_TYPE (lrjob's step, a process each) | epoch | tutorial / lrjob in that process |",
              "|---|---|---|"]
    for engine, e in r["engines"].items():
        if "error" in e:
            lines.append(f"| {engine} | failed: {e['error'][0]} | |")
            continue
        t, ours = _median(e["seconds"]["tutorial"]), _median(e["seconds"]["lrjob"])
        lines.append(f"| {engine} | {ours:.3f} s | {t / ours:.2f}x (tutorial {t:.3f} s) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
