"""The training configuration that ``lr_core`` needs: a frozen dataclass.

The launcher builds it from the validated job spec (``launcher.spec``); tests build it
directly. It names no rank and no world size: distribution lives in the communicator.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["LoopConfig", "MODEL_KINDS", "OPTIMIZERS", "INITS"]

MODEL_KINDS = ("binary", "softmax")
OPTIMIZERS = ("sgd", "nag", "adam")
INITS = ("xavier", "normal", "zeros")


@dataclass(frozen=True)
class LoopConfig:
    kind: str = "binary"                 # binary | softmax
    num_classes: int = 2                 # softmax outputs; 2 for binary
    hidden: tuple[int, ...] = ()         # ReLU hidden layer widths
    epochs: int = 10
    batch_size: int = 64                 # the GLOBAL batch, whatever the world size
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    momentum: float = 0.0
    init: str = "xavier"
    init_sigma: float = 0.01
    seed: int = 12345
    threshold: float = 0.5               # binary: P(class 1) >= threshold -> 1
    eval_batch_size: int = 4096

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @property
    def num_outputs(self) -> int:
        return 1 if self.kind == "binary" else int(self.num_classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d
