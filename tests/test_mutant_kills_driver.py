"""The driver's end-of-epoch checkpoints record the data they were trained on
(``data_key``, the prepared cache's name): resuming one on other data is refused, as it
is for a mid-epoch one (tests/test_resume.py), docs/design.md "Run directory"."""
import pytest

from launcher.driver import run_job
from launcher.rundir import latest_checkpoint
from launcher.spec import load_spec
from lr_core.errors import SpecError


def test_a_resume_of_an_end_of_epoch_checkpoint_on_other_data_is_refused(tmp_path):
    lines = [f"{i % 7 / 7},{i % 3 / 3},{i % 2}\n" for i in range(120)]
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(lines))
    job = tmp_path / "job.yaml"
    job.write_text("name: r\nmodel: {kind: binary}\ndata: {source: csv, path: d.csv, cache: c}\n"
                   "train: {epochs: 1, batch_size: 16}\nresources: {workers: 0}\n")
    run_job(load_spec(job), output=tmp_path / "run")
    ckpt = latest_checkpoint(tmp_path / "run")
    assert (ckpt["epochs_done"], ckpt["step"]) == (1, 0) and ckpt["data_key"].startswith("csv-")
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(lines[:90]))
    with pytest.raises(SpecError, match=r"the data changed since epoch-0001 .* start a new run"):
        run_job(load_spec(job, ["train.epochs=2"]), resume=tmp_path / "run")
