"""The live trainer: pick a model and a dataset, press Start, watch loss and accuracy move
epoch by epoch, press Stop at any time; each finished run joins a comparison table.

Training runs in a background thread (duat.training.fit with a stop event), so the page
stays responsive and Stop takes effect before the next batch. The defaults are the recipe
of `duat reproduce accuracy-vs-width --quick` (RECIPE; notebook 06 trains with it too): the
bundled `digits`, which need no network, tiny models with 4x4 patches, batches of 32, AdamW
at a peak learning rate of 3e-3 reached after a linear warm-up over 5 % of the run, then a
cosine, 8 epochs. So a run of Para-Former-1-4 with seed 0 is one run of that sweep, and its
test accuracy can be held against the sweep's spread over seeds (`expected_accuracy`).

A run shares the CPU (or the accelerator) with everything else in the kernel, so anything
timed during it is timed on a busy machine. `running_trainers()` lists the runs in
progress in this process and `LiveTrainer.paused()` holds one between two batches; the
explorer's Measure button uses both (duat.widgets.explorer).
"""
from __future__ import annotations

import contextlib
import html
import threading
import time
import weakref

import ipywidgets as w
import torch
from IPython.display import display

from duat.counting import count_parameters
from duat import data as datasets  # by module: load_data is looked up when a run starts
from duat.experiments import load_results
from duat.experiments.sweeps import SWEEPS
from duat.registry import create_model
from duat.runtime import seed_everything, select_device
from duat.training import TrainConfig, evaluate, fit
from duat.training.live import draw_history
from duat.widgets.render import figure_png, html_table, new_figure, picture

MODELS = ["pf-1-1", "pf-1-2", "pf-1-4", "pf-1-8", "pf-2-2", "pf-2-4", "pf-4-2",
          "vit-2", "vit-4", "vit-8"]
RUN_COLUMNS = [("run", "#"), ("model", "model"), ("dataset", "dataset"), ("params", "parameters"),
               ("epochs_completed", "epochs"), ("status", "status"), ("val_acc", "val acc"),
               ("test_acc", "test acc"), ("wall_s", "seconds")]
# How long paused() waits for a run to reach the end of a batch. Between two batches is
# the only place a run can be held; outside them it is loading data, validating or
# testing, which takes seconds at most with the bundled datasets.
PAUSE_WAIT_S = 30.0

# The quick sweep's plan: its data, model size and overrides, batch, learning rate,
# warm-up share, weight decay and epochs are the trainer's defaults.
SWEEP = "accuracy-vs-width"
RECIPE = SWEEPS[SWEEP].quick

_TRAINERS: "weakref.WeakSet[LiveTrainer]" = weakref.WeakSet()   # every LiveTrainer made here


def running_trainers() -> list["LiveTrainer"]:
    """The LiveTrainers of this process whose run is in progress."""
    return [t for t in list(_TRAINERS) if t.running]


def expected_accuracy(model: str) -> dict:
    """What the committed quick sweep (RECIPE, 3 seeds) measured for `model`: its test
    accuracy's mean, std, min and max over the seeds, and `floor`, the mean less 4 seed
    standard deviations and at least 3 points (3 seeds estimate a spread only roughly):
    a run of the same recipe on another CPU lands above it, a broken model or loop far
    below. KeyError when the sweep did not train `model`."""
    rows = {r["model"]: r for r in load_results(SWEEP)["summary"]}
    r = rows[model]
    return dict(mean=r["test_acc_mean"], std=r["test_acc_std"], min=r["test_acc_min"],
                max=r["test_acc_max"], seeds=r["seeds"],
                floor=r["test_acc_mean"] - max(4 * r["test_acc_std"], 0.03))


class LiveTrainer:
    """Start / Stop buttons, a progress bar, live curves and a table of the session's runs.

    Readable state: `.state` (the controls), `.status` ('idle', 'running', 'finished',
    'stopped', 'failed'), `.history` (the current run's epoch records), `.runs` (one record
    per finished run), `.message`. `start()` returns at once; `join()` waits for the run;
    `run()` does both (what a notebook cell or a test calls); `with paused():` holds the
    run between two batches for the duration of the block (`.held` says it waits there).
    """

    def __init__(self, model: str = "pf-1-4", dataset: str = RECIPE.dataset, epochs: int = RECIPE.epochs,
                 size: str = RECIPE.size, lr: float = RECIPE.lr, batch_size: int = RECIPE.batch_size,
                 warmup: float = RECIPE.warmup, weight_decay: float = RECIPE.weight_decay,
                 patch_size: int | None = RECIPE.model_overrides.get("patch_size"), seed: int = 0,
                 device: str = "cpu", fraction: float | None = None):
        """`warmup`: the share of the run's steps that warms up; `patch_size` None: the
        registry's patch for the image size."""
        style = {"description_width": "80px"}
        self.model = w.Dropdown(options=sorted(set(MODELS) | {model}), value=model,
                                description="model", style=style)
        self.dataset = w.Dropdown(options=datasets.list_datasets(), value=dataset, description="dataset", style=style)
        self.size = w.Dropdown(options=["tiny", "small"], value=size, description="size", style=style)
        self.epochs = w.IntSlider(value=epochs, min=1, max=50, description="epochs",
                                  continuous_update=False, style=style)
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="batches", style=style)
        self.message_html = w.HTML("<i>choose a model and press Start</i>")
        self.plot = w.Image(format="png", layout=w.Layout(width="640px"))
        self.table_html = w.HTML(html_table([], RUN_COLUMNS, "no runs yet"))
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.widget = w.VBox([
            w.HBox([w.VBox([self.model, self.dataset]), w.VBox([self.size, self.epochs])]),
            w.HBox([self.start_button, self.stop_button, self.progress]),
            self.message_html, self.plot, self.table_html])
        self.options = dict(lr=lr, batch_size=batch_size, warmup=warmup, weight_decay=weight_decay,
                            patch_size=patch_size, seed=seed, device=device, fraction=fraction)
        self.status = "idle"
        self.history: list[dict] = []
        self.runs: list[dict] = []
        self._stop = threading.Event()
        self._go = threading.Event()      # cleared by paused(): the run waits before its next batch
        self._go.set()
        self._held = threading.Event()    # set by the run while it waits
        self._paused_s = 0.0              # time the current run spent held (not in its seconds)
        self._thread: threading.Thread | None = None
        self._draw()
        _TRAINERS.add(self)

    @property
    def state(self) -> dict:
        return dict(model=self.model.value, dataset=self.dataset.value, size=self.size.value,
                    epochs=self.epochs.value, **self.options)

    @property
    def message(self) -> str:
        return self.message_html.value

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def held(self) -> bool:
        """True while a paused() block holds the run: it waits at the end of a batch."""
        return self._held.is_set()

    # ------------------------------------------------------------------ control
    def start(self) -> bool:
        """Start a run in the background; False (with a message) if one is running."""
        if self.running:
            self._say("a run is already in progress: press Stop first")
            return False
        self._stop.clear()
        self._paused_s = 0.0
        self.history = []
        self.status = "running"
        self.start_button.disabled, self.stop_button.disabled = True, False
        self.progress.value = 0
        self._thread = threading.Thread(target=self._run, args=(dict(self.state),), daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Ask the run to stop; it does so before its next batch."""
        self._stop.set()
        if self.running:
            self._say("stopping after the current batch ...")

    def join(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    def run(self, timeout: float | None = None) -> str:
        """Start and wait: for a notebook cell or a test."""
        self.start()
        return self.join(timeout)

    @contextlib.contextmanager
    def paused(self, timeout: float | None = None):
        """Hold the run at the end of its current batch while the with-block runs, then let
        it go on with the next batch (nothing about the training changes).

        Yields True when the run is held, or when no run is in progress; False when the run
        did not reach the end of a batch within `timeout` seconds (default PAUSE_WAIT_S;
        it was loading data or evaluating): then it is still running, and the block should
        not time anything. A Stop pressed meanwhile takes effect when the block ends.
        """
        held, before, note = False, "", "paused: the explorer is timing models"
        self._go.clear()
        try:
            deadline = time.monotonic() + (PAUSE_WAIT_S if timeout is None else timeout)
            while self.running and not self._held.wait(0.01) and time.monotonic() < deadline:
                pass
            held = self._held.is_set()
            if held:
                before = self.message
                self._say(note + "; training goes on when it is done")
            yield held or not self.running
        finally:
            self._held.clear()
            self._go.set()
            if held and self.message.startswith(note):
                self._say(before)

    # ------------------------------------------------------------------ the run
    def _run(self, s: dict) -> None:
        t0 = time.perf_counter()
        try:
            device = select_device(s["device"])
            self._say(f"loading {s['dataset']} ...")
            data = datasets.load_data(s["dataset"], fraction=s["fraction"], seed=s["seed"])
            train, val, test = data.loaders(batch_size=s["batch_size"], seed=s["seed"])
            seed_everything(s["seed"])   # the initial weights: in the sweep's order (RECIPE)
            patch = {} if s["patch_size"] is None else dict(patch_size=s["patch_size"])
            model = create_model(s["model"], size=s["size"], **data.model_kwargs(), **patch)
            self.progress.max = s["epochs"] * len(train)
            self._say(f"training {s['model']} ({count_parameters(model):,} parameters) on "
                      f"{len(data.train)} {s['dataset']} images, {device} ...")
            config = TrainConfig(epochs=s["epochs"], lr=s["lr"], seed=s["seed"], device=str(device),
                                 warmup_epochs=s["warmup"] * s["epochs"], weight_decay=s["weight_decay"])
            result = fit(model, train, val, config, callbacks=[self._on_event],
                         stop_event=self._stop, progress=False)
            with torch.no_grad():
                test_acc = evaluate(result.model, test)["accuracy"] if result.history else None
            self.status = "finished" if result.status == "completed" else "stopped"
            last = result.history[-1] if result.history else {}
            self.runs.append(dict(run=len(self.runs) + 1, model=s["model"], dataset=s["dataset"],
                                  size=s["size"], params=count_parameters(model),
                                  epochs_completed=result.epochs_completed, status=self.status,
                                  val_acc=last.get("val_acc"), test_acc=test_acc,
                                  wall_s=time.perf_counter() - t0 - self._paused_s))
            self._say(f"{self.status}: {result.epochs_completed} epoch(s) of {s['model']}"
                      + (f", test accuracy {test_acc:.3f}" if test_acc is not None else ""))
        except Exception as err:  # shown on the dashboard, never raised into the page
            self.status = "failed"
            self._say(f"<b style='color:#b00'>{type(err).__name__}: {html.escape(str(err))}</b>")
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True
            self.table_html.value = html_table(self.runs, RUN_COLUMNS, "no runs yet")

    def _on_event(self, event) -> None:
        if not self._go.is_set():  # paused() asked: wait here, between two batches
            self._held.set()
            t0 = time.perf_counter()
            self._go.wait()
            self._paused_s += time.perf_counter() - t0
        self.progress.value = min(event.step, self.progress.max)
        if event.kind == "epoch":
            self.history = list(event.history)
            self._draw()

    def _say(self, text: str) -> None:
        self.message_html.value = text

    def _draw(self) -> None:
        fig = new_figure(8.0, 3.0)  # off pyplot: drawn from the training thread
        draw_history(*fig.subplots(1, 2), self.history)  # the curves `duat train` saves
        self.plot.value = figure_png(fig)

    def snapshot(self):
        """A static picture of the loss and accuracy curves as they are now (an IPython
        Image): a saved notebook keeps it, and GitHub or nbviewer show it, where the live
        widget is blank."""
        return picture(self.plot.value)

    def _ipython_display_(self):
        display(self.widget)
