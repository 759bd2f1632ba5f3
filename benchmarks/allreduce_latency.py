r"""The latency of one Horovod allreduce of a softmax step's gradient (7,850 float32), two ranks,
under horovodrun or under horovod.ray's RayExecutor, with nothing of lrjob's in the way.

    horovodrun --gloo -np 2 -H localhost:2 python -m benchmarks.allreduce_latency
    python -m benchmarks.allreduce_latency --ray [--own-session]
    python -m benchmarks.allreduce_latency --noise 430 -- \
        horovodrun --gloo -np 2 -H localhost:2 python -m benchmarks.allreduce_latency

Each rank runs --iters blocking allreduces (wait_to_read after each) and prints the median
of all but the first 200 in ms. LRJOB_GLOO_LOOP_NICE=N in the environment gives Gloo's
event-loop threads nice N as lrjob's ranks do (launcher.backends.hvd_comm); unset, they are
left as they start here, unlike lrjob's 19. --own-session moves each Ray rank into a session of
its own as lrjob's do (launcher.backends.worker). The thread settings are lrjob's
(worker_env(1)) unless set. --noise HZ -- COMMAND runs COMMAND beside a process that wakes HZ
times a second and does almost nothing each time (as an idle Ray node's daemons do)."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "HOROVOD_CYCLE_TIME", "HOROVOD_GLOO_TIMEOUT_SECONDS",
            "LRJOB_GLOO_LOOP_NICE", "LATENCY_ITERS", "LATENCY_OWN_SESSION")


def rank_latency(_=None) -> tuple[int, float, int]:
    """In a rank: (rank, median ms, Gloo loop threads lowered)."""
    sys.path.insert(0, str(ROOT))
    if os.environ.get("LATENCY_OWN_SESSION"):
        from launcher.backends.worker import own_session
        own_session()
    import mxnet as mx

    import horovod.mxnet as hvd
    from launcher.backends.hvd_comm import init_lowering_loops

    _, lowered, _ = init_lowering_loops(hvd, int(os.environ.get("LRJOB_GLOO_LOOP_NICE", "0")))
    if hvd.size() != 2:
        raise SystemExit(f"allreduce_latency: {hvd.size()} rank(s); run it under horovodrun -np 2 or with --ray")
    t = mx.nd.ones((7850,), dtype="float32")
    out = []
    for _ in range(int(os.environ.get("LATENCY_ITERS", "3000"))):
        t0 = time.perf_counter()
        hvd.allreduce(t, average=False, name="latency").wait_to_read()
        out.append(time.perf_counter() - t0)
    return hvd.rank(), 1e3 * statistics.median(out[200:]), len(lowered)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.allreduce_latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ray", action="store_true", help="two ranks under RayExecutor on a new local Ray")
    ap.add_argument("--own-session", action="store_true", help="with --ray: each rank in a session of its own")
    ap.add_argument("--iters", type=int, default=3000, help="allreduces per rank (default: %(default)s)")
    ap.add_argument("--noise", type=float, default=0, metavar="HZ",
                    help="run the command after -- beside a process that wakes HZ times a second")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="with --noise: the command to run")
    a = ap.parse_args(argv)
    if a.iters <= 200:
        ap.error("--iters must be above 200 (the first 200 are left out)")
    if a.command and not a.noise:
        ap.error("a command runs only with --noise")
    if a.noise and not 0 < a.noise < 1e5:
        ap.error("--noise HZ: give a rate above 0 and below 100000")
    if a.noise:
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not cmd:
            ap.error("--noise needs the command to run after --")
        waker = subprocess.Popen([sys.executable, "-c", f"import os, time\np = os.getppid()\n"
                                  f"while os.getppid() == p:\n    time.sleep({1 / a.noise!r})\n"],
                                 start_new_session=True)
        try:
            return subprocess.run(cmd, cwd=ROOT).returncode
        finally:
            waker.kill()
            waker.wait()
    sys.path.insert(0, str(ROOT))
    from launcher.backends.cluster import worker_env

    os.environ.update({k: v for k, v in worker_env(1).items() if k not in os.environ})
    os.environ["LATENCY_ITERS"] = str(a.iters)
    if a.own_session:
        os.environ["LATENCY_OWN_SESSION"] = "1"
    if not a.ray:
        rank, ms, lowered = rank_latency()
        print(f"horovodrun rank {rank}: {ms:.3f} ms per allreduce, {lowered} Gloo loop threads lowered")
        return 0
    import ray
    from horovod.ray import RayExecutor

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT),  # this checkout's benchmarks and launcher
                                       **{k: os.environ[k] for k in SETTINGS if k in os.environ}}})
    try:
        ex = RayExecutor(RayExecutor.create_settings(timeout_s=60), num_workers=2, cpus_per_worker=1, use_gpu=False)
        ex.start()
        try:
            for rank, ms, lowered in ex.run(rank_latency):
                print(f"ray rank {rank}: {ms:.3f} ms per allreduce, {lowered} Gloo loop threads lowered")
        finally:
            ex.shutdown()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
