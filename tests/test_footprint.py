"""What a worker group costs besides its workers (docs/design.md#failures-and-restarts): the
progress and the ranks' positions travel through the GCS's key-value store, so the group is
its N Horovod actors and nothing else. Real Ray, real Horovod."""
import pytest

from launcher.spec import load_spec

pytestmark = pytest.mark.distributed


def _alive_actors(ray) -> list[str]:
    """The class of every live actor of this session's Ray, from the GCS's actor table (the state
    API would need the dashboard, which lrjob's Ray does not start)."""
    from ray._private.state import actors

    return sorted(a["ActorClassName"] for a in actors(actor_state_name="ALIVE").values())


def test_a_worker_group_is_its_workers_and_reports_progress_without_an_actor(ray_session):
    from launcher.backends import RayHorovodBackend
    from launcher.backends.positions import NAMESPACE
    from ray.experimental.internal_kv import internal_kv_get_gcs_client

    from ray.experimental import internal_kv

    spec = load_spec("jobs/binary_2d.yaml", ["train.epochs=1", "train.batch_size=2"])
    before = _alive_actors(ray_session)
    seen = []
    gcs = ray_session._private.worker.global_worker.gcs_client
    backend = RayHorovodBackend(spec.loop_config(), spec.load_data(), spec.resources)
    try:
        # what ray.cluster_utils.Cluster.shutdown() does to the process that used it (an earlier
        # test here): the internal-KV module forgets its client while this process stays connected
        internal_kv._internal_kv_reset()
        group = backend._positions_of.group
        assert _alive_actors(ray_session) == before + ["BaseHorovodWorker"] * 2
        # 200 steps of 2 ranks; a rank's last report is sent before its epoch returns
        per_rank = backend.run_epoch(0, progress=lambda step, steps: seen.append((step, steps)), timeout_s=120)
        assert [m["steps"] for m in per_rank] == [200, 200]
        assert all(steps == 200 and 0 < step < 200 for step, steps in seen), seen
        positions = backend._positions()
        assert {r: (e, s) for r, (e, s, _) in positions.items()} == {0: (0, 200), 1: (0, 200)}, positions
        epoch, step, steps = backend._positions_of.progress  # rank 0's last confirmed step
        assert (epoch, steps) == (0, 200) and 150 <= step < 200, backend._positions_of.progress
        keys = gcs.internal_kv_keys(f"pos:{group}:".encode(), NAMESPACE)
        assert sorted(keys) == [f"pos:{group}:0".encode(), f"pos:{group}:1".encode()]
        # each rank trains with MXNet and without the scikit-learn and pandas MXNet would pull in
        # (launcher.backends.worker.import_mxnet)
        loaded = backend.execute(lambda w: [m in __import__("sys").modules for m in ("mxnet", "sklearn", "pandas")],
                                 "modules")
        assert loaded == [[True, False, False]] * 2, loaded
        # Gloo's event loops run at nice 19; every other thread (the training, Horovod's, MXNet's and
        # Ray's own, whose gRPC and asio loops also wait in epoll) as it was: 0, or the main thread's
        # (this session's Ray sets its workers' main thread to nice 15; lrjob's own Ray does not), where
        # 0 stands for the nice this test runs at, which Ray's processes inherit
        # (launcher.backends.hvd_comm.HorovodCommunicator)
        def thread_nices(worker):  # nested: Ray sends it by value, the test module is not on the ranks
            import os

            tids = [int(t) for t in os.listdir("/proc/self/task")]
            return os.getpid(), worker.loop.comm.loops, {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids}

        threads = backend.execute(thread_nices, "thread priorities")
        base = __import__("os").getpriority(__import__("os").PRIO_PROCESS, 0)
        for pid, lowered, nice in threads:
            # Horovod 0.28's Gloo: an event loop per TCP device, two here; none of Ray's own
            assert len(lowered) == 2 and {t: nice[t] for t in lowered} == {t: 19 for t in lowered}, \
                (lowered, nice)
            others = {t: n for t, n in nice.items() if t not in lowered}
            assert len(others) > 10 and set(others.values()) <= {base, nice[pid]} and nice[pid] < 19, (lowered, nice)
    finally:
        backend.shutdown()
        internal_kv._initialize_internal_kv(gcs)
    assert internal_kv_get_gcs_client().internal_kv_keys(f"pos:{group}:".encode(), NAMESPACE) == []
    assert _alive_actors(ray_session) == before


_EMBEDDED = r"""
import json, os, sys
from launcher.backends import RayHorovodBackend
from launcher.backends.cluster import RaySession
from launcher.spec import load_spec

spec = load_spec("jobs/binary_2d.yaml", ["train.epochs=1"])
with RaySession(None, 2, 1) as session:
    backend = RayHorovodBackend(spec.loop_config(), spec.load_data(), spec.resources)
    try:
        steps = [m["steps"] for m in backend.run_epoch(0, timeout_s=120)]
        nice = [os.getpriority(os.PRIO_PROCESS, pid) for pid in backend.pids()]
    finally:
        backend.shutdown()
print(json.dumps({"kind": session.kind, "steps": steps, "nice": nice, "driver_nice": os.getpriority(os.PRIO_PROCESS, 0)}))
"""


def test_the_embedded_ray_runs_the_workers_at_the_drivers_priority(tmp_path):
    """lrjob's own local Ray (``embedded_init_kwargs``) starts: Ray would run the workers at nice
    15 and a rank on a busy machine would wait for the CPU; they run at the driver's priority, as
    under horovodrun."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", _EMBEDDED], capture_output=True, text=True, env=env, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["kind"].startswith("local Ray") and got["steps"] == [25, 25], got
    assert got["nice"] == [got["driver_nice"]] * 2, got


def test_each_ray_rank_runs_in_a_session_of_its_own(ray_session):
    """As horovodrun starts each rank (``own_session``): with the kernel's autogroup scheduling a
    busy machine shares the CPU between sessions first, and Ray starts its workers in the session
    of whatever started Ray. Each rank still leads a process group of its own id, as the raylet
    made it."""
    import os

    from launcher.backends import RayHorovodBackend

    spec = load_spec("jobs/binary_2d.yaml", ["train.epochs=1"])
    backend = RayHorovodBackend(spec.loop_config(), spec.load_data(), spec.resources)
    try:
        pids = backend.pids()
        got = [(os.getsid(pid), os.getpgid(pid)) for pid in pids]
    finally:
        backend.shutdown()
    assert len(set(pids)) == 2 and os.getpid() not in pids, pids
    assert got == [(pid, pid) for pid in pids], (pids, got)
