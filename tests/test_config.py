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
