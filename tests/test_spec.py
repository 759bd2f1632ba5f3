"""Job spec validation: defaults, types, ranges, near-match suggestions, overrides."""
import pytest

from launcher.spec import load_spec, spec_from_dict
from lr_core.errors import SpecError

JOBS = ["jobs/binary_synthetic.yaml", "jobs/mnist_softmax.yaml", "jobs/digits_softmax.yaml", "jobs/binary_2d.yaml"]


@pytest.mark.parametrize("job", JOBS)
def test_shipped_jobs_validate(job):
    spec = load_spec(job)
    assert spec.name and spec.train.epochs >= 1
    # the resolved spec reads back to the same spec
    again = spec_from_dict(__import__("yaml").safe_load(spec.to_yaml()))
    assert again.raw == spec.raw


def test_defaults_fill_in():
    spec = spec_from_dict({"model": {"kind": "binary"}})
    assert spec.train.batch_size == 64 and spec.checkpoint.keep == 3 and spec.resources.workers == 2


BAD = [
    ({"modle": {}}, "unknown key 'modle'; did you mean 'model'"),
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch'; did you mean 'epochs'"),
    ({"train": {"epochs": 0}}, "train.epochs must be >= 1, got 0"),
    ({"train": {"learning_rate": -0.1}}, "train.learning_rate must be > 0, got -0.1"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be >= 1, got 0"),
    ({"train": {"epochs": "ten"}}, "train.epochs must be an integer, got 'ten'"),
    ({"train": {"optimizer": "sdg"}}, "did you mean 'sgd'"),
    ({"model": {"kind": "softmx"}}, "did you mean 'softmax'"),
    ({"model": {"hidden": [10, 0]}}, "model.hidden must be a list of layer widths"),
    ({"data": {"source": "csv"}}, "data.path: source csv needs a file"),
    ({"data": {"options": {"n_trian": 5}}}, "did you mean 'n_train'"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction must be between 0 and 1"),
    ({"model": {"kind": "softmax", "num_classes": 10}}, "source synthetic-binary has binary labels"),
    ({"resources": {"workers": -1}}, "resources.workers must be >= 0"),
    ([1, 2], "expected a mapping"),
    ({"data": {"options": {"n_train": 0.5}}}, "data.options.n_train must be an integer >= 1"),
    ({"data": {"source": "digits", "label_map": {True: 1}}}, "quote it"),
    ({"resources": {"gpus_per_worker": 0.5}}, "resources.gpus_per_worker must be a whole number"),
]


@pytest.mark.parametrize("doc,message", BAD)
def test_bad_specs(doc, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict(doc)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_and_paths(tmp_path):
    (tmp_path / "job.yaml").write_text("name: t\nmodel: {kind: binary}\ndata: {source: csv, path: d.csv}\n")
    spec = load_spec(tmp_path / "job.yaml", ["train.epochs=3", "data.options={}", "resources.workers=0"])
    assert spec.train.epochs == 3 and spec.resources.workers == 0
    assert spec.data.path == str(tmp_path / "d.csv")  # relative to the spec file
    with pytest.raises(SpecError, match="unknown field 'epoch'"):
        load_spec(tmp_path / "job.yaml", ["train.epoch=3"])
    with pytest.raises(SpecError, match="expected section.field=value"):
        load_spec(tmp_path / "job.yaml", ["train.epochs"])
    with pytest.raises(SpecError, match="train.epochs is not a mapping"):
        load_spec(tmp_path / "job.yaml", ["train.epochs.x=3"])
    assert load_spec(tmp_path / "job.yaml", ["train.learning_rate=1e-3"]).train.learning_rate == 0.001


def test_malformed_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {kind: binary\ntrain: [\n")
    with pytest.raises(SpecError, match="malformed YAML at line"):
        load_spec(tmp_path / "bad.yaml")


def test_yaml_tags_are_not_executed(tmp_path):
    (tmp_path / "evil.yaml").write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(tmp_path / "evil.yaml")


def test_digest_ignores_safe_changes():
    a = spec_from_dict({"train": {"epochs": 3}})
    b = spec_from_dict({"train": {"epochs": 5}})
    c = spec_from_dict({"train": {"epochs": 3, "learning_rate": 0.2}})
    from launcher.spec import SAFE_RESUME_CHANGES
    assert a.digest(SAFE_RESUME_CHANGES) == b.digest(SAFE_RESUME_CHANGES) != c.digest(SAFE_RESUME_CHANGES)
    assert a.diff(c) == ["train.learning_rate"]


def test_num_classes_is_required_for_softmax_on_data_without_a_fixed_count():
    """Left out, num_classes is 2 for binary and the source's own count for the image
    sources; softmax on a table must name it, rather than quietly become 2 classes."""
    assert spec_from_dict({"model": {"kind": "binary"}}).model.num_classes == 2
    assert spec_from_dict({"model": {"kind": "softmax"}, "data": {"source": "digits"}}).model.num_classes == 10
    with pytest.raises(SpecError) as e:
        spec_from_dict({"model": {"kind": "softmax"}, "data": {"source": "csv", "path": "/d.csv"}})
    assert str(e.value).startswith("model.num_classes: required with model.kind: softmax")
    assert "num_classes: 3" in str(e.value)
    spec = spec_from_dict({"model": {"kind": "softmax", "num_classes": 3}, "data": {"source": "csv", "path": "/d.csv"}})
    assert spec.raw["model"]["num_classes"] == 3


def test_fields_added_later_leave_older_digests_alone():
    """A checkpoint written before data.standardize and train.class_weight existed still
    resumes: unset (standardize: off), they do not enter the spec digest."""
    spec = spec_from_dict({"model": {"kind": "binary"}})
    old = dict(spec.raw, data={k: v for k, v in spec.raw["data"].items() if k != "standardize"},
               train={k: v for k, v in spec.raw["train"].items() if k != "class_weight"})
    assert type(spec)(raw=old).digest() == spec.digest()
    # data.standardize enters resolved, and only when on (off is what the older runs did)
    assert spec.with_overrides(["data.standardize=false"]).digest() == spec.digest()
    assert spec.with_overrides(["data.standardize=true"]).digest() != spec.digest()


ELASTIC = {"max_failures": 1}


@pytest.mark.parametrize("doc,message", [
    ({"failure": {"min_workers": 0, **ELASTIC}}, "failure.min_workers must be >= 1 (null: resources.workers), got 0"),
    ({"failure": {"min_workers": "two", **ELASTIC}}, "failure.min_workers must be an integer, got 'two'"),
    ({"failure": {"min_workers": 3, **ELASTIC}}, "failure.min_workers must be at most resources.workers (2), got 3"),
    ({"failure": {"min_workers": 5000, **ELASTIC}}, "failure.min_workers must be at most 4,096 (the upper bound)"),
    ({"failure": {"min_workers": 1}}, "failure.min_workers: 1 (below resources.workers, 2) lets a restart continue on "
                                      "fewer workers, but failure.max_failures is 0"),
], ids=["zero", "text", "above-workers", "above-bound", "no-restarts"])
def test_bad_min_workers(doc, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict(doc)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_min_workers_defaults_to_the_workers_and_changes_no_digest():
    plain = spec_from_dict({})
    assert plain.failure.min_workers is None and plain.min_workers == 2
    elastic = spec_from_dict({"failure": {"min_workers": 1, "max_failures": 2}})
    assert elastic.min_workers == 1
    assert plain.digest() == spec_from_dict({"failure": {"min_workers": None}}).digest()
    from launcher.spec import SAFE_RESUME_CHANGES

    assert plain.digest(ignore=SAFE_RESUME_CHANGES) == elastic.digest(ignore=SAFE_RESUME_CHANGES)
    # the in-process run (lrjob parity's reference) ignores it
    assert spec_from_dict({"resources": {"workers": 0}, "failure": {"min_workers": 3}}).min_workers == 0


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=1e299", "train.learning_rate must be at most 1,000 (the upper bound), got 1e+299"),
    ("train.learning_rate=3e38", "train.learning_rate must be at most 1,000 (the upper bound), got 3e+38"),
    ("train.weight_decay=1e299", "train.weight_decay must be at most 1,000 (the upper bound), got 1e+299"),
    ("train.init_sigma=1e299", "train.init_sigma must be at most 1,000 (the upper bound), got 1e+299"),
    ("train.class_weight={0: 1.0e+299}", "train.class_weight: the weight of 0 must be at most 1,000,000 (the upper "
                                         "bound), got 1e+299"),
], ids=["learning-rate", "learning-rate-float32", "weight-decay", "init-sigma", "class-weight"])
def test_float_fields_have_upper_bounds(override, message):
    """MXNet takes the rate and the decay as float32: past 3.4e38 they were its internal error;
    far below that they are typos. Each is refused naming the field and the bound."""
    with pytest.raises(SpecError) as err:
        load_spec("jobs/binary_2d.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)
    field = override.partition("=")[0]
    at_bound = "{0: 1000000}" if "class_weight" in field else "1000"
    load_spec("jobs/binary_2d.yaml", [f"{field}={at_bound}"])   # the bound itself is allowed


@pytest.mark.parametrize("override,example", [
    ("train.lr_schedule={kind:cosine}", "{kind: cosine}"),
    ("data.label_map={no:0, yes:1}", "{no: 0}"),
    ("train.early_stopping={patience: 2, metric:val_loss}", "{metric: val_loss}"),
])
def test_a_mapping_without_the_space_after_the_colon_says_so(override, example):
    """``{kind:cosine}`` is YAML for the key 'kind:cosine' with no value: before, the error said
    the schedule's kind was None ("did you mean 'cosine'?"), which the user had typed."""
    with pytest.raises(SpecError) as e:
        load_spec("jobs/digits_softmax.yaml", [override])
    assert str(e.value) == f"--set {override}: YAML needs a space after ':' in a mapping, e.g. {example}"


def test_a_colon_inside_a_value_is_not_taken_for_a_missing_space():
    spec = load_spec("jobs/digits_softmax.yaml", ["tracking.mlflow={uri: http://127.0.0.1:5000}"])
    assert spec.tracking.mlflow["uri"] == "http://127.0.0.1:5000"
