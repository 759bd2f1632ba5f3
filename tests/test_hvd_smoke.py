"""Fast tier: two real Horovod ranks over Gloo (`horovodrun --gloo -np 2`, no Ray) against
the in-process reference run.

Each job is sized so that the full global batches split over both ranks and the LAST
global batch holds exactly one row: rank 0 takes it, rank 1 gets no rows and joins the
allreduce with its exact zero gradient. Parameters must match the single-process run to
1e-5 and every metric of every epoch to 1e-6 (the parity rule)."""
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import procs
from launcher.rundir import latest_checkpoint
from launcher.driver import run_job
from launcher.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMING = {"epoch", "epoch_seconds", "train_seconds", "samples_per_s", "wall_seconds", "steps"}

EPOCHS = 2
CASES = {
    # 41 rows, batch 10: batches 10, 10, 10, 10, 1 (5 + 5 rows per rank, then 1 + 0)
    "binary": ("jobs/binary_synthetic.yaml", 10, ["data.options.n_train=41", "data.options.n_val=50"]),
    # digits: 1797 rows, 180 held out, 1617 train = 101 x 16 + 1
    "softmax": ("jobs/digits_softmax.yaml", 16, []),
}


def _flat(value):
    return np.asarray(value, dtype=np.float64).ravel()


@pytest.mark.parametrize("case", list(CASES))
def test_two_horovod_ranks_with_an_empty_last_shard_match_the_single_process_run(case, tmp_path):
    job, B, extra = CASES[case]
    overrides = [*extra, f"train.batch_size={B}", f"train.epochs={EPOCHS}"]
    ref_spec = load_spec(ROOT / job, ["resources.workers=0", *overrides])
    # the job really has the shape this test is about
    n = len(ref_spec.load_data().x_train)
    assert n % B == 1 and n // B >= 2, (n, B)  # last global batch: one row, rank 1 gets none

    out = tmp_path / "hvd"
    env = dict(os.environ, OMP_NUM_THREADS="1", HOROVOD_CYCLE_TIME="0.1")
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2",
           str(BIN / "lrjob"), "worker", job, "--output", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    r = procs.run(cmd, timeout=120, cwd=ROOT, env=env)  # on a time-out the ranks go too
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    ref = run_job(ref_spec, output=tmp_path / "ref")
    got = latest_checkpoint(out)
    assert got is not None and got["epochs_done"] == EPOCHS
    assert set(got["params"]) == set(ref.params)
    for name, value in ref.params.items():
        diff = float(np.max(np.abs(value - got["params"][name])))
        assert diff <= 1e-5, f"{name}: max |diff| {diff:.3e} > 1e-5"

    assert len(got["history"]) == len(ref.history) == EPOCHS
    checked = 0
    for epoch, (want, have) in enumerate(zip(ref.history, got["history"]), start=1):
        assert set(want) == set(have), epoch
        for key, value in want.items():
            if key in TIMING or isinstance(value, str):
                continue
            a, b = _flat(value), _flat(have[key])
            assert a.shape == b.shape, (epoch, key)
            ok = np.all((np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= 1e-6))
            assert ok, f"epoch {epoch} {key}: {have[key]} vs single-process {value}"
            checked += 1
    assert checked >= 2 * len(ref.history)
    assert all(math.isfinite(h["train_loss"]) for h in got["history"])
