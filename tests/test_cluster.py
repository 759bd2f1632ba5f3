"""Scheduling on real Ray: logical GPUs, clear GPU errors, two simulated nodes, make run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.backends.cluster import ResourceError
from launcher.driver import run_job
from launcher.spec import load_spec
from lr_core.errors import ClusterError

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parent.parent


def _clean_env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def test_logical_gpus_each_worker_sees_its_own_device(ray_session):
    from launcher.backends.ray_horovod import probe_devices

    info = probe_devices(2, cpus_per_worker=1, gpus_per_worker=1)
    assert sorted(i["rank"] for i in info) == [0, 1]
    gpu_ids = [tuple(i["ray_gpu_ids"]) for i in info]
    assert all(len(g) == 1 for g in gpu_ids) and len(set(gpu_ids)) == 2, gpu_ids
    # one node: the executor exposes both of the job's GPUs to each worker, and each
    # worker picks its own by local rank
    assert {i["device"] for i in info} == {"gpu(0)", "gpu(1)"}
    for i in info:
        assert sorted(i["cuda_visible_devices"].split(",")) == sorted(g[0] for g in gpu_ids)
        assert i["device"] == f"gpu({i['local_rank']})"


def test_gpu_with_cpu_build_of_mxnet_fails_before_training(ray_session, tmp_path):
    spec = load_spec("jobs/binary_synthetic.yaml", ["resources.workers=2", "resources.gpus_per_worker=1"])
    with pytest.raises(ClusterError, match="mxnet-cu112") as err:
        run_job(spec, output=tmp_path / "r")
    assert "gpus_per_worker=1" in str(err.value)
    assert not (tmp_path / "r").exists()


def test_more_gpus_than_the_cluster_has(ray_session, tmp_path):
    spec = load_spec("jobs/binary_synthetic.yaml", ["resources.workers=2", "resources.gpus_per_worker=2"])
    with pytest.raises(ResourceError, match="4 GPUs asked, the Ray cluster has 2"):
        run_job(spec, output=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_two_simulated_nodes_match_the_single_process_run(tmp_path):
    from ray.cluster_utils import Cluster

    from launcher.rundir import latest_checkpoint

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "two-nodes"
        overrides = ["--set", "train.epochs=2", "--set", "train.batch_size=7", "--set", "data.val_fraction=0.1013"]
        r = subprocess.run([str(Path(sys.executable).parent / "lrjob"), "run", "jobs/digits_softmax.yaml",
                            "--workers", "2", "--address", cluster.address, "--output", str(out), *overrides],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, env=_clean_env())
        assert r.returncode == 0, r.stderr
    finally:
        cluster.shutdown()
    env = json.loads((out / "env.json").read_text())
    nodes = {p["node_id"] for p in env["placement"]}
    assert len(nodes) == 2, env["placement"]  # one worker on each node
    ref = run_job(load_spec("jobs/digits_softmax.yaml", ["resources.workers=0", "train.epochs=2",
                                                          "train.batch_size=7", "data.val_fraction=0.1013"]),
                  output=tmp_path / "ref")
    dist = latest_checkpoint(out)
    for name, value in ref.params.items():
        assert np.max(np.abs(value - dist["params"][name])) <= 1e-5, name
    ref_acc = [m["val_accuracy"] for m in ref.history]
    got = [json.loads(x)["val_accuracy"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.allclose(ref_acc, got, atol=1e-6, rtol=0)


def test_make_run_trains_mnist_on_two_workers_and_ends_with_the_run_dir(tmp_path):
    from lr_core.data import data_home, verify_idx_dir

    # The install step builds the cache: its absence is a failure, never a skip.
    assert not verify_idx_dir(data_home() / "mnist"), "no verified MNIST cache: run `make install`"
    out = tmp_path / "mnist"
    r = subprocess.run(["make", "-s", "run", f"RUN_ARGS=--set train.epochs=1 --output {out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=_clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["status"] == "completed"
    assert summary["final"]["val_accuracy"] > 0.85
