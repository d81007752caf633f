"""Optimizers and learning-rate schedules: small objects validated at construction.

An optimizer holds hyper-parameters only; its state (velocity, m, v and the step
count) lives in flat buffers beside the parameters (see ``training.FitState``),
and the step itself runs inside the compiled update kernel. The update rules are
written out once, in ``reference.optimizer_step``.
"""

import math
import numbers

from . import spec


def _check_range(name, value, low, high, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (value < low or (low_open and value == low)) or (value > high or (high_open and value == high)):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class: ``lr`` > 0 plus the rule's own constants.

    Every hyper-parameter is checked when it is set, at construction or later
    (``opt.lr = -1`` raises), against the ranges in ``bounds``; :meth:`check`
    repeats the checks (``fit`` calls it)."""

    name = "sgd"
    code = spec.OPT_SGD
    n_states = 0  # flat state buffers the rule needs (velocity, m, v)
    #: name -> (low, high, low_open, high_open)
    bounds = {"lr": (0.0, math.inf, True, True)}

    def __init__(self, lr=0.01):
        self.lr = lr

    def __setattr__(self, name, value):
        if name in self.bounds:
            value = _check_range(name, value, *self.bounds[name])
        super().__setattr__(name, value)

    def check(self):
        """Re-check every hyper-parameter (values put in ``vars(self)`` directly included)."""
        for name, value in vars(self).items():
            if name in self.bounds:
                _check_range(name, value, *self.bounds[name])
        return self

    # values written into the hyper vector of the update kernel
    def constants(self):
        return {"momentum": 0.0, "beta2": 0.0, "eps": 0.0}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)


class SGD(Optimizer):
    """Plain gradient descent: θ ← θ − η g."""


class Momentum(Optimizer):
    """Classical momentum: v ← μ v − η g; θ ← θ + v."""

    name, code, n_states = "momentum", spec.OPT_MOMENTUM, 1
    bounds = {**Optimizer.bounds, "momentum": (0.0, 1.0, False, True)}

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr)
        self.momentum = momentum

    def constants(self):
        return {"momentum": self.momentum, "beta2": 0.0, "eps": 0.0}


class Nesterov(Momentum):
    """Nesterov momentum: v ← μ v − η g; θ ← θ + μ v − η g."""

    name, code = "nesterov", spec.OPT_NESTEROV


class RMSprop(Optimizer):
    """s ← ρ s + (1 − ρ) g²; θ ← θ − η g / (√s + ε)."""

    name, code, n_states = "rmsprop", spec.OPT_RMSPROP, 1
    bounds = {**Optimizer.bounds, "rho": (0.0, 1.0, False, True), "eps": (0.0, math.inf, True, False)}

    def __init__(self, lr=0.001, rho=0.9, eps=1e-8):
        super().__init__(lr)
        self.rho, self.eps = rho, eps

    def constants(self):
        return {"momentum": self.rho, "beta2": 0.0, "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba)."""

    name, code, n_states = "adam", spec.OPT_ADAM, 2
    bounds = {**Optimizer.bounds, "beta1": (0.0, 1.0, False, True), "beta2": (0.0, 1.0, False, True),
              "eps": (0.0, math.inf, True, False)}

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def constants(self):
        return {"momentum": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, Nesterov, RMSprop, Adam)}


def get_optimizer(optimizer):
    """An Optimizer from an instance (its hyper-parameters re-checked), a name (default
    hyper-parameters) or None (Adam)."""
    if optimizer is None:
        return Adam()
    if isinstance(optimizer, Optimizer):
        return optimizer.check()
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[key]()
    raise TypeError(f"optimizer must be a name or a fastbp.Optimizer, got {type(optimizer).__name__}")


# --- learning-rate schedules (per epoch) ---------------------------------------------


class Schedule:
    """Learning rate as a function of the epoch index (0-based) and the base rate."""

    def __call__(self, epoch, lr0):
        return lr0

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """η_e = η_0."""


class StepDecay(Schedule):
    """η_e = η_0 · factor^⌊e / step_size⌋."""

    def __init__(self, step_size=10, factor=0.5):
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.factor = _check_range("factor", factor, 0.0, 1.0, low_open=True)

    def __call__(self, epoch, lr0):
        return lr0 * self.factor ** (epoch // self.step_size)


class ExponentialDecay(Schedule):
    """η_e = η_0 · rate^e."""

    def __init__(self, rate=0.95):
        self.rate = _check_range("rate", rate, 0.0, 1.0, low_open=True)

    def __call__(self, epoch, lr0):
        return lr0 * self.rate ** epoch


class InverseScaling(Schedule):
    """η_e = η_0 / (1 + scale · e)^power."""

    def __init__(self, power=0.5, scale=1.0):
        self.power = _check_range("power", power, 0.0, math.inf)
        self.scale = _check_range("scale", scale, 0.0, math.inf)

    def __call__(self, epoch, lr0):
        return lr0 / (1.0 + self.scale * epoch) ** self.power


SCHEDULES = {"constant": Constant, "step": StepDecay, "exponential": ExponentialDecay,
             "invscaling": InverseScaling}


class CheckedSchedule(Schedule):
    """Wraps the schedule a fit uses: each learning rate it returns must be a finite
    number > 0, else a ValueError names the schedule and the epoch."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, epoch, lr0):
        lr = self.schedule(epoch, lr0)
        try:
            value = float(lr) if not isinstance(lr, (bool, complex, str, bytes)) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"schedule {self.schedule!r} returned the learning rate {lr!r} for "
                             f"epoch {epoch}; it must be a finite number > 0")
        return value

    def __repr__(self):
        return repr(self.schedule)


def get_schedule(schedule):
    """A :class:`CheckedSchedule` around an instance, a name, a callable
    ``f(epoch, lr0)`` or None (constant)."""
    if schedule is None:
        return CheckedSchedule(Constant())
    if isinstance(schedule, CheckedSchedule):
        return schedule
    if isinstance(schedule, str):
        key = schedule.lower()
        if key not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
        return CheckedSchedule(SCHEDULES[key]())
    if callable(schedule):
        return CheckedSchedule(schedule)
    raise TypeError(f"schedule must be a name, a Schedule or a callable, got {type(schedule).__name__}")
