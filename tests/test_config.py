"""The training configuration (``lr_core.config.LoopConfig``): its plain-dict form and
the number of outputs each model kind has."""
import numpy as np
import pytest

from lr_core.config import LoopConfig


def test_config_to_dict_is_plain():
    cfg = LoopConfig(kind="softmax", num_classes=3, hidden=[4.0, 2], epochs=2)
    assert cfg.hidden == (4, 2) and all(type(h) is int for h in cfg.hidden)
    d = cfg.to_dict()
    assert d["hidden"] == [4, 2] and type(d["hidden"]) is list
    assert d == {"kind": "softmax", "num_classes": 3, "hidden": [4, 2], "epochs": 2, "batch_size": 64,
                 "learning_rate": 0.1, "optimizer": "sgd", "weight_decay": 0.0, "momentum": 0.0, "init": "xavier",
                 "init_sigma": 0.01, "seed": 12345, "threshold": 0.5, "eval_batch_size": 4096,
                 "class_weight": None, "lr_schedule": None}
    assert LoopConfig(**{**d, "hidden": tuple(d["hidden"])}) == cfg


def test_config_schedule_round_trips_through_its_dict():
    """A schedule is a mapping in the dict a Ray worker receives, hashable in the config; a
    cosine without its own epochs spans ``epochs``."""
    cfg = LoopConfig(epochs=4, lr_schedule={"kind": "cosine", "min_lr": 0.01})
    d = cfg.to_dict()
    assert d["lr_schedule"] == {"kind": "cosine", "min_lr": 0.01, "epochs": 4}
    assert LoopConfig(**d) == cfg and hash(cfg) == hash(LoopConfig(**d))
    with pytest.raises(ValueError, match="lr_schedule kind"):
        LoopConfig(lr_schedule={"kind": "exponential"})


def test_config_outputs_and_kind():
    assert LoopConfig(kind="binary", num_classes=7).num_outputs == 1
    assert LoopConfig(kind="softmax", num_classes=np.int64(5)).num_outputs == 5
    assert type(LoopConfig(kind="softmax", num_classes=np.int64(5)).num_outputs) is int
    with pytest.raises(ValueError) as e:
        LoopConfig(kind="poisson")
    assert str(e.value) == "kind must be one of ('binary', 'softmax'), got 'poisson'"


def test_config_class_weights_become_a_tuple_and_a_list_in_its_dict():
    """Explicit class weights are kept as a tuple of floats (the config is hashable) and
    come back as a list in the dict a Ray worker receives."""
    cfg = LoopConfig(kind="softmax", num_classes=3, class_weight=[1, 2.5, 4])
    assert cfg.class_weight == (1.0, 2.5, 4.0) and type(cfg.class_weight) is tuple
    assert all(type(w) is float for w in cfg.class_weight)
    hash(cfg)
    d = cfg.to_dict()
    assert d["class_weight"] == [1.0, 2.5, 4.0] and type(d["class_weight"]) is list
    assert LoopConfig(**{**d, "hidden": tuple(d["hidden"])}) == cfg
    assert LoopConfig(class_weight="balanced").to_dict()["class_weight"] == "balanced"


@pytest.mark.parametrize("weights", [(1.0, 2.0, 3.0), (1.0,), (1.0, 0.0), (-1.0, 2.0), (float("nan"), 1.0)])
def test_config_refuses_class_weights_of_the_wrong_count_or_not_positive(weights):
    with pytest.raises(ValueError) as e:
        LoopConfig(kind="binary", class_weight=weights)
    assert str(e.value) == f"class_weight must be 'balanced' or 2 positive weights, got {weights!r}"


def test_config_schedule_keeps_its_own_epochs_and_names_a_wrong_kind():
    """Only a cosine without epochs gets ``epochs``; a cosine's own epochs and a step
    schedule are kept as given; a wrong kind is named in the message."""
    assert LoopConfig(epochs=4, lr_schedule={"kind": "cosine", "min_lr": 0.0, "epochs": 2}).schedule == \
        {"kind": "cosine", "min_lr": 0.0, "epochs": 2}
    assert LoopConfig(epochs=4, lr_schedule={"kind": "step", "step_epochs": 1, "factor": 0.5}).schedule == \
        {"kind": "step", "step_epochs": 1, "factor": 0.5}
    with pytest.raises(ValueError) as e:
        LoopConfig(lr_schedule={"kind": "exponential"})
    assert str(e.value) == "lr_schedule kind must be one of ('step', 'cosine'), got 'exponential'"
