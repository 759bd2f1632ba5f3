"""lr_core: models, losses, metrics, data and the single-process reference trainer of
lrjob. Imports numpy and mxnet only: nothing of Ray or Horovod."""
from .comm import Communicator, SingleProcessCommunicator
from .config import LoopConfig
from .data import Dataset, load_dataset
from .errors import DataError, LrjobError, SpecError, TrainingError
from .loop import TrainingLoop, fit

__all__ = ["Communicator", "SingleProcessCommunicator", "LoopConfig", "Dataset", "load_dataset",
           "DataError", "LrjobError", "SpecError", "TrainingError", "TrainingLoop", "fit"]
