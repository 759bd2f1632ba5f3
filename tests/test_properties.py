"""Property-based: random specs and malformed data files give a clean error, never a traceback."""
import string

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.spec import SCHEMA, load_spec, spec_from_dict
from lr_core.data import load_dataset, read_idx
from lr_core.errors import DataError, SpecError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), c, max_size=3)),
                      max_leaves=6)
field_names = st.sampled_from([f"{s}.{f}" for s, fs in SCHEMA.items() for f in fs] + ["train.epoch", "x.y"])


@st.composite
def spec_docs(draw):
    doc = {}
    for _ in range(draw(st.integers(0, 6))):
        dotted = draw(field_names)
        section, field = dotted.split(".")
        doc.setdefault(section, {})
        if isinstance(doc[section], dict):
            doc[section][field] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["model", "train", "junk", "name"]))] = draw(values)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_docs())
def test_random_specs_validate_or_fail_cleanly(doc):
    try:
        spec = spec_from_dict(doc)
    except SpecError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert spec_from_dict(yaml.safe_load(spec.to_yaml())).raw == spec.raw


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=string.printable, max_size=300))
def test_random_yaml_text(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    try:
        load_spec(p)
    except SpecError as e:
        assert "\n" not in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                                   st.integers(-3, 3).map(str), st.text(max_size=4)), min_size=0, max_size=4),
                max_size=8),
       st.sampled_from(["binary", "softmax"]))
def test_random_csv_files(tmp_path, rows, kind):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n" + "\n".join(",".join(r) for r in rows))
    try:
        ds = load_dataset("csv", kind=kind, num_classes=3, seed=0, path=str(p), val_fraction=0.3)
    except DataError as e:
        assert "\n" not in str(e)
        return
    assert np.isfinite(ds.x_train).all() and len(ds.x_train) >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_bytes_as_idx_npz_csv(tmp_path, blob):
    for name in ("x.idx", "d.npz", "d.csv"):
        p = tmp_path / name
        p.write_bytes(blob)
        try:
            if name.endswith(".idx"):
                read_idx(p)
            else:
                load_dataset(name.split(".")[1], kind="binary", num_classes=2, seed=0, path=str(p))
        except DataError as e:
            assert "\n" not in str(e)
