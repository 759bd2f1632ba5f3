"""`lrjob worker` under a real `horovodrun --gloo` (the MPIJob path, without Ray)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.rundir import latest_checkpoint
from launcher.driver import run_job
from launcher.spec import load_spec

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_horovodrun_workers_match_the_single_process_run(tmp_path):
    out = tmp_path / "hvd"
    overrides = ["--set", "train.epochs=2", "--set", "train.batch_size=7", "--set", "data.val_fraction=0.1013"]
    r = subprocess.run([str(BIN / "horovodrun"), "--gloo", "-np", "3", "-H", "localhost:3",
                        str(BIN / "lrjob"), "worker", "jobs/digits_softmax.yaml", "--output", str(out), *overrides],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ref = run_job(load_spec("jobs/digits_softmax.yaml", ["resources.workers=0", "train.epochs=2",
                                                          "train.batch_size=7", "data.val_fraction=0.1013"]),
                  output=tmp_path / "ref")
    got = latest_checkpoint(out)
    assert got["epochs_done"] == 2
    assert got["workers"] == 3, "the ranks horovodrun started, not the spec's 2"
    for name, value in ref.params.items():
        assert np.max(np.abs(value - got["params"][name])) <= 1e-5, name
    assert [h["val_accuracy"] for h in got["history"]] == pytest.approx(
        [h["val_accuracy"] for h in ref.history], abs=1e-6)
