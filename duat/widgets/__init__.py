"""Interactive dashboards for notebook 09: vary depth m and width n, watch latency and
accuracy move (docs/method.md sections 4-5).

    from duat.widgets import DepthWidthExplorer, DeviceTimer, LiveTrainer, dashboard

Each dashboard is a small class whose state can be read and driven without a browser
(set a control's `.value`, call a button's `.click()`, read `.state`, `.results`,
`.plot_data()`), so the tests exercise exactly what a reader clicks. Heavy work never
freezes the page: sliders use continuous_update=False, training runs in a background
thread that a Stop button ends within one batch. The two know of each other through
duat.widgets.trainer.running_trainers(): Measure holds every training run of the kernel
between two batches while it times, so that it times the models and nothing else. What
the explorer measures of the device goes through its timer (a DeviceTimer unless another
object with its methods is passed: `DepthWidthExplorer(timer=...)`).

ipywidgets and matplotlib are imported here, so import this module only where widgets
are wanted (`import duat` does not import it).
"""
import ipywidgets as w

from duat.widgets.explorer import DepthWidthExplorer
from duat.widgets.timer import DeviceTimer
from duat.widgets.trainer import LiveTrainer


def dashboard(explorer_kwargs: dict | None = None, trainer_kwargs: dict | None = None):
    """The explorer and the trainer in two tabs; returns (tab widget, explorer, trainer)."""
    explorer = DepthWidthExplorer(**(explorer_kwargs or {}))
    trainer = LiveTrainer(**(trainer_kwargs or {}))
    tabs = w.Tab(children=[explorer.widget, trainer.widget])
    tabs.set_title(0, "Latency (m x n)")
    tabs.set_title(1, "Accuracy (live)")
    return tabs, explorer, trainer


__all__ = ["DepthWidthExplorer", "DeviceTimer", "LiveTrainer", "dashboard"]
