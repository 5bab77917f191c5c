"""Plots of a training run: the curves of a history, and a live version for notebooks.

    result = fit(model, train, val, config, callbacks=[LivePlot()])   # redraws every epoch

`plot_history(history)` draws loss and accuracy per epoch (train and validation) from the
records fit() returns; `duat train` saves it as curves.png. LivePlot is a fit() callback
that redraws the same figure in place in a Jupyter output (one updating image, no
flicker); outside a notebook it does nothing (IPython, which it needs, is imported when it
is first called). `draw_history` draws the two panels onto given axes: plot_history, and
the live trainer's dashboard (duat.widgets.trainer), draw the curves through it.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt

from duat.checks import whole


def draw_history(ax_loss, ax_acc, history: Sequence[dict]) -> None:
    """Loss and accuracy against epoch (train, and validation if recorded) on two axes."""
    epochs = [r["epoch"] for r in history]
    for key, label, ax in (("train_loss", "train", ax_loss), ("val_loss", "validation", ax_loss),
                           ("train_acc", "train", ax_acc), ("val_acc", "validation", ax_acc)):
        values = [r.get(key) for r in history]
        if history and all(v is not None for v in values):
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()


def plot_history(history: Sequence[dict], title: str | None = None, figsize=(9.0, 3.2)):
    """A figure with two panels: loss and accuracy against epoch (train, and val if present)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=figsize)
    draw_history(ax_loss, ax_acc, history)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class LivePlot:
    """fit() callback: redraw the loss / accuracy curves after every epoch, in place."""

    def __init__(self, title: str | None = None, every: int = 1):
        self.title, self.every, self._handle = title, whole("every", every), None

    def __call__(self, event) -> None:
        if event.kind != "epoch" or event.epoch % self.every:
            return None
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return None
        if get_ipython() is None:  # a plain script or terminal: nothing to draw into
            return None
        fig = plot_history(event.history, self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
        return None
