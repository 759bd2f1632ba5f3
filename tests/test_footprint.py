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

    spec = load_spec("jobs/binary_2d.yaml", ["train.epochs=1", "train.batch_size=2"])
    before = _alive_actors(ray_session)
    seen = []
    backend = RayHorovodBackend(spec.loop_config(), spec.load_data(), spec.resources)
    try:
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
        keys = internal_kv_get_gcs_client().internal_kv_keys(f"pos:{group}:".encode(), NAMESPACE)
        assert sorted(keys) == [f"pos:{group}:0".encode(), f"pos:{group}:1".encode()]
    finally:
        backend.shutdown()
    assert internal_kv_get_gcs_client().internal_kv_keys(f"pos:{group}:".encode(), NAMESPACE) == []
    assert _alive_actors(ray_session) == before
