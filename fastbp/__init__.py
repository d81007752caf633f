"""fastbp: JIT-compiled backpropagation for multilayer perceptrons.

Three layers: ``fastbp.reference`` (the NumPy oracle), ``fastbp.kernels`` (compiled
CPU and CUDA kernels) and the API below (``MLP``, optimizers, schedules, gradcheck).
"""

import time as _time

#: perf_counter() when fastbp started loading (``fastbp train`` counts its start-up from here)
_START = _time.perf_counter()

from . import callbacks
from .callbacks import Callback, EarlyStopping, GradientMonitor, GradientWarning, ReduceOnPlateau
from .cuda_training import cuda_available
from .gradcheck import GradcheckReport, gradcheck
from .network import MLP
from .optimizers import (SGD, Adam, Constant, ExponentialDecay, InverseScaling, Momentum, Nesterov,
                         Optimizer, RMSprop, Schedule, StepDecay)
from .training import History

__version__ = "0.1.0"

__all__ = ["MLP", "History", "gradcheck", "GradcheckReport", "Optimizer", "SGD", "Momentum",
           "Nesterov", "RMSprop", "Adam", "Schedule", "Constant", "StepDecay", "ExponentialDecay",
           "InverseScaling", "callbacks", "Callback", "EarlyStopping", "ReduceOnPlateau",
           "GradientMonitor", "GradientWarning", "cuda_available", "__version__"]
