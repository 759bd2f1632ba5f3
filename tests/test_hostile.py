"""Hostile and broken inputs: every reader is bounded, and each case ends in one line on
stderr with the exit code of docs/design.md#exit-codes, never a traceback.

The hostile files are generated here and are small on disk: a YAML alias bomb, a spec
with a duplicate key, .npy/.npz headers that declare more than the file holds, a gzip
stream that decompresses past what its IDX header declares, damaged run directories.
Every command runs in this process through ``launcher.cli.main`` (the script calls the
same function), except the CSV rows that crash pyarrow 17 unguarded: they run in a
subprocess, so a segfault fails one test instead of ending pytest."""
import gzip
import io
import json
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from launcher.cli import main
from launcher.spec import MAX_YAML_NODES, load_spec
from lr_core import tables
from lr_core.config import LoopConfig
from lr_core.data import load_dataset, read_idx
from lr_core.errors import DataError, SpecError
from lr_core.export import export_model
from lr_core.models import initial_parameters

ROOT = Path(__file__).resolve().parent.parent


def _lrjob(capsys, *args):
    """``lrjob ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err, want_code=2, limit=400):
    """Exit ``want_code``, exactly one ``lrjob: error:`` line, short, no traceback; the line."""
    assert code == want_code, err[:2000]
    assert "Traceback" not in err and "internal error" not in err, err[:2000]
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("lrjob: error: "), err[:2000]
    assert len(lines[0]) < limit, lines[0][:2000]
    return lines[0]


def _bomb(levels: int) -> str:
    """A 'billion laughs' in flow style: level i is a list of level i - 1 (anchored) and
    eight aliases of it, so the value expands to 9**levels strings."""
    text = "&a0 [" + ", ".join(['"lol"'] * 9) + "]"
    for i in range(1, levels):
        text = f"&a{i} [{text}, " + ", ".join([f"*a{i - 1}"] * 8) + "]"
    return text


# --------------------------------------------------------------------------- job specs
def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys):
    # 9**7 = 4.8 million values once expanded, from a file of a few hundred bytes.
    spec = tmp_path / "bomb.yaml"
    spec.write_text(f"name: bomb\ntrain: {{epochs: {_bomb(7)}}}\n")
    assert spec.stat().st_size < 500 and 9 ** 7 > MAX_YAML_NODES
    line = _one_line_error(*_lrjob(capsys, "validate", spec)[::2])
    assert f"{spec}: malformed YAML" in line and "once its aliases (*name) are expanded" in line


def test_compare_of_a_run_whose_job_yaml_is_a_bomb_prints_one_line(tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"status": "completed"}))
        runs.append(d)
    (runs[0] / "job.yaml").write_text("name: a\ntrain: {epochs: 3}\n")
    (runs[1] / "job.yaml").write_text(f"name: b\ntrain: {{epochs: {_bomb(7)}}}\n")
    code, out, err = _lrjob(capsys, "compare", *runs)
    line = _one_line_error(code, err)
    assert f"{runs[1] / 'job.yaml'}: malformed YAML" in line and out == ""


def test_compare_cuts_long_spec_values_to_the_column(tmp_path, capsys):
    runs = []
    for name, width in (("a", 3), ("b", 40_000)):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"status": "completed"}))
        (d / "job.yaml").write_text(f"name: {name}\nmodel: {{hidden: {[1] * width}}}\n")
        runs.append(d)
    code, out, err = _lrjob(capsys, "compare", *runs)
    assert code == 0, err
    assert "model.hidden" in out and max(len(x) for x in out.splitlines()) < 120, out[:500]


@pytest.mark.parametrize("text,problem", [
    pytest.param("train: {epochs: 3}\nmodel: {kind: binary}\ntrain: {batch_size: 8}\n",
                 "at line 3, column 1: duplicate key 'train' (first at line 1)", id="duplicate-section"),
    pytest.param("train:\n  epochs: 3\n  epochs: 4\n",
                 "at line 3, column 3: duplicate key 'epochs' (first at line 2)", id="duplicate-field"),
    pytest.param("train: &t {epochs: [*t]}\n", "an alias refers to a node that contains it", id="recursive"),
    pytest.param("train: {epochs: " + "[" * 5000 + "]" * 5000 + "}\n", "malformed YAML", id="nested-5000"),
    pytest.param("train: {epochs: 1" + "0" * 5000 + "}\n", "malformed YAML", id="int-5001-digits"),
])
def test_a_spec_with_duplicate_keys_recursion_or_absurd_nesting_is_one_line(tmp_path, capsys, text, problem):
    spec = tmp_path / "job.yaml"
    spec.write_text(text)
    line = _one_line_error(*_lrjob(capsys, "validate", spec)[::2])
    assert problem in line and line.startswith(f"lrjob: error: {spec}: ")


@pytest.mark.parametrize("value,shown_as", [("59:59", "'59:59'"), ("1" + ":59" * 3000, "'1:59:59:59")])
def test_base_60_integers_are_text_not_numbers(tmp_path, capsys, value, shown_as):
    # YAML 1.1 reads 59:59 as 3599, at a cost growing with the square of the digits.
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: s\ntrain: {{epochs: {value}}}\n")
    line = _one_line_error(*_lrjob(capsys, "validate", spec)[::2])
    assert line.startswith(f"lrjob: error: train.epochs must be an integer, got {shown_as}"), line
    with pytest.raises(SpecError, match=r"train.learning_rate must be a number, got '1:30.5'"):
        load_spec(ROOT / "jobs/binary_2d.yaml", ["train.learning_rate=1:30.5"])


def test_a_spec_file_larger_than_a_spec_is_refused_unread(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(SpecError, match=r"job.yaml: 2,097,155 bytes, more than a job spec may hold \(1,048,576\)"):
        load_spec(spec)


@pytest.mark.parametrize("override,message", [
    ("name=", "--set name=: empty value; give the job a name"),
    ("name= ", "--set name=: empty value"),
    ("train.epochs=", "--set train.epochs=: empty value; give one, e.g. --set train.epochs=3"),
    ("data.path=", "--set data.path=: empty value; give one, e.g. --set data.path=data/train.csv; "
                   "--set data.path=null restores the default (null)"),
    ("train.optimizer=", "--set train.optimizer=: empty value; give one, e.g. --set train.optimizer=sgd"),
])
def test_an_empty_override_is_refused_naming_the_field(override, message):
    with pytest.raises(SpecError) as info:
        load_spec(ROOT / "jobs/binary_2d.yaml", [override])
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("override", ["data.path=''", 'data.cache=""', "data.val_path=' '"])
def test_an_empty_quoted_path_is_refused_not_made_the_current_directory(override):
    key = override.partition("=")[0]
    with pytest.raises(SpecError) as info:
        load_spec(ROOT / "jobs/binary_2d.yaml", [override])
    assert str(info.value).startswith(f"--set {key}: an empty path; give a file or folder"), str(info.value)


def test_an_override_name_is_its_text():
    assert load_spec(ROOT / "jobs/binary_2d.yaml", ["name=null"]).name == "null"
    assert load_spec(ROOT / "jobs/binary_2d.yaml", ["name=7"]).name == "7"


@pytest.mark.parametrize("override,message", [
    ("train.epochs=1000001", "train.epochs must be at most 1,000,000 (the upper bound), got 1000001"),
    ("train.batch_size=16777217", "train.batch_size must be at most 16,777,216 (the upper bound)"),
    ("model.hidden=[8, 65537]", "model.hidden must be at most 65,536 (the upper bound), got 65537"),
    ("model.hidden=[" + ", ".join(["4"] * 33) + "]", "model.hidden: at most 32 hidden layers, got 33"),
    ("model.num_classes=100001", "model.num_classes must be at most 100,000 (the upper bound)"),
    ("resources.workers=4097", "resources.workers must be at most 4,096 (the upper bound)"),
    ("resources.cpus_per_worker=1025", "resources.cpus_per_worker must be at most 1,024 (the upper bound)"),
    ("resources.gpus_per_worker=65", "resources.gpus_per_worker must be at most 64 (the upper bound)"),
    ("data.options.n_train=100000001", "data.options.n_train must be at most 100,000,000 (the upper bound)"),
    ("data.options.n_val=100000001", "data.options.n_val must be at most 100,000,000 (the upper bound)"),
    ("data.options.n_features=1000001", "data.options.n_features must be at most 1,000,000 (the upper bound)"),
    ("data.options.n_train=300000", "data.options: (n_train + n_val) x n_features = 300,100,000 values, more "
                                    "than the 268,435,456 (1 GiB)"),
    ("name=" + "a" * 129, "name must be at most 128 characters (the upper bound), got 129; shorten it, e.g. "
                          "--set name=aaaaaaaaaaaaaaaaaaaa"),
    pytest.param("train.epochs=1" + "0" * 400, "train.epochs must be at most 1,000,000 (the upper bound), got an "
                                               "integer of about 400 digits", id="epochs-401-digits"),
])
def test_absurd_sizes_are_refused_naming_the_field_and_the_bound(override, message):
    extra = ["data.options.n_features=1000"] if "n_train=300000" in override else []
    with pytest.raises(SpecError) as info:
        load_spec(ROOT / "jobs/binary_2d.yaml", [*extra, override])
    assert str(info.value).startswith(message), str(info.value)
    assert len(str(info.value)) < 250


def test_the_largest_allowed_values_pass():
    spec = load_spec(ROOT / "jobs/binary_2d.yaml", ["train.epochs=1000000", "train.batch_size=16777216",
                                                     "resources.workers=4096", "model.hidden=[65536]",
                                                     "name=" + "n" * 128])
    assert (spec.train.epochs, spec.train.batch_size, spec.workers, spec.model.hidden, len(spec.name)) == \
        (1_000_000, 1 << 24, 4096, (65536,), 128)


@pytest.mark.parametrize("override", [
    pytest.param("train.optimizer=" + "x" * 100_000, id="long-value"),
    pytest.param("train.epoch" + "s" * 100_000 + "=3", id="long-field"),
    pytest.param("model.hidden=[" + ", ".join(["-1"] * 20_000) + "]", id="long-list"),
    pytest.param("data.options.n" + "x" * 100_000 + "=1", id="long-option"),
])
def test_messages_quote_at_most_a_short_piece_of_a_long_value(override):
    with pytest.raises(SpecError) as info:
        load_spec(ROOT / "jobs/binary_2d.yaml", [override])
    assert len(str(info.value)) < 400 and "\n" not in str(info.value), str(info.value)[:1000]


# --------------------------------------------------------------------------- data files
def _npy_header(shape, descr="<f8") -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False, "shape": shape})
    return b.getvalue()


def _model(tmp_path, kind="binary", num_classes=2, features=2) -> Path:
    cfg = LoopConfig(kind=kind, num_classes=num_classes)
    return export_model(tmp_path / "model", cfg, initial_parameters(cfg, features), features)


def test_a_lying_npy_header_is_one_line_before_anything_is_allocated(tmp_path, capsys):
    model = _model(tmp_path)
    wide = tmp_path / "wide.npy"  # 144 bytes declaring 2 rows of 2**40 float64 columns (16 TiB)
    wide.write_bytes(_npy_header((2, 2 ** 40)) + bytes(16))
    assert wide.stat().st_size == 144
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", wide)[::2])
    assert "1,099,511,627,776 feature columns (shape (2, 1099511627776)), more than the 1,000,000" in line
    long = tmp_path / "long.npy"  # 2**30 rows of 1000 features declared, 16 bytes of data
    long.write_bytes(_npy_header((2 ** 30, 1000)) + bytes(16))
    with pytest.raises(DataError, match=r"long.npy: truncated .npy file: 1073741824 rows declared, the data ends "
                                        r"in row 1; write it again"):
        tables.open_table(long, require_labels=False)
    padded = tmp_path / "padded.npy"
    padded.write_bytes(_npy_header((2, 2)) + bytes(40))
    with pytest.raises(DataError, match=r"padded.npy: the header declares shape \(2, 2\) of float64 \(32 bytes\) "
                                        r"but the file holds 40 bytes of data"):
        tables.open_table(padded, require_labels=False)


def test_an_npz_member_with_a_lying_header_is_refused_before_allocating(tmp_path, capsys):
    model = _model(tmp_path)
    p = tmp_path / "lie.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:  # x declares 2**40 x 2 float64: 16 TiB
        z.writestr("x.npy", _npy_header((2 ** 40, 2)) + bytes(16))
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", p)[::2])
    assert f"{p}: array 'x': truncated .npy file: 1099511627776 rows declared" in line


def test_an_npz_larger_than_the_cap_once_decompressed_is_refused_from_its_zip_header(tmp_path, capsys,
                                                                                    monkeypatch):
    model = _model(tmp_path)
    p = tmp_path / "zeros.npz"
    np.savez_compressed(p, x=np.zeros((1 << 18, 2)))  # 4 MiB of zeros, a few KB on disk
    assert p.stat().st_size < 50_000
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", 1 << 20)
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", p)[::2])
    assert (f"{p}: array 'x' takes 4,194,432 bytes decompressed, more than the 1,048,576 an .npz may hold "
            f"(it is read whole); save large data as x.npy and y.npy in a folder") in line


def test_messages_about_a_csv_quote_at_most_a_short_piece_of_its_cells(tmp_path):
    p = tmp_path / "long.csv"
    p.write_text("a,b\n1," + "x" * 100_000 + "\n")
    with pytest.raises(DataError) as info:
        tables.read_all(tables.open_table(p, require_labels=False))
    assert str(info.value).startswith(f"{p}: line 2, column 'b': 'xxxx") and len(str(info.value)) < 300
    p.write_text("y" * 100_000 + ",b\n1,2\n")
    with pytest.raises(DataError) as info:
        tables.open_table(p, features=["c"], require_labels=False)
    assert str(info.value).startswith(f"{p}: no column 'c' for data.features (columns: yyy") and \
        len(str(info.value)) < 300


def test_read_all_out_of_memory_is_a_data_error():
    def blocks(_rows):
        yield np.zeros((1, 1), np.float32), None
        raise MemoryError

    table = tables.Table("big.csv", ["a"], None, blocks, has_labels=False)
    with pytest.raises(DataError, match=r"^big.csv: not enough memory to hold the whole table; free memory, or "
                                        r"give the data as Parquet or x.npy/y.npy"):
        tables.read_all(table)


def _idx(arr: np.ndarray, code: int = 0x08, dims=None) -> bytes:
    dims = arr.shape if dims is None else dims
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes() + arr.tobytes()


def test_a_gzip_idx_bomb_is_refused_from_its_header_and_read_no_further(tmp_path):
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    # The header declares 65536 images of 1024 x 1024 (64 GiB); the stream holds a little.
    bomb.write_bytes(gzip.compress(_idx(np.zeros(1 << 16, np.uint8), dims=(1 << 16, 1024, 1024))))
    with pytest.raises(DataError, match=r"dimensions \(65536, 1024, 1024\) declare 68,719,476,752 bytes, more "
                                        r"than the 2,147,483,648 an IDX file may hold"):
        read_idx(bomb)
    # A header that declares 4 bytes, then 64 MiB of zeros: decompressed only up to byte 5.
    padded = tmp_path / "t10k-images-idx3-ubyte.gz"
    padded.write_bytes(gzip.compress(_idx(np.zeros(64 << 20, np.uint8), dims=(1, 2, 2)), compresslevel=1))
    assert padded.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"truncated or padded IDX file: dimensions \(1, 2, 2\) need 20 bytes, "
                                            r"found more than 20"):
            read_idx(padded)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def _idx_dir(tmp_path, train_images: np.ndarray, code: int) -> Path:
    d = tmp_path / "idx"
    d.mkdir()
    n = len(train_images)
    (d / "train-images-idx3-ubyte").write_bytes(_idx(train_images, code))
    (d / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(n, dtype=np.uint8) % 10))
    (d / "t10k-images-idx3-ubyte").write_bytes(_idx(np.ones((3, 2, 2), train_images.dtype), code))
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.arange(3, dtype=np.uint8)))
    return d


def test_an_empty_idx_split_is_a_data_error(tmp_path):
    d = _idx_dir(tmp_path, np.zeros((0, 2, 2), np.uint8), 0x08)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(info.value) == (f"{d / 'train-images-idx3-ubyte'}: no images (dimensions (0, 2, 2)); the train "
                               f"split needs at least one image of at least one pixel")


def test_nan_in_float_idx_images_is_a_data_error_naming_the_row(tmp_path):
    x = np.ones((5, 2, 2), ">f4")
    x[3, 1, 0] = np.nan
    d = _idx_dir(tmp_path, x, 0x0D)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(info.value).startswith(f"{d / 'train-images-idx3-ubyte'}: row 4, column 3: value nan is not finite")


# --------------------------------------------------------------------------- predict, runs
def test_predict_output_naming_a_folder_is_refused_before_any_work(tmp_path, capsys):
    model = _model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    inp = tmp_path / "in.csv"
    inp.write_text("a,b\n1,2\n")
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", inp, "--output", out)[::2])
    assert line == (f"lrjob: error: --output {out}: is a folder; give a file to write, e.g. "
                    f"--output {out / 'predictions.csv'}")
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "model", "out"]


@pytest.mark.parametrize("change,says", [
    ({"num_features": 5}, "meta.json says 5 features, the weights expect another number"),
    ({"kind": "softmax", "num_classes": 3}, "meta.json describes a softmax model with 3 output(s), the weights "
                                            "give 1"),
    ({"num_features": "2"}, "meta.json num_features must be a positive integer, got '2'"),
    ({"kind": "tree"}, "meta.json kind must be binary or softmax, got 'tree'"),
    ({"threshold": 10 ** 400}, "meta.json threshold must be a number between 0 and 1, got an integer of about "
                               "400 digits"),
    ({"threshold": "nan"}, "meta.json threshold must be a number between 0 and 1, got 'nan'"),
    ({"threshold": True}, "meta.json threshold must be a number between 0 and 1, got True"),
])
def test_a_model_whose_meta_json_disagrees_with_its_weights_is_one_line(tmp_path, capsys, change, says):
    model = _model(tmp_path)
    meta = json.loads((model / "meta.json").read_text())
    (model / "meta.json").write_text(json.dumps({**meta, **change}))
    inp = tmp_path / "in.csv"
    inp.write_text("a,b,c,d,e\n1,2,3,4,5\n" if change.get("num_features") == 5 else "a,b\n1,2\n")
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", inp)[::2])
    assert line == (f"lrjob: error: {model}: damaged or incomplete model export ({says}); re-export it by "
                    f"resuming or re-running the job")


def test_runs_lists_every_run_and_marks_a_damaged_summary(tmp_path, capsys):
    good = {"status": "completed", "workers": 2, "epochs_done": 3, "epochs": 3,
            "final": {"val_accuracy": 0.9}, "wall_seconds": 1.5}
    summaries = {"a-good": json.dumps(good), "b-list": "[1, 2]", "c-text": "{not json",
                 "d-types": json.dumps({**good, "final": {"val_accuracy": "high"}, "workers": "two"}),
                 "e-good": json.dumps({**good, "workers": 0})}
    for name, text in summaries.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    (tmp_path / "f-no-summary").mkdir()
    code, out, err = _lrjob(capsys, "runs", "--dir", tmp_path)
    assert code == 0 and "Traceback" not in err, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == ["a-good", "b-list", "c-text", "d-types", "e-good"]
    for name in ("a-good", "e-good"):
        assert re.search(r"\s3/3\s+0\.9000\s+0\.9000\s+1\.5s\s+completed$", rows[name]), rows[name]  # final, best
    for name in ("b-list", "c-text", "d-types"):
        assert rows[name].endswith("damaged summary.json"), rows[name]
    warnings = err.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("lrjob: warning: ") for w in warnings), err
    assert {w.split()[2] for w in warnings} == {f"{tmp_path / n}/summary.json" for n in ("b-list", "c-text",
                                                                                         "d-types")}


# --------------------------------------------------------------------------- CSV rows wider than the header
def _validate_data_in_a_subprocess(*args):
    """``lrjob validate --data ARGS`` in a process of its own: a crash of a native parser
    must show as an exit code, not take pytest down with it."""
    import subprocess
    import sys

    code = "import sys; from launcher.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "validate", "jobs/binary_synthetic.yaml", "--data",
                           "--set", "data.source=csv", "--set", "data.options={}", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("filler", [b"", b"\n" * 50_000, b"1\n" * 50_000], ids=["alone", "after-empty-lines",
                                                                                   "before-short-lines"])
def test_a_csv_row_with_400000_cells_is_one_line_naming_it_not_a_crash(tmp_path, filler):
    # pyarrow 17 overflows its heap on a row with more cells than the first (apache/arrow#45497).
    # Empty lines before the row, or short lines after it, would hide it from a per-chunk total.
    path = tmp_path / "wide.csv"
    wide = b"1," * 400_000 + b"\n"
    body = filler + wide if filler.startswith(b"\n") else wide + filler
    path.write_bytes(b"a,b,c,d,e,f,g,h,i,label\n" + b"1," * 9 + b"0\n" + body)
    r = _validate_data_in_a_subprocess("--set", f"data.path={path}")
    line = _one_line_error(r.returncode, r.stderr)
    first = 3 + (len(filler) if filler.startswith(b"\n") else 0)
    assert f"{path}: line {first} has 400001 columns, expected 10; fix the row" in line


def test_quoted_commas_in_a_csv_cell_are_not_extra_columns(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text("a,b,label\n" + "".join(f'{i},{i},"{i % 2},,,"\n' for i in range(20)))
    r = _validate_data_in_a_subprocess("--set", f"data.path={path}")
    # Past the column check: the labels, quoted text with commas, are what is refused.
    assert "labels must be numbers, found ['0,,,', '1,,,']" in r.stderr, r.stderr


# --------------------------------------------------------------------------- x.npy/y.npy
def test_an_npy_folder_with_wide_rows_keeps_features_and_labels_paired(tmp_path, monkeypatch):
    # Rows wider than a block's byte budget are read fewer per block: x.npy and y.npy must
    # be cut at the same rows. A 4 KiB budget stands in for 64 MB with 784-wide rows.
    monkeypatch.setattr(tables, "_BLOCK_BYTES", 4096)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    y = (np.arange(300) % 2).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    blocks = list(tables.open_table(tmp_path).batches())
    assert len(blocks) > 1 and all(len(bx) == len(by) for bx, by in blocks)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), y)
    ds = load_dataset("npy", kind="binary", num_classes=2, seed=0, path=str(tmp_path), val_fraction=0.2)
    assert len(ds.y_train) + len(ds.y_val) == 300


# --------------------------------------------------------------------------- text behind aliases
def test_aliases_to_a_long_string_are_refused_by_the_text_they_expand_to(tmp_path, capsys):
    # 40 aliases of a 30 KB string: 41 values, but 1.2 MB of text once expanded.
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: s\nmodel: {{hidden: [&a {'x' * 30_000}, " + ", ".join(["*a"] * 40) + "]}\n")
    assert spec.stat().st_size < 40_000
    line = _one_line_error(*_lrjob(capsys, "validate", spec)[::2])
    assert f"{spec}: malformed YAML" in line and "characters of text once its aliases (*name) are expanded" in line


def test_shown_and_clip_render_no_more_of_a_huge_value_than_they_show():
    from lr_core.errors import clip, shown

    huge = ["x" * 10_000] * 1_000  # a repr of 10 MB
    long = "y" * 10_000_000
    tracemalloc.start()
    try:
        for text in (shown(huge), shown({"k": huge}), shown(long), clip(huge), clip(long)):
            assert len(text) <= 80, text
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


@pytest.mark.parametrize("limit", [10, 40, 80])
def test_a_clipped_value_is_at_most_the_limit_and_says_its_length(limit):
    from lr_core.errors import clip, shown

    for text in (shown("a" * 500, limit), clip("b" * 500, limit)):
        assert len(text) <= limit, text
    assert shown("a" * 500).endswith("... (500 characters)") and clip("b" * 500).endswith("... (500 characters)")
    assert shown("short") == "'short'" and clip("short") == "short" and shown([1, 2]) == "[1, 2]"


# --------------------------------------------------------------------------- numbers past float's range
@pytest.mark.parametrize("override,message", [
    pytest.param("train.learning_rate=1" + "0" * 400, "train.learning_rate must be a finite number, got an integer "
                 "of about 400 digits", id="learning-rate-401-digits"),
    pytest.param("train.class_weight={0: 1" + "0" * 400 + "}", "train.class_weight: the weight of 0 must be a "
                 "positive number", id="class-weight-401-digits"),
    pytest.param("data.options.boundary=1" + "0" * 400, "data.options.boundary must be a finite number, got an "
                 "integer of about 400 digits", id="boundary-401-digits"),
    pytest.param("data.options.boundary=.inf", "data.options.boundary must be a finite number, got inf",
                 id="boundary-inf"),
    pytest.param("data.options.boundary=.nan", "data.options.boundary must be a finite number, got nan",
                 id="boundary-nan"),
    pytest.param("data.label_map={? 0x" + "f" * 4000 + ": 1}", "data.label_map: the key an integer of about 4816 "
                 "digits is longer than a label may be", id="label-map-key-4000-hex-digits"),
    pytest.param("data.label_map={a: 0x" + "f" * 4000 + "}", "data.label_map: 'a' maps to an integer of about "
                 "4816 digits; targets must be classes from 0 to 1", id="label-map-target-4000-hex-digits"),
    pytest.param("data.label_map={a: 2}", "data.label_map: 'a' maps to 2; targets must be classes from 0 to 1",
                 id="label-map-target-past-the-classes"),
    pytest.param("data.label_map={" + "k" * 300 + ": 1}", "data.label_map: the key 'kkkk", id="label-map-key-300"),
])
def test_numbers_past_a_float_and_absurd_label_maps_are_refused_naming_the_field(override, message):
    base = ["data.source=synthetic-binary", "data.options={}"] if "boundary" in override else \
        ["data.source=csv", "data.options={}", "data.path=x.csv"] if "label_map" in override else []
    with pytest.raises(SpecError) as info:
        load_spec(ROOT / "jobs/binary_2d.yaml", [*base, override])
    assert str(info.value).startswith(message), str(info.value)
    assert len(str(info.value)) < 250


def test_runs_marks_a_summary_with_numbers_past_a_float_damaged_and_lists_the_rest(tmp_path, capsys):
    good = {"status": "completed", "workers": 2, "epochs_done": 3, "epochs": 3,
            "final": {"val_accuracy": 0.9}, "wall_seconds": 1.5}
    huge = "1" + "0" * 400
    summaries = {"a-good": json.dumps(good),
                 "b-acc": json.dumps({**good, "final": {}})[:-1] + f', "final": {{"val_accuracy": {huge}}}}}',
                 "c-wall": json.dumps({**good, "wall_seconds": 0})[:-1] + f', "wall_seconds": {huge}}}',
                 "d-workers": json.dumps({**good, "workers": 0})[:-1] + f', "workers": {huge}}}'}
    for name, text in summaries.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    code, out, err = _lrjob(capsys, "runs", "--dir", tmp_path)
    assert code == 0 and "Traceback" not in err, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == sorted(summaries)
    assert re.search(r"\s3/3\s+0\.9000\s+0\.9000\s+1\.5s\s+completed$", rows["a-good"]), rows["a-good"]
    for name in ("b-acc", "c-wall", "d-workers"):
        assert rows[name].endswith("damaged summary.json") and huge not in rows[name], rows[name]
    code, out, err = _lrjob(capsys, "runs", "--dir", tmp_path, "--sort", "-wall_seconds")
    assert code == 0 and "Traceback" not in err, err


# --------------------------------------------------------------------------- files without a size, deep JSON
def test_a_spec_that_is_dev_zero_is_refused_after_the_bound(capsys):
    line = _one_line_error(*_lrjob(capsys, "validate", "/dev/zero")[::2])
    assert line == ("lrjob: error: /dev/zero: more than 1,048,576 bytes, more than a job spec may hold (1,048,576); "
                    "pass the job's YAML file, not a data file")


def _runs_with(tmp_path, damaged: dict) -> dict:
    """Run folders: ``a-good`` and one per ``damaged`` item (name -> a callable making its
    summary.json at the path it gets)."""
    good = {"status": "completed", "workers": 2, "epochs_done": 3, "epochs": 3,
            "final": {"val_accuracy": 0.9}, "wall_seconds": 1.5}
    (tmp_path / "a-good").mkdir()
    (tmp_path / "a-good" / "summary.json").write_text(json.dumps(good))
    for name, make in damaged.items():
        (tmp_path / name).mkdir()
        make(tmp_path / name / "summary.json")
    return good


def test_runs_marks_deep_huge_and_endless_summaries_damaged_and_lists_the_rest(tmp_path, capsys):
    import os

    _runs_with(tmp_path, {
        "b-deep": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
        "c-deep-dict": lambda p: p.write_text('{"final": ' * 100_000 + "1" + "}" * 100_000),
        "d-dev-zero": lambda p: p.symlink_to("/dev/zero"),
        "e-fifo": lambda p: os.mkfifo(p),
    })
    code, out, err = _lrjob(capsys, "runs", "--dir", tmp_path)
    assert code == 0 and "Traceback" not in err, err[:2000]
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == ["a-good", "b-deep", "c-deep-dict", "d-dev-zero", "e-fifo"]
    assert rows["a-good"].endswith("completed")
    for name in ("b-deep", "c-deep-dict", "d-dev-zero", "e-fifo"):
        assert rows[name].endswith("damaged summary.json"), rows[name]


@pytest.mark.parametrize("damage,says", [
    pytest.param(lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "not usable JSON (nested too deeply)",
                 id="nested-100000"),
    pytest.param(lambda p: p.symlink_to("/dev/zero"), "meta.json holds more than 1,048,576 bytes, more than the "
                 "1,048,576 it may; a model's takes a few KB", id="dev-zero"),
    pytest.param(lambda p: p.write_text("[1, 2]"), "meta.json must hold a mapping, got list", id="a-list"),
])
def test_a_model_whose_meta_json_is_deep_endless_or_not_a_mapping_is_one_line(tmp_path, capsys, damage, says):
    model = _model(tmp_path)
    (model / "meta.json").unlink()
    damage(model / "meta.json")
    inp = tmp_path / "in.csv"
    inp.write_text("a,b\n1,2\n")
    from lr_core.errors import LrjobInputError
    from lr_core.export import ExportedModel

    with pytest.raises(LrjobInputError) as info:  # predict's own check sees /dev/zero is not a file
        ExportedModel(model)
    assert str(info.value) == (f"{model}: damaged or incomplete model export ({says}); re-export it by "
                               f"resuming or re-running the job")
    if (model / "meta.json").is_file():
        line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", inp)[::2])
        assert line == f"lrjob: error: {info.value}"


@pytest.mark.parametrize("make", [
    pytest.param(lambda p, t: __import__("os").mkfifo(p), id="fifo"),
    pytest.param(lambda p, t: p.symlink_to(t), id="symlink-to-a-file"),
    pytest.param(lambda p, t: p.symlink_to(t.parent / "nowhere.csv"), id="dangling-symlink"),
])
def test_predict_output_that_is_not_a_regular_file_is_refused_and_left_alone(tmp_path, capsys, make):
    model = _model(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("a,b\n1,2\n")
    target = tmp_path / "keep.csv"
    target.write_text("kept\n")
    out = tmp_path / "out.csv"
    make(out, target)
    before = out.lstat()
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", inp, "--output", out)[::2])
    assert line == (f"lrjob: error: --output {out}: exists and is not a regular file (a symbolic link, FIFO or "
                    f"device); remove it or choose another path")
    after = out.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode) and target.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "keep.csv", "model", "out.csv"]


def test_an_npz_member_marked_encrypted_is_one_line(tmp_path, capsys):
    model = _model(tmp_path)
    p = tmp_path / "locked.npz"
    np.savez(p, x=np.ones((2, 2)))
    raw = bytearray(p.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # the flag bits of the local and the central header
        at = raw.find(sig)
        flags = at + (6 if sig == b"PK\x03\x04" else 8)
        raw[flags] |= 1
    p.write_bytes(bytes(raw))
    assert p.stat().st_size < 1000
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", p)[::2])
    assert line == (f"lrjob: error: {p}: array 'x' is encrypted; save it again with np.savez(path, x=..., y=...)")


@pytest.mark.parametrize("descr,shape,says", [
    pytest.param("|V0", (3, 2), "dtype |V0 is an item size of 0", id="void-0"),
    pytest.param("|S0", (3, 2), "dtype |S0 is an item size of 0", id="bytes-0"),
    pytest.param(("<f4", (1000,)), (3, 2), "dtype ('<f4', (1000,)) is a sub-array dtype", id="sub-array"),
    pytest.param([("a", "<f4"), ("b", "<i4")], (3, 2), "dtype [('a', '<f4'), ('b', '<i4')] is a structured dtype",
                 id="structured"),
    pytest.param("<f4", (-3, -2), "the header declares shape (-3, -2), with a negative dimension", id="negative"),
])
def test_npy_dtypes_and_shapes_that_pass_the_size_check_are_refused_in_the_header(tmp_path, capsys, descr, shape,
                                                                                    says):
    model = _model(tmp_path)
    header = _npy_header(shape, descr)
    nbytes = abs(int(np.prod(shape))) * np.dtype(descr).itemsize  # what the size check computes
    p = tmp_path / "odd.npy"
    p.write_bytes(header + bytes(nbytes))
    assert p.stat().st_size < 30_000
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", p)[::2])
    assert line.startswith(f"lrjob: error: {p}: {says}"), line
    z = tmp_path / "odd.npz"  # the same array as an .npz member
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("x.npy", header + bytes(nbytes))
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", z)[::2])
    assert line.startswith(f"lrjob: error: {z}: array 'x': {says}"), line


@pytest.mark.parametrize("labels,says", [
    pytest.param([0.5, 1.7, 2.0], "row 1: label 0.5 is not an integer class", id="fractions"),
    pytest.param([1.0, np.nan, 2.0], "row 2: label nan is not finite", id="nan"),
])
def test_float_idx_labels_are_checked_before_they_become_classes(tmp_path, labels, says):
    d = _idx_dir(tmp_path, np.ones((3, 2, 2), np.uint8), 0x08)
    (d / "train-labels-idx1-ubyte").write_bytes(_idx(np.asarray(labels, ">f4"), 0x0D))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", kind="softmax", num_classes=10, seed=0, path=str(d))
    assert str(info.value).startswith(f"mnist ({d}): {says}"), str(info.value)


def test_an_npz_is_bounded_by_its_values_as_float32_across_x_and_y(tmp_path, capsys, monkeypatch):
    # uint8 takes a quarter of the float32 it becomes: the cap counts what is held, x and y together.
    model = _model(tmp_path)
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", 1 << 20)
    p = tmp_path / "bytes.npz"
    np.savez_compressed(p, x=np.zeros((200_000, 2), np.uint8))  # 400 KB stored, 1.6 MB as float32
    assert p.stat().st_size < 10_000
    line = _one_line_error(*_lrjob(capsys, "predict", model, "--input", p)[::2])
    assert (f"{p}: array 'x' holds 400,000 values, 1,600,000 bytes as float32, more than the 1,048,576 left of "
            f"the 1,048,576 an .npz may take") in line
    both = tmp_path / "both.npz"  # x fits alone (800 KB as float32); y's 100,000 labels pass the cap
    np.savez_compressed(both, x=np.zeros((100_000, 2), np.uint8), y=np.zeros(100_000, np.uint8))
    with pytest.raises(DataError, match=r"array 'y' holds 100,000 values, 400,000 bytes as float32, more than the "
                                        r"248,576 left"):
        tables.open_table(both)
    rows = tmp_path / "rows.npz"
    np.savez_compressed(rows, x=np.zeros((10, 2), np.float32), y=np.zeros(11, np.float32))
    with pytest.raises(DataError, match=r"array 'y' must hold one label per row of x \(10\), got shape \(11,\)"):
        tables.open_table(rows)


def test_a_spec_whose_resolved_yaml_would_not_read_back_is_refused(tmp_path, capsys):
    # A file of 600 KB (under the 1 MiB bound) whose resolved spec takes more: job.yaml
    # writes each of the 300,000 characters 'é' as the escape \xE9 (4 bytes), and would not read back.
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: big\ndata: {{source: csv, path: {'é' * 300_000}.csv}}\n", encoding="utf-8")
    assert spec.stat().st_size <= 1 << 20
    line = _one_line_error(*_lrjob(capsys, "validate", spec)[::2])
    assert re.fullmatch(rf"lrjob: error: {re.escape(str(spec))}: the resolved spec takes [\d,]+ bytes as YAML, more "
                        r"than a job spec may hold \(1,048,576\), so its job.yaml could not be read back; shorten its "
                        r"longest field \(a data.label_map, data.features or a path\)", line), line
