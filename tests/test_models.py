"""Initial parameters (``lr_core.models``) for each init, and the names of an unknown init
or loss kind."""
import numpy as np
import pytest

from lr_core.config import LoopConfig
from lr_core.losses import make_loss
from lr_core.models import initial_parameters


@pytest.mark.parametrize("init", ["xavier", "normal", "zeros"])
def test_initial_parameters_follow_the_init(init):
    cfg = LoopConfig(kind="softmax", num_classes=3, hidden=(400,), init=init, init_sigma=0.05, seed=9)
    p = initial_parameters(cfg, 300)
    assert sorted(p) == ["lrjob_layer0_bias", "lrjob_layer0_weight", "lrjob_layer1_bias", "lrjob_layer1_weight"]
    assert p["lrjob_layer0_weight"].shape == (400, 300) and p["lrjob_layer1_weight"].shape == (3, 400)
    for v in p.values():
        assert v.dtype == np.float32
    assert not p["lrjob_layer0_bias"].any() and p["lrjob_layer1_bias"].shape == (3,)
    w = p["lrjob_layer0_weight"].astype(np.float64)
    if init == "zeros":
        assert not w.any()
    elif init == "normal":
        assert abs(w.mean()) < 0.002 and abs(w.std() - 0.05) < 0.002
    else:
        scale = np.sqrt(3.0 / 350.0)   # uniform(-s, s), s = sqrt(3 / mean(fan_in, fan_out))
        assert w.max() <= scale and w.min() >= -scale and abs(w.std() - scale / np.sqrt(3)) < 0.002
    again = initial_parameters(cfg, 300)
    assert all(np.array_equal(again[k], v) for k, v in p.items())


def test_unknown_init_and_loss_kind_are_named():
    from lr_core.losses import make_loss
    with pytest.raises(ValueError) as e:
        initial_parameters(LoopConfig(init="he"), 3)
    assert str(e.value) == "init must be xavier, normal or zeros, got 'he'"
    with pytest.raises(ValueError) as e:
        make_loss("poisson")
    assert str(e.value) == "kind must be binary or softmax, got 'poisson'"
