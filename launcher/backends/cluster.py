"""Ray sessions: an embedded local Ray by default, or a named cluster (``--address`` /
``RAY_ADDRESS``), with a bounded wait and resource checks before anything starts."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from lr_core.errors import ClusterError, LrjobInputError, counted

__all__ = ["RaySession", "cluster_address", "node_resources", "can_place", "ray_init_kwargs", "embedded_init_kwargs", "ResourceError", "check_resources",
           "worker_env", "require_listening", "use_ray_token_if_present", "warn_if_cluster_open", "machine_cpus", "cgroup_cpu_quota", "embedded_cpus",
           "embedded_gpus", "check_embedded_gpus", "daemons_in_groups_of_their_own"]

SETUP_HOOK = "launcher.quiet.silence_known_noise"


class ResourceError(LrjobInputError):
    """The job asks for more than the cluster has (exit 2: fix the request)."""


def ray_init_kwargs() -> dict:
    """Keyword arguments every ``ray.init`` of lrjob uses (tests use them too)."""
    return {"runtime_env": {"worker_process_setup_hook": SETUP_HOOK},
            "logging_level": logging.WARNING, "log_to_driver": True}


# What a local run does not use of the Ray it starts (docs/design.md#flow): Ray's metrics (the
# raylet, the GCS and every worker collect them for the dashboard agent to export), the task
# events every task and actor call sends to the GCS for the state API and the dashboard (a report
# interval of 0 sends none), and the event loops' own statistics. And the workers run at the
# driver's priority: Ray starts them at nice 15, so on a machine with other work each Horovod rank
# waited for the CPU (measured: 2-worker MNIST epochs 1.5x slower than at nice 0, as horovodrun
# runs its ranks).
EMBEDDED_SYSTEM_CONFIG = {"enable_metrics_collection": False, "task_events_report_interval_ms": 0,
                          "event_stats": False, "worker_niceness": 0}


def embedded_init_kwargs(num_cpus: int) -> dict:
    """Keyword arguments of the ``ray.init`` that starts lrjob's own local Ray: a new Ray even when
    this machine runs another one (``address="local"``), no dashboard, and none of what a local run
    does not use (``EMBEDDED_SYSTEM_CONFIG``; a Ray that is joined keeps its own settings)."""
    return {**ray_init_kwargs(), "address": "local", "num_cpus": num_cpus, "include_dashboard": False,
            "_system_config": dict(EMBEDDED_SYSTEM_CONFIG)}


GLOO_LOOP_NICE = "LRJOB_GLOO_LOOP_NICE"
DEFAULT_GLOO_LOOP_NICE = 19


def gloo_loop_nice() -> int:
    """The nice value of Gloo's event-loop threads in each rank (docs/design.md#the-ranks-threads):
    ``$LRJOB_GLOO_LOOP_NICE``, a whole number from 0 (leave them as they start) to 19, or 19 when
    it is unset or empty."""
    raw = os.environ.get(GLOO_LOOP_NICE, "").strip()
    if not raw:
        return DEFAULT_GLOO_LOOP_NICE
    if not re.fullmatch(r"[0-9]{1,2}", raw) or int(raw) > 19:
        raise LrjobInputError(f"{GLOO_LOOP_NICE}={raw!r}: give a whole number from 0 (leave Gloo's threads as "
                              f"they start) to 19 (the default)")
    return int(raw)


def worker_env(cpus_per_worker: float) -> dict[str, str]:
    """Environment of each worker; the user's own settings win."""
    threads = str(max(1, int(cpus_per_worker)))
    env = {
        # Measured on 2 cores: one OpenMP thread per worker is fastest for these models.
        "OMP_NUM_THREADS": threads,
        "MXNET_CPU_WORKER_NTHREADS": "1",
        # Horovod batches tensors every cycle; 0.1 ms instead of 1 ms cuts allreduce latency ~3x.
        "HOROVOD_CYCLE_TIME": "0.1",
        "HOROVOD_GLOO_TIMEOUT_SECONDS": "60",
        "PYTHONUNBUFFERED": "1",
    }
    for key in list(env):
        if key in os.environ:
            env[key] = os.environ[key]
    if GLOO_LOOP_NICE in os.environ:
        gloo_loop_nice()  # refused here, in the driver, rather than in every rank
        env[GLOO_LOOP_NICE] = os.environ[GLOO_LOOP_NICE]
    for key in ("LRJOB_FAULT", "LRJOB_FAULT_REPORT"):  # tests only (lr_core/faults.py)
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def use_ray_token_if_present() -> None:
    """Ray 2.60 clusters started with `ray start` require a token; the Jobs client sends
    it only once token mode is switched on in this process. Use ~/.ray/auth_token (or
    RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) when there is one, as Ray's own CLI does.

    No warning here when this machine has no token: that says nothing about the cluster, which
    may well want one (the request then fails with a clear error). What the cluster does is
    checked where it is known: ``warn_if_cluster_open`` after joining, the dashboard's
    authentication mode in ``launcher.deploy.submit``."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # another Ray version: its client handles tokens itself
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def warn_if_cluster_open() -> None:
    """After joining a named cluster: print Ray's own warning (never muted: launcher/quiet.py) when
    the cluster runs without token authentication, and an lrjob warning when that cannot be
    confirmed.

    The cluster is asked, not this process: its dashboard's authentication mode, through the same
    check as ``lrjob submit`` (``launcher.backends.auth_check``), when Ray knows a dashboard
    address this machine can reach. Without one (a cluster started without a dashboard, or one that
    listens on the head's loopback only) what is checked is this process: a process without token
    mode that got in proves the cluster open; one with token mode proves nothing."""
    try:
        from ray._private import worker
        from ray._private.authentication.authentication_token_setup import _warn_token_auth_disabled
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # another Ray version
        return
    import sys

    def local(host: str) -> bool:
        """Whether ``host`` is this machine (an address of it can be bound)."""
        if host in ("localhost", "::1") or host.startswith("127."):
            return True
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.bind((host, 0))
            return True
        except OSError:
            return False

    node = worker._global_node
    url = os.environ.get("RAY_OVERRIDE_DASHBOARD_URL") or (node.webui_url if node is not None else None)
    if url and "://" not in url:
        url = f"http://{url}"
    if url and node is not None:
        # A dashboard on the head's loopback is reachable from here only when the head is this machine.
        dash_host = urlparse(url).hostname or ""
        gcs_host = (node.gcs_address or "").rpartition(":")[0].strip("[]")
        if (dash_host in ("localhost", "::1") or dash_host.startswith("127.")) and not local(gcs_host):
            url = None
    mode = None
    if url:
        from .auth_check import check_auth

        check = check_auth(url)
        mode = check.mode
        if mode == "token":
            return
    if mode == "disabled" or not is_token_auth_enabled():
        _warn_token_auth_disabled()
    elif mode is not None:
        sys.stderr.write(f"lrjob: warning: the Ray cluster's dashboard {url}: the Ray head {check.describe()}\n")


def require_listening(address: str, endpoint: tuple[str | None, int], what: str, fix: str,
                      timeout: float = 5.0) -> None:
    """Bounded wait: a TCP connect to host:port, else a one-line input error (exit 2)."""
    host, port = endpoint
    if not host:
        raise LrjobInputError(f"--address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise LrjobInputError(f"--address {address}: no {what} answers at {host}:{port} within "
                              f"{timeout:g} s ({e.strerror or e}); {fix}") from None


def _probe_address(address: str, timeout: float = 5.0) -> None:
    if address in ("auto", "local"):
        return
    target = address if "://" in address else f"ray://{address}"
    parsed = urlparse(target)
    port = parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    require_listening(address, (parsed.hostname, port), "Ray cluster",
                      "start one with `ray start --head` or check the address", timeout)


def check_resources(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> dict:
    """The cluster's total CPUs and GPUs and its live node count; a ``ResourceError`` (exit 2) when
    ``workers`` times the CPUs or GPUs per worker exceeds what the Ray cluster has."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if gpus_per_worker and workers * gpus_per_worker > gpus:
        raise ResourceError(
            f"resources.gpus_per_worker: {counted(workers, 'worker')} x {gpus_per_worker:g} GPU = "
            f"{workers * gpus_per_worker:g} GPUs asked, the Ray cluster has {gpus:g}; lower --workers or "
            f"--gpus-per-worker, or add GPU nodes")
    if workers * cpus_per_worker > cpus:
        raise ResourceError(
            f"resources.cpus_per_worker: {counted(workers, 'worker')} x {cpus_per_worker:g} CPU = "
            f"{workers * cpus_per_worker:g} CPUs asked, the Ray cluster has {cpus:g}; lower --workers or "
            f"resources.cpus_per_worker")
    return {"CPU": cpus, "GPU": gpus, "nodes": len([n for n in ray.nodes() if n.get("Alive")])}


def node_resources() -> list[dict]:
    """The total resources of every live node of the Ray cluster (``{"CPU": 2.0, ...}`` each): what
    an elastic restart may place its workers on (launcher/elastic.py)."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def can_place(workers: int, cpus_per_worker: float, gpus_per_worker: float = 0, timeout_s: float = 5.0) -> bool:
    """Whether ``workers`` workers fit in what the Ray cluster has free now: a placement group of
    that many bundles, packed as horovod.ray packs its workers, reserved within ``timeout_s`` and
    released at once. Totals (``node_resources``) do not see what other jobs hold."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    pg = placement_group([dict(bundle) for _ in range(workers)], strategy="PACK")
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        return bool(ready)
    finally:
        remove_placement_group(pg)


# Where the cgroup file systems are mounted; tests point this at a folder of fake cgroup files.
CGROUP_ROOT = "/sys/fs/cgroup"


def machine_cpus(cgroup_root: str | os.PathLike | None = None) -> int:
    """The CPUs this process may use: its affinity mask (else the machine's count), lowered to
    the cgroup's CPU quota rounded up (a container limited to 1.5 CPUs has 2), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(CGROUP_ROOT if cgroup_root is None else cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(root: str | os.PathLike = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None without one:
    cgroup v2 ``cpu.max`` (``max 100000`` is none), else v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` (a quota of -1 is none). Read in this process's own cgroup below
    ``root`` (``/proc/self/cgroup``), then at ``root`` itself (a container sees its own there)."""
    root = Path(root)
    own = {"v2": "", "v1": ""}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, controllers, rel = line.split(":", 2)
            if hid == "0" and controllers == "":
                own["v2"] = rel.lstrip("/")
            elif "cpu" in controllers.split(","):
                own["v1"] = rel.lstrip("/")
    except (OSError, ValueError):
        pass
    candidates = [(d / "cpu.max", None) for d in dict.fromkeys([root / own["v2"], root])]
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        for d in dict.fromkeys([v1 / own["v1"], v1]):
            candidates.append((d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
                if quota == "max":
                    return None
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
                if int(quota) < 0:
                    return None
            if int(period) > 0 and int(quota) > 0:
                return int(quota) / int(period)
        except (OSError, ValueError):
            continue
    return None


def embedded_cpus(workers: int, cpus_per_worker: float, oversubscribe: bool = False) -> int:
    """The CPUs an embedded local Ray declares: the machine's, so the resource check compares the
    request with what exists. A request beyond them is a ``ResourceError`` (exit 2), unless
    ``oversubscribe``: then Ray declares as many as asked and the workers share the cores."""
    have, need = machine_cpus(), workers * cpus_per_worker
    if need <= have:
        return have
    if oversubscribe:
        return int(-(-need // 1))
    raise ResourceError(
        f"resources.workers: {counted(workers, 'worker')} x {cpus_per_worker:g} CPU = {need:g} CPUs asked, this machine has "
        f"{have}; lower --workers or resources.cpus_per_worker, join a cluster with --address, or pass "
        f"--oversubscribe to share the CPUs anyway (slower, for tests)")


def _gpu_devices() -> tuple[int, int | None] | None:
    """(the GPUs the NVIDIA driver reports, how many ``CUDA_VISIBLE_DEVICES`` names or None when it
    is unset), as Ray reads them when it starts; None when Ray cannot tell before it starts."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        visible = manager.get_current_process_visible_accelerator_ids()
        return int(manager.get_current_node_num_accelerators()), (None if visible is None else len(visible))
    except Exception:  # noqa: BLE001 - a private API: without it the check waits for ray.init
        return None


def embedded_gpus() -> float | None:
    """The GPUs an embedded local Ray will declare, counted as Ray counts them when it starts: the
    devices the NVIDIA driver reports, at most as many as ``CUDA_VISIBLE_DEVICES`` names when it is
    set. None when Ray cannot tell before it starts."""
    return _declared(_gpu_devices())


def _declared(devices: tuple[int, int | None] | None) -> float | None:
    if devices is None:
        return None
    found, visible = devices
    return float(found if visible is None else min(found, visible))


def check_embedded_gpus(workers: int, gpus_per_worker: float) -> None:
    """A ``ResourceError`` (exit 2) when ``workers`` x ``gpus_per_worker`` is more than the GPUs a
    local Ray would find on this machine (``embedded_gpus``): said before Ray starts, with advice
    for a local run. Nothing when Ray cannot tell (the check after ``ray.init`` still holds)."""
    devices = _gpu_devices() if gpus_per_worker else None
    gpus = _declared(devices)
    if gpus is None or workers * gpus_per_worker <= gpus:
        return
    found, visible = devices
    has = (f"{gpus:g}" if visible is None or visible >= found
           else f"{found}, {visible} of them visible through CUDA_VISIBLE_DEVICES")
    raise ResourceError(
        f"resources.gpus_per_worker: {counted(workers, 'worker')} x {gpus_per_worker:g} GPU = {workers * gpus_per_worker:g} "
        f"GPUs asked, this machine has {has}; lower --workers or --gpus-per-worker, or join a cluster with "
        f"GPUs with --address")


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster a run joins: ``address``, else ``$RAY_ADDRESS``; None when neither is set or
    it is ``local``: then lrjob starts a Ray of its own on this machine."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def _process_parents() -> dict[int, int]:
    """{pid: parent pid} of every process (Linux ``/proc``; empty elsewhere)."""
    parents = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


def _children() -> set[int]:
    return {pid for pid, parent in _process_parents().items() if parent == os.getpid()}


def _leads_group(pid: int) -> bool:
    """Whether process ``pid`` leads its process group (and is not this process's group)."""
    try:
        return os.getpgid(pid) == pid and pid != os.getpgid(0)
    except OSError:
        return False


def _signal_groups(groups: list[int], sig: int) -> None:
    for group in groups:
        try:
            os.killpg(group, sig)
        except OSError:  # gone already
            pass


def _stop_started(before: set[int]) -> None:
    """After an embedded ``ray.init`` failed or was interrupted: SIGKILL the processes it had
    started (this process's children that ``before`` does not hold, and all of theirs), then
    leave Ray. A Ctrl-C while Ray's node starts leaves its processes unknown to ``ray.shutdown``,
    and the agents the raylet starts stayed up for a minute or more. The tree is stopped
    (SIGSTOP) until it no longer grows, so no process forks past it, then killed."""
    import signal

    import ray

    roots, stopped = _children() - before, set()
    # Each process the embedded Ray started leads a group of its own (daemons_in_groups_of_their_own),
    # which its children share: a group reaches a child that lost its parent before the tree below
    # was read (the raylet's agents, reparented when Ray's own clean-up ended the raylet first).
    groups = [pid for pid in roots if _leads_group(pid)]
    _signal_groups(groups, signal.SIGSTOP)
    while True:
        parents = _process_parents()
        tree, new = set(), [pid for pid in roots if pid in parents]
        while new:
            tree.update(new)
            new = [pid for pid, parent in parents.items() if parent in new and pid not in tree]
        if tree <= stopped:
            break
        for pid in tree - stopped:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass
        stopped |= tree
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _signal_groups(groups, signal.SIGKILL)
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort: the error that ended the start is the one to report
        pass


_GROUPS_LOCK = threading.Lock()
_GROUPS_DEPTH, _GROUPS_BASE = 0, None


@contextlib.contextmanager
def daemons_in_groups_of_their_own():
    """While an embedded Ray starts, each process it starts (the GCS, the raylet, Ray's Python
    daemons) leads a process group of its own, in this process's session (docs/design.md#flow).

    Ray starts them in the driver's process group. A signal sent to that group, as ``timeout``
    sends its SIGTERM, or ``kill -TERM -- -PGID``, then reached them as well as the driver: they
    died while the driver stopped the run, its clean-up waited 60 s for a GCS that was gone, and
    Ray ended the process with ``summary.json`` still "running" and no resume command. Out of the
    group, only the driver gets the signal, and it stops the run as it does on SIGTERM. Ray blocks
    SIGINT in them already, for a Ctrl-C at a terminal. They still die with the driver: this is
    done only where Ray's kernel fate-sharing (Linux's parent-death signal) kills them when it
    exits; without it, Ray's reaper ends them by the group, which must then stay shared."""
    import ray._private.services as services
    import ray._private.utils as utils

    global _GROUPS_DEPTH, _GROUPS_BASE
    if not hasattr(services, "ConsolePopen") or not sys.platform.startswith("linux") \
            or not utils.detect_fate_sharing_support():
        yield
        return
    with _GROUPS_LOCK:  # nested or overlapping uses: Ray's own class is put back by the last one out
        if _GROUPS_DEPTH == 0:
            base = _GROUPS_BASE = services.ConsolePopen

            class _OwnGroupPopen(base):
                def __init__(self, *args, **kwargs):
                    kwargs.setdefault("process_group", 0)
                    super().__init__(*args, **kwargs)

            services.ConsolePopen = _OwnGroupPopen
        _GROUPS_DEPTH += 1
    try:
        yield
    finally:
        with _GROUPS_LOCK:
            _GROUPS_DEPTH -= 1
            if _GROUPS_DEPTH == 0:
                services.ConsolePopen = _GROUPS_BASE


class RaySession:
    """Context manager: joins the running Ray, a named cluster, or starts a local one.

    Only a Ray that this session started is shut down on exit. A local Ray gets the
    machine's CPUs (``embedded_cpus``), more only with ``oversubscribe``.
    """

    def __init__(self, address: str | None, workers: int, cpus_per_worker: float, oversubscribe: bool = False,
                 gpus_per_worker: float = 0):
        self.address = cluster_address(address)  # None: a local Ray of lrjob's own
        self.workers, self.cpus_per_worker, self.oversubscribe = workers, cpus_per_worker, oversubscribe
        self.gpus_per_worker = gpus_per_worker
        self.owned = False
        self.kind = "existing"

    def __enter__(self) -> "RaySession":
        import ray

        if ray.is_initialized():  # this process's Ray (a library caller's, a sweep's) is used as it is
            if self.address:
                _probe_address(self.address)  # but an address nothing answers at is still refused
            return self
        kwargs = ray_init_kwargs()
        before = _children() if not self.address else set()
        try:
            if self.address:
                _probe_address(self.address)
                use_ray_token_if_present()
                ray.init(address=self.address, **kwargs)
                self.kind = f"cluster {self.address}"
                warn_if_cluster_open()
            else:
                check_embedded_gpus(self.workers, self.gpus_per_worker)  # GPUs first, as check_resources
                num_cpus = embedded_cpus(self.workers, self.cpus_per_worker, self.oversubscribe)
                # address="local": a new Ray of its own even when this machine runs another one
                # (`ray start --head`), which a bare ray.init() would join (docs/design.md#flow)
                with daemons_in_groups_of_their_own():
                    ray.init(**embedded_init_kwargs(num_cpus))
                self.kind = f"local Ray ({num_cpus} CPUs)"
        except BaseException as e:
            if not self.address:
                _stop_started(before)
            if isinstance(e, LrjobInputError) or not isinstance(e, Exception):
                raise
            raise ClusterError(f"could not start or join Ray ({type(e).__name__}: {str(e).splitlines()[0]}); "
                               f"run `lrjob doctor`") from e
        self.owned = True
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            import ray

            ray.shutdown()
