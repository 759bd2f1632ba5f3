"""The training configuration that ``lr_core`` needs: a frozen dataclass.

The launcher builds it from the validated job spec (``launcher.spec``); tests build it
directly. It names no rank and no world size: distribution lives in the communicator.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .schedule import SCHEDULE_KINDS

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
    # per-class weights on the training loss: "balanced", one weight per class, or None
    # (docs/design.md#class-weights); the loop turns them into per-row weights
    class_weight: str | tuple[float, ...] | None = None
    # the learning rate as a function of the global step (lr_core/schedule.py,
    # docs/design.md#learning-rate-schedules): a mapping, kept as sorted (key, value) pairs
    lr_schedule: dict | tuple | None = None

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        cw = self.class_weight
        if cw is not None and cw != "balanced":
            cw = tuple(float(w) for w in cw)
            if len(cw) != self.num_outputs_classes or any(not w > 0 for w in cw):
                raise ValueError(f"class_weight must be 'balanced' or {self.num_outputs_classes} positive weights, "
                                 f"got {self.class_weight!r}")
            object.__setattr__(self, "class_weight", cw)
        sched = self.lr_schedule
        if sched is not None:
            sched = dict(sched)
            if sched.get("kind") not in SCHEDULE_KINDS:
                raise ValueError(f"lr_schedule kind must be one of {SCHEDULE_KINDS}, got {sched.get('kind')!r}")
            if sched["kind"] == "cosine" and sched.get("epochs") is None:
                sched["epochs"] = self.epochs  # the cosine spans the run unless told otherwise
            object.__setattr__(self, "lr_schedule", tuple(sorted(sched.items())) or None)

    @property
    def schedule(self) -> dict | None:
        """``lr_schedule`` as a mapping (None: a constant rate)."""
        return dict(self.lr_schedule) if self.lr_schedule else None

    @property
    def num_outputs(self) -> int:
        return 1 if self.kind == "binary" else int(self.num_classes)

    @property
    def num_outputs_classes(self) -> int:
        """The classes the labels take: 2 for binary."""
        return 2 if self.kind == "binary" else int(self.num_classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        if isinstance(self.class_weight, tuple):
            d["class_weight"] = list(self.class_weight)
        d["lr_schedule"] = self.schedule
        return d
