"""Learning curves of a :class:`fastbp.History` with matplotlib (an optional
dependency: ``pip install 'fastbp[plot]'``). Draws on the Agg canvas directly, so no
GUI backend is needed and pyplot's global state is left alone. The figures show
themselves in Jupyter (``_repr_png_``) without ``%matplotlib inline``, and so does a
History."""

import functools
import io
import os

import numpy as np


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise ImportError("History.plot needs matplotlib; install it with "
                          "pip install 'fastbp[plot]' (or pip install matplotlib)") from exc
    return _inline_figure_class(Figure), FigureCanvasAgg, MaxNLocator


@functools.cache
def _inline_figure_class(Figure):
    """A matplotlib Figure that Jupyter renders as a PNG without any backend magic."""
    class InlineFigure(Figure):
        def _repr_png_(self):
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=80)
            return buffer.getvalue()
    return InlineFigure


def history_png(history):
    """PNG bytes of ``plot_history(history)``; None for an empty History or without
    matplotlib (Jupyter then falls back to the text repr)."""
    if history.epochs == 0:
        return None
    try:
        return plot_history(history)._repr_png_()
    except ImportError:
        return None


def plot_history(history, path=None, title=None):
    """Three panels: loss, accuracy (train and validation) and per-layer gradient
    norms (log scale), all per epoch. Returns the Figure; saves it to ``path`` if given."""
    if history.epochs == 0:
        raise ValueError("the history holds no epochs to plot")
    Figure, FigureCanvasAgg, MaxNLocator = _matplotlib()
    epochs = np.arange(1, history.epochs + 1)
    has_accuracy = not np.all(np.isnan(history.accuracy))
    fig = Figure(figsize=(13, 4) if has_accuracy else (9, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if has_accuracy else 2)
    ax = axes[0]
    ax.plot(epochs, history.loss, marker=".", label="train")
    if history.val_loss:
        ax.plot(epochs, history.val_loss, marker=".", label="validation")
    ax.set(title="loss", xlabel="epoch")
    if has_accuracy:
        ax = axes[1]
        ax.plot(epochs, history.accuracy, marker=".", label="train")
        if history.val_accuracy:
            ax.plot(epochs, history.val_accuracy, marker=".", label="validation")
        ax.set(title="accuracy", xlabel="epoch")
    for ax in axes[:-1]:
        if history.best_epoch is not None:
            ax.axvline(history.best_epoch + 1, color="grey", linestyle=":", label="best epoch")
        ax.legend()
    ax = axes[-1]
    norms = np.array(history.grad_norm, dtype=np.float64)
    for l in range(norms.shape[1]):
        ax.plot(epochs, np.where(norms[:, l] > 0, norms[:, l], np.nan), marker=".", label=f"layer {l + 1}")
    ax.set_yscale("log")
    ax.set(title="gradient norm per layer", xlabel="epoch")
    ax.legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=100)
    return fig
