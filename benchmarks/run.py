"""lrjob benchmarks: speed, start-up, communication and memory, with the baselines
measured in the same run. Writes one JSON file and a readable summary; asserts nothing.

    make bench                                   # = python -m benchmarks.run --out bench-results/bench.json
    python -m benchmarks.run --reps 5 --out /tmp/bench.json

Method: interleaved repetitions (A B C, A B C, ...), the first repetition of each is a
warm-up; medians and ranges of the rest. The machine is shared and noisy: compare ratios
measured in one run, not absolute seconds across runs.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
LRJOB = str(Path(sys.executable).parent / "lrjob")


def stats(xs: list[float]) -> dict:
    xs = list(xs)
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pss(pid: int | None = None) -> int | None:
    try:
        import psutil
        return psutil.Process(pid or os.getpid()).memory_full_info().pss
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- in-process
def bench_in_process(data, reps: int) -> dict:
    from benchmarks.tutorial import TutorialLoop
    from lr_core.config import LoopConfig
    from lr_core.loop import TrainingLoop

    tut = TutorialLoop(data.x_train, data.y_train, batch_size=64)
    loops = {b: TrainingLoop(LoopConfig(kind="softmax", num_classes=10, batch_size=b, learning_rate=0.1), data)
             for b in (64, 128)}
    times = {"tutorial_b64": [], "lrjob_b64": [], "lrjob_b128": []}
    for rep in range(reps):
        times["tutorial_b64"].append(tut.epoch())
        times["lrjob_b64"].append(loops[64].train_epoch(rep)["train_seconds"])
        times["lrjob_b128"].append(loops[128].train_epoch(rep)["train_seconds"])
        log(f"in-process rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    out = {k: stats(v[1:]) for k, v in times.items()}
    n = len(data.x_train)
    for k in times:
        out[k]["samples_per_s"] = n / out[k]["median"]
    # the data part of a step: the row gather alone, over one epoch of batch-64 steps
    import mxnet as mx
    from lr_core.sharding import epoch_permutation
    x = loops[64].x
    perm = mx.nd.array(epoch_permutation(1, 0, n), dtype="int64")
    t0 = time.perf_counter()
    for a in range(0, n, 64):
        mx.nd.take(x, perm[a:a + 64])
    mx.nd.waitall()
    out["gather_ms_per_step_b64"] = (time.perf_counter() - t0) / (n / 64) * 1e3
    return out


# --------------------------------------------------------------------------- distributed
STARTUP_REPS = 4  # start-ups of each (bare, lrjob), interleaved; medians of all


def bench_distributed(data, small, prepared, reps: int, workers: int = 2) -> dict:
    """Start-up with ``prepared`` (the memory-mapped dataset `lrjob run` trains on: nothing
    large goes through Ray's object store), then epochs, allreduce and memory with ``data`` (the
    in-memory dataset the in-process loops train on, so a step's compute is theirs)."""
    import ray
    from horovod.ray import RayExecutor

    from benchmarks import probes
    from launcher.backends import RayHorovodBackend
    from launcher.backends.cluster import embedded_init_kwargs
    from launcher.quiet import silence_known_noise
    from launcher.spec import ResourcesSpec
    from lr_core.config import LoopConfig

    silence_known_noise()
    out: dict = {"workers": workers}
    bare, bare_mx, ours = [], [], []
    cfg = LoopConfig(kind="softmax", num_classes=10, batch_size=128, learning_rate=0.1)
    # Every start-up starts the Ray that `lrjob run` starts (embedded_init_kwargs: no metrics or
    # task events, workers at the driver's priority), so the floors differ from lrjob's own
    # start in what runs on it only; the bare and lrjob starts alternate in order.
    for rep in range(STARTUP_REPS):
        for what in (("bare", "lrjob") if rep % 2 == 0 else ("lrjob", "bare")):
            if what == "bare":
                t0 = time.perf_counter()
                ray.init(**embedded_init_kwargs(4))
                ex = RayExecutor(RayExecutor.create_settings(timeout_s=60), num_workers=workers, cpus_per_worker=1)
                ex.start()
                ex.execute(lambda w: None)
                bare.append(time.perf_counter() - t0)
                # the same bare start, then what any MXNet job's ranks do first: import MXNet, hvd.init
                ex.execute(probes.mxnet_ready)
                bare_mx.append(time.perf_counter() - t0)
                ex.shutdown()
                ray.shutdown()
            else:
                t0 = time.perf_counter()
                ray.init(**embedded_init_kwargs(4))  # as `lrjob run` starts its own Ray
                be = RayHorovodBackend(cfg, prepared, ResourcesSpec(workers=workers))
                ours.append(time.perf_counter() - t0)
                be.shutdown()
                ray.shutdown()
        log(f"start-up rep {rep + 1}: bare {bare[-1]:.2f}s, bare + MXNet and hvd.init {bare_mx[-1]:.2f}s, "
            f"lrjob {ours[-1]:.2f}s")
    ray.init(**embedded_init_kwargs(4))
    out["startup_bare_s"] = stats(bare)
    out["startup_bare_mxnet_s"] = stats(bare_mx)
    out["startup_lrjob_s"] = stats(ours)
    be = RayHorovodBackend(cfg, data, ResourcesSpec(workers=workers))
    try:
        epochs = []
        for rep in range(reps):
            per_rank = be.run_epoch(rep)
            epochs.append(max(m["train_seconds"] for m in per_rank))
            log(f"{workers} workers, batch 128: epoch {rep + 1}/{reps} {epochs[-1]:.3f}s")
        out["epoch_b128"] = stats(epochs[1:])
        out["steps_per_epoch_b128"] = per_rank[0]["steps"]
        ar = be.execute(lambda w: probes.allreduce_seconds(w, 7850, 300), "allreduce benchmark")
        out["bare_allreduce_ms_7850_floats"] = stats([1e3 * t for t in ar[0][20:]])
        # a rank's step (128 // workers rows; 64 with 2) without communication, every worker at
        # once: the compute part of a distributed step, where the ranks share the cores
        local = be.execute(lambda w: probes.local_step_seconds(w, 128 // workers, reps), "compute benchmark")
        out["worker_compute_ms_per_step"] = stats([1e3 * max(ts) for ts in zip(*local)][1:])
        mem = be.execute(probes.memory, "memory")
        out["worker_memory"] = mem
        out["driver_pss"] = pss()
    finally:
        be.shutdown()
    # per-worker baseline: the same workers holding a tiny dataset
    try:
        be = RayHorovodBackend(LoopConfig(kind="softmax", num_classes=10, batch_size=128), small,
                               ResourcesSpec(workers=workers))
        out["worker_baseline_memory"] = be.execute(probes.memory, "memory")
        be.shutdown()
    finally:
        ray.shutdown()
    return out


# --------------------------------------------------------------------------- end to end
def time_to_accuracy(workers: int, target: float = 0.92) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        p = subprocess.Popen([LRJOB, "run", "jobs/mnist_softmax.yaml", "--workers", str(workers), "--json",
                              "--output", f"{tmp}/run"], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
        reached, epochs = None, 0
        for line in p.stdout:
            e = json.loads(line)
            if e.get("event") == "epoch":
                epochs = e["epoch"]
                if e["val_accuracy"] >= target and reached is None:
                    reached = time.perf_counter() - t0
                    break
        p.terminate()
        p.wait(60)
    return {"seconds": reached, "epochs": epochs, "target": target}


def sklearn_fit(data) -> dict:
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    clf = LogisticRegression(solver="lbfgs", max_iter=100)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "test_accuracy": float(clf.score(data.x_val, data.y_val))}


# --------------------------------------------------------------------------- report
def summarize(r: dict) -> str:
    ip, d = r["in_process"], r["distributed"]
    lines = ["| measure | value | target |", "|---|---|---|"]
    tut, ours = ip["tutorial_b64"]["median"], ip["lrjob_b64"]["median"]
    lines.append(f"| in-process MNIST epoch, batch 64: tutorial loop / lrjob | {tut:.3f} s / {ours:.3f} s "
                 f"(**{tut / ours:.1f}x** samples/s) | >= 3x |")
    b128 = ip["lrjob_b128"]["median"]
    de = d["epoch_b128"]["median"]
    lines.append(f"| {d['workers']} workers vs in-process, batch 128 | {de:.3f} s / {b128:.3f} s "
                 f"(**{de / b128:.2f}x** epoch time) | <= 1.3x |")
    steps = d["steps_per_epoch_b128"]
    compute = ip["lrjob_b64"]["median"] / (len_train(r) / 64)  # a worker's step: 64 rows
    comm = de / steps - compute
    ar = d["bare_allreduce_ms_7850_floats"]["median"]
    lines.append(f"| communication per step (step {1e3 * de / steps:.2f} ms - compute {1e3 * compute:.2f} ms) vs "
                 f"bare allreduce {ar:.2f} ms | {1e3 * comm:.2f} ms (**{1e3 * comm / ar:.2f}x**) | <= 1.5x |")
    if "worker_compute_ms_per_step" in d:
        wc = d["worker_compute_ms_per_step"]["median"]
        wcomm = 1e3 * de / steps - wc
        lines.append(f"| the same, with the compute measured in the {d['workers']} workers at once (a rank's step "
                     f"without communication: {wc:.2f} ms, as the ranks share the cores) | {wcomm:.2f} ms "
                     f"(**{wcomm / ar:.2f}x**) | |")
    lines.append(f"| data: a 64-row gather (`take`) alone, per step (the loss graph does it inside) "
                 f"| {ip['gather_ms_per_step_b64']:.3f} ms | |")
    ds = r["dataset_bytes"]
    wk = sum(m["pss"] or 0 for m in d["worker_memory"])
    base = sum(m["pss"] or 0 for m in d["worker_baseline_memory"])
    lines.append(f"| memory: {d['workers']} workers' PSS with MNIST / with tiny data; dataset {ds / 2**20:.0f} MiB "
                 f"| {wk / 2**20:.0f} MiB / {base / 2**20:.0f} MiB (extra **{(wk - base) / ds:.2f}x** dataset) "
                 f"| node <= 1.5x dataset + N x baseline |")
    sk = r["sklearn_lbfgs"]["seconds"]
    for w in ("0", "2"):
        t = r["time_to_0.92"][w]
        target = "<= 0.5x" if w == "0" else "<= 1.0x"
        val = "not reached" if t["seconds"] is None else f"{t['seconds']:.1f} s (**{t['seconds'] / sk:.2f}x**)"
        lines.append(f"| MNIST to 0.92 test accuracy, end to end, --workers {w} vs scikit-learn lbfgs "
                     f"{sk:.1f} s | {val}, {t['epochs']} epochs | {target} |")
    su = d["startup_lrjob_s"]["median"] / d["startup_bare_s"]["median"]
    lines.append(f"| start-up: ray.init + {d['workers']} Horovod workers ready (lrjob with prepared MNIST), lrjob / bare | "
                 f"{d['startup_lrjob_s']['median']:.2f} s / {d['startup_bare_s']['median']:.2f} s "
                 f"(**{su:.2f}x**) | <= 1.2x |")
    if "startup_bare_mxnet_s" in d:
        bm = d["startup_bare_mxnet_s"]["median"]
        lines.append(f"| the same against a bare start whose ranks also import MXNet and join Horovod (hvd.init) | "
                     f"{d['startup_lrjob_s']['median']:.2f} s / {bm:.2f} s (**{d['startup_lrjob_s']['median'] / bm:.2f}x**) | |")
    if "footprint" in r:
        from benchmarks.footprint import summary_lines
        lines += summary_lines(r["footprint"])
    if r.get("commit"):
        load = r.get("machine", {}).get("load_average_start")
        lines.append(f"\nCode at commit {r['commit']}" + (f"; load average {load[0]:.1f} at the start" if load else "")
                     + ".")
    return "\n".join(lines)


def len_train(r):
    return r["train_rows"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results/bench.json",
                   help="JSON to write, a .md summary beside it (default: bench-results/bench.json)")
    p.add_argument("--reps", type=int, default=5, help="repetitions per configuration (first is warm-up; default 5)")
    args = p.parse_args(argv)

    from launcher.spec import load_spec

    t_all = time.perf_counter()
    data = load_spec(ROOT / "jobs/mnist_softmax.yaml").load_data()
    small = load_spec(ROOT / "jobs/digits_softmax.yaml").load_data()
    prepared = load_spec(ROOT / "jobs/mnist_softmax.yaml").prepared_data()
    import mxnet
    from benchmarks.scaling import _commit

    r = {"commit": _commit(),
         "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "mxnet": mxnet.__version__,
                     "load_average_start": os.getloadavg()},
         "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")},
         "worker_env": __import__("launcher.backends.cluster", fromlist=["worker_env"]).worker_env(1),
         "train_rows": len(data.x_train), "dataset_bytes": data.nbytes, "reps": args.reps}
    log("in-process loops (tutorial baseline, lrjob batch 64 and 128)")
    r["in_process"] = bench_in_process(data, args.reps)
    log("distributed: start-up, epochs, allreduce, memory")
    r["distributed"] = bench_distributed(data, small, prepared, args.reps)
    log("scikit-learn lbfgs on MNIST")
    r["sklearn_lbfgs"] = sklearn_fit(data)
    r["time_to_0.92"] = {}
    for w in (0, 2):
        log(f"end to end to 0.92 test accuracy, --workers {w}")
        r["time_to_0.92"][str(w)] = time_to_accuracy(w)
    log("footprint: a 2-worker run on tiny data, its whole process tree")
    from benchmarks import footprint
    r["footprint"] = footprint.measure(reps=3)
    r["machine"]["load_average_end"] = os.getloadavg()
    r["bench_seconds"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2, default=float) + "\n")
    text = summarize(r)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} and {out.with_suffix('.md')} in {r['bench_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
