"""Elastic restarts (docs/design.md#failures-and-restarts): the placement decision without a
cluster, then a real two-node Ray cluster (``ray.cluster_utils.Cluster``) that loses a node at
an exact step: the run finishes on fewer workers with the parameters of the in-process run."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import procs
import pytest

from launcher.elastic import Resize, placeable, world_size

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the decision
def test_placeable_counts_whole_workers_per_node():
    nodes = [{"CPU": 1.0}, {"CPU": 3.0, "GPU": 1.0}, {"CPU": 0.5}]
    assert placeable(nodes, 1) == 4
    assert placeable(nodes, 2) == 1, "a worker never spans two nodes"
    assert placeable(nodes, 0.5) == 9
    assert placeable([{"CPU": 0.3}], 0.1) == 3, "float division: 0.3 / 0.1 is 2.9999999999999996"
    assert placeable(nodes, 1, gpus_per_worker=1) == 1
    assert placeable([], 1) == 0 and placeable([{"memory": 1e9}], 1) == 0


def test_world_size_is_the_wanted_size_else_what_fits_down_to_the_least():
    assert world_size(4, 4, 9) == 4
    assert world_size(4, 4, 3) is None, "min_workers = workers: no elasticity"
    assert world_size(4, 2, 3) == 3
    assert world_size(4, 2, 2) == 2
    assert world_size(4, 2, 1) is None


def test_a_resize_says_when_from_what_to_what_and_why():
    r = Resize(3, 2, 1, "rank 1 failed; the Ray cluster can place 1 of the 2 workers")
    assert r.as_dict() == {"epoch": 3, "from": 2, "to": 1, "why": r.why}
    assert r.line() == "lrjob: world size 2 -> 1 from epoch 3: " + r.why


@pytest.mark.distributed
def test_can_place_sees_what_other_jobs_hold(ray_session):
    """A run grows back only into room that is free (``can_place``): the nodes' totals also count
    resources another job holds (the session's Ray has 4 CPUs)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from launcher.backends.cluster import can_place, node_resources

    assert can_place(4, 1) and not can_place(5, 1, timeout_s=1)
    held = placement_group([{"CPU": 1}] * 3)
    ray_session.get(held.ready(), timeout=30)
    try:
        assert placeable(node_resources(), 1) == 4, "the totals count the held CPUs"
        assert can_place(1, 1) and not can_place(2, 1, timeout_s=1)
    finally:
        remove_placement_group(held)
    assert can_place(4, 1), "the probes hold nothing back"


# --------------------------------------------------------------------------- a real cluster
JOB = ["jobs/binary_synthetic.yaml", "--set", "train.epochs=4", "--set", "train.batch_size=25"]


def _env(faults: list[dict]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["LRJOB_FAULT"] = json.dumps(faults)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """The report of an armed fault (``<once>.where``) once it fired; fails if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().endswith("}"):
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"lrjob exited {proc.returncode} before the fault fired")
        time.sleep(0.05)
    raise AssertionError(f"the fault {path} never fired")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class _Run:
    """``lrjob run --json`` of JOB on ``cluster`` in a session of its own, its output read as it comes."""

    def __init__(self, cluster, out: Path, faults: list[dict], *extra: str):
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "lrjob"), "run", *JOB, "--workers", "2", "--address", cluster.address,
             "--output", str(out), "--json", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(faults),
            start_new_session=True)
        self.output = {}
        streams = (("out", self.proc.stdout), ("err", self.proc.stderr))
        self._readers = [threading.Thread(target=lambda k, f: self.output.__setitem__(k, f.read()), args=(k, f),
                                          daemon=True) for k, f in streams]
        for t in self._readers:
            t.start()

    def finish(self, timeout: float = 240) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            procs.kill_tree(self.proc)

    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.output["out"].splitlines() if x.startswith("{")]


@pytest.mark.distributed
def test_a_lost_node_continues_on_fewer_workers_then_grows_back_with_the_in_process_result(tmp_path):
    """Two nodes of one CPU, one worker each. A rank stops itself before step 3 of epoch 2 (so
    the node goes at that step, not at a time); the test removes the node that is not the head
    and lets the stopped rank go on. The restart finds room for one worker only
    (failure.min_workers: 1) and resumes from epoch-0001 on it. The driver stops itself while it
    writes epoch 3's checkpoint; the test adds a node again and lets it go on: at that epoch
    boundary it grows back to two workers. The run ends at the parameters of the in-process run
    within the parity tolerance; the output, summary.json and report.html name both changes."""
    from ray.cluster_utils import Cluster

    from launcher.rundir import latest_checkpoint
    from launcher.spec import load_spec
    from lr_core.loop import fit

    out, lost, grown = tmp_path / "run", tmp_path / "lost", tmp_path / "grown"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    run, stopped = None, []
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run = _Run(cluster, out, [
            # whichever rank gets there first stops (once); its peer waits for it in the allreduce
            {"at": "step", "epoch": 2, "step": 3, "action": "stop", "once": str(lost)},
            # the driver, with epoch 3's checkpoint in place
            {"at": "checkpoint", "epoch": 3, "stage": "renamed", "action": "stop", "once": str(grown)}],
            "--set", "failure.max_failures=1", "--set", "failure.min_workers=1")
        stopped.append(_wait_for(Path(f"{lost}.where"), run.proc)["pid"])
        cluster.remove_node(node)
        _signal(stopped[0], signal.SIGCONT)  # on the head it goes on, and finds its peer gone
        stopped.append(_wait_for(Path(f"{grown}.where"), run.proc)["pid"])
        assert stopped[1] == run.proc.pid, "the driver stopped"
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        _signal(stopped[1], signal.SIGCONT)
        assert run.finish() == 0, run.output
    finally:
        if run is not None:
            run.stop()
        if stopped:
            _signal(stopped[0], signal.SIGKILL)
        cluster.shutdown()
    events = run.events()
    start = next(e for e in events if e["event"] == "start")
    assert len({p["node_id"] for p in start["placement"]}) == 2, start["placement"]
    said = [e["text"] for e in events if e["event"] == "message"]
    shrunk = "lrjob: world size 2 -> 1 from epoch 2: rank "
    assert any(t.startswith(shrunk) and t.endswith("the Ray cluster can place 1 of the 2 workers") for t in said), said
    assert "lrjob: world size 1 -> 2 from epoch 4: the Ray cluster can place 2 workers again" in said, said
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 4
    assert [(r["epoch"], r["from"], r["to"]) for r in summary["resizes"]] == [(2, 2, 1), (4, 1, 2)], summary
    assert [f["epoch"] for f in summary["failures"]] == [2]
    report = (out / "report.html").read_text()
    assert "Worker count changes" in report and all(r["why"] in report for r in summary["resizes"])

    # the in-process run: lr_core's loop alone (the driver around it is tested elsewhere)
    spec = load_spec(JOB[0], ["resources.workers=0", "train.epochs=4", "train.batch_size=25"])
    loop, history = fit(spec.loop_config(), spec.load_data())
    final = latest_checkpoint(out)
    assert final["epochs_done"] == 4
    for name, value in loop.get_params().items():
        assert np.max(np.abs(final["params"][name] - value)) <= 1e-4, name  # hidden layers: docs/design.md#parity-rule
    got = [json.loads(x)["val_accuracy"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.allclose(got, [m["val_accuracy"] for m in history], atol=1e-6, rtol=0)


@pytest.mark.distributed
def test_without_min_workers_a_lost_node_ends_the_run_with_one_line(tmp_path):
    """The same loss with failure.min_workers unset (no elasticity) and a restart to spare: the
    restart needs both workers, finds room for one, and the run ends failed with one line that
    says so and how to go on; summary.json holds it, and no resize."""
    from ray.cluster_utils import Cluster

    out, lost = tmp_path / "run", tmp_path / "lost"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    run, stopped = None, None
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run = _Run(cluster, out, [{"at": "step", "epoch": 2, "step": 3, "action": "stop", "once": str(lost)}],
                   "--set", "failure.max_failures=1")
        stopped = _wait_for(Path(f"{lost}.where"), run.proc)["pid"]
        cluster.remove_node(node)
        _signal(stopped, signal.SIGCONT)
        assert run.finish() == 1, run.output
    finally:
        if run is not None:
            run.stop()
        if stopped:
            _signal(stopped, signal.SIGKILL)
        cluster.shutdown()
    last = run.output["err"].strip().splitlines()[-1]
    assert last.startswith("lrjob: error: rank ") and "Traceback" not in run.output["err"], run.output["err"]
    assert ("the Ray cluster can now place 1 of the 2 workers (1 CPU each), and failure.min_workers is not set "
            "(set it to continue on fewer); last completed epoch 1, newest checkpoint: epoch-0001; "
            f"resume with: lrjob run --resume {out}") in last, last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["resizes"] == [] and summary["epochs_done"] == 1
    assert "failure.min_workers is not set" in summary["error"]
