"""Where every rank's loop is, kept in the Ray cluster's GCS key-value store: no process of its
own (docs/design.md#failures-and-restarts).

Each rank's heartbeat thread (``worker.py``) overwrites one key, ``pos:<group>:<rank>``, with
its position (epoch, step), the progress it last confirmed (epoch, step, steps: rank 0's is the
run's progress) and a counter that grows with every report. The driver reads all the keys in one
request and times the reports with its own clock: a rank's age is the time since the driver
last saw its counter change, so the clocks of other nodes never enter.

The GCS is the one service every node of a Ray cluster already talks to; a key per rank costs
it a few dozen bytes. The keys go when the group shuts down (``Positions.clear``).
"""
from __future__ import annotations

import time
import uuid

__all__ = ["NAMESPACE", "Positions", "report"]

NAMESPACE = b"lrjob"
_RPC_TIMEOUT_S = 5


def _gcs():
    """This process's GCS client: its own Ray connection's, else the internal-KV module's.
    (``ray.cluster_utils.Cluster.shutdown`` resets the module's client in the calling process
    even while that process stays connected to another Ray.)"""
    import ray
    from ray.experimental.internal_kv import internal_kv_get_gcs_client

    client = getattr(ray._private.worker.global_worker, "gcs_client", None) if ray.is_initialized() else None
    client = client or internal_kv_get_gcs_client()
    if client is None:
        raise RuntimeError("not connected to Ray")
    return client


def _key(group: str, rank: int) -> bytes:
    return f"pos:{group}:{rank}".encode()


def report(group: str, rank: int, seq: int, position: tuple[int, int], done: tuple[int, int, int]) -> None:
    """One report of ``rank`` (called from its heartbeat thread): ``position`` (epoch, step) its
    loop is at, ``done`` (epoch, step, steps) the last progress it confirmed, ``seq`` this report's
    number."""
    value = ",".join(str(int(v)) for v in (seq, *position, *done)).encode()
    _gcs().internal_kv_put(_key(group, rank), value, True, NAMESPACE, timeout=_RPC_TIMEOUT_S)


class Positions:
    """The driver's side: reads the ranks' reports of one worker group and ages them."""

    def __init__(self, size: int):
        self.group = uuid.uuid4().hex[:16]
        self.size = size
        self._keys = [_key(self.group, r) for r in range(size)]
        self._seen: dict[int, tuple[int, int, int, float]] = {}  # rank: (seq, epoch, step, when it changed)
        self.progress = (-1, 0, 1)  # rank 0's last confirmed (epoch, step, steps)

    def poll(self) -> bool:
        """Read every rank's last report (one request to the GCS); True when it worked."""
        try:
            values = _gcs().internal_kv_multi_get(self._keys, NAMESPACE, timeout=_RPC_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - best effort: blame falls back on what was seen before
            return False
        now = time.monotonic()
        for rank, key in enumerate(self._keys):
            raw = values.get(key)
            if raw is None:
                continue
            try:
                seq, epoch, step, d_epoch, d_step, d_steps = (int(v) for v in raw.decode().split(","))
            except ValueError:
                continue
            old = self._seen.get(rank)
            if old is None or old[0] != seq:
                self._seen[rank] = (seq, epoch, step, now)
            if rank == 0:
                self.progress = (d_epoch, d_step, d_steps)
        return True

    def positions(self) -> dict:
        """{rank: (epoch, step, seconds since its last report)} of every rank that reported, as of
        the last ``poll``."""
        now = time.monotonic()
        return {r: (e, s, now - t) for r, (_, e, s, t) in self._seen.items()}

    def clear(self) -> None:
        """Remove this group's keys."""
        try:
            _gcs().internal_kv_del(f"pos:{self.group}:".encode(), True, NAMESPACE, timeout=_RPC_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - Ray already gone: so are the keys of an embedded one
            pass
