"""``launcher.rundir`` checkpoints, where `make mutants` found the fast tests silent: the
mid-epoch fields (the data cursor's ``step``, the finished steps' ``step_losses``, the
``data_key`` of the data trained on) written and read back, and a ``state.json`` from a
writer that had none of them (docs/design.md "Checkpoints")."""
import json

import numpy as np

from launcher.rundir import RunDir, atomic_write_text, load_checkpoint


def _state(epochs_done, **extra):
    return {"epochs_done": epochs_done, "params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "optimizer_arrays": {"0": np.ones(3)}, "optimizer_meta": {"num_update": 4}, **extra}


def test_a_mid_epoch_checkpoint_round_trip(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(2, step=3, step_losses=[0.5, 0.25, 0.125]), "d1", [], keep=5,
                                data_key="key-1")
    assert path.name == "epoch-0002-step-00000003"
    saved = json.loads((path / "state.json").read_text())
    assert saved["data_cursor"]["step"] == 3 and saved["data_cursor"]["next_epoch"] == 2
    assert saved["step_losses"] == [0.5, 0.25, 0.125] and saved["data_key"] == "key-1"
    ck = load_checkpoint(path)
    assert ck["step"] == 3 and isinstance(ck["step"], int)
    assert ck["step_losses"] == [0.5, 0.25, 0.125] and ck["data_key"] == "key-1"


def test_an_end_of_epoch_checkpoint_keeps_no_step_losses(tmp_path):
    run = RunDir.create(tmp_path / "r")
    # step 0: the epoch is done; losses a caller left in the state do not belong to any epoch
    path = run.write_checkpoint(_state(2, step=0, step_losses=[1.0]), "d1", [], keep=5)
    assert path.name == "epoch-0002"
    saved = json.loads((path / "state.json").read_text())
    assert saved["step_losses"] == [] and saved["data_key"] is None
    ck = load_checkpoint(path)
    assert (ck["step"], ck["step_losses"], ck["data_key"]) == (0, [], None)


def test_a_state_without_a_step_is_an_end_of_epoch_checkpoint(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(4), "d1", [], keep=5)
    assert path.name == "epoch-0004"
    assert json.loads((path / "state.json").read_text())["data_cursor"]["step"] == 0


def test_a_mid_epoch_state_without_step_losses_writes_an_empty_list(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(1, step=2), "d1", [], keep=5)
    assert json.loads((path / "state.json").read_text())["step_losses"] == []
    assert load_checkpoint(path)["step_losses"] == []


def test_a_checkpoint_without_the_mid_epoch_fields_reads_as_end_of_epoch(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(3), "d1", [], keep=5)
    saved = json.loads((path / "state.json").read_text())
    for key in ("data_cursor", "step_losses", "data_key"):
        del saved[key]
    (path / "state.json").write_text(json.dumps(saved))
    ck = load_checkpoint(path)
    assert (ck["step"], ck["step_losses"], ck["data_key"], ck["epochs_done"]) == (0, [], None, 3)
    saved["data_cursor"] = {"next_epoch": 3}                   # a cursor without a step
    (path / "state.json").write_text(json.dumps(saved))
    assert load_checkpoint(path)["step"] == 0


def test_atomic_write_text_takes_a_string_or_pieces(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one line\n")
    atomic_write_text(tmp_path / "b.txt", (f"{i}\n" for i in range(3)))
    assert (tmp_path / "a.txt").read_text() == "one line\n"
    assert (tmp_path / "b.txt").read_text() == "0\n1\n2\n"


def test_pruning_spares_the_best_epochs_end_checkpoint_not_a_mid_epoch_one(tmp_path):
    """checkpoint.keep_best: the best epoch's end-of-epoch checkpoint stays whatever keep says;
    a mid-epoch checkpoint inside the next epoch is not it."""
    run = RunDir.create(tmp_path / "r")
    run.best_epoch = 1
    for done, step in ((0, 1), (1, 0), (1, 1), (2, 0), (3, 0)):
        run.write_checkpoint(_state(done, step=step, step_losses=[0.5] * step), "d1", [], keep=1)
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0003"]
