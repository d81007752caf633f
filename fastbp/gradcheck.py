"""Gradient checking by central differences, as in the background notes:

    g_num = (L(θ_i + ε) − L(θ_i − ε)) / (2ε)
    rel   = |g_num − g_an| / max(1e-8, |g_num| + |g_an|)

The analytical gradient comes from the compiled backward pass and every L(θ) from
the compiled forward pass, on a float64 copy of the network by default.
"""

from dataclasses import dataclass, field

import numpy as np

from .layout import B_OFF, FAN_IN, FAN_OUT, W_OFF
from . import cpu_training
from .validation import check_features, check_sample_weight


@dataclass
class GradcheckReport:
    """Worst relative error per parameter group ("W1", "b1", ...) and overall."""

    errors: dict = field(default_factory=dict)
    max_error: float = 0.0
    tol: float = 1e-6
    n_checked: int = 0
    passed: bool = True
    worst: tuple = ()

    def __str__(self):
        lines = [f"gradcheck: {self.n_checked} parameters, max relative error {self.max_error:.3e} "
                 f"(tol {self.tol:.0e}) -> {'PASS' if self.passed else 'FAIL'}"]
        lines += [f"  {name:>4}: {err:.3e}" for name, err in self.errors.items()]
        return "\n".join(lines)

    def __bool__(self):
        return self.passed


def _groups(layout, gammas=()):
    """(name, start, stop) of each weight matrix, bias vector (BN: shift β) and BN gain γ in theta."""
    for l, row in enumerate(layout, start=1):
        yield f"W{l}", row[W_OFF], row[W_OFF] + row[FAN_IN] * row[FAN_OUT]
        yield f"b{l}", row[B_OFF], row[B_OFF] + row[FAN_OUT]
        if l <= len(gammas) and gammas[l - 1] >= 0:
            yield f"g{l}", gammas[l - 1], gammas[l - 1] + row[FAN_OUT]


def gradcheck(net, X, y, loss=None, eps=1e-5, tol=1e-6, n_samples=None, seed=0, l1=0.0, l2=0.0,
              dtype="float64", device="cpu", sample_weight=None):
    """Compare the compiled gradient of ``net`` on (X, y) with central differences
    (the analytic gradient from the ``device`` kernels, "cpu" or "cuda").

    The objective is ``flat_gradient``'s: the mean loss plus the L1/L2 penalty, with
    ``sample_weight`` (Σ w_i ℓ_i + n·penalty)/Σw, the objective ``fit`` minimises per batch.

    ``n_samples`` checks a seeded random subset of that many parameters (None: all).
    Works on a copy in ``dtype`` (float64 recommended: in float32 the differences
    are dominated by rounding), so ``net`` is never modified.

    Expected non-bug failures: with ReLU / leaky ReLU a sample within ε of a kink
    makes the central difference straddle it; on a trained network gradients of
    ~1e-6 meet the loss's rounding (~1e-16 / ε), which alone gives relative errors
    of ~1e-6. Check fresh networks or smooth activations, or raise ``tol``.
    """
    if not (eps > 0):
        raise ValueError(f"eps must be > 0, got {eps!r}")
    probe = net.copy(dtype=dtype)
    loss, loss_code = probe._loss_code(probe.loss if loss is None else loss)
    Xc = check_features(X, probe.n_features, probe.dtype)
    Yc = probe._targets(y, Xc.shape[0], loss_code)
    weights = check_sample_weight(sample_weight, Xc.shape[0])
    _, analytic = probe.flat_gradient(Xc, Yc, loss, l1, l2, device=device, sample_weight=weights)
    theta = probe.theta
    n = Xc.shape[0]

    def objective():  # one chunk: with batch normalization, the batch statistics of all of X
        total, _ = cpu_training.evaluate(probe, Xc, Yc, loss_code, n, batch_stats=True, weights=weights)
        penalty = sum(l1 * np.abs(W).sum() + 0.5 * l2 * (W * W).sum() for W in probe.weights)
        if weights is None:
            return total / n + penalty
        return (total + n * penalty) / weights.sum()

    if n_samples is None or n_samples >= theta.size:
        indices = np.arange(theta.size)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(theta.size, size=int(n_samples), replace=False))
    report = GradcheckReport(tol=tol, n_checked=len(indices))
    bounds = list(_groups(probe.layout, probe.bn_goff))
    for i in indices:
        saved = theta[i]
        theta[i] = saved + eps
        plus = objective()
        theta[i] = saved - eps
        minus = objective()
        theta[i] = saved
        numeric = (plus - minus) / (2 * eps)
        rel = abs(numeric - analytic[i]) / max(1e-8, abs(numeric) + abs(analytic[i]))
        name = next(n for n, lo, hi in bounds if lo <= i < hi)
        report.errors[name] = max(report.errors.get(name, 0.0), rel)
        if rel >= report.max_error:
            report.max_error, report.worst = rel, (name, int(i), numeric, float(analytic[i]))
    report.passed = bool(report.max_error < tol)
    return report
