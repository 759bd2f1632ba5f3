"""Real Ray + real Horovod workers against the in-process reference run (no mocks).

Parity rule (docs/design.md#parity-rule): parameters within 1e-5 (linear) / 1e-4 (hidden layers), every
metric within 1e-6, for any worker count, with remainders: the train sizes here divide
by neither N nor the batch size, and the batch (7) is smaller than 2N for N = 4.
"""
import numpy as np
import pytest

from launcher.report.parity import compare
from launcher.driver import DriverOptions, RunHooks, run_job
from launcher.spec import load_spec

pytestmark = pytest.mark.distributed

CASES = {
    # 997 rows (prime), batch 7: 143 global batches, the last of 3 rows (rank 3 of 4 gets none).
    "binary_synthetic": ("jobs/binary_synthetic.yaml", ["data.options.n_train=997", "train.batch_size=7",
                                                        "train.epochs=3"]),
    # 1615 train rows (5*17*19), batch 7: last batch of 5.
    "digits_softmax": ("jobs/digits_softmax.yaml", ["data.val_fraction=0.1013", "train.batch_size=7",
                                                    "train.epochs=3"]),
}
_reference = {}


def _spec(case, workers, extra=()):
    job, overrides = CASES[case]
    return load_spec(job, [*overrides, f"resources.workers={workers}", *extra])


def reference(case, tmp_path_factory):
    if case not in _reference:
        _reference[case] = run_job(_spec(case, 0), output=tmp_path_factory.mktemp("ref") / case,
                                   options=DriverOptions(hooks=RunHooks(record_shards=True)))
    return _reference[case]


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_single_process(ray_session, tmp_path, tmp_path_factory, case, workers):
    ref = reference(case, tmp_path_factory)
    spec = _spec(case, workers)
    dist = run_job(spec, output=tmp_path / "dist",
                   options=DriverOptions(hooks=RunHooks(record_shards=True, collect_rank_params=True)))
    assert len({p["pid"] for p in dist.placement}) == workers
    report = compare(ref, dist, spec.model.hidden, workers)
    print(report.render())
    assert report.ok, report.render()
    # every rank holds bit-identical parameters
    for rank_params in dist.rank_params[1:]:
        for name, value in rank_params.items():
            assert np.array_equal(value, dist.rank_params[0][name]), name
    if workers == 1:
        # Horovod skips the allreduce at size 1: the run is the reference, exactly.
        for name in ref.params:
            assert np.array_equal(ref.params[name], dist.params[name]), name
    # the shards cover every training row exactly once per epoch, in global-batch order
    n = len(ref.shard_logs[0][0])
    B = spec.train.batch_size
    for epoch in range(spec.train.epochs):
        ref_order = ref.shard_logs[0][epoch]
        seen = np.concatenate([log[epoch] for log in dist.shard_logs])
        assert sorted(seen.tolist()) == list(range(n))
        for b in range(0, n, B):
            batch = set(ref_order[b:b + B].tolist())
            per_rank = []
            for log in dist.shard_logs:
                rows = [i for i in log[epoch].tolist() if i in batch]
                per_rank.append(len(rows))
            assert sum(per_rank) == len(batch) and max(per_rank) - min(per_rank) <= 1


def test_parity_binary_2d_linear(ray_session, tmp_path):
    spec0 = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=3"])
    spec3 = load_spec("jobs/binary_2d.yaml", ["resources.workers=3", "train.epochs=3"])
    ref = run_job(spec0, output=tmp_path / "ref")
    dist = run_job(spec3, output=tmp_path / "dist")
    report = compare(ref, dist, (), 3)
    assert report.ok, report.render()
    assert report.max_param_diff <= 1e-5


def test_run_directory_of_a_distributed_run(ray_session, tmp_path):
    import json

    res = run_job(_spec("digits_softmax", 2), output=tmp_path / "r")
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    assert env["workers"] == 2 and len(env["placement"]) == 2
    assert [p["rank"] for p in env["placement"]] == [0, 1]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["workers"] == 2
    assert (tmp_path / "r" / "model" / "model-symbol.json").is_file()
    assert len(res.history) == 3


@pytest.mark.parametrize("optimizer", ["adam", "nag"])
def test_parity_other_optimizers_and_weight_decay(ray_session, tmp_path, optimizer):
    extra = [f"train.optimizer={optimizer}", "train.learning_rate=0.05", "train.weight_decay=0.001",
             "train.momentum=0.5" if optimizer == "nag" else "train.momentum=0.0"]
    ref = run_job(_spec("digits_softmax", 0, extra), output=tmp_path / "ref")
    dist = run_job(_spec("digits_softmax", 3, extra), output=tmp_path / "dist")
    report = compare(ref, dist, (), 3)
    assert report.ok, report.render()


def test_parity_on_prepared_parquet_with_mid_epoch_checkpoints(ray_session, tmp_path):
    """uint8 image rows in a Parquet list column: prepared once, memory-mapped by both
    workers (never sent through the object store), scaled in the graph, checkpointed every
    5 steps; the 2-worker run matches the in-process one within the contract."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    for name, n in (("train", 203), ("val", 41)):
        y = rng.integers(0, 3, n)
        x = np.clip(rng.normal(y[:, None], 1.0, (n, 16)).round(), 0, 3).astype(np.uint8)  # small counts
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 16)
        pq.write_table(pa.table({"pixels": col, "label": y}), tmp_path / f"{name}.parquet")
    common = ["data.source=parquet", f"data.path={tmp_path / 'train.parquet'}",
              f"data.val_path={tmp_path / 'val.parquet'}", "data.features=pixels", "model.num_classes=3",
              "train.batch_size=16", "train.learning_rate=0.05", "train.epochs=2", "checkpoint.every_steps=5",
              "checkpoint.keep=50",
              f"data.cache={tmp_path / 'cache'}"]
    ref = run_job(load_spec("jobs/digits_softmax.yaml", [*common, "resources.workers=0"]), output=tmp_path / "ref")
    dist = run_job(load_spec("jobs/digits_softmax.yaml", [*common, "resources.workers=2"]), output=tmp_path / "dist")
    report = compare(ref, dist, (), 2)
    assert report.ok, report.render()
    assert len(list((tmp_path / "cache").iterdir())) == 1, "one preparation serves both runs"
    names = sorted(p.name for p in (tmp_path / "dist" / "checkpoints").iterdir())
    assert names[:3] == ["epoch-0000-step-00000005", "epoch-0000-step-00000010", "epoch-0001"]


def test_an_epoch_longer_than_the_timeout_is_not_a_hang_while_it_progresses(ray_session, tmp_path, monkeypatch):
    """failure.epoch_timeout_s bounds the time without progress, not the epoch: rank 0 sleeps
    25 ms before each of 400 steps (``LRJOB_FAULT`` action ``sleep``; rank 1 waits for it in
    the allreduce), so the epoch lasts at least 10 s, twice the 5 s timeout; rank 0 reports
    every 8 steps, and the run completes. (Before the timeout watched progress, this run failed
    as "hung". A silent rank is a hang: tests/test_reliability.py.)"""
    import json

    sleep_s, timeout_s = 0.025, 5
    monkeypatch.setenv("LRJOB_FAULT", json.dumps({"at": "step", "rank": 0, "action": "sleep", "seconds": sleep_s}))
    spec = load_spec("jobs/binary_synthetic.yaml", ["resources.workers=2", "train.epochs=1", "train.batch_size=8",
                                                    "data.options.n_train=3200", "model.hidden=[]",
                                                    f"failure.epoch_timeout_s={timeout_s}"])
    res = run_job(spec, output=tmp_path / "run")
    assert res.summary["status"] == "completed"
    assert res.history[0]["steps"] == 400, res.history[0]
    # the premise, not a speed: the sleeps reached the workers and the epoch outlasted the timeout
    assert res.history[0]["epoch_seconds"] >= 400 * sleep_s >= 2 * timeout_s, res.history[0]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parity_with_standardization_and_class_weights(ray_session, tmp_path, workers):
    """An unscaled CSV (age ~ 40, income ~ 50,000), standardized with the statistics of the
    prepared set, balanced class weights: every worker count trains the in-process model
    (exactly at 1 worker), and every rank holds the same standardization."""
    from test_standardize import write_people

    csv = write_people(tmp_path / "people.csv", n=211)
    common = ["data.source=csv", f"data.path={csv}", "data.options={}", "data.label_map={'yes': 1, 'no': 0}",
              f"data.cache={tmp_path / 'cache'}", "train.class_weight=balanced", "train.batch_size=7",
              "train.epochs=2"]
    ref = run_job(load_spec("jobs/binary_2d.yaml", [*common, "resources.workers=0"]), output=tmp_path / "ref")
    dist = run_job(load_spec("jobs/binary_2d.yaml", [*common, f"resources.workers={workers}"]),
                   output=tmp_path / "dist", options=DriverOptions(hooks=RunHooks(collect_rank_params=True)))
    report = compare(ref, dist, (), workers)
    assert report.ok, report.render()
    for rank_params in dist.rank_params[1:]:
        for name, value in rank_params.items():
            assert np.array_equal(value, dist.rank_params[0][name]), name
    if workers == 1:
        for name in ref.params:
            assert np.array_equal(ref.params[name], dist.params[name]), name
    meta = [__import__("json").loads((tmp_path / r / "model" / "meta.json").read_text()) for r in ("ref", "dist")]
    assert meta[0]["standardize"] == meta[1]["standardize"] is not None
